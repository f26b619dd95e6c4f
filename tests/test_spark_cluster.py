"""Cluster mode on a real standalone Spark cluster on loopback (scripts/spark_cluster.py).

One master and two 1-core workers are started from the installed pyspark; ``behavior_etl`` runs
for one date with ``spark_default`` pointed at the master and the ``cluster`` profile, and the
same three jobs run in local mode (the tests' Spark session) into another data root: every
published partition must hold the same rows. The fixture always stops the cluster and checks by process id that nothing is left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import schemas
from common.arrow_io import read_partition
from common.config import load_config
from common.paths import is_published, partition_path
from jobs import build_samples, sessionize, validate
from scripts import spark_cluster
from sources.synthetic import generate

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "spark_cluster.py"
DAGS = REPO / "dags"
DS = "2026-11-01"
AREAS = {
    "clean": schemas.RAW_TABLES,
    "quarantine": schemas.RAW_TABLES,
    "sessions": schemas.SESSION_TABLES,
    "samples": schemas.SAMPLE_TABLES,
}


def _cli(command: str, state_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), command, "--state-dir", str(state_dir), *extra],
        capture_output=True, text=True, timeout=240,
    )


def _leftovers(state_dir: Path, pgids: list[int]) -> list[int]:
    """Live processes of the cluster's process groups, or working under its state dir (executors)."""
    left = {p for g in pgids for p in spark_cluster.group_members(g)}
    left |= {p for p in pgids if spark_cluster.pid_alive(p)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(state_dir)) and spark_cluster.pid_alive(int(entry.name)):
            left.add(int(entry.name))
    return sorted(left)


@pytest.fixture()
def cluster(tmp_path):
    """A started cluster (free ports, state in tmp_path); stopped and checked afterwards."""
    state_dir = tmp_path / "spark-cluster"
    proc = _cli("start", state_dir, "--port", "0", "--webui-port", "0", "--worker-webui-port", "0",
                "--timeout", "180")
    state = spark_cluster.read_state(state_dir)
    pgids = list(state["pids"].values()) if state else []
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "started" in proc.stdout
        yield state
    finally:
        stopped = _cli("stop", state_dir)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert _leftovers(state_dir, pgids) == []
        assert spark_cluster.read_state(state_dir) is None


@pytest.fixture()
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def _rows(root: Path, area: str, table: str) -> list:
    rows = read_partition(root, area, table, DS).to_pylist()
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


def _run_etl(dag, root: Path, profile: str):
    run = dag.test(logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                   run_conf={"data_root": str(root), "profile": profile})
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), (profile, run.state)


def test_behavior_etl_on_a_standalone_cluster_matches_local_mode(cluster, dagbag, spark, tmp_path, monkeypatch):

    raw = tmp_path / "gen"
    generate(raw, DS, 1, n_users=40, n_items=300, events_per_user_day=12.0, seed=3)
    roots = {"local": tmp_path / "local", "cluster": tmp_path / "cluster"}
    for root in roots.values():
        shutil.copytree(raw / "raw", root / "raw")
    dag = dagbag.get_dag("behavior_etl")

    # the reference: the same three jobs in local mode (the tests' warm session; behavior_etl's own
    # local-mode run is tests/test_dags.py's); then the DAG on the cluster, by configuration only:
    # profile + the spark_default connection
    local_cfg = load_config(environ={})
    local_cfg["data_root"] = str(roots["local"])
    for job in (validate, sessionize, build_samples):
        job.run(spark, local_cfg, DS)
    host, port = cluster["master_url"].rsplit(":", 1)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT",
                       json.dumps({"conn_type": "spark", "host": host, "port": int(port)}))
    monkeypatch.setenv("PIPELINE__SPARK__MASTER", cluster["master_url"])
    _run_etl(dag, roots["cluster"], "cluster")

    # it ran on the cluster: the run's one application (its Spark Connect server, started by the
    # setup task with the connection's master, stopped by the teardown), executors on the workers
    info = spark_cluster.master_json(cluster)
    done = {a["name"]: a["state"] for a in info["completedapps"]}
    assert done == {"taobao-gs-connect": "FINISHED"}
    assert spark_cluster.alive_workers(info) == 2
    app_dirs = sorted(Path(cluster["worker_dir"]).glob("app-*"))
    assert len(app_dirs) == 1, app_dirs
    for app in app_dirs:  # executors on the workers ran the tasks
        logs = [f.read_text(errors="replace") for f in app.glob("*/stderr")]
        assert logs, app
        assert sum(log.count("Running task") for log in logs) > 0, app

    # the same content, partition by partition
    for area, tables in AREAS.items():
        for table in tables:
            paths = [partition_path(root, area, table, DS) for root in roots.values()]
            assert all(is_published(p) for p in paths), (area, table)
            local, remote = (_rows(root, area, table) for root in roots.values())
            assert local == remote, (area, table, len(local), len(remote))
    assert _rows(roots["cluster"], "samples", "karma_samples")

    # the helper is idempotent, and stop leaves nothing running
    state_dir = Path(cluster["state_dir"])
    again = _cli("start", state_dir, "--port", "0", "--webui-port", "0", "--worker-webui-port", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout, again.stdout + again.stderr
    status = _cli("status", state_dir)
    assert status.returncode == 0
    assert json.loads(status.stdout)["alive_workers"] == 2
    pgids = list(cluster["pids"].values())
    assert _cli("stop", state_dir).returncode == 0
    assert _leftovers(state_dir, pgids) == []
    assert _cli("status", state_dir).returncode == spark_cluster.NOT_RUNNING_EXIT
    second = _cli("stop", state_dir)
    assert second.returncode == 0
    assert "not running" in second.stdout


def test_start_that_times_out_names_the_problem_and_leaves_nothing_running(tmp_path):
    state_dir = tmp_path / "spark-cluster"
    proc = _cli("start", state_dir, "--port", "0", "--webui-port", "0", "--worker-webui-port", "0",
                "--timeout", "0")
    assert proc.returncode == 1
    assert "timed out" in proc.stderr
    assert "of 2 workers alive" in proc.stderr
    assert spark_cluster.read_state(state_dir) is None
    assert _leftovers(state_dir, []) == []


def test_start_on_a_taken_port_refuses_before_launching_anything(tmp_path):
    import socket

    state_dir = tmp_path / "spark-cluster"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        proc = _cli("start", state_dir, "--port", str(taken), "--webui-port", "0", "--worker-webui-port", "0")
    assert proc.returncode == 1
    assert f"[{taken}]" in proc.stderr
    assert "already in use" in proc.stderr
    assert spark_cluster.read_state(state_dir) is None
