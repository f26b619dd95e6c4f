"""validate: contract checks on one day of raw data; bad rows go to quarantine with a reason.

Two layers:

1. **File preflight** (pyarrow, footers only): every Parquet file of the partition must be
   readable and carry every contract column with a compatible type. A truncated file, a
   missing column or a wrong type fails the whole job with a message naming the file and the
   column; nothing is published for the date.
2. **Row checks** (Spark): each row gets the first failing reason, in the order of
   ``*_REASONS`` below, or none. Exact duplicates beyond the first copy are quarantined as
   ``duplicate``. Clean rows go to ``clean/<table>/ds=…``, the others to
   ``quarantine/<table>/ds=…`` with a ``reason`` column, and ``rows in = rows out + rows
   quarantined`` is checked per table before anything is published.

Event tables are read for ``ds``; snapshot tables (items, users) from their newest published
partition at or before ``ds`` and re-published as ``clean/<table>/ds=<ds>``. Only
``behavior_events`` is required: an event table a source does not deliver (``item_impressions``
of the public datasets, say) is published empty, and its readers take that as "none that day".
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, MapType, StructType

from common import schemas
from common.arrow_io import data_files, parquet_row_count
from common.paths import is_published, latest_published_ds, partition_path
from common.publish import staged_partitions
from jobs.spark import InputContractError, run_job

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


def _time_checks(ds: str):
    start = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    t = F.col("event_time")
    inside = (t >= F.lit(start)) & (t < F.lit(end))
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


def row_rules(table: str, ds: str, limits: TextLimits) -> list:
    """Ordered (reason, condition) rules for ``table``; the first that holds is the reason."""
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
    not hide a good one. Among keyed duplicates the kept copy is the one with the smallest hash
    of the whole row (deterministic across reruns).
    """
    reason = F.lit(None).cast("string")
    for name, cond in reversed(rules):
        reason = F.when(F.coalesce(cond, F.lit(False)), F.lit(name)).otherwise(reason)
    df = df.withColumn("reason", reason)
    if duplicate_keys:
        # Keyed duplicates may differ in other columns: keep the copy with the smallest row hash.
        partition = [F.col(k) for k in duplicate_keys]
        order = F.xxhash64(F.to_json(F.struct(*[F.col(c) for c in df.columns if c != "reason"])))
    else:
        # Whole-row duplicates are identical, so which copy is kept cannot matter; partition on
        # every column (hashing) and skip the expensive sort on all of them.
        partition = [F.to_json(F.struct(F.col(c))) if _is_complex(df, c) else F.col(c) for c in df.columns if c != "reason"]
        order = F.lit(0)
    window = Window.partitionBy(F.col("reason").isNull(), *partition).orderBy(order)
    rank = F.row_number().over(window)
    df = df.withColumn(
        "reason", F.when(F.col("reason").isNull() & (rank > 1), F.lit("duplicate")).otherwise(F.col("reason"))
    )
    return df


def _is_complex(df, column: str) -> bool:
    return isinstance(df.schema[column].dataType, ArrayType | MapType | StructType)


def validate_table(spark, table: str, ds: str, source_partition: Path, limits: TextLimits):
    """Return (annotated DataFrame with ``reason``, list of input files)."""
    files = preflight_partition(source_partition, table)
    schema = schemas.spark_schema(table)
    if not files:
        df = spark.createDataFrame([], schema)
    else:
        df = spark.read.parquet(*[str(f) for f in files]).select(
            *[F.col(f.name).cast(f.dataType) for f in schema]
        )
    rules = row_rules(table, ds, limits)
    return with_quarantine_reason(df, rules, DUPLICATE_KEYS[table]), files


def run(spark, cfg: dict, ds: str) -> dict:
    """Validate every raw table for ``ds``; publish clean + quarantine partitions together."""
    root, limits = cfg["data_root"], TextLimits.from_config(cfg.get("validate", {}))
    summary: dict[str, dict] = {}
    plan: list[tuple[str, Path, str | None]] = []
    for table in schemas.EVENT_TABLES:
        src = partition_path(root, "raw", table, ds)
        if not is_published(src):
            if table in REQUIRED_TABLES:
                raise InputContractError(f"{table}: raw partition {src} is not published (no _SUCCESS)")
            logger.info("%s: no raw partition for %s, treating as empty", table, ds)
        plan.append((table, src, ds))
    for table in schemas.SNAPSHOT_TABLES:
        snap = latest_published_ds(root, "raw", table, ds)
        if snap is None:
            raise InputContractError(f"{table}: no published raw snapshot at or before {ds}")
        plan.append((table, partition_path(root, "raw", table, snap), snap))

    # Preflight every table before any Spark work, so a bad file fails fast.
    for table, src, _ in plan:
        if is_published(src):
            preflight_partition(src, table)

    with staged_partitions() as batch:
        for table, src, src_ds in plan:
            if is_published(src):
                annotated, files = validate_table(spark, table, ds, src, limits)
            else:
                annotated, files = with_quarantine_reason(
                    spark.createDataFrame([], schemas.spark_schema(table)), [], None
                ), []
            annotated = annotated.persist()
            counts = {r["reason"]: r["count"] for r in annotated.groupBy("reason").count().collect()}
            rows_in = sum(counts.values())
            rows_out = counts.pop(None, 0)
            rows_quarantined = sum(counts.values())
            clean_tmp = batch.stage(
                partition_path(root, "clean", table, ds),
                {"table": table, "ds": ds, "source_ds": src_ds, "rows": rows_out},
            )
            q_tmp = batch.stage(
                partition_path(root, "quarantine", table, ds),
                {"table": table, "ds": ds, "rows": rows_quarantined, "reasons": counts},
            )
            clean = annotated.filter(F.col("reason").isNull()).drop("reason")
            clean.write.mode("overwrite").parquet(str(clean_tmp))
            annotated.filter(F.col("reason").isNotNull()).write.mode("overwrite").parquet(str(q_tmp))
            written_out = parquet_row_count(clean_tmp)
            written_q = parquet_row_count(q_tmp)
            annotated.unpersist()
            if written_out + written_q != rows_in or written_out != rows_out:
                raise RuntimeError(
                    f"{table} ds={ds}: rows in {rows_in} != rows out {written_out} + quarantined {written_q}"
                )
            summary[table] = {
                "source": str(src),
                "files": len(files),
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_quarantined": rows_quarantined,
                "reasons": dict(sorted(counts.items())),
            }
            logger.info(
                "%s ds=%s: in %d = out %d + quarantined %d %s",
                table, ds, rows_in, rows_out, rows_quarantined, dict(sorted(counts.items())) or "",
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("validate", run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
