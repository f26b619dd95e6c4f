"""Shared fixtures: environment hygiene, one session-scoped Spark, tiny raw-data builders."""

from __future__ import annotations

import logging
import os
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
def etl_two_days(spark, tmp_path_factory):
    """Two days (2026-11-01, 2026-11-02) of synthetic logs (40 users, 200 items, seed 3) through
    validate, sessionize and build_samples, built once per session. Read-only: a test that writes
    (models, exports) works on its own copy, ``shutil.copytree(etl_two_days, tmp_path / "data")`` (the
    root holds no absolute paths)."""
    from common.config import load_config
    from jobs import build_samples, sessionize, validate
    from sources.synthetic import generate

    root = tmp_path_factory.mktemp("etl_two_days") / "data"
    generate(root, "2026-11-01", 2, n_users=40, n_items=200, events_per_user_day=12.0, seed=3)
    config = load_config(environ={})
    config["data_root"] = str(root)
    for ds in ("2026-11-01", "2026-11-02"):
        for job in (validate, sessionize, build_samples):
            job.run(spark, config, ds)
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
