"""validate: contract checks on the raw data of a range of days; bad rows go to quarantine with a reason.

Two layers:

1. **File preflight** (pyarrow, footers only): every Parquet file of the partition must be
   readable and carry every contract column with a compatible type. A truncated file, a
   missing column or a wrong type fails the whole job with a message naming the file and the
   column; nothing is published for the date.
2. **Row checks** (Spark): each row gets the first failing reason, in the order of
   ``*_REASONS`` below, or none. Exact duplicates beyond the first copy are quarantined as
   ``duplicate``. Clean rows go to ``clean/<table>/ds=…``, the others to
   ``quarantine/<table>/ds=…`` with a ``reason`` column, and ``rows in`` (the raw files'
   footers) ``= rows out + rows quarantined`` is checked per table and day before anything is
   published. Each event table is read once for the whole range (the day a ``ds`` column); a
   snapshot is validated once per source partition and copied into each day.

Event tables are read for ``ds``; snapshot tables (items, users) from their newest published
partition at or before ``ds`` and re-published as ``clean/<table>/ds=<ds>``. Only
``behavior_events`` is required: an event table a source does not deliver (``item_impressions``
of the public datasets, say) is published empty, and its readers take that as "none that day".
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from common import schemas
from common.arrow_io import data_files, parquet_row_count
from common.paths import is_published, latest_published_ds, partition_path, table_path
from common.publish import staged_partitions
from jobs.spark import InputContractError, empty_parquet, run_concurrently, run_job, write_threads

logger = logging.getLogger(__name__)

REQUIRED_TABLES = ("behavior_events",)


def preflight_partition(partition: str | Path, table: str) -> list[Path]:
    """Check every file of ``partition`` against the contract schema of ``table``.

    Returns the data files; raises ``InputContractError`` naming the file and column.
    """
    expected: pa.Schema = schemas.arrow_schema(table)
    files = data_files(partition)
    for path in files:
        try:
            actual = pq.read_schema(path)
            pq.ParquetFile(path).metadata  # noqa: B018 - forces the footer to be parsed
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputContractError(f"{table}: cannot read Parquet file {path}: {exc}") from exc
        for field in expected:
            idx = actual.get_field_index(field.name)
            if idx < 0:
                raise InputContractError(
                    f"{table}: file {path} is missing column '{field.name}' (expected {field.type})"
                )
            got = actual.field(idx).type
            if not schemas.type_matches(field.type, got):
                raise InputContractError(
                    f"{table}: file {path} column '{field.name}' has type {got}, expected {field.type}"
                )
    return files


# --- row checks -------------------------------------------------------------------------------


def _text_checks(columns: list[str], max_len: int):
    """(reason, condition) pairs for invalid UTF-8 and over-long text in ``columns``."""
    invalid = None
    too_long = None
    for name in columns:
        col = F.col(name)
        bad = col.isNotNull() & ~F.is_valid_utf8(col)
        long_ = col.isNotNull() & (F.length(col) > max_len)
        invalid = bad if invalid is None else invalid | bad
        too_long = long_ if too_long is None else too_long | long_
    return [("invalid_utf8", invalid), ("text_too_long", too_long)]


def _list_text_checks(column: str, max_len: int, max_items: int):
    col = F.col(column)
    invalid = F.exists(col, lambda q: q.isNotNull() & ~F.is_valid_utf8(q))
    too_long = F.exists(col, lambda q: F.length(q) > max_len) | (F.size(col) > max_items)
    return [("invalid_utf8", col.isNotNull() & invalid), ("text_too_long", col.isNotNull() & too_long)]


def _time_checks(ds: str | None):
    """``event_time`` inside the UTC day ``ds`` (the row's ``ds`` column when None)."""
    day_us = 86400 * 1_000_000
    if ds is None:
        start = F.datediff(F.to_date(F.col("ds")), F.lit(dt.date(1970, 1, 1))).cast("long") * day_us
    else:
        start = F.lit(int(dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000)
    t = F.col("event_time")
    us = F.unix_micros(t)
    inside = (us >= start) & (us < start + day_us)
    return [("null_event_time", t.isNull()), ("event_time_outside_partition", ~inside)]


def _blank(name: str):
    return F.col(name).isNull() | (F.trim(F.col(name)) == "")


@dataclass(frozen=True)
class TextLimits:
    """The config's ``validate`` section: longest text, title and query list a row may carry."""

    max_text_len: int = 256
    max_title_len: int = 1024
    max_list_len: int = 50

    @classmethod
    def from_config(cls, validate: dict) -> TextLimits:
        return cls(**{key: int(value) for key, value in validate.items() if key in cls.__dataclass_fields__})


def row_rules(table: str, ds: str | None, limits: TextLimits) -> list:
    """Ordered (reason, condition) rules for ``table``; the first that holds is the reason.
    ``ds`` None: the day of each row is its ``ds`` column."""
    max_len, max_title, max_items = limits.max_text_len, limits.max_title_len, limits.max_list_len
    if table == "behavior_events":
        item_event = F.col("event_type").isin(*schemas.ITEM_EVENT_TYPES)
        return [
            ("null_user_id", _blank("user_id")),
            *_time_checks(ds),
            ("unknown_event_type", F.col("event_type").isNull() | ~F.col("event_type").isin(*schemas.EVENT_TYPES)),
            ("unknown_scene", F.col("scene").isNotNull() & ~F.col("scene").isin(*schemas.SCENES)),
            *_text_checks(["user_id", "query", "item_id", "request_id"], max_len),
            ("search_without_query", (F.col("event_type") == "search") & _blank("query")),
            ("item_event_without_item_id", item_event & _blank("item_id")),
        ]
    if table == "hintq_exposures":
        shown = F.col("shown_queries")
        scores = F.col("ranker_scores")
        return [
            ("null_request_id", _blank("request_id")),
            ("null_user_id", _blank("user_id")),
            *_time_checks(ds),
            ("no_shown_queries", shown.isNull() | (F.size(shown) == 0)),
            ("null_shown_query", F.exists(shown, lambda q: q.isNull() | (F.trim(q) == ""))),
            *_text_checks(["request_id", "user_id", "clicked_query"], max_len),
            *_list_text_checks("shown_queries", max_len, max_items),
            ("ranker_scores_length_mismatch", scores.isNotNull() & (F.size(scores) != F.size(shown))),
            (
                "clicked_query_not_shown",
                F.col("clicked_query").isNotNull() & ~F.array_contains(shown, F.col("clicked_query")),
            ),
        ]
    if table == "query_impressions":
        return [
            ("null_user_id", _blank("user_id")),
            *_time_checks(ds),
            ("null_query", _blank("query")),
            *_text_checks(["user_id", "query"], max_len),
            ("bad_position", F.col("position").isNull() | (F.col("position") < 0)),
            ("null_clicked", F.col("clicked").isNull()),
        ]
    if table == "item_impressions":
        return [
            ("null_request_id", _blank("request_id")),
            ("null_user_id", _blank("user_id")),
            *_time_checks(ds),
            ("null_item_id", _blank("item_id")),
            *_text_checks(["request_id", "user_id", "item_id"], max_len),
            ("bad_position", F.col("position").isNull() | (F.col("position") < 0)),
            ("null_clicked", F.col("clicked").isNull()),
        ]
    if table == "items":
        return [
            ("null_item_id", _blank("item_id")),
            *_text_checks(["item_id", "leaf_category", "brand"], max_len),
            *[(r, c) for r, c in _text_checks(["title", "category_path"], max_title)],
        ]
    if table == "users":
        return [
            ("null_user_id", _blank("user_id")),
            *_text_checks(["user_id", "gender", "age_bucket", "city", "purchase_level"], max_len),
        ]
    raise KeyError(f"no validation rules for table '{table}'")


#: Columns that identify a row for duplicate detection (None = the whole row).
DUPLICATE_KEYS = {
    "behavior_events": None,
    "hintq_exposures": ["request_id"],
    "query_impressions": None,
    "item_impressions": ["request_id", "position"],  # common.schemas.UNIQUE_KEYS: one item per page slot
    "items": ["item_id"],
    "users": ["user_id"],
}


def with_quarantine_reason(df, rules: list, duplicate_keys: list[str] | None):
    """Add ``reason``: the first rule that holds, else ``duplicate`` for repeated keys, else null.

    Duplicates are only counted among rows that passed every other rule, so one bad copy does
    not hide a good one, and only within a day (a ``ds`` column, when there is one). Among keyed
    duplicates the kept copy is the one with the smallest hash of the whole row (deterministic
    across reruns). Whole-row duplicates are identical, so they are counted by one hash
    aggregation (no sort): one copy stays, the others come out as ``duplicate``.
    """
    reason = F.lit(None).cast("string")
    for name, cond in reversed(rules):
        reason = F.when(F.coalesce(cond, F.lit(False)), F.lit(name)).otherwise(reason)
    df = df.withColumn("reason", reason)
    cols = [c for c in df.columns if c != "reason"]
    day = ["ds"] if "ds" in cols else []
    if duplicate_keys:
        partition = [F.col(k) for k in [*day, *duplicate_keys]]
        order = F.xxhash64(F.to_json(F.struct(*[F.col(c) for c in cols if c != "ds"])))
        window = Window.partitionBy(F.col("reason").isNull(), *partition).orderBy(order)
        rank = F.row_number().over(window)
        return df.withColumn(
            "reason", F.when(F.col("reason").isNull() & (rank > 1), F.lit("duplicate")).otherwise(F.col("reason"))
        )
    maps = [c for c in cols if isinstance(df.schema[c].dataType, MapType)]
    if maps:
        raise ValueError(f"whole-row duplicate detection cannot compare map columns {maps}")
    # One aggregation over every row: n identical rows with the same reason come back n times
    # (a failing row keeps its reason; among passing rows the first copy stays clean and the
    # others become duplicates). One scan, one shuffle, no sort.
    copies = df.groupBy(*cols, "reason").agg(F.count(F.lit(1)).alias("_n"))
    copy = F.explode(F.sequence(F.lit(1), F.col("_n").cast("int"))).alias("_copy")
    return copies.select(*cols, "reason", copy).select(
        *cols, F.when(F.col("reason").isNull() & (F.col("_copy") > 1), F.lit("duplicate"))
        .otherwise(F.col("reason")).alias("reason")
    )


def read_raw(spark, table: str, files: list[Path]):
    """The raw ``files`` of ``table`` (several days) in one read, cast to the contract, with the
    day of each file (its ``ds=`` folder) as a ``ds`` column."""
    schema = schemas.spark_schema(table)
    if not files:
        return spark.createDataFrame([], schema.add("ds", "string"))
    df = spark.read.parquet(*[str(f) for f in files])
    day = F.regexp_extract(F.col("_metadata.file_path"), r"^.*/ds=(\d{4}-\d{2}-\d{2})/", 1)
    return df.select(*[F.col(f.name).cast(f.dataType) for f in schema], day.alias("ds"))


def _plan(root, dates: list[str]) -> dict:
    """Per table: the raw partitions to read (event tables: ``{ds: partition}``, published days
    only; snapshot tables: ``{source_ds: [ds, ...]}`` of the newest snapshot at or before each
    day). Raises ``InputContractError`` for a missing required table or snapshot."""
    plan: dict[str, dict] = {}
    for table in schemas.EVENT_TABLES:
        plan[table] = {}
        for ds in dates:
            src = partition_path(root, "raw", table, ds)
            if is_published(src):
                plan[table][ds] = src
            elif table in REQUIRED_TABLES:
                raise InputContractError(f"{table}: raw partition {src} is not published (no _SUCCESS)")
            else:
                logger.info("%s: no raw partition for %s, treating as empty", table, ds)
    for table in schemas.SNAPSHOT_TABLES:
        plan[table] = {}
        for ds in dates:
            snap = latest_published_ds(root, "raw", table, ds)
            if snap is None:
                raise InputContractError(f"{table}: no published raw snapshot at or before {ds}")
            plan[table].setdefault(snap, []).append(ds)
    return plan


def run_range(spark, cfg: dict, dates: list[str]) -> dict:
    """Validate every raw table for every day of ``dates`` (one read per table and range; a
    snapshot validated once per source partition) and publish every day's clean + quarantine
    partitions together. Returns ``{ds: {table: summary}}``."""
    root, limits = cfg["data_root"], TextLimits.from_config(cfg.get("validate", {}))
    plan = _plan(root, dates)
    # Preflight every file (footers only) before any Spark work, so a bad file fails fast; the
    # footers also give the rows in, checked against the rows written.
    files: dict[tuple[str, str], list[Path]] = {}
    for table, parts in plan.items():
        for key in parts:
            files[table, key] = preflight_partition(partition_path(root, "raw", table, key), table)
    rows_in = {k: sum(pq.ParquetFile(f).metadata.num_rows for f in v) for k, v in files.items()}
    summary: dict[str, dict] = {ds: {} for ds in dates}
    with staged_partitions() as batch:
        calls = []
        for table, parts in plan.items():
            snapshot = table in schemas.SNAPSHOT_TABLES
            groups = [(key, days) for key, days in parts.items()] if snapshot else [(None, dates)]
            for src_ds, days in groups:
                srcs = [src_ds] if snapshot else list(parts)
                df = read_raw(spark, table, [f for key in srcs for f in files[table, key]])
                if snapshot:
                    df = df.drop("ds")
                annotated = with_quarantine_reason(df, row_rules(table, None, limits), DUPLICATE_KEYS[table])
                calls.append(functools.partial(_publish_table, batch, root, table, days, annotated, snapshot,
                                               src_ds, rows_in, files, summary))
        run_concurrently(calls, write_threads(cfg))  # the tables are independent
    return {ds: {table: summary[ds][table] for table in plan if table in summary[ds]} for ds in dates}


def _publish_table(batch, root, table, days, annotated, snapshot, src_ds, rows_in, files, summary) -> None:
    """Write the clean and quarantine rows of ``table`` for ``days``, stage every day, and check
    rows in = rows out + rows quarantined per day before anything is published."""
    annotated = annotated.persist()
    reasons: dict[str, dict] = {ds: {} for ds in days}
    try:
        outputs = {
            "clean": annotated.filter(F.col("reason").isNull()).drop("reason"),
            "quarantine": annotated.filter(F.col("reason").isNotNull()),
        }
        written: dict[tuple[str, str], int] = {}
        for area, df in outputs.items():
            stage = table_path(root, area, table) / f".stage-{uuid.uuid4().hex[:12]}"
            try:
                if snapshot:
                    df.write.mode("overwrite").parquet(str(stage))
                else:
                    (df.repartition("ds") if len(days) > 1 else df).write.mode("overwrite").partitionBy("ds").parquet(str(stage))
                for ds in days:
                    src = stage if snapshot else stage / f"ds={ds}"
                    if not snapshot and not src.is_dir():
                        src = stage / "_empty"
                        if not src.is_dir():
                            empty_parquet(src, df.drop("ds").schema)
                    if area == "quarantine":  # the reasons of the day, from the files just written
                        reasons[ds] = reason_counts(data_files(src))
                    tmp = batch.stage(partition_path(root, area, table, ds), {})
                    for f in data_files(src):
                        (shutil.copyfile if snapshot or src.name == "_empty" else os.rename)(f, tmp / f.name)
                    written[area, ds] = parquet_row_count(tmp)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        annotated.unpersist()
    for ds in days:
        key = src_ds if snapshot else ds
        n_in = rows_in.get((table, key), 0)
        out, quarantined = written["clean", ds], written["quarantine", ds]
        counts = reasons[ds]
        if out + quarantined != n_in or sum(counts.values()) != quarantined:
            raise RuntimeError(f"{table} ds={ds}: rows in {n_in} != rows out {out} + quarantined {quarantined}")
        batch.manifest(partition_path(root, "clean", table, ds)).update(
            {"table": table, "ds": ds, "source_ds": key, "rows": out})
        batch.manifest(partition_path(root, "quarantine", table, ds)).update(
            {"table": table, "ds": ds, "rows": quarantined, "reasons": counts})
        src = partition_path(root, "raw", table, key)
        summary[ds][table] = {
            "source": str(src), "files": len(files.get((table, key), [])), "rows_in": n_in, "rows_out": out,
            "rows_quarantined": quarantined, "reasons": dict(sorted(counts.items())),
        }
        logger.info("%s ds=%s: in %d = out %d + quarantined %d %s", table, ds, n_in, out, quarantined,
                    dict(sorted(counts.items())) or "")


def reason_counts(files: list[Path]) -> dict[str, int]:
    """``{reason: rows}`` of quarantine Parquet files (their ``reason`` column only)."""
    counts: dict[str, int] = {}
    for f in files:
        for item in pq.read_table(f, columns=["reason"]).column("reason").value_counts().to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def run(spark, cfg: dict, ds: str) -> dict:
    """Validate one day (the range of one day)."""
    return run_range(spark, cfg, [ds])[ds]


def main(argv: list[str] | None = None) -> int:
    return run_job("validate", run_range, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
