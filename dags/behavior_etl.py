"""
### behavior_etl

Daily Spark ETL over the raw logs of one logical date (`ds`):

`validate` (contract checks, quarantine) → `sessionize` (gap, HintQ-exposure and day-level
sessions) → `build_samples` (KARMA, AIGQ Direct/Think, CTR samples, item corpus) →
`publish_samples` (checks the published partitions, emits one Asset event per sample table).

Each Spark job is `spark-submit jobs/<job>.py --ds {{ ds }}` on the `spark_default`
connection (`local[*]` by default; a cluster master by connection or profile). A job that
rejects its input (bad file, missing column, wrong type) fails at once without retries and
publishes nothing for the date. Re-running a date replaces its partitions whole.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from dags.assets import SAMPLE_ASSETS
from dags.spark_tasks import spark_job

PARAMS = {
    "config": Param("", type="string", description="config file; empty = conf/pipeline.yaml"),
    "profile": Param("", type="string", description="config profile; empty = PIPELINE_PROFILE or local"),
    "data_root": Param("", type="string", description="data root; empty = the profile's"),
}


@dag(
    dag_id="behavior_etl",
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["etl", "spark"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2)},
    doc_md=__doc__,
)
def behavior_etl():
    validate = spark_job("validate", "validate")
    sessionize = spark_job("sessionize", "sessionize")
    build_samples = spark_job("build_samples", "build_samples")

    @task(outlets=list(SAMPLE_ASSETS.values()))
    def publish_samples(params=None, ds=None, outlet_events=None) -> dict:
        """Check every sample partition of ds is published; announce them as Asset events."""
        from common.config import load_config
        from common.paths import is_published, partition_path
        from common.publish import read_manifest

        cfg = load_config(params.get("config") or None, params.get("profile") or None)
        root = params.get("data_root") or cfg["data_root"]
        published = {}
        for table, asset in SAMPLE_ASSETS.items():
            path = partition_path(root, "samples", table, ds)
            if not is_published(path):
                raise FileNotFoundError(f"{table}: partition {path} was not published")
            rows = read_manifest(path).get("rows")
            outlet_events[asset].extra = {"ds": ds, "path": str(path), "rows": rows}
            published[table] = {"path": str(path), "rows": rows}
        return published

    validate >> sessionize >> build_samples >> publish_samples()


behavior_etl()
