"""Spark task factory shared by the DAGs (wiring only; the jobs live in ``jobs/``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowFailException

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Exit status the jobs use for bad input data (jobs.spark.CONTRACT_ERROR_EXIT; not imported so
#: that parsing this DAG stays free of the jobs' imports): retrying cannot help.
CONTRACT_ERROR_EXIT = 2

JOB_ARGS = [
    "--ds", "{{ ds }}",
    "--config", "{{ params.config or '' }}",
    "--profile", "{{ params.profile or '' }}",
    "--data-root", "{{ params.data_root or '' }}",
]


class PipelineSparkSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` that does not retry a job rejecting its input data."""

    def execute(self, context):
        try:
            return super().execute(context)
        except Exception as exc:
            if f"Error code is: {CONTRACT_ERROR_EXIT}." in str(exc):
                raise AirflowFailException(f"input data rejected (no retry): {exc}") from exc
            raise


def spark_job(task_id: str, module: str, **kwargs) -> PipelineSparkSubmitOperator:
    """A task that spark-submits ``jobs/<module>.py`` for the run's ds on ``spark_default``."""
    python = sys.executable
    bin_dir = str(Path(python).parent)
    return PipelineSparkSubmitOperator(
        task_id=task_id,
        application=str(REPO_ROOT / "jobs" / f"{module}.py"),
        application_args=JOB_ARGS,
        conn_id="spark_default",
        name=f"taobao-gs-{module}",
        env_vars={
            "SPARK_SUBMITTED": "1",
            "PYSPARK_PYTHON": python,
            "PYSPARK_DRIVER_PYTHON": python,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO_ROOT),
        },
        spark_binary="spark-submit",
        conf={"spark.sql.session.timeZone": "UTC"},
        **kwargs,
    )
