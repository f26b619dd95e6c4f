"""sessionize: gap-based sessions, HintQ exposure sessions and day-level sessions for a range of days.

- ``behavior_sessions``: every clean behaviour event with ``session_id`` / ``session_seq``.
  Events are ordered per user by time (ties broken by a fixed event-type order, then text), a
  new session starts when the gap to the previous event is *strictly greater* than
  ``sessionize.gap_minutes`` (a gap of exactly the limit continues the session). Sessions do
  not cross the day partition.
- ``hintq_sessions`` (AIGQ-Direct): HintQ exposures kept only when one shown query was clicked.
- ``day_sessions`` (AIGQ-Think): ``sql/day_sessions.sql``.
"""

from __future__ import annotations

import logging
import sys

from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs.spark import load_sql, publish_range, read_days, run_job, write_threads

logger = logging.getLogger(__name__)

EVENT_ORDER = {name: i for i, name in enumerate(("search", "view", "click", "cart", "buy", "exit"))}


def event_order_columns():
    """Deterministic total order of a user's events: time, event type, then text and ids."""
    rank = F.lit(len(EVENT_ORDER))
    for name, i in reversed(list(EVENT_ORDER.items())):
        rank = F.when(F.col("event_type") == name, F.lit(i)).otherwise(rank)
    return [
        F.col("event_time").asc(),
        rank.asc(),
        F.coalesce(F.col("query"), F.lit("")).asc(),
        F.coalesce(F.col("item_id"), F.lit("")).asc(),
        F.coalesce(F.col("request_id"), F.lit("")).asc(),
    ]


def with_session_id(events, gap_minutes: int, ds: str | None = None):
    """Add ``session_seq`` (1-based per user and day) and ``session_id`` = ``user|ds|seq``.

    The day is the ``ds`` column (a range of days), else the ``ds`` argument (one day)."""
    if "ds" not in events.columns:
        events = events.withColumn("ds", F.lit(ds))
        single = True
    else:
        single = False
    ordered = Window.partitionBy("user_id", "ds").orderBy(*event_order_columns())
    gap_us = int(gap_minutes) * 60 * 1_000_000
    prev = F.lag(F.unix_micros("event_time")).over(ordered)
    starts = F.when(prev.isNull() | ((F.unix_micros("event_time") - prev) > gap_us), 1).otherwise(0)
    running = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    out = (
        events.withColumn("_new_session", starts)
        .withColumn("session_seq", F.sum("_new_session").over(running).cast("int"))
        .withColumn("session_id", F.concat_ws("|", "user_id", "ds", F.col("session_seq").cast("string")))
        .drop("_new_session")
    )
    return out.drop("ds") if single else out


def filter_clicked_exposures(exposures):
    return exposures.filter(F.col("clicked_query").isNotNull())


def build_day_sessions(events):
    """One row per user and day of ``events`` (by their ``ds`` column when they have one)."""
    single = "ds" not in events.columns
    if single:
        events = events.withColumn("ds", F.lit(""))
    out = events.sparkSession.sql(load_sql("day_sessions"), events=events)
    return out.drop("ds") if single else out


def run_range(spark, cfg: dict, dates: list[str]) -> dict:
    """Sessions of every day of ``dates`` in one pass (sessions never cross a day); every day
    published together. Returns ``{ds: {table: rows}}``."""
    root = cfg["data_root"]
    gap = int(cfg.get("sessionize", {}).get("gap_minutes", 30))
    events = read_days(spark, root, "clean", "behavior_events", dates)
    exposures = read_days(spark, root, "clean", "hintq_exposures", dates)
    outputs = {
        "behavior_sessions": with_session_id(events, gap),
        "hintq_sessions": filter_clicked_exposures(exposures),
        "day_sessions": build_day_sessions(events),
    }
    return publish_range(root, "sessions", dates, outputs, lambda ds: {"gap_minutes": gap}, threads=write_threads(cfg))


def run(spark, cfg: dict, ds: str) -> dict:
    """Sessions of one day (the range of one day)."""
    return run_range(spark, cfg, [ds])[ds]


def main(argv: list[str] | None = None) -> int:
    return run_job("sessionize", run_range, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
