"""The history windows of build_samples: behaviours with their text, numbered per user in time
order, each with the window of the last ``history_len`` behaviours up to it; and the join that
gives every anchor the window of the behaviours strictly before it (see ``jobs.build_samples``)."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs.sessionize import EVENT_ORDER

BEHAVIOUR_TYPES = ("search", "click", "cart", "buy")
DAY_US = 86400 * 1_000_000


def with_behaviour_text(events, items):
    """Keep behaviour events and add ``text`` and ``category`` from the item catalogue."""
    catalogue = items.select("item_id", "title", "leaf_category")
    return (
        events.filter(F.col("event_type").isin(*BEHAVIOUR_TYPES))
        .join(F.broadcast(catalogue), on="item_id", how="left")
        .withColumn(
            "text",
            F.when(F.col("event_type") == "search", F.col("query")).otherwise(
                F.coalesce(F.col("title"), F.col("item_id"))
            ),
        )
        .withColumn("category", F.col("leaf_category"))
        .drop("title", "leaf_category")
    )


def _tie_key():
    """A string that orders a user's same-instant behaviours deterministically."""
    rank = F.lit(str(len(EVENT_ORDER)))
    for name, i in reversed(list(EVENT_ORDER.items())):
        rank = F.when(F.col("event_type") == name, F.lit(str(i))).otherwise(rank)
    return F.concat_ws(
        "\u0001", rank, F.coalesce("query", F.lit("")), F.coalesce("item_id", F.lit("")),
        F.coalesce("request_id", F.lit("")),
    )


def time_bucket(seconds):
    day = 86400
    return (
        F.when(seconds < 3600, "lt_1h")
        .when(seconds < day, "lt_1d")
        .when(seconds < 2 * day, "1d_ago")
        .when(seconds < 4 * day, "2_3d_ago")
        .when(seconds < 8 * day, "4_7d_ago")
        .otherwise("gt_7d_ago")
    )


def index_behaviours(behaviours, history_len: int):
    """Number each user's behaviours in time order (``_bidx``, 1-based) and attach to each the
    window of the last ``history_len`` behaviours up to and including it (``_hist``).

    Computed once per run and shared by every sample table.
    """
    beh = behaviours.withColumn("_tie", _tie_key())
    order = Window.partitionBy("user_id").orderBy("event_time", "_tie")
    item = F.struct("event_time", "event_type", "text", "item_id", "category")
    return beh.select(
        "user_id", "event_time", "_tie",
        F.row_number().over(order).alias("_bidx"),
        F.collect_list(item).over(order.rowsBetween(-(history_len - 1), 0)).alias("_hist"),
    )


def attach_history(indexed, anchors, key: str = "sample_id", time_col: str = "event_time",
                   lookback_days: int | None = None):
    """Add ``history``: the indexed window of the last behaviours strictly before each anchor.

    ``anchors`` needs ``user_id``, ``time_col`` and a unique ``key``. Cost is linear in the
    number of behaviours plus an equi-join, never anchors x behaviours. With ``lookback_days``
    (anchors of a range of days, with a ``ds`` column) only behaviours since midnight of
    ``ds - lookback_days`` count, as if each day were built from its own lookback.
    """
    # Count behaviours strictly before each anchor: anchors sort before behaviours at equal time.
    marks = anchors.select(
        "user_id", F.col(time_col).alias("event_time"), F.lit(0).alias("_is_beh"), F.col(key).alias("_key"),
        F.lit("").alias("_tie"),
    ).unionByName(
        indexed.select(
            "user_id", "event_time", F.lit(1).alias("_is_beh"), F.lit(None).cast("string").alias("_key"), "_tie"
        )
    )
    stream = Window.partitionBy("user_id").orderBy("event_time", "_is_beh", "_tie").rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    before = (
        marks.withColumn("_n_before", F.sum("_is_beh").over(stream))
        .filter(F.col("_is_beh") == 0)
        .select("user_id", F.col("_key").alias(key), "_n_before")
    )
    hist = indexed.select("user_id", F.col("_bidx").alias("_n_before"), "_hist")
    joined = anchors.join(before, on=["user_id", key], how="left").join(hist, on=["user_id", "_n_before"], how="left")
    anchor_us = F.unix_micros(F.col(time_col))
    window = F.coalesce(F.col("_hist"), F.array())
    if lookback_days is not None:
        since = (day_number(F.col("ds")) - int(lookback_days)) * DAY_US
        window = F.filter(window, lambda h: F.unix_micros(h["event_time"]) >= since)
    history = F.transform(
        window,
        lambda h: F.struct(
            h["event_time"].alias("event_time"),
            h["event_type"].alias("event_type"),
            time_bucket((anchor_us - F.unix_micros(h["event_time"])) / 1_000_000).alias("time_bucket"),
            h["text"].alias("text"),
            h["item_id"].alias("item_id"),
            h["category"].alias("category"),
        ),
    )
    return joined.withColumn("history", history).drop("_hist", "_n_before")


def day_number(ds):
    """Days since 1970-01-01 of a ``YYYY-MM-DD`` column (time-zone free)."""
    return F.datediff(F.to_date(ds), F.lit(dt.date(1970, 1, 1))).cast("long")
