"""
### karma_training

Trains, evaluates, indexes and registers the KARMA retrieval model for one date (`ds`):

`resolve_ds` → `base_lm` (pre-train `base_lm` only when no base LM is published at or before `ds`
and neither the `base_model` param nor `karma.base_model` names one; a file lock under
`models/base_lm/` makes `aigq_training` wait instead of pre-training a second one) → `train`
(variant from the params, default `act+gen+rec`) → `evaluate` (HR/NDCG exact + faiss, baselines
tuned on valid, sink/collapse diagnostics, report) → `embed` (catalogue → `indexes/karma/<ds>`) →
`register` (`models/karma/<ds>`; `CURRENT` moves only through the gate of
`karma_model/release.py`: test HR@200 >= `karma.gate.popularity_ratio` x popularity's and >=
`karma.gate.min_ratio` x the registered version's).

**Schedule**: on `samples.karma_samples` **and** `samples.item_corpus` (one run after each
`behavior_etl` run). **Date**: the `ds` Param when set, else the `ds` of the triggering asset
events, else the logical date (`dags/runner.py: resolve_ds`).

**A refused gate** is an outcome, not a failure: the version stays on disk, the previous version
keeps serving, the verdict is recorded (`models/karma/decisions/<ds>.json`) and alerted
(`<data_root>/alerts/alerts.jsonl`), and `register` still emits `models.karma` with
`{"ds", "path", "version", "registered": false, "reason"}`. `announce` then records the day's
outcome; when `aigq_training` has finished the same day it emits `models.ready`, which starts that
day's `nightly_export` with the current versions (its manifests and report say why).

Every heavy step is a subprocess through the step runner (`dags/runner.py`); XCom carries paths.
With `runtime.nproc_per_node` N > 1 (or the `nproc_per_node` param) `base_lm` (when it pre-trains)
and `train` run under torchrun (DDP: gloo on CPU, nccl on GPU); rank 0 alone publishes. The
training tasks run in the Airflow pool `runtime.training_pool` taking N slots.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from common.registry import GateRejected, serving_status
from common.registry import model_dir as registry_dir
from dags import ops, runner, training_tasks
from dags.assets import ITEM_CORPUS, KARMA_MODEL, KARMA_SAMPLES, MODELS_READY
from karma_model.release import REGISTRY_NAME, gate_settings, register_karma

VARIANTS = ["act", "act+gen", "act+rec", "act+gen+rec"]  # karma_model.config.VARIANTS
BASELINES = ["popularity", "cooccurrence", "text"]
# Entry points that train under torchrun when nproc_per_node > 1: they publish from rank 0 only.
DDP_MODULES = ("base_lm.pretrain", "karma_model.train")

TRAINING_POOL, TRAINING_POOL_SLOTS = training_tasks.training_pool()

PARAMS = {
    **runner.run_params("date to train for; empty = the triggering asset events' ds, else the logical date"),
    "variant": Param("act+gen+rec", type="string", enum=VARIANTS, description="KARMA ablation variant"),
    "base_model": Param("", type="string", description="local HF checkpoint; empty = karma.base_model or base_lm"),
    "max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000,
                       description="KARMA training steps; 0 = karma.max_steps"),
    "base_max_steps": Param(0, type="integer", minimum=0, maximum=1_000_000,
                            description="base LM pre-training steps when it must be trained; 0 = base_lm.max_steps"),
    "seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1),
    "baselines": Param(BASELINES, type="array", items={"type": "string", "enum": BASELINES},
                       description="baselines evaluated beside the model (all three: the fused u2i list and the gate need them)"),
    "n_attention": Param(64, type="integer", minimum=1, maximum=10_000,
                         description="histories for the attention-sink diagnostics"),
    "min_ratio": Param(-1.0, type="number", minimum=-1.0, maximum=100.0,
                       description="gate: test HR@200 >= min_ratio x the registered version's; -1 = karma.gate.min_ratio"),
    "omp_threads": Param(1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of the steps"),
    "nproc_per_node": Param(0, type="integer", minimum=0, maximum=64,
                            description="training processes (DDP when > 1); 0 = runtime.nproc_per_node"),
}


def _run(module: str, args: list[str], params: dict) -> dict:
    """One step through the runner (torchrun for a DDP entry point when nproc_per_node > 1)."""
    return runner.python_step(module, args, params, training_tasks.step_nproc(module, params, DDP_MODULES))


@dag(
    dag_id="karma_training",
    schedule=(KARMA_SAMPLES & ITEM_CORPUS),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["karma", "training", "retrieval"],
    default_args=ops.default_args(retries=1, timeout=dt.timedelta(hours=6)),
    doc_md=__doc__,
)
def karma_training():
    @task
    def resolve_ds(params=None, logical_date=None, triggering_asset_events=None) -> str:
        return runner.resolve_ds(params, logical_date, triggering_asset_events)

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def base_lm(day: str, params=None) -> str:
        """The ``base_model`` Param or ``karma.base_model``, else the newest published base LM at or
        before the day; pre-trains one when there is none."""
        return training_tasks.base_model(day, params, "karma", _run)

    @task(pool=TRAINING_POOL, pool_slots=TRAINING_POOL_SLOTS)
    def train(day: str, base_model: str, params=None) -> str:
        _cfg, root = runner.settings(params)
        args = ["--ds", day, "--data-root", root, "--variant", params["variant"], "--base-model", base_model,
                "--seed", str(params["seed"])]
        if params["max_steps"]:
            args += ["--max-steps", str(params["max_steps"])]
        return _run("karma_model.train", args, params)["model_dir"]

    @task
    def evaluate(day: str, model_dir: str, params=None) -> str:
        _cfg, root = runner.settings(params)
        args = ["--ds", day, "--model-dir", model_dir, "--data-root", root, "--n-attention",
                str(params["n_attention"]), "--baselines", *params["baselines"]]
        return _run("karma_model.evaluate", args, params)["metrics_path"]

    @task
    def embed(day: str, model_dir: str, params=None) -> str:
        _cfg, root = runner.settings(params)
        return _run("karma_model.embed", ["--ds", day, "--model-dir", model_dir, "--data-root", root,
                                          "--version", day], params)["index_dir"]

    @task(outlets=[KARMA_MODEL])
    def register(day: str, model_dir: str, metrics_path: str, index_dir: str, params=None, run_id=None,
                 outlet_events=None) -> dict:
        """Register models/karma/<day> through the gate; emit ``models.karma`` either way."""
        cfg, root = runner.settings(params)
        try:
            register_karma(root, model_dir, day, index_dir, metrics_path,
                           **gate_settings(cfg, min_ratio=params["min_ratio"]))
        except GateRejected as exc:
            ops.record_gate_refusal(params, "karma_training", "register", run_id, day, str(exc))
        status = serving_status(root, REGISTRY_NAME, day)
        path = str(registry_dir(root, REGISTRY_NAME, status["version"])) if status["version"] else ""
        outcome = {"ds": day, "path": path, "version": status["version"],
                   "registered": bool((status["decision"] or {}).get("registered")), "reason": status["reason"]}
        outlet_events[KARMA_MODEL].extra = outcome
        return outcome

    @task(outlets=[MODELS_READY])
    def announce(day: str, outcome: dict, params=None, outlet_events=None) -> dict:
        """Emit ``models.ready`` when aigq_training has finished the day too (else skip)."""
        return ops.announce_day(params, day, "karma_training", outcome, outlet_events, MODELS_READY)

    day = resolve_ds()
    model = train(day, base_lm(day))
    metrics = evaluate(day, model)
    index = embed(day, model)
    metrics >> index
    announce(day, register(day, model, metrics, index))


karma_training()
