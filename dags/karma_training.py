"""
### karma_training

Trains, evaluates, indexes and registers the KARMA retrieval model for one date (`ds`):

`resolve_ds` → `base_lm` (pre-train `base_lm` only when no base LM is published at or before `ds`
and neither the `base_model` param nor `karma.base_model` names one) → `train` (variant from the
params, default `act+gen+rec`) → `evaluate` (HR/NDCG exact + faiss, baselines tuned on valid,
sink/collapse diagnostics, report) → `embed` (catalogue → `indexes/karma/<ds>`) → `register`
(`models/karma/<ds>`, `CURRENT` moved only through the gate: test HR@200 >= popularity baseline
and >= `min_ratio` x the registered version's; a refusal fails the task without retries).

**Schedule**: data-aware, on `samples.karma_samples` **and** `samples.item_corpus` — it runs once
after each `behavior_etl` run has published both. The run's `ds` is the logical date when there
is one (manual runs, `dag.test`), else the `ds` the newest triggering asset events carry, or the
`ds` param when set (backfills: trigger with `{"ds": "YYYY-MM-DD"}`). A weekly cadence is a
one-line change (`schedule="@weekly"`) if daily retraining costs too much on big base models.

Every heavy step is a subprocess (`python -m base_lm.pretrain | karma_model.train | .evaluate |
.embed`) with `OMP_NUM_THREADS` from the params; XCom carries paths only.

**Distributed training**: with `runtime.nproc_per_node` N > 1 (config, env
`PIPELINE__RUNTIME__NPROC_PER_NODE`, or the `nproc_per_node` param; 0 = config) `base_lm`
(when it pre-trains) and `train` run `python -m torch.distributed.run --standalone --nproc-per-node N
-m base_lm.pretrain | karma_model.train ...` (DDP:
gloo on CPU, nccl on GPU); rank 0 alone publishes and prints the JSON result line. The training
tasks run in the Airflow pool `runtime.training_pool` (default `default_pool`) taking N slots
(both read when the DAG file is parsed).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from dags import training_tasks
from dags.assets import ITEM_CORPUS, KARMA_SAMPLES

VARIANTS = ["act", "act+gen", "act+rec", "act+gen+rec"]  # karma_model.config.VARIANTS
BASELINES = ["popularity", "cooccurrence", "text"]
# Entry points that train under torchrun when nproc_per_node > 1: they publish from rank 0 only.
DDP_MODULES = ("base_lm.pretrain", "karma_model.train")


_training_pool = training_tasks.training_pool
TRAINING_POOL, TRAINING_POOL_SLOTS = _training_pool()

PARAMS = {
    "config": Param("", type="string", description="config file; empty = conf/pipeline.yaml"),
    "profile": Param("", type="string", description="config profile; empty = PIPELINE_PROFILE or local"),
    "data_root": Param("", type="string", description="data root; empty = the profile's"),
    "ds": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                description="date to train for; empty = logical date or the triggering asset events' ds"),
    "variant": Param("act+gen+rec", type="string", enum=VARIANTS, description="KARMA ablation variant"),
    "base_model": Param("", type="string", description="local HF checkpoint; empty = karma.base_model or base_lm"),
    "max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000,
                       description="KARMA training steps; 0 = karma.max_steps"),
    "base_max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000,
                            description="base LM pre-training steps when it must be trained; 0 = base_lm.max_steps"),
    "seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1),
    "baselines": Param(BASELINES, type="array", items={"type": "string", "enum": BASELINES},
                       description="baselines evaluated beside the model (popularity is needed by the gate)"),
    "n_attention": Param(64, type="integer", minimum=1, maximum=10_000,
                         description="histories for the attention-sink diagnostics"),
    "min_ratio": Param(0.9, type="number", minimum=0.0, maximum=1.0,
                       description="gate: test HR@200 >= min_ratio x the registered version's"),
    "omp_threads": Param(1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of the steps"),
    "nproc_per_node": Param(0, type="integer", minimum=0, maximum=64,
                            description="training processes (DDP when > 1); 0 = runtime.nproc_per_node"),
}


def _settings(params: dict) -> tuple[dict, str]:
    from common.config import load_config

    cfg = load_config(params.get("config") or None, params.get("profile") or None)
    return cfg, str(params.get("data_root") or cfg["data_root"])


def nproc_per_node(params: dict) -> int:
    """Training processes: the ``nproc_per_node`` Param when > 0, else ``runtime.nproc_per_node``."""
    return training_tasks.nproc_per_node(params)


def command(module: str, args: list[str], nproc: int = 1) -> list[str]:
    """``python -m module args``, or torchrun with ``nproc`` processes for this DAG's DDP entry points."""
    return training_tasks.command(module, args, nproc, DDP_MODULES)


def _run(module: str, args: list[str], params: dict) -> dict:
    """``python -m module args`` with the step environment (under torchrun for a training entry
    point when ``nproc_per_node`` > 1); returns its last JSON stdout line (rank 0's)."""
    import json
    import logging
    import os
    import subprocess
    from pathlib import Path

    from airflow.sdk.exceptions import AirflowFailException

    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": str(params["omp_threads"]), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
               p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    for key in ("config", "profile"):
        if params.get(key):
            args = [*args, f"--{key}", str(params[key])]
    cmd = command(module, args, nproc_per_node(params) if module in DDP_MODULES else 1)
    logging.getLogger(__name__).info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 2:  # argparse / bad input: retrying cannot help
        raise AirflowFailException(f"{module} rejected its arguments (exit 2)")
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed with exit code {proc.returncode}")
    return json.loads(lines[-1])


@dag(
    dag_id="karma_training",
    schedule=(KARMA_SAMPLES & ITEM_CORPUS),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["karma", "training", "retrieval"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=2)},
    doc_md=__doc__,
)
def karma_training():
    @task
    def resolve_ds(params=None, logical_date=None, triggering_asset_events=None) -> str:
        """The date to train for: the ds param, else the logical date, else the newest event's ds."""
        from common.paths import check_ds

        if params.get("ds"):
            return check_ds(params["ds"])
        if logical_date is not None:
            return logical_date.strftime("%Y-%m-%d")
        dates = [e.extra.get("ds") for events in (triggering_asset_events or {}).values() for e in events
                 if e.extra and e.extra.get("ds")]
        if not dates:
            raise ValueError("no ds: set the ds param or trigger from behavior_etl's asset events")
        return check_ds(max(dates))

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def base_lm(day: str, params=None) -> str:
        """Path of the base LM: configured, newest published at or before the day, or pre-trained now."""
        from pathlib import Path

        from karma_model.release import published_base_model

        cfg, root = _settings(params)
        configured = params.get("base_model") or (cfg.get("karma") or {}).get("base_model")
        if configured:
            return str(configured)
        found = published_base_model(root, day)
        if found is not None:
            return str(found)
        args = ["--ds", day, "--data-root", root]
        if params["base_max_steps"]:
            args += ["--max-steps", str(params["base_max_steps"])]
        _run("base_lm.pretrain", args, params)
        path = published_base_model(root, day)
        if path is None:
            raise FileNotFoundError(f"base_lm.pretrain published nothing under {Path(root) / 'models' / 'base_lm'}")
        return str(path)

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def train(day: str, base_model: str, params=None) -> str:
        _cfg, root = _settings(params)
        args = ["--ds", day, "--data-root", root, "--variant", params["variant"], "--base-model", base_model,
                "--seed", str(params["seed"])]
        if params["max_steps"]:
            args += ["--max-steps", str(params["max_steps"])]
        return _run("karma_model.train", args, params)["model_dir"]

    @task
    def evaluate(day: str, model_dir: str, params=None) -> str:
        _cfg, root = _settings(params)
        args = ["--ds", day, "--model-dir", model_dir, "--data-root", root, "--n-attention",
                str(params["n_attention"]), "--baselines", *params["baselines"]]
        return _run("karma_model.evaluate", args, params)["metrics_path"]

    @task
    def embed(day: str, model_dir: str, params=None) -> str:
        _cfg, root = _settings(params)
        return _run("karma_model.embed", ["--ds", day, "--model-dir", model_dir, "--data-root", root,
                                          "--version", day], params)["index_dir"]

    @task
    def register(day: str, model_dir: str, metrics_path: str, index_dir: str, params=None) -> str:
        """Register models/karma/<ds> through the gate; a refusal fails the task without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from common.registry import GateRejected
        from common.registry import model_dir as registry_dir
        from karma_model.release import REGISTRY_NAME, register_karma

        _cfg, root = _settings(params)
        try:
            register_karma(root, model_dir, day, index_dir, metrics_path, min_ratio=float(params["min_ratio"]))
        except GateRejected as exc:
            raise AirflowFailException(str(exc)) from exc
        return str(registry_dir(root, REGISTRY_NAME, day))

    day = resolve_ds()
    model = train(day, base_lm(day))
    metrics = evaluate(day, model)
    index = embed(day, model)
    metrics >> index
    register(day, model, metrics, index)


karma_training()
