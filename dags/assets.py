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
