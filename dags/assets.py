"""Assets the DAGs exchange: one per published table family.

An asset event carries ``{"ds": ..., "path": ...}`` in its extra, so a downstream DAG knows
which partition became available; the data itself stays on disk.
"""

from airflow.sdk import Asset

SCHEME = "taobao-gs"


def _asset(area: str, table: str) -> Asset:
    return Asset(name=f"{area}.{table}", uri=f"{SCHEME}://{area}/{table}", group="pipeline")


KARMA_SAMPLES = _asset("samples", "karma_samples")
AIGQ_DIRECT_SFT = _asset("samples", "aigq_direct_sft")
AIGQ_THINK_SFT = _asset("samples", "aigq_think_sft")
CTR_SAMPLES = _asset("samples", "ctr_samples")
ITEM_CORPUS = _asset("samples", "item_corpus")

SAMPLE_ASSETS = {
    "karma_samples": KARMA_SAMPLES,
    "aigq_direct_sft": AIGQ_DIRECT_SFT,
    "aigq_think_sft": AIGQ_THINK_SFT,
    "ctr_samples": CTR_SAMPLES,
    "item_corpus": ITEM_CORPUS,
}

#: A training DAG run's outcome, emitted by its last task whether the gate registered the day's
#: version or refused it: ``extra = {"ds", "path", "version", "registered", "reason"}`` (``path``
#: is the version that serves from now on, the previous one after a refusal). For lineage and
#: other consumers: nightly_export runs on MODELS_READY below.
KARMA_MODEL = _asset("models", "karma")
AIGQ_POLICY = _asset("models", "aigq_policy")
#: A day whose models are all settled: emitted by whichever of the training DAGs of
#: :data:`TRAINING_DAGS` finishes a ``ds`` last (``common.registry.record_day_outcome``), with
#: ``extra = {"ds", "path", "outcomes"}``. nightly_export runs on it: one event per day, so the
#: export of D never waits for (or takes the date of) another day's training.
MODELS_READY = _asset("models", "ready")
TRAINING_DAGS = ("karma_training", "aigq_training")

EXPORT_ASSETS = {table: _asset("exports", table) for table in ("u2q", "x2q", "u2i", "user_interest_embedding")}
REPORT = _asset("reports", "report")
#: The day's KARMA-in-ranking metrics (``reports/karma_ranking/ds=<ds>/metrics.json``), emitted by
#: ``karma_ranking`` with ``extra = {"ds", "path"}`` when the day was scored (not when skipped).
KARMA_RANKING = _asset("reports", "karma_ranking")
