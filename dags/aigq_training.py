"""
### aigq_training

Daily AIGQ training for the logical date `ds`: the IL-SFT policy, then the daily cycle of
METHOD.md ("Continuous CTR adaptation"): a new CTR reward model on day T's logs and an IL-GRPO
update of day T-1's policy against it.

SFT part: `base_lm` (pre-train the tiny base LM only when no `models/base_lm/<v>` with v <= ds
exists) → `train_sft` (IL-SFT of the `kind` Param on the train split of the configured days;
with `sft="if_missing"` only when no `aigq_<kind>` version is registered yet) → `evaluate`
(test-split generation next to the popularity / co-occurrence / EBR / own-history baselines) →
`register` (`models/aigq_<kind>/CURRENT` moves only if Query HR@30 is not below the popularity
baseline's minus a tolerance and not below the current version's minus a tolerance).

Daily cycle (`grpo=true`): `train_ctr` (`aigq_model.ctr` on day T's `ctr_samples`, next-day AUC
when available, registered as `aigq_ctr/<ds>`) → `grpo_update` (`aigq_model.train_grpo` on day
T's prompts, starting from the newest registered policy update before T — day T-1's — or from
the SFT policy on the first day) → `evaluate_grpo` (the candidate and the SFT policy scored on
the same samples) → `register_grpo` (`aigq_<kind>_grpo` moves only if Query HR@30 is not below
the SFT policy's minus `aigq.gate.grpo_tolerance`). Backfilling several days runs the cycle in
date order (`max_active_runs=1`).

Each step is a `python -m ...` subprocess with `OMP_NUM_THREADS` from the Params; XCom carries
folder paths only. A gate rejection fails its `register` task at once (no retry).

Distributed training: with `runtime.nproc_per_node` N > 1 (config, env
`PIPELINE__RUNTIME__NPROC_PER_NODE`, or the `nproc_per_node` Param; 0 = config) `base_lm`
(when it pre-trains) and `train_sft` run `python -m torch.distributed.run --standalone
--nproc-per-node N -m base_lm.pretrain | aigq_model.train_sft ...` (DDP:
gloo on CPU, nccl on GPU); rank 0 alone publishes and prints the JSON result line. The training
tasks (`base_lm`, `train_sft`, `grpo_update`) run in the Airflow pool `runtime.training_pool`
(default `default_pool`), `base_lm` and `train_sft` taking N slots (both read when the file is
parsed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from airflow.sdk import Param, dag, task

from dags import training_tasks

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)
# Entry points that train under torchrun when nproc_per_node > 1: they publish from rank 0 only.
DDP_MODULES = ("base_lm.pretrain", "aigq_model.train_sft")


_training_pool = training_tasks.training_pool
TRAINING_POOL, TRAINING_POOL_SLOTS = _training_pool()

PARAMS = {
    "config": Param("", type="string", description="config file; empty = conf/pipeline.yaml"),
    "profile": Param("", type="string", description="config profile; empty = PIPELINE_PROFILE or local"),
    "data_root": Param("", type="string", description="data root; empty = the profile's"),
    "kind": Param(
        "direct", type="string", enum=["direct", "think", "plain"], description="IL-SFT target kind"
    ),
    "max_steps": Param(
        0, type="integer", minimum=0, maximum=1_000_000, description="SFT steps; 0 = aigq.sft"
    ),
    "base_max_steps": Param(
        0, type="integer", minimum=0, maximum=1_000_000, description="0 = base_lm config"
    ),
    "omp_threads": Param(
        1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of each step"
    ),
    "eval_split": Param("test", type="string", enum=["test", "valid", "train", "all"]),
    "eval_baselines": Param("", type="string", description="comma-separated; empty = aigq.eval.baselines"),
    "semantic": Param(True, type="boolean", description="compute the MiniLM similarity metric"),
    "gate_popularity_tolerance": Param(
        -1.0, type="number", minimum=-1.0, maximum=1.0, description="-1 = config"
    ),
    "gate_regression_tolerance": Param(
        -1.0, type="number", minimum=-1.0, maximum=1.0, description="-1 = config"
    ),
    "sft": Param(
        "if_missing",
        type="string",
        enum=["if_missing", "always"],
        description="train the SFT policy only when none is registered, or every day",
    ),
    "grpo": Param(True, type="boolean", description="run the daily CTR + policy-update cycle"),
    "grpo_mode": Param(
        "il", type="string", enum=["il", "sequence"], description="IL-GRPO, or plain GRPO (ablation)"
    ),
    "grpo_max_steps": Param(
        0, type="integer", minimum=0, maximum=1_000_000, description="policy-update steps; 0 = aigq.grpo"
    ),
    "gate_grpo_tolerance": Param(
        -1.0, type="number", minimum=-1.0, maximum=1.0, description="-1 = config"
    ),
    "nproc_per_node": Param(
        0, type="integer", minimum=0, maximum=64,
        description="IL-SFT processes (torchrun DDP when > 1); 0 = runtime.nproc_per_node",
    ),
}


def _common_args(params: dict) -> list[str]:
    out = []
    for name in ("config", "profile", "data_root"):
        if params.get(name):
            out += [f"--{name.replace('_', '-')}", str(params[name])]
    return out


def nproc_per_node(params: dict) -> int:
    """Training processes: the ``nproc_per_node`` Param when > 0, else ``runtime.nproc_per_node``."""
    return training_tasks.nproc_per_node(params)


def command(module: str, args: list[str], nproc: int = 1) -> list[str]:
    """``python -m module args``, or torchrun with ``nproc`` processes for this DAG's DDP entry points."""
    return training_tasks.command(module, args, nproc, DDP_MODULES)


def _run_module(module: str, args: list[str], params: dict) -> dict:
    """Run ``python -m module args`` (under torchrun for a training entry point when
    ``nproc_per_node`` > 1), stream its output to the task log, return its last JSON line
    (rank 0's: the other ranks print none)."""
    import json
    import subprocess

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(params.get("omp_threads") or 1),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = command(module, args, nproc_per_node(params) if module in DDP_MODULES else 1)
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last_json = None
    for line in proc.stdout:
        line = line.rstrip("\n")
        logger.info("%s", line)
        if line.startswith("{"):
            try:
                last_json = json.loads(line)
            except json.JSONDecodeError:
                pass
    if proc.wait() != 0:
        raise RuntimeError(f"{module} exited with status {proc.returncode}")
    if last_json is None:
        raise RuntimeError(f"{module} printed no JSON result line")
    return last_json


def _data_root(params: dict) -> str:
    from common.config import load_config

    if params.get("data_root"):
        return str(Path(params["data_root"]).resolve())
    return load_config(params.get("config") or None, params.get("profile") or None)["data_root"]


@dag(
    dag_id="aigq_training",
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["aigq", "training", "llm"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=2)},
    doc_md=__doc__,
)
def aigq_training():
    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def base_lm(params=None, ds=None) -> str:
        """Path of the newest base LM at or before ds; pre-trains one when there is none."""
        from aigq_model.train_sft import default_base_model

        try:
            return str(default_base_model(_data_root(params), ds))
        except FileNotFoundError:
            logger.info("no base LM at or before %s: pre-training one", ds)
        args = ["--ds", ds, *_common_args(params)]
        if params.get("base_max_steps"):
            args += ["--max-steps", str(params["base_max_steps"])]
        return _run_module("base_lm.pretrain", args, params)["model_dir"]

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def train_sft(base_model: str, params=None, ds=None) -> str:
        """IL-SFT on the base model; returns the new version's folder (not registered), or "" when
        ``sft=if_missing`` and a policy is already registered."""
        from common.registry import current_version

        name = f"aigq_{params['kind']}"
        if params.get("sft") == "if_missing" and current_version(_data_root(params), name):
            logger.info("%s is registered and sft=if_missing: no SFT today", name)
            return ""
        args = ["--ds", ds, "--kind", params["kind"], "--base-model", base_model, *_common_args(params)]
        if params.get("max_steps"):
            args += ["--max-steps", str(params["max_steps"])]
        return _run_module("aigq_model.train_sft", args, params)["model_dir"]

    @task
    def evaluate(model_dir: str, params=None, ds=None) -> str:
        """Offline metrics next to the baselines; returns the ``metrics.json`` path."""
        if not model_dir:
            return ""
        args = ["--ds", ds, "--model-dir", model_dir, "--split", params["eval_split"], *_common_args(params)]
        if params.get("eval_baselines"):
            args += ["--baselines", params["eval_baselines"]]
        if not params.get("semantic", True):
            args.append("--no-semantic")
        return _run_module("aigq_model.run_eval", args, params)["metrics"]

    @task
    def register(metrics_path: str, params=None) -> str:
        """Move ``models/aigq_<kind>/CURRENT`` through the gate; returns the registered folder
        (the current one when no SFT ran today)."""
        from airflow.sdk.exceptions import AirflowFailException

        from aigq_model.run_eval import sft_gate
        from common.config import load_config
        from common.registry import GateRejected, current_path
        from common.registry import register as registry_register

        if not metrics_path:
            return str(current_path(_data_root(params), f"aigq_{params['kind']}"))

        cfg = load_config(params.get("config") or None, params.get("profile") or None)
        gate_cfg = dict((cfg.get("aigq") or {}).get("gate") or {})
        pop_tol = params.get("gate_popularity_tolerance", -1.0)
        reg_tol = params.get("gate_regression_tolerance", -1.0)
        version_dir = Path(metrics_path).parent
        root = version_dir.parent.parent.parent  # <root>/models/<name>/<version>
        gate = sft_gate(
            root,
            metric=gate_cfg.get("metric", "query_hr@30"),
            popularity_tolerance=pop_tol
            if pop_tol >= 0
            else float(gate_cfg.get("popularity_tolerance", 0.02)),
            regression_tolerance=reg_tol
            if reg_tol >= 0
            else float(gate_cfg.get("regression_tolerance", 0.02)),
        )
        try:
            registry_register(root, version_dir.parent.name, version_dir.name, gate=gate)
        except GateRejected as exc:
            raise AirflowFailException(str(exc)) from exc
        return str(version_dir)

    @task
    def train_ctr(params=None, ds=None) -> str:
        """Day T's CTR reward model (registered as ``aigq_ctr/<ds>``); "" when grpo is off."""
        if not params.get("grpo", True):
            return ""
        return _run_module("aigq_model.ctr", ["--ds", ds, *_common_args(params)], params)["model_dir"]

    @task(pool=TRAINING_POOL)
    def grpo_update(sft_dir: str, ctr_dir: str, params=None, ds=None) -> str:
        """IL-GRPO (or plain GRPO) on day T's prompts against day T's CTR model, starting from the
        newest registered update before T, else from the SFT policy; returns the candidate."""
        from aigq_model.train_grpo import model_name
        from common.registry import current_version, model_dir

        if not params.get("grpo", True):
            return ""
        root = _data_root(params)
        name = model_name(params["kind"], params["grpo_mode"])
        previous = current_version(root, name)
        start = str(model_dir(root, name, previous)) if previous and previous < ds else sft_dir
        logger.info("policy update of %s starts from %s", ds, start)
        args = ["--ds", ds, "--policy", start, "--ctr", ctr_dir, "--mode", params["grpo_mode"],
                *_common_args(params)]
        if params.get("grpo_max_steps"):
            args += ["--max-steps", str(params["grpo_max_steps"])]
        return _run_module("aigq_model.train_grpo", args, params)["model_dir"]

    @task
    def evaluate_grpo(candidate: str, sft_dir: str, params=None, ds=None) -> str:
        """The candidate and the SFT policy scored on the same samples; the SFT policy's metrics
        go beside the candidate (``sft_reference_metrics.json``), its own stay untouched."""
        if not candidate:
            return ""
        common = ["--ds", ds, "--split", params["eval_split"], *_common_args(params)]
        if not params.get("semantic", True):
            common.append("--no-semantic")
        args = [*common, "--model-dir", candidate]
        if params.get("eval_baselines"):
            args += ["--baselines", params["eval_baselines"]]
        metrics = _run_module("aigq_model.run_eval", args, params)["metrics"]
        reference = [*common, "--model-dir", sft_dir, "--baselines", "", "--report-name",
                     f"aigq_{params['kind']}_sft_reference",
                     "--metrics-out", str(Path(candidate) / "sft_reference_metrics.json")]
        _run_module("aigq_model.run_eval", reference, params)
        return metrics

    @task
    def register_grpo(metrics_path: str, params=None) -> str:
        """Move ``models/aigq_<kind>_grpo/CURRENT`` if Query HR@30 is not below the SFT policy's
        minus the tolerance; returns the registered folder ("" when grpo is off)."""
        from airflow.sdk.exceptions import AirflowFailException

        from aigq_model.run_eval import policy_gate
        from common.config import load_config
        from common.registry import GateRejected
        from common.registry import register as registry_register

        if not metrics_path:
            return ""
        cfg = load_config(params.get("config") or None, params.get("profile") or None)
        gate_cfg = dict((cfg.get("aigq") or {}).get("gate") or {})
        tol = params.get("gate_grpo_tolerance", -1.0)
        version_dir = Path(metrics_path).parent
        root = version_dir.parent.parent.parent
        gate = policy_gate(
            version_dir / "sft_reference_metrics.json",
            metric=gate_cfg.get("metric", "query_hr@30"),
            tolerance=tol if tol >= 0 else float(gate_cfg.get("grpo_tolerance", 0.02)),
        )
        try:
            registry_register(root, version_dir.parent.name, version_dir.name, gate=gate)
        except GateRejected as exc:
            raise AirflowFailException(str(exc)) from exc
        return str(version_dir)

    sft_dir = register(evaluate(train_sft(base_lm())))
    candidate = grpo_update(sft_dir, train_ctr())
    register_grpo(evaluate_grpo(candidate, sft_dir))


aigq_training()
