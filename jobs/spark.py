"""The one SparkSession builder and the small I/O helpers every job shares."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from common import schemas
from common.arrow_io import parquet_row_count
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import check_ds, is_published, latest_published_ds, partition_path
from common.publish import staged_partitions
from common.steps import write_result

logger = logging.getLogger(__name__)

#: Exit status of a job that rejects its input data (Airflow fails such a task without retrying).
CONTRACT_ERROR_EXIT = 2


class InputContractError(RuntimeError):
    """A raw partition cannot be read against the contract (file-level problem)."""


def build_spark(cfg: dict, app_name: str):
    """A SparkSession configured from ``cfg['spark']``.

    Under ``spark-submit`` the master and app name come from the command line and
    ``getOrCreate`` returns that session; the settings below only fill in what is unset.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    scfg = cfg.get("spark", {})
    builder = SparkSession.builder.appName(f"{scfg.get('app_name_prefix', 'pipeline')}-{app_name}")
    if not os.environ.get("SPARK_SUBMITTED"):
        builder = builder.master(scfg.get("master", "local[2]"))
        builder = builder.config("spark.driver.memory", scfg.get("driver_memory", "2g"))
    for key, value in (scfg.get("conf") or {}).items():
        builder = builder.config(key, str(value))
    builder = builder.config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def job_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (the partition to build)")
    parser.add_argument(
        "--through",
        default=None,
        help="backfill: build every date from --ds through this one (inclusive), in order, in one "
        "Spark session; stops at the first failing date (earlier dates stay published)",
    )
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None, help="config profile (default: PIPELINE_PROFILE or local)")
    parser.add_argument("--data-root", default=None, help="override the profile's data_root")
    return parser


def run_job(name: str, run, argv: list[str] | None, description: str) -> int:
    """The shared ``main``: parse ``--ds [--through]/--config/--profile/--data-root``, run each
    date, print one JSON line per date."""
    setup_logging()
    parser = job_arg_parser(description)
    args = parser.parse_args(argv)
    first = dt.date.fromisoformat(check_ds(args.ds))
    last = dt.date.fromisoformat(check_ds(args.through)) if args.through else first
    if last < first:
        parser.error(f"--through {args.through} is before --ds {args.ds}")
    dates = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    cfg = load_config(args.config or None, args.profile or None)
    if args.data_root:
        cfg["data_root"] = str(Path(args.data_root).resolve())
    spark = build_spark(cfg, name)
    results = {}
    try:
        for ds in dates:
            try:
                result = run(spark, cfg, ds)
            except InputContractError as exc:
                logger.error("%s ds=%s rejected its input: %s", name, ds, exc)
                print(f"ERROR: {exc}", file=sys.stderr)
                return CONTRACT_ERROR_EXIT
            print(json.dumps({"ds": ds, name: result}, sort_keys=True), flush=True)
            results[ds] = result
        write_result({"job": name, "dates": dates, "results": results, "spark_conf": spark_settings(spark)})
    finally:
        spark.stop()
    return 0


#: Spark settings a job reports in its result, so an operator (and a test) can see what the
#: running application got from the profile and spark-submit.
REPORTED_SPARK_SETTINGS = ("spark.master", "spark.app.name", "spark.driver.memory", "spark.driver.cores",
                           "spark.executor.memory", "spark.executor.cores", "spark.cores.max",
                           "spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled",
                           "spark.sql.session.timeZone")


def spark_settings(spark) -> dict[str, str]:
    """The :data:`REPORTED_SPARK_SETTINGS` of the running application (those that are set)."""
    conf = spark.sparkContext.getConf()
    return {key: conf.get(key) for key in REPORTED_SPARK_SETTINGS if conf.contains(key)}


def read_partition(spark, root: str | Path, area: str, table: str, ds: str, schema_name: str | None = None):
    """Read one published partition with the contract schema; an empty frame if absent."""
    schema = schemas.spark_schema(schema_name or table)
    path = partition_path(root, area, table, ds)
    if not is_published(path):
        logger.info("%s not published: reading it as empty", path)
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(str(path))


def read_published_range(spark, root, area: str, table: str, ds_list: list[str], schema_name: str | None = None):
    """Union of the published partitions among ``ds_list`` (missing days are skipped)."""
    schema = schemas.spark_schema(schema_name or table)
    paths = [str(partition_path(root, area, table, d)) for d in ds_list]
    paths = [p for p in paths if is_published(p)]
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*paths)


def read_snapshot(spark, root, area: str, table: str, ds: str):
    """The newest published snapshot partition at or before ``ds``."""
    snap_ds = latest_published_ds(root, area, table, ds)
    if snap_ds is None:
        return spark.createDataFrame([], schemas.spark_schema(table)), None
    return read_partition(spark, root, area, table, snap_ds), snap_ds


def publish_tables(root, area: str, ds: str, outputs: dict, manifest_extra: dict | None = None) -> dict[str, int]:
    """Cast each DataFrame of ``outputs`` ({table: df}) to its contract schema, stage it as
    ``<area>/<table>/ds=<ds>`` and publish them all together; returns rows per table."""
    counts: dict[str, int] = {}
    with staged_partitions() as batch:
        for table, df in outputs.items():
            schema = schemas.spark_schema(table)
            df = df.select(*[df[f.name].cast(f.dataType) for f in schema])
            manifest = {"table": table, "ds": ds, **(manifest_extra or {})}
            tmp = batch.stage(partition_path(root, area, table, ds), manifest)
            df.write.mode("overwrite").parquet(str(tmp))
            manifest["rows"] = counts[table] = parquet_row_count(tmp)
            logger.info("%s ds=%s: %d rows", table, ds, counts[table])
    return counts


def write_parquet(df, path: str | Path) -> None:
    df.write.mode("overwrite").parquet(str(path))


def load_sql(name: str) -> str:
    return (Path(__file__).resolve().parent.parent / "sql" / f"{name}.sql").read_text()
