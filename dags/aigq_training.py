"""
### aigq_training

Daily AIGQ training for one date (`ds`): the IL-SFT policies, then the daily cycle of
`docs/method.md` ("Continuous CTR adaptation"): a new CTR reward model on day T's logs and an
IL-GRPO update of day T-1's policy against it.

`resolve_ds` → `base_lm` (the newest `models/base_lm/<v>` with v <= ds; pre-trained when there is
none, under the lock `karma_training` shares) → `train_sft` (IL-SFT of each policy of
`aigq.train_policies` — or of the `kind` Param — on the train split of the configured days; with
`sft=if_missing` only for kinds with no registered version) → `evaluate` (generation next to the
popularity / co-occurrence / EBR / own-history baselines on the `aigq.eval.split` samples) →
`register` (`models/aigq_<kind>/CURRENT` moves only through the gate of `aigq_model/release.py`:
the exported hybrid list must beat the best heuristic by `aigq.gate.heuristic_margin`; with no
policy registered, u2q serves that heuristic and says so).

Daily cycle (`grpo=true`, for the first policy only — the one u2q serves): `train_ctr` (`aigq_ctr/<ds>`)
→ `grpo_update` (IL-GRPO on day T's train prompts, starting from the newest registered update
before T, else from the SFT policy) → `evaluate_grpo` (candidate and the policy it started from on
the same held-out samples: the `aigq.eval.update_split` part, `test` by default, of the
`aigq.eval.sample_days` days ending at T, which no update trained on) → `register_grpo`
(`aigq_<kind>_grpo` moves only if its gate metric beats the start policy's by more than
`aigq.gate.grpo_margin`, so a registered update improved, and its exported list beats the best
heuristic) → `publish_policy` (emits `models.aigq_policy` with
`{"ds", "path", "version", "registered", "reason", "policies"}`: the policy u2q serves from now on)
→ `announce` (emits `models.ready` when `karma_training` has finished the same day: the export's trigger).

**Schedule**: on `samples.aigq_direct_sft`, `samples.aigq_think_sft` and `samples.ctr_samples`.
**Date**: the `ds` Param, else the triggering events' `ds`, else the logical date.

**A refused gate** (SFT or update) is an outcome, not a failure: the previous version keeps
serving, the verdict is recorded under `models/<name>/decisions/` and alerted, and
`publish_policy` and `announce` still run, so that day's `nightly_export` runs and says which
versions served and why. A manual run for another kind only (`kind` Param not the first of `aigq.train_policies`)
does not emit: it registers e.g. a Think policy that x2q reads from the registry.

Each step is a subprocess through the step runner (`dags/runner.py`); XCom carries folder paths.
With `runtime.nproc_per_node` N > 1 `base_lm` and `train_sft` run under torchrun (DDP), in the
pool `runtime.training_pool` taking N slots.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from aigq_model.release import REFERENCE_METRICS_FILE, model_name, register_policy, register_update
from common.registry import GateRejected, current_path, current_version, serving_status
from common.registry import model_dir as registry_dir
from dags import ops, runner, training_tasks
from dags.assets import AIGQ_DIRECT_SFT, AIGQ_POLICY, AIGQ_THINK_SFT, CTR_SAMPLES, MODELS_READY

logger = logging.getLogger(__name__)
# Entry points that train under torchrun when nproc_per_node > 1: they publish from rank 0 only.
DDP_MODULES = ("base_lm.pretrain", "aigq_model.train_sft")
KINDS = ["direct", "think", "plain"]

TRAINING_POOL, TRAINING_POOL_SLOTS = training_tasks.training_pool()

PARAMS = {
    **runner.run_params("date to train for; empty = the triggering asset events' ds, else the logical date"),
    "kind": Param("", type="string", enum=["", *KINDS],
                  description="IL-SFT policy kind; empty = every kind of aigq.train_policies"),
    "max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000, description="SFT steps; 0 = aigq.sft"),
    "base_max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000, description="0 = base_lm config"),
    "omp_threads": Param(1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of each step"),
    "eval_split": Param("", type="string", enum=["", "test", "valid", "train", "all"],
                        description="samples a candidate is scored on; empty = aigq.eval.split"),
    "eval_baselines": Param("", type="string", description="comma-separated; empty = aigq.eval.baselines"),
    "semantic": Param(True, type="boolean", description="compute the MiniLM similarity metric"),
    "gate_heuristic_margin": Param(None, type=["null", "number"], minimum=-1.0, maximum=1.0,
                                   description="null = aigq.gate.heuristic_margin; the exported list must beat "
                                   "the best heuristic by this (negative: may lose by that much, tests only)"),
    "gate_regression_tolerance": Param(-1.0, type="number", minimum=-1.0, maximum=1.0, description="-1 = config"),
    "sft": Param("if_missing", type="string", enum=["if_missing", "always"],
                 description="train an SFT policy only when none is registered, or every day"),
    "grpo": Param(True, type="boolean", description="run the daily CTR + policy-update cycle"),
    "grpo_mode": Param("il", type="string", enum=["il", "sequence"], description="IL-GRPO, or plain GRPO (ablation)"),
    "grpo_max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000,
                            description="policy-update steps; 0 = aigq.grpo"),
    "update_split": Param("", type="string", enum=["", "test", "valid"],
                          description="held-out samples a policy update is scored on; empty = aigq.eval.update_split"),
    "gate_grpo_margin": Param(None, type=["null", "number"], minimum=-1.0, maximum=1.0,
                              description="null = aigq.gate.grpo_margin; the update must beat its start policy by "
                              "more than this (negative: may lose by that much, tests only)"),
    "nproc_per_node": Param(0, type="integer", minimum=0, maximum=64,
                            description="IL-SFT processes (torchrun DDP when > 1); 0 = runtime.nproc_per_node"),
}


def _run(module: str, args: list[str], params: dict) -> dict:
    return runner.python_step(module, args, params, training_tasks.step_nproc(module, params, DDP_MODULES))


def _policies(params: dict) -> tuple[list[str], bool]:
    """``(kinds this run trains, whether it is the serving run)``: the ``kind`` Param alone, or
    ``aigq.train_policies``; the serving run is the one whose first kind is the configured first."""
    cfg, _root = runner.settings(params)
    configured = list((cfg.get("aigq") or {}).get("train_policies") or ["direct"])
    kinds = [params["kind"]] if params.get("kind") else configured
    return kinds, kinds[0] == configured[0]


def _eval_args(day: str, params: dict, update: bool = False) -> list[str]:
    """run_eval's arguments: the SFT policy on ``eval_split`` (``aigq.eval.split``); a policy
    update (``update``) on ``update_split`` (``aigq.eval.update_split``), held-out samples only:
    the update trains on the day's train rows, so ``train`` / ``all`` would score its own prompts."""
    cfg, _root = runner.settings(params)
    ev = (cfg.get("aigq") or {}).get("eval") or {}
    if update:
        split = params.get("update_split") or ev.get("update_split", "test")
        if split not in ("test", "valid"):
            raise ValueError(f"aigq.eval.update_split {split!r}: a policy update is scored on held-out samples "
                             "(test or valid), never on the train rows it trained on")
    else:
        split = params.get("eval_split") or ev.get("split", "test")
    args = ["--ds", day, "--split", split, "--sample-days", str(int(ev.get("sample_days", 1))),
            *runner.common_args(params)]
    if not params.get("semantic", True):
        args.append("--no-semantic")
    return args


@dag(
    dag_id="aigq_training",
    schedule=(AIGQ_DIRECT_SFT & AIGQ_THINK_SFT & CTR_SAMPLES),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["aigq", "training", "llm"],
    default_args=ops.default_args(retries=1, timeout=dt.timedelta(hours=8)),
    doc_md=__doc__,
)
def aigq_training():
    @task
    def resolve_ds(params=None, logical_date=None, triggering_asset_events=None) -> str:
        return runner.resolve_ds(params, logical_date, triggering_asset_events)

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def base_lm(day: str, params=None) -> str:
        """``aigq.base_model`` when set (any local HF checkpoint), else the newest published base LM
        at or before the day; pre-trains one when there is none."""
        return training_tasks.base_model(day, params, "aigq", _run)

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def train_sft(day: str, base_model: str, params=None) -> dict:
        """IL-SFT per policy kind; ``{kind: new version folder}`` (not registered). A kind with a
        registered version is skipped under ``sft=if_missing``."""
        _cfg, root = runner.settings(params)
        trained = {}
        for kind in _policies(params)[0]:
            if params.get("sft") == "if_missing" and current_version(root, f"aigq_{kind}"):
                logger.info("aigq_%s is registered and sft=if_missing: no SFT today", kind)
                continue
            args = ["--ds", day, "--kind", kind, "--base-model", base_model, *runner.common_args(params)]
            if params.get("max_steps"):
                args += ["--max-steps", str(params["max_steps"])]
            trained[kind] = _run("aigq_model.train_sft", args, params)["model_dir"]
        return trained

    @task
    def evaluate(day: str, trained: dict, params=None) -> dict:
        """Offline metrics next to the baselines; ``{kind: metrics.json path}``."""
        out = {}
        for kind, model_dir in trained.items():
            args = [*_eval_args(day, params), "--model-dir", model_dir]
            if params.get("eval_baselines"):
                args += ["--baselines", params["eval_baselines"]]
            out[kind] = _run("aigq_model.run_eval", args, params)["metrics"]
        return out

    @task
    def register(day: str, metrics: dict, params=None, run_id=None) -> dict:
        """Each new policy through its gate; ``{kind: folder of the version serving now}``."""
        cfg, root = runner.settings(params)
        serving = {}
        for kind in _policies(params)[0]:
            if kind in metrics:
                try:
                    register_policy(metrics[kind], cfg, params.get("gate_heuristic_margin"),
                                    params.get("gate_regression_tolerance"))
                except GateRejected as exc:
                    ops.record_gate_refusal(params, "aigq_training", "register", run_id, day, str(exc))
            try:
                serving[kind] = str(current_path(root, f"aigq_{kind}"))
            except Exception:  # noqa: BLE001 - nothing registered yet (first day refused)
                serving[kind] = ""
        return serving

    @task
    def train_ctr(day: str, params=None) -> str:
        """Day T's CTR reward model (registered as ``aigq_ctr/<ds>``); "" when grpo is off."""
        if not params.get("grpo", True):
            return ""
        return _run("aigq_model.ctr", ["--ds", day, *runner.common_args(params)], params)["model_dir"]

    @task(pool=TRAINING_POOL)
    def grpo_update(day: str, serving: dict, ctr_dir: str, params=None) -> dict:
        """IL-GRPO (or plain GRPO) of the first policy on day T's prompts against day T's CTR
        model, from the newest registered update before T, else the SFT policy."""
        kind = _policies(params)[0][0]
        sft_dir = serving.get(kind) or ""
        if not params.get("grpo", True) or not sft_dir:
            return {}
        _cfg, root = runner.settings(params)
        name = model_name(kind, params["grpo_mode"])
        previous = current_version(root, name)
        start = str(registry_dir(root, name, previous)) if previous and previous < day else sft_dir
        logger.info("policy update of %s starts from %s", day, start)
        args = ["--ds", day, "--policy", start, "--ctr", ctr_dir, "--mode", params["grpo_mode"],
                *runner.common_args(params)]
        if params.get("grpo_max_steps"):
            args += ["--max-steps", str(params["grpo_max_steps"])]
        candidate = _run("aigq_model.train_grpo", args, params)["model_dir"]
        return {"candidate": candidate, "sft_dir": sft_dir, "start": start}

    @task
    def evaluate_grpo(day: str, update: dict, params=None) -> str:
        """The candidate and the policy it started from scored on the same held-out samples
        (:func:`_eval_args` with ``update``; the reference's metrics go beside the candidate as
        ``start_reference_metrics.json``). With no held-out sample both metrics say so
        (``--empty-ok``) and the gate refuses: nothing shows the update improved."""
        if not update:
            return ""
        candidate, kind = update["candidate"], _policies(params)[0][0]
        args = [*_eval_args(day, params, update=True), "--empty-ok", "--model-dir", candidate]
        if params.get("eval_baselines"):
            args += ["--baselines", params["eval_baselines"]]
        metrics = _run("aigq_model.run_eval", args, params)["metrics"]
        reference = [*_eval_args(day, params, update=True), "--empty-ok", "--model-dir", update["start"],
                     "--baselines", "", "--report-name", f"aigq_{kind}_start_reference",
                     "--metrics-out", str(Path(candidate) / REFERENCE_METRICS_FILE)]
        _run("aigq_model.run_eval", reference, params)
        return metrics

    @task
    def register_grpo(day: str, metrics_path: str, params=None, run_id=None) -> str:
        """The update through its gate; returns the metrics path it judged ("" when none)."""
        if not metrics_path:
            return ""
        cfg, _root = runner.settings(params)
        try:
            register_update(metrics_path, cfg, params.get("gate_grpo_margin"), params.get("gate_heuristic_margin"))
        except GateRejected as exc:
            ops.record_gate_refusal(params, "aigq_training", "register_grpo", run_id, day, str(exc))
        return metrics_path

    @task(outlets=[AIGQ_POLICY])
    def publish_policy(day: str, serving: dict, judged: str, params=None, outlet_events=None) -> dict:
        """Emit ``models.aigq_policy``: the policy u2q serves from now on and why (skipped for a
        manual run of another kind, which must not start the export)."""
        kinds, serving_run = _policies(params)
        if not serving_run:
            raise AirflowSkipException(f"a manual run for {kinds}: the serving policy is unchanged")
        _cfg, root = runner.settings(params)
        kind = kinds[0]
        statuses = {name: serving_status(root, name, day)
                    for name in (f"aigq_{kind}", model_name(kind, params["grpo_mode"]))}
        update, sft = statuses[model_name(kind, params["grpo_mode"])], statuses[f"aigq_{kind}"]
        chosen = update if update["version"] else sft
        outcome = {"ds": day, "path": str(registry_dir(root, chosen["name"], chosen["version"])) if chosen["version"]
                   else "", "name": chosen["name"], "version": chosen["version"],
                   "registered": any((s["decision"] or {}).get("registered") for s in statuses.values()),
                   "reason": "; ".join(f"{n}: {s['reason']}" for n, s in statuses.items()),
                   "policies": serving}
        outlet_events[AIGQ_POLICY].extra = outcome
        return outcome

    @task(outlets=[MODELS_READY])
    def announce(day: str, outcome: dict, params=None, outlet_events=None) -> dict:
        """Emit ``models.ready`` when karma_training has finished the day too (else skip)."""
        return ops.announce_day(params, day, "aigq_training", outcome, outlet_events, MODELS_READY)

    day = resolve_ds()
    serving = register(day, evaluate(day, train_sft(day, base_lm(day))))
    update = grpo_update(day, serving, train_ctr(day))
    announce(day, publish_policy(day, serving, register_grpo(day, evaluate_grpo(day, update))))


aigq_training()
