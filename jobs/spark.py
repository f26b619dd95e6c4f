"""The one SparkSession builder and the small I/O helpers every job shares."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StringType

from common import schemas
from common.arrow_io import data_files, parquet_row_count
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import check_ds, is_published, partition_path, table_path
from common.publish import staged_partitions
from common.steps import write_result

logger = logging.getLogger(__name__)

#: Parquet key-value metadata in which Spark keeps a file's schema (read back as the same types).
SPARK_ROW_METADATA = "org.apache.spark.sql.parquet.row.metadata"

#: Exit status of a job that rejects its input data (Airflow fails such a task without retrying).
CONTRACT_ERROR_EXIT = 2


class InputContractError(RuntimeError):
    """A raw partition cannot be read against the contract (file-level problem)."""


def build_spark(cfg: dict, app_name: str):
    """A SparkSession configured from ``cfg['spark']``.

    Under ``spark-submit`` the master and app name come from the command line and
    ``getOrCreate`` returns that session; the settings below only fill in what is unset. With
    ``SPARK_REMOTE`` (or ``spark.remote``) set it is a Spark Connect session (:func:`connect_session`).
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    scfg = cfg.get("spark", {})
    remote = os.environ.get("SPARK_REMOTE") or scfg.get("remote")
    if remote:
        return connect_session(remote, scfg)
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


#: Settings a Spark Connect client may set on its session (the server's application owns the rest).
SESSION_SETTING_PREFIXES = ("spark.sql.", "spark.hadoop.")


def connect_session(remote: str, scfg: dict):
    """A session of the Spark Connect server at ``remote`` (``sc://host:port``), with the profile's
    session-level settings (``spark.sql.*``, ``spark.hadoop.*``); the server was started with the rest."""
    builder = SparkSession.builder.remote(remote)
    conf = {"spark.sql.session.timeZone": "UTC", **{str(k): str(v) for k, v in (scfg.get("conf") or {}).items()},
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false"}
    for key, value in conf.items():
        if key.startswith(SESSION_SETTING_PREFIXES):
            builder = builder.config(key, value)
    return builder.getOrCreate()


def job_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (the partition to build)")
    parser.add_argument(
        "--through",
        default=None,
        help="build every date from --ds through this one (inclusive) in one pass over the range; "
        "every day is published together at the end, or none when any day fails",
    )
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None, help="config profile (default: PIPELINE_PROFILE or local)")
    parser.add_argument("--data-root", default=None, help="override the profile's data_root")
    return parser


def date_range(first: str, last: str) -> list[str]:
    """Every date from ``first`` through ``last`` (inclusive), oldest first."""
    start, end = dt.date.fromisoformat(check_ds(first)), dt.date.fromisoformat(check_ds(last))
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def run_job(name: str, run_range, argv: list[str] | None, description: str) -> int:
    """The shared ``main``: parse ``--ds [--through]/--config/--profile/--data-root``, run the
    range in one call of ``run_range(spark, cfg, dates)`` (``{ds: result}``), print one JSON line
    per date."""
    setup_logging()
    parser = job_arg_parser(description)
    args = parser.parse_args(argv)
    check_ds(args.ds)
    if args.through and check_ds(args.through) < args.ds:
        parser.error(f"--through {args.through} is before --ds {args.ds}")
    dates = date_range(args.ds, args.through or args.ds)
    cfg = load_config(args.config or None, args.profile or None)
    if args.data_root:
        cfg["data_root"] = str(Path(args.data_root).resolve())
    spark = build_spark(cfg, name)
    try:
        try:
            results = run_range(spark, cfg, dates)
        except InputContractError as exc:
            logger.error("%s %s..%s rejected its input: %s", name, dates[0], dates[-1], exc)
            print(f"ERROR: {exc}", file=sys.stderr)
            return CONTRACT_ERROR_EXIT
        for ds in dates:
            print(json.dumps({"ds": ds, name: results[ds]}, sort_keys=True), flush=True)
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
    conf = spark.conf
    values = {key: conf.get(key, None) for key in REPORTED_SPARK_SETTINGS}
    return {key: value for key, value in values.items() if value is not None}


def read_partition(spark, root: str | Path, area: str, table: str, ds: str, schema_name: str | None = None):
    """Read one published partition with the contract schema; an empty frame if absent."""
    schema = schemas.spark_schema(schema_name or table)
    path = partition_path(root, area, table, ds)
    if not is_published(path):
        logger.info("%s not published: reading it as empty", path)
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(str(path))


def read_days(spark, root, area: str, table: str, ds_list, schema_name: str | None = None):
    """The published partitions among ``ds_list`` in one read, with the date as a ``ds`` column
    (string); unpublished days are skipped (read as empty)."""
    schema = schemas.spark_schema(schema_name or table).add("ds", StringType())
    paths = [str(partition_path(root, area, table, d)) for d in ds_list]
    paths = [p for p in paths if is_published(p)]
    if not paths:
        return spark.createDataFrame([], schema)
    base = str(table_path(root, area, table))
    return spark.read.schema(schema).option("basePath", base).parquet(*paths)


def write_threads(cfg: dict) -> int:
    """``spark.write_threads``: how many independent table writes of one job run at once."""
    return max(1, int((cfg.get("spark") or {}).get("write_threads") or 1))


def run_concurrently(calls: list, threads: int) -> None:
    """Run ``calls`` (functions of no argument, each one Spark write) on up to ``threads`` threads
    of this driver; a small write is mostly planning, scheduling and commit latency, so several
    overlap on the same cores. Every call finishes before the first error is raised. ``threads``
    1 runs them in order (large data: one write at a time gets the whole cluster)."""
    if threads <= 1 or len(calls) <= 1:
        for call in calls:
            call()
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def publish_range(root, area: str, dates: list[str], outputs: dict, manifest_extra=None,
                  copies: dict | None = None, batch=None, threads: int = 1) -> dict[str, dict[str, int]]:
    """Publish every day of ``dates`` for every table together (all or nothing).

    ``outputs`` ({table: df}) carry a ``ds`` column: each is cast to its contract schema and
    written once with ``partitionBy("ds")`` to a hidden staging folder beside the table; a day
    without rows gets an empty file with the schema. ``copies`` ({table: df}) are the same for
    every day (no ``ds`` column): written once, then copied into each day. ``manifest_extra(ds)``
    adds keys to each day's manifest. With ``batch`` (a ``PartitionBatch``) the days are only
    staged there, for the caller to publish with more. The tables' writes run on up to
    ``threads`` threads (:func:`run_concurrently`). Returns ``{ds: {table: rows}}``.
    """
    if batch is None:
        with staged_partitions() as own:
            return publish_range(root, area, dates, outputs, manifest_extra, copies, own, threads)
    tables = {**outputs, **(copies or {})}
    spark = next(iter(tables.values())).sparkSession
    counts: dict[str, dict[str, int]] = {ds: {} for ds in dates}
    stages = {table: table_path(root, area, table) / f".stage-{uuid.uuid4().hex[:12]}" for table in tables}
    try:
        for stage in stages.values():
            stage.parent.mkdir(parents=True, exist_ok=True)
        run_concurrently([functools.partial(write_staged, df, table, stages[table], per_day=table in outputs,
                                            days=len(dates)) for table, df in tables.items()], threads)
        for table, stage in stages.items():
            empty = None
            for ds in dates:
                src = stage / f"ds={ds}" if table in outputs else stage
                if table in outputs and not src.is_dir():
                    empty = empty or _empty_files(spark, table, stage / "_empty")
                    src = empty
                manifest = {"table": table, "ds": ds, **(manifest_extra(ds) if manifest_extra else {})}
                tmp = batch.stage(partition_path(root, area, table, ds), manifest)
                move = table in outputs and src != empty
                for f in data_files(src):
                    (os.rename if move else shutil.copyfile)(f, tmp / f.name)
                manifest["rows"] = counts[ds][table] = parquet_row_count(tmp)
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)
    for ds in dates:
        logger.info("%s ds=%s: %s", area, ds, counts[ds])
    return counts


def write_staged(df, table: str, path: Path, per_day: bool, days: int) -> None:
    """Cast ``df`` to the contract schema of ``table`` and write it to ``path``, by ``ds`` when
    ``per_day`` (one file per day when the range has several: the days are written in parallel)."""
    schema = schemas.spark_schema(table)
    cols = [df[f.name].cast(f.dataType) for f in schema]
    if not per_day:
        df.select(*cols).write.mode("overwrite").parquet(str(path))
        return
    out = df.select(*cols, df["ds"].cast("string").alias("ds"))
    if days > 1:
        out = out.repartition("ds")
    out.write.mode("overwrite").partitionBy("ds").parquet(str(path))


def _empty_files(spark, table: str, path: Path) -> Path:
    """A folder with one empty Parquet file carrying the contract schema of ``table``."""
    return empty_parquet(path, schemas.spark_schema(table))


def empty_parquet(path: Path, schema) -> Path:
    """A folder with one Parquet file of no rows whose schema is what Spark writes for the
    ``StructType`` ``schema`` (same Arrow schema and Spark row metadata), written by Arrow: a day
    without rows costs no Spark job."""
    arrow = to_arrow_schema(schema, timezone="UTC").with_metadata({SPARK_ROW_METADATA: schema.json()})
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow.empty_table(), path / "part-00000-empty.parquet")
    return path


def write_parquet(df, path: str | Path) -> None:
    df.write.mode("overwrite").parquet(str(path))


def load_sql(name: str) -> str:
    return (Path(__file__).resolve().parent.parent / "sql" / f"{name}.sql").read_text()
