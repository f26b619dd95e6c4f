"""
### behavior_etl

Daily Spark ETL over the raw logs of one date (`ds`):

`resolve_ds` → `validate` (contract checks, quarantine) → `sessionize` (gap, HintQ-exposure and
day-level sessions) → `build_samples` (KARMA, AIGQ Direct/Think, CTR samples, item corpus) →
`publish_samples` (checks the published partitions, emits one Asset event per sample table with
`{"ds", "path", "rows"}`; `karma_training` and `aigq_training` run on them).

**Schedule**: `ops.etl_schedule` (default `0 0 * * *`, UTC) as a data-interval timetable: the run
started at 00:00 of D+1 has logical date D and builds D, the day that ended. `null` leaves only
manual and backfill runs. **Date**: the `ds` Param when set, else the logical date
(`dags/runner.py: resolve_ds`). **Range**: with the `through` Param every Spark task builds `ds`
through `through` in one pass (one application per task, every day published together or none);
`publish_samples` checks every day and announces the last (`make backfill` runs a range so).

**One Spark application per run** (`spark.application: run`, the default): the setup task
`start_spark` starts a Spark Connect server on loopback with the profile's Spark settings, the
three Spark tasks run their jobs as its clients (`python common/steps.py jobs.<job>`; each stays its
own retryable task), and the teardown task `stop_spark` stops it, whatever the tasks did. The Spark
tasks must run on the worker of `start_spark` (LocalExecutor, or one Celery queue); a task whose
server is gone runs its own spark-submit application. With `spark.application: task` each Spark
job is `spark-submit common/steps.py jobs.<job> --ds <ds>` through the step runner
(`dags/runner.py`): master from the `spark_default` connection (else the profile), driver memory
and `spark.conf` from the profile. A long-lived server (`spark.remote`, the
`spark_connect_default` connection) replaces both. Bad input (a file or column breaking the contract), bad config
or a missing Java fail the task at once without retries and publish nothing for the date; other
failures retry twice. Re-running a date replaces its partitions whole.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, setup, task, teardown
from airflow.timetables.interval import CronDataIntervalTimetable

from common.config import load_config
from common.paths import ds_range, is_published, partition_path
from common.publish import read_manifest
from common.registry import reset_day_outcomes
from dags import ops, runner
from dags.assets import SAMPLE_ASSETS


def _schedule():
    """The ``ops.etl_schedule`` cron as a data-interval timetable (read when the file is parsed)."""
    try:
        cron = (load_config().get("ops") or {}).get("etl_schedule", "0 0 * * *")
    except Exception:  # noqa: BLE001 - a broken config must not hide the DAG: its tasks report it
        cron = "0 0 * * *"
    return CronDataIntervalTimetable(cron, timezone="UTC") if cron else None


PARAMS = {
    **runner.run_params("date to build; empty = the logical date (scheduled: the day that ended)"),
    "through": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                     description="a range: build every date from ds through this one in one pass; empty = ds only"),
}


@dag(
    dag_id="behavior_etl",
    schedule=_schedule(),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["etl", "spark"],
    default_args=ops.default_args(retries=2, timeout=dt.timedelta(hours=2)),
    doc_md=__doc__,
)
def behavior_etl():
    @task
    def resolve_ds(params=None, logical_date=None) -> str:
        return runner.resolve_ds(params, logical_date)

    @setup
    def start_spark(params=None) -> dict:
        """The run's Spark Connect server (``spark.application: run``); ``{}`` when none is wanted."""
        return runner.start_run_server(params)

    @task
    def validate(day: str, server: dict, params=None) -> dict:
        return runner.spark_step("validate", day, params, server)

    @task
    def sessionize(day: str, server: dict, params=None) -> dict:
        return runner.spark_step("sessionize", day, params, server)

    @task
    def build_samples(day: str, server: dict, params=None) -> dict:
        return runner.spark_step("build_samples", day, params, server)

    @teardown
    def stop_spark(server: dict, params=None) -> None:
        runner.stop_run_server(server, params)

    @task(outlets=list(SAMPLE_ASSETS.values()))
    def publish_samples(day: str, params=None, outlet_events=None) -> dict:
        """Check every sample partition of the day (of every day of a range) is published; announce
        the (last) day as Asset events. The days' training outcomes are reset: the export of a day
        waits for both trainings on these samples."""
        _cfg, root = runner.settings(params)
        last = dt.date.fromisoformat(params.get("through") or day)
        days = ds_range(day, (last - dt.date.fromisoformat(day)).days + 1)
        published = {}
        for ds in days:
            reset_day_outcomes(root, ds)
            for table in SAMPLE_ASSETS:
                path = partition_path(root, "samples", table, ds)
                if not is_published(path):
                    raise FileNotFoundError(f"{table}: partition {path} was not published")
        for table, asset in SAMPLE_ASSETS.items():
            path = partition_path(root, "samples", table, days[-1])
            rows = read_manifest(path).get("rows")
            outlet_events[asset].extra = {"ds": days[-1], "path": str(path), "rows": rows}
            published[table] = {"path": str(path), "rows": rows, "days": len(days)}
        return published

    day = resolve_ds()
    server = start_spark()
    validated = validate(day, server)
    sessions = sessionize(day, server)
    samples = build_samples(day, server)
    validated >> sessions >> samples >> stop_spark(server)
    samples >> publish_samples(day)


behavior_etl()
