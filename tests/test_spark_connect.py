"""One long-lived Spark application for every Spark task: a real Spark Connect server on loopback
(scripts/spark_connect.py) and the step runner's client path (dags/runner.py ``spark_remote``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from common.arrow_io import read_partition
from common.config import load_config
from common.paths import is_published, partition_path
from dags import runner
from jobs import build_samples, sessionize, validate
from scripts import spark_cluster, spark_connect
from sources.synthetic import generate

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DS = "2026-11-01"
TABLES = {"clean": ("behavior_events", "hintq_exposures", "items", "users"), "quarantine": ("behavior_events",),
          "sessions": ("behavior_sessions", "day_sessions", "hintq_sessions"),
          "samples": ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples", "item_corpus")}


def _rows(root, area, table):
    return sorted(repr(sorted(r.items())) for r in read_partition(root, area, table, DS).to_pylist())


def test_remote_comes_from_the_profile_when_no_connection_is_defined():
    assert runner.spark_remote({"spark": {"remote": "sc://10.0.0.5:15002"}}) == "sc://10.0.0.5:15002"
    assert runner.spark_remote({"spark": {"remote": ""}}) is None
    assert runner.spark_remote({}) is None


def test_the_jobs_run_in_one_connect_application_with_the_same_outputs(spark, tmp_path, monkeypatch):
    """The three jobs of a day as clients of one server give the rows the in-process jobs give,
    and the work ran in the server's application (its name), not in a JVM of the task."""
    generate(tmp_path / "local", DS, 1, n_users=20, n_items=60, events_per_user_day=8.0, seed=3, bad_row_rate=0.03)
    generate(tmp_path / "remote", DS, 1, n_users=20, n_items=60, events_per_user_day=8.0, seed=3, bad_row_rate=0.03)
    cfg = load_config(environ={})
    cfg["data_root"] = str(tmp_path / "local")
    for job in (validate, sessionize, build_samples):
        job.run(spark, cfg, DS)

    port = spark_cluster.free_port()
    state_dir = tmp_path / "connect"
    state, started = spark_connect.start(load_config(environ={}), state_dir, port)
    try:
        assert started and state["url"] == f"sc://127.0.0.1:{port}"
        assert spark_connect.start(load_config(environ={}), state_dir, port)[1] is False  # idempotent
        monkeypatch.setenv("PIPELINE__SPARK__REMOTE", state["url"])
        results = {job: runner.spark_step(job, DS, {"data_root": str(tmp_path / "remote")})
                   for job in ("validate", "sessionize", "build_samples")}
    finally:
        pids = spark_connect.stop(state_dir)
    assert pids and not any(spark_cluster.group_members(g) for g in pids)  # the server's JVM is gone
    assert spark_connect.read_state(state_dir) is None  # and its state with it (the port itself may be
    # taken at once by another server of a test running beside this one: a free port is anyone's)

    prefix = load_config(environ={})["spark"]["app_name_prefix"]
    for job, result in results.items():
        assert result["spark_conf"]["spark.app.name"] == f"{prefix}-connect", job
        assert result["dates"] == [DS]
    assert results["validate"]["results"][DS]["behavior_events"]["rows_quarantined"] > 0
    for area, tables in TABLES.items():
        for table in tables:
            assert is_published(partition_path(tmp_path / "remote", area, table, DS)), (area, table)
            assert _rows(tmp_path / "remote", area, table) == _rows(tmp_path / "local", area, table), (area, table)


def test_a_server_that_cannot_start_names_its_log(tmp_path):
    cfg = load_config(environ={})
    cfg["spark"]["driver_memory"] = "not-a-size"
    with pytest.raises(spark_cluster.ClusterError, match=r"connect\.out"):
        spark_connect.start(cfg, tmp_path / "connect", spark_cluster.free_port(), timeout=120)
    assert spark_connect.read_state(tmp_path / "connect") is None


def test_the_application_scope_is_checked_and_a_long_lived_server_wins():
    assert runner.run_server_wanted({"spark": {}}) is True  # the default: one server per DAG run
    assert runner.run_server_wanted({"spark": {"application": "task"}}) is False
    assert runner.run_server_wanted({"spark": {"application": "run", "remote": "sc://10.0.0.5:15002"}}) is False
    with pytest.raises(AirflowFailException, match="spark.application is 'dag'"):
        runner.run_server_wanted({"spark": {"application": "dag"}})


def test_a_run_server_serves_the_runs_tasks_then_stops_and_a_task_after_it_runs_alone(tmp_path, monkeypatch):
    """behavior_etl's setup task starts a server on a free port, the Spark tasks run in its one
    application, the teardown stops its process group and removes its state; a task whose server
    is gone (a retry after a crash) runs its own spark-submit application with the same result."""
    monkeypatch.delenv("PIPELINE__SPARK__REMOTE", raising=False)
    generate(tmp_path / "data", DS, 1, n_users=20, n_items=60, events_per_user_day=8.0, seed=3, bad_row_rate=0.03)
    params = {"data_root": str(tmp_path / "data")}
    server = runner.start_run_server(params)
    state = spark_connect.read_state(Path(server["state_dir"]))
    try:
        assert server["url"].startswith("sc://127.0.0.1:") and runner.server_ready(server)
        first = {job: runner.spark_step(job, DS, params, server) for job in ("validate", "sessionize")}
    finally:
        runner.stop_run_server(server, params)
    assert not any(spark_cluster.group_members(pid) for pid in state["pids"].values())
    assert not runner._accepts(server["url"])
    assert not os.path.exists(server["state_dir"])
    alone = runner.spark_step("build_samples", DS, params, server)

    prefix = load_config(environ={})["spark"]["app_name_prefix"]
    assert {r["spark_conf"]["spark.app.name"] for r in first.values()} == {f"{prefix}-connect"}
    assert alone["spark_conf"]["spark.app.name"] == f"{prefix}-build_samples"
    for table in TABLES["samples"]:
        assert is_published(partition_path(tmp_path / "data", "samples", table, DS)), table
