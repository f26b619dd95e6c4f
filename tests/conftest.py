"""Shared fixtures: environment hygiene, one session-scoped Spark, tiny raw-data builders."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("SHARED_DATASETS", REPO.parent / "shared" / "datasets"))

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
logging.getLogger("py4j").setLevel(logging.WARNING)

# Airflow reads its settings at import: give the test session its own home and SQLite DB.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-tests-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__PARALLELISM"] = "4"
os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[2]"}')
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def etl_two_days(request, tmp_path_factory):
    """Two days (2026-11-01, 2026-11-02) of synthetic logs (40 users, 200 items, seed 3) through
    validate, sessionize and build_samples, built once per test session (once for all xdist
    workers: the first builds under a file lock, the others wait and reuse it). Read-only: a test
    that writes (models, exports) works on its own copy, ``shutil.copytree(etl_two_days, tmp_path /
    "data")`` (the root holds no absolute paths)."""
    from filelock import FileLock

    from common.config import load_config
    from jobs import build_samples, sessionize, validate
    from sources.synthetic import generate

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "etl_two_days" / "data"
    done = shared / "etl_two_days" / "_BUILT"
    with FileLock(str(shared / "etl_two_days.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way left a partial build
            spark = request.getfixturevalue("spark")
            generate(root, "2026-11-01", 2, n_users=40, n_items=200, events_per_user_day=12.0, seed=3)
            config = load_config(environ={})
            config["data_root"] = str(root)
            for ds in ("2026-11-01", "2026-11-02"):
                for job in (validate, sessionize, build_samples):
                    job.run(spark, config, ds)
            done.touch()
    return root


@pytest.fixture()
def cfg(tmp_path):
    """The local profile pointed at a fresh data root."""
    from common.config import load_config

    config = load_config(environ={})
    config["data_root"] = str(tmp_path / "data")
    return config


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the test session's SQLite metadata DB once."""
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, timeout=300)
    return _AIRFLOW_HOME


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models run faster on one thread, especially on a busy 2-core machine (and one per
    xdist worker). Modules use it with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The longest files (fresh-clone figures of 2026-12-04 under ``-n 2``: the scheduler test 442 s,
#: the cluster test 292 s), started first so that they never begin near the end.
LONGEST_FIRST = ("test_scheduler.py", "test_spark_cluster.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the other slow tests, so that under xdist (``make test`` runs
    ``-n auto --dist loadfile --no-loadscope-reorder``) no long file starts last and keeps one worker busy while the
    others idle. A stable sort: the order inside each group is kept."""

    def weight(item) -> int:
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name) - len(LONGEST_FIRST)
        marks = {m.name for m in item.iter_markers()}
        if {"slow", "airflow"} <= marks:
            return 0
        return 1 if "slow" in marks else 2

    items.sort(key=weight)
