"""DAG files: import, tags/retries, structure, and real dag.test() runs of behavior_etl."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common import schemas
from common.arrow_io import read_partition
from common.paths import is_published, partition_path

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors_and_declare_tags_and_retries(dagbag):
    assert dagbag.import_errors == {}
    assert "behavior_etl" in dagbag.dag_ids
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            if task.trigger_rule == "one_failed":  # a watcher: it exists to fail the run, once
                assert task.retries == 0, f"{dag_id}.{task.task_id} would retry a deliberate failure"
                continue
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_behavior_etl_structure(dagbag):
    dag = dagbag.get_dag("behavior_etl")
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "resolve_ds": ["build_samples", "publish_samples", "sessionize", "validate"],
        "start_spark": ["build_samples", "sessionize", "stop_spark", "validate"],
        "validate": ["sessionize"],
        "sessionize": ["build_samples"],
        "build_samples": ["publish_samples", "stop_spark"],
        "publish_samples": [],
        "stop_spark": [],
    }
    assert dag.get_task("start_spark").is_setup and dag.get_task("stop_spark").is_teardown
    outlets = {a.name for a in dag.get_task("publish_samples").outlets}
    assert outlets == {f"samples.{t}" for t in schemas.SAMPLE_TABLES}
    assert set(dag.params.keys()) == {"config", "profile", "data_root", "ds", "through"}


def test_every_task_has_a_timeout_and_the_failure_alert(dagbag):
    from dags.ops import record_failure

    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"
            assert task.execution_timeout <= dt.timedelta(hours=8), f"{dag_id}.{task.task_id}"
            callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) \
                else [task.on_failure_callback]
            assert record_failure in callbacks, f"{dag_id}.{task.task_id} records no alert"


def test_the_scheduled_etl_run_after_midnight_builds_the_day_that_ended(dagbag):
    """Data-interval timetable: the run the scheduler starts at 00:00 of D+1 has logical date D,
    and resolve_ds turns that into D."""
    import pendulum
    from airflow.timetables.base import DataInterval, TimeRestriction

    from dags.runner import resolve_ds

    dag = dagbag.get_dag("behavior_etl")
    previous = DataInterval(pendulum.datetime(2026, 12, 2, tz="UTC"), pendulum.datetime(2026, 12, 3, tz="UTC"))
    info = dag.timetable.next_dagrun_info(last_automated_data_interval=previous,
                                          restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    assert info.run_after == pendulum.datetime(2026, 12, 4, tz="UTC")  # started at 00:00 of D+1 ...
    assert info.logical_date == pendulum.datetime(2026, 12, 3, tz="UTC")
    assert resolve_ds({}, info.logical_date) == "2026-12-03"  # ... it builds D
    assert resolve_ds({"ds": "2026-11-05"}, info.logical_date) == "2026-11-05"  # the Param wins (reruns)


def test_downstream_dags_take_their_date_from_the_triggering_asset_events(dagbag):
    from airflow.sdk.exceptions import AirflowFailException

    from dags.runner import resolve_ds

    class Event:
        def __init__(self, ds):
            self.extra = {"ds": ds, "path": f"/x/ds={ds}"}

    assert resolve_ds({}, None, {"samples.karma_samples": [Event("2026-11-02")]}) == "2026-11-02"
    with pytest.raises(AirflowFailException, match="no date to process"):
        resolve_ds({}, None, {})
    def assets(dag_id):
        condition = dagbag.get_dag(dag_id).timetable.asset_condition
        return {a.name for a in getattr(condition, "objects", [condition])}

    schedules = {d: assets(d) for d in ("karma_training", "aigq_training", "nightly_export")}
    assert schedules == {
        "karma_training": {"samples.karma_samples", "samples.item_corpus"},
        "aigq_training": {"samples.aigq_direct_sft", "samples.aigq_think_sft", "samples.ctr_samples"},
        "nightly_export": {"models.ready"},
    }


def test_dag_files_do_not_import_heavy_libraries_at_parse_time():
    import subprocess
    import sys

    # One interpreter parses the files in turn (an interpreter per file costs an Airflow import each):
    # modules only accumulate, so the first file after which a heavy library is loaded is the culprit.
    code = (
        "import os, sys, runpy\n"
        "for path in sys.argv[1:]:\n"
        "    runpy.run_path(path)\n"
        "    bad = [m for m in ('torch', 'transformers', 'pyspark') if m in sys.modules]\n"
        "    if bad:\n"
        "        print(os.path.basename(path), 'imports', ','.join(bad)); sys.exit(1)\n"
        "print(len(sys.argv) - 1)\n"
    )
    paths = sorted(str(p) for p in DAGS.glob("*.py"))
    proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout.strip()} at parse time: {proc.stderr[-500:]}"
    assert proc.stdout.split() == [str(len(paths))]  # every file parsed


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory):
    from sources.synthetic import generate

    root = tmp_path_factory.mktemp("etl") / "data"
    generate(root, "2026-11-01", 2, n_users=40, n_items=300, events_per_user_day=12.0, seed=3)
    return root


@pytest.mark.slow
def test_dag_test_of_behavior_etl_writes_every_partition(dagbag, generated_root):
    dag = dagbag.get_dag("behavior_etl")
    run = dag.test(logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), run_conf={"data_root": str(generated_root)})
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state
    ds = "2026-11-01"
    expected = {"clean": schemas.RAW_TABLES, "quarantine": schemas.RAW_TABLES,
                "sessions": schemas.SESSION_TABLES, "samples": schemas.SAMPLE_TABLES}
    for area, tables in expected.items():
        for table in tables:
            assert is_published(partition_path(generated_root, area, table, ds)), (area, table)
    raw_events = read_partition(generated_root, "raw", "behavior_events", ds).num_rows
    clean_events = read_partition(generated_root, "clean", "behavior_events", ds).num_rows
    quarantined = read_partition(generated_root, "quarantine", "behavior_events", ds).num_rows
    assert raw_events == clean_events + quarantined
    assert clean_events > 0
    for table in ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples"):
        assert read_partition(generated_root, "samples", table, ds).num_rows > 0, table
    corpus = read_partition(generated_root, "samples", "item_corpus", ds)
    assert corpus.num_rows == 300
    assert corpus.schema.names == schemas.ITEM_CORPUS.names


@pytest.mark.slow
def test_dag_test_with_a_bad_input_file_fails_and_publishes_nothing(dagbag, generated_root):
    ds = "2026-11-02"
    part = partition_path(generated_root, "raw", "behavior_events", ds)
    (path,) = [p for p in part.glob("*.parquet")]
    pq.write_table(pq.read_table(path).drop_columns(["event_type"]), path)
    dag = dagbag.get_dag("behavior_etl")
    run = dag.test(logical_date=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), run_conf={"data_root": str(generated_root)})
    assert "failed" in str(run.state).lower()
    validate_ti = run.get_task_instance("validate")
    assert "failed" in str(validate_ti.state).lower()
    assert validate_ti.try_number == 1  # no retry on bad data
    alerts = [json.loads(line) for line in (generated_root / "alerts" / "alerts.jsonl").read_text().splitlines()]
    (alert,) = [a for a in alerts if a["ds"] == ds]
    assert (alert["kind"], alert["dag_id"], alert["task_id"]) == ("task_failed", "behavior_etl", "validate")
    assert "bad input" in alert["reason"]
    assert alert["log_path"].endswith("attempt=1.log")
    for area in ("clean", "quarantine", "sessions", "samples"):
        area_root = generated_root / area
        leftovers = [p for p in area_root.rglob(f"ds={ds}")] + [p for p in area_root.rglob(f".tmp-ds={ds}-*")]
        assert leftovers == [], leftovers
