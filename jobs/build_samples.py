"""build_samples: training samples for KARMA, AIGQ (Direct / Think), the CTR model, and the
item corpus, for each day of a range (one pass over the range; the day a ``ds`` column). All
five tables of every day are published together or not at all.

Shared pieces
- **Behaviours** are clean ``search | click | cart | buy`` events of ``ds`` and the
  ``samples.lookback_days`` days before it; a behaviour's text is the query (search) or the
  item title (item events), its category the item's leaf category.
- **History** (one window computation per run, shared by every table) of an anchor (a target click, an exposure, a day session, an impression) is the
  last ``samples.history_len`` behaviours strictly before the anchor's time, oldest first, each
  with a ``time_bucket`` relative to the anchor (``lt_1h``, ``lt_1d``, ``1d_ago``, ``2_3d_ago``,
  ``4_7d_ago``, ``gt_7d_ago``).
- **Split** is by time of day of the anchor: the first ``1 - valid_fraction - test_fraction`` of
  the UTC day is ``train``, the next ``valid_fraction`` ``valid``, the rest ``test``.
- **Query normalisation** for label lists: lower case, trimmed, inner whitespace collapsed;
  empty queries dropped; duplicates removed keeping the first (strongest) occurrence.

Tables
- ``karma_samples``: one per target event (``samples.target_event_types``, default click) of
  ``ds`` with a non-empty history; hard negatives are items viewed in the same request and not
  clicked (sorted by id, at most ``samples.hard_negatives``).
- ``aigq_direct_sft``: one per clicked HintQ exposure; target = clicked query, then the shown
  queries by ranker score (shown order when scores are null), top ``ranker_top_k``. Days with no
  HintQ exposures at all (public search logs) fall back to gap sessions with a search: target =
  the session's queries, those that led to a click (same request) first, then by time
  (``label_source`` says which rule made the row).
- ``aigq_think_sft``: one per day session; target = clicked hint queries of the day, then
  searches typed that day (time order), then the day's exposures' ranker top-K. Each target
  query carries ``triggers``: indices into the history of behaviours sharing a word (two or
  more characters) with it.
- ``samples.session_anchors`` **(ours, off by default)** adds anchors inside the day, so the
  models also learn from histories that already hold the same day's behaviour (what a request
  at serving time sees): ``aigq_direct_sft`` also gets one row per gap session with a search
  (the fallback rule above, ``label_source = search_session``) on days with HintQ exposures, and
  ``aigq_think_sft`` one row per Direct anchor after the day session's start, whose target is
  built by the same rule from the day's events at or after the anchor (the rest of the day).
- ``ctr_samples``: one per query impression (on a day without impressions: one per search, label =
  its request got a click) with profile and the user's recent queries (the
  searches among the last ``history_len`` behaviours before the impression).
- ``item_corpus``: ``sql/item_corpus.sql``.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from dataclasses import dataclass

from pyspark.sql import functions as F

from common import schemas
from common.arrow_io import partition_rows
from common.paths import previous_ds
from common.publish import staged_partitions
from jobs.history import DAY_US, attach_history, day_number, index_behaviours, with_behaviour_text
from jobs.spark import load_sql, publish_range, read_days, read_partition, run_job, write_threads

logger = logging.getLogger(__name__)

TOKENS_SQL = "filter(split(lower({x}), '[\\\\s\\\\p{{Punct}}]+'), w -> length(w) >= 2)"


def normalize_query(col):
    return F.lower(F.trim(F.regexp_replace(col, r"\s+", " ")))


def with_time_split(df, ds: str | None, valid_fraction: float, test_fraction: float, time_col: str = "event_time"):
    """``split`` by time of day of the anchor in the day ``ds`` (None: the row's ``ds`` column)."""
    if ds is None:
        midnight_us = day_number(F.col("ds")) * DAY_US
    else:
        midnight_us = F.lit(int(dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000)
    frac = (F.unix_micros(F.col(time_col)) - midnight_us) / DAY_US
    train_end = 1.0 - valid_fraction - test_fraction
    return df.withColumn(
        "split", F.when(frac < train_end, "train").when(frac < 1.0 - test_fraction, "valid").otherwise("test")
    )


def _day(df) -> list[str]:
    """``["ds"]`` when ``df`` spans several days (a ``ds`` column), else ``[]``: a day key."""
    return ["ds"] if "ds" in df.columns else []


def _sample_id(*cols):
    return F.substring(F.sha2(F.concat_ws("|", *[F.coalesce(F.col(c).cast("string"), F.lit("")) for c in cols]), 256), 1, 20)


# --- KARMA ------------------------------------------------------------------------------------


def hard_negatives(day_events, max_negatives: int):
    """Per (user, request): items viewed and not clicked, sorted by id, at most ``max_negatives``."""
    per_request = (
        day_events.filter(F.col("request_id").isNotNull() & F.col("item_id").isNotNull())
        .groupBy("user_id", "request_id", *_day(day_events))
        .agg(
            F.collect_set(F.when(F.col("event_type") == "view", F.col("item_id"))).alias("_viewed"),
            F.collect_set(F.when(F.col("event_type").isin("click", "cart", "buy"), F.col("item_id"))).alias("_acted"),
        )
    )
    negatives = F.slice(F.array_sort(F.array_except("_viewed", "_acted")), 1, max_negatives)
    return per_request.select("user_id", "request_id", *_day(day_events), negatives.alias("hard_negative_ids"))


def build_karma_samples(indexed, day_events, *, target_event_types: tuple[str, ...], max_hard_negatives: int,
                        lookback_days: int | None = None):
    targets = day_events.filter(F.col("event_type").isin(*target_event_types) & F.col("item_id").isNotNull()).select(
        "user_id", "event_time", "request_id", *_day(day_events), F.col("item_id").alias("target_item_id"),
        F.col("event_type").alias("target_event_type"),
    )
    targets = targets.withColumn("sample_id", _sample_id("user_id", "event_time", "target_item_id", "target_event_type"))
    targets = targets.dropDuplicates(["sample_id"])
    with_hist = attach_history(indexed, targets, lookback_days=lookback_days)
    negs = hard_negatives(day_events, max_hard_negatives)
    return (
        with_hist.join(negs, on=["user_id", "request_id", *_day(day_events)], how="left")
        .withColumn("hard_negative_ids", F.coalesce("hard_negative_ids", F.array().cast("array<string>")))
        .filter(F.size("history") > 0)
    )


# --- AIGQ -------------------------------------------------------------------------------------


def ranked_shown_queries(top_k: int):
    """Shown queries by ranker score descending (shown order on ties or null scores), top-k."""
    return F.expr(
        f"""slice(transform(array_sort(
              transform(shown_queries, (q, i) -> named_struct(
                  'q', q, 'i', i,
                  's', CASE WHEN ranker_scores IS NULL THEN 0.0D ELSE CAST(ranker_scores[i] AS DOUBLE) END)),
              (a, b) -> CASE WHEN a.s > b.s THEN -1 WHEN a.s < b.s THEN 1
                             WHEN a.i < b.i THEN -1 WHEN a.i > b.i THEN 1 ELSE 0 END),
            x -> x.q), 1, {int(top_k)})"""
    )


def clean_query_list(arr, max_len: int):
    """Normalise, drop empties, de-duplicate keeping first occurrences, cap the length."""
    normalised = F.transform(arr, lambda q: normalize_query(q))
    return F.slice(F.array_distinct(F.filter(normalised, lambda q: q.isNotNull() & (q != ""))), 1, max_len)


def direct_from_exposures(exposures, *, ranker_top_k: int, max_queries: int):
    target = F.concat(F.array(F.col("clicked_query")), ranked_shown_queries(ranker_top_k))
    return exposures.select(
        "user_id", "request_id", "event_time", *_day(exposures),
        clean_query_list(target, max_queries).alias("target_queries"),
        F.lit("hintq").alias("label_source"),
    )


def direct_from_search_sessions(sessions, *, max_queries: int):
    """Fallback for logs without HintQ: one sample per gap session with a search."""
    day = _day(sessions)
    clicked_requests = (
        sessions.filter(F.col("event_type").isin("click", "cart", "buy") & F.col("request_id").isNotNull())
        .select("user_id", "request_id", *day).distinct().withColumn("_clicked", F.lit(1))
    )
    searches = (
        sessions.filter(F.col("event_type") == "search")
        .join(clicked_requests, on=["user_id", "request_id", *day], how="left")
        .withColumn("_clicked", F.coalesce("_clicked", F.lit(0)))
    )
    ordered = F.array_sort(F.collect_list(F.struct(
        (1 - F.col("_clicked")).alias("_rank"), F.unix_micros("event_time").alias("_t"), F.col("query").alias("q")
    )))
    return searches.groupBy("user_id", "session_id", *day).agg(
        F.min("event_time").alias("event_time"), ordered.alias("_ordered")
    ).select(
        "user_id", F.col("session_id").alias("request_id"), "event_time", *day,
        clean_query_list(F.transform("_ordered", lambda x: x["q"]), max_queries).alias("target_queries"),
        F.lit("search_session").alias("label_source"),
    )


def with_profile(df, users):
    cols = [name for name, _ in schemas.PROFILE_FIELDS]
    return df.join(users.select("user_id", *cols), on="user_id", how="left")


def build_direct_samples(indexed, anchors, users, lookback_days: int | None = None):
    """``anchors``: ``direct_anchors(...)``."""
    return with_profile(attach_history(indexed, anchors, lookback_days=lookback_days), users)


def direct_anchors(exposures, sessions, *, exposure_days: list[str], session_anchors: bool, ranker_top_k: int,
                   max_queries: int):
    """Direct anchors with their target lists (``exposures`` and ``sessions`` with a ``ds``
    column): clicked HintQ exposures; gap sessions with a search on days without exposures (not in
    ``exposure_days``: the day's exposure partition is empty), or on every day with
    ``session_anchors``."""
    clicked = exposures.filter(F.col("clicked_query").isNotNull())
    anchors = direct_from_exposures(clicked, ranker_top_k=ranker_top_k, max_queries=max_queries)
    if not session_anchors:
        sessions = sessions.filter(~F.col("ds").isin(*exposure_days)) if exposure_days else sessions
    anchors = anchors.unionByName(direct_from_search_sessions(sessions, max_queries=max_queries))
    return anchors.filter(F.size("target_queries") > 0).withColumn(
        "sample_id", _sample_id("user_id", "request_id", "event_time")
    )


def think_targets(day_events, exposures, *, ranker_top_k: int, max_queries: int, anchors=None):
    """Per user and day: the ordered, de-duplicated (query, source) target list. With ``anchors``
    (``user_id, event_time``): one list per anchor from the day's entries at or after its time,
    keyed by ``user_id, event_time``."""
    day = _day(day_events)
    hint_clicks = exposures.filter(F.col("clicked_query").isNotNull()).select(
        "user_id", *day, F.lit(0).alias("_p"), F.unix_micros("event_time").alias("_t"), F.lit(0).alias("_i"),
        F.col("clicked_query").alias("query"), F.lit("hint_click").alias("source"),
    )
    searches = day_events.filter((F.col("event_type") == "search") & (F.coalesce("scene", F.lit("")) != "hintq")).select(
        "user_id", *day, F.lit(1).alias("_p"), F.unix_micros("event_time").alias("_t"), F.lit(0).alias("_i"),
        F.col("query"), F.lit("search").alias("source"),
    )
    ranker = exposures.select(
        "user_id", *day, F.unix_micros("event_time").alias("_t"),
        F.posexplode(ranked_shown_queries(ranker_top_k)).alias("_i", "query"),
    ).select("user_id", *day, F.lit(2).alias("_p"), "_t", "_i", "query", F.lit("ranker").alias("source"))
    long = hint_clicks.unionByName(searches).unionByName(ranker).withColumn("query", normalize_query(F.col("query")))
    long = long.filter(F.col("query").isNotNull() & (F.col("query") != ""))
    keys = ["user_id", *day]
    if anchors is not None:
        long = anchors.select(*keys, "event_time").join(long, on=keys).filter(
            F.col("_t") >= F.unix_micros("event_time")
        )
        keys = [*keys, "event_time"]
    ordered = F.array_sort(F.collect_list(F.struct("_p", "_t", "_i", "query", "source")))
    # Keep the first occurrence of each query: drop entries whose query appeared earlier.
    dedup = F.expr(
        "filter(_all, (x, i) -> NOT exists(slice(_all, 1, i), y -> y.query = x.query))"
    )
    return (
        long.groupBy(*keys).agg(ordered.alias("_all"))
        .withColumn("_dedup", dedup)
        .select(*keys, F.slice(F.transform("_dedup", lambda x: F.struct(x["query"].alias("query"), x["source"].alias("source"))), 1, max_queries).alias("_targets"))
    )


def with_triggers(df):
    """Add per-target trigger indices: history behaviours sharing a word with the query."""
    hist_tokens = TOKENS_SQL.format(x="history[i].text")
    query_tokens = TOKENS_SQL.format(x="t.query")
    expr = f"""transform(_targets, t -> named_struct(
        'query', t.query, 'source', t.source,
        'triggers', CASE WHEN size(history) = 0 THEN CAST(array() AS array<int>)
                    ELSE filter(sequence(0, size(history) - 1), i -> arrays_overlap({hist_tokens}, {query_tokens}))
                    END))"""
    return df.withColumn("targets", F.expr(expr)).drop("_targets")


def build_think_samples(indexed, day_events, exposures, day_sessions, users, *, ranker_top_k: int,
                        max_queries: int, direct=None, lookback_days: int | None = None):
    """``direct`` (given with ``samples.session_anchors``): the Direct anchors; those after the day
    session's start become Think anchors too, each with the rest of the day as its target."""
    lists = {"ranker_top_k": ranker_top_k, "max_queries": max_queries}
    keys = ["user_id", *_day(day_events)]
    starts = day_sessions.select(*keys, F.col("start_time").alias("event_time"))
    anchors = starts.join(think_targets(day_events, exposures, **lists), on=keys, how="inner")
    if direct is not None:
        later = direct.select(*keys, "event_time").distinct().join(
            starts.withColumnRenamed("event_time", "_start"), on=keys
        ).filter(F.col("event_time") > F.col("_start")).drop("_start")
        anchors = anchors.unionByName(later.join(think_targets(day_events, exposures, anchors=later, **lists),
                                                 on=[*keys, "event_time"], how="inner"))
    anchors = anchors.withColumn("sample_id", _sample_id("user_id", "event_time"))
    out = with_triggers(attach_history(indexed, anchors, lookback_days=lookback_days))
    return with_profile(out.filter(F.size("targets") > 0), users)


def build_ctr_samples(indexed, users, *, impressions=None, day_events=None, lookback_days: int | None = None):
    """One row per query impression (label = clicked); on a day without impressions (a plain
    search log such as Best Buy's: pass ``day_events`` of those days), one row per search (label
    = the search's request got a click, position 0), so the CTR reward model can train on any log.
    Both inputs carry a ``ds`` column; either may be None, not both."""
    if impressions is None and day_events is None:
        raise ValueError("build_ctr_samples takes impressions, day_events or both")
    parts = []
    if impressions is not None:
        parts.append(users.sparkSession.sql(load_sql("ctr_samples"), impressions=impressions, users=users))
    if day_events is not None:
        parts.append(users.sparkSession.sql(load_sql("ctr_samples_from_searches"), day_events=day_events, users=users))
    base = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    base = base.withColumn(
        "sample_id", _sample_id("user_id", "event_time", "query", "position")
    )
    out = attach_history(indexed, base, lookback_days=lookback_days)
    searched = F.filter("history", lambda h: h["event_type"] == "search")
    return out.withColumn("recent_queries", F.transform(searched, lambda h: h["text"]))


def build_item_corpus(items):
    return items.sparkSession.sql(load_sql("item_corpus"), items=items)


@dataclass(frozen=True)
class SampleSettings:
    """The config's ``samples`` section, typed: what the builders are called with."""

    history_len: int
    lookback_days: int
    ranker_top_k: int
    max_target_queries: int
    hard_negatives: int
    valid_fraction: float
    test_fraction: float
    session_anchors: bool
    target_event_types: tuple[str, ...]

    @classmethod
    def from_config(cls, samples: dict) -> SampleSettings:
        return cls(
            history_len=int(samples["history_len"]), lookback_days=int(samples["lookback_days"]),
            ranker_top_k=int(samples["ranker_top_k"]), max_target_queries=int(samples["max_target_queries"]),
            hard_negatives=int(samples["hard_negatives"]), valid_fraction=float(samples["valid_fraction"]),
            test_fraction=float(samples["test_fraction"]), session_anchors=bool(samples["session_anchors"]),
            target_event_types=tuple(samples["target_event_types"]),
        )


def segments(root, dates: list[str]) -> list[list[str]]:
    """The days of ``dates`` grouped by the snapshots their samples read (the source of their
    clean ``items`` and ``users``): each group is one pass with one catalogue and one profile."""
    groups: dict[tuple, list[str]] = {}
    for ds in dates:
        key = tuple(partition_rows(root, "clean", t, ds)[1].get("source_ds") for t in ("items", "users"))
        groups.setdefault(key, []).append(ds)
    return list(groups.values())


def run_range(spark, cfg: dict, dates: list[str]) -> dict:
    """Build the five sample tables of every day of ``dates`` in one pass per snapshot segment
    (usually one) and publish every day together; ``{ds: {table: rows}}``."""
    root = cfg["data_root"]
    counts: dict[str, dict] = {}
    with staged_partitions() as batch:
        for days in segments(root, dates):
            counts.update(build_segment(spark, cfg, days, batch))
    return counts


def build_segment(spark, cfg: dict, days: list[str], batch) -> dict:
    """Samples of ``days`` (one items and users snapshot): every input read once over the range
    (behaviours over the lookback of the first day through the last), ``ds`` a column, each
    history cut to the lookback of its own day."""
    root, settings = cfg["data_root"], SampleSettings.from_config(cfg["samples"])
    lookback = {ds: previous_ds(ds, settings.lookback_days) + [ds] for ds in days}
    span = sorted({d for lb in lookback.values() for d in lb})
    items = read_partition(spark, root, "clean", "items", days[0])
    users = read_partition(spark, root, "clean", "users", days[0])
    events = read_days(spark, root, "clean", "behavior_events", span)
    indexed = index_behaviours(with_behaviour_text(events, items), settings.history_len).persist()
    day_events = events.filter(F.col("ds").isin(*days))
    exposures = read_days(spark, root, "clean", "hintq_exposures", days)
    sessions = read_days(spark, root, "sessions", "behavior_sessions", days)
    day_sessions = read_days(spark, root, "sessions", "day_sessions", days)
    # Which rule makes the Direct anchors and the CTR rows of a day follows from its published
    # row counts (the manifests), not from an action on the data.
    exposure_days = [ds for ds in days if (partition_rows(root, "clean", "hintq_exposures", ds)[0] or 0) > 0]
    impression_days = [ds for ds in days if (partition_rows(root, "clean", "query_impressions", ds)[0] or 0) > 0]
    ctr_input = {}
    if impression_days:
        ctr_input["impressions"] = read_days(spark, root, "clean", "query_impressions", impression_days)
    if len(impression_days) < len(days):
        ctr_input["day_events"] = day_events.filter(~F.col("ds").isin(*impression_days)) if impression_days else day_events
    lists = {"ranker_top_k": settings.ranker_top_k, "max_queries": settings.max_target_queries}
    direct = direct_anchors(exposures, sessions, exposure_days=exposure_days,
                            session_anchors=settings.session_anchors, **lists)
    split = {"ds": None, "valid_fraction": settings.valid_fraction, "test_fraction": settings.test_fraction}
    hist = {"lookback_days": settings.lookback_days}
    karma = build_karma_samples(indexed, day_events, target_event_types=settings.target_event_types,
                                max_hard_negatives=settings.hard_negatives, **hist)
    think = build_think_samples(indexed, day_events, exposures, day_sessions, users,
                                direct=direct if settings.session_anchors else None, **lists, **hist)
    outputs = {
        "karma_samples": with_time_split(karma, **split),
        "aigq_direct_sft": with_time_split(build_direct_samples(indexed, direct, users, **hist), **split),
        "aigq_think_sft": with_time_split(think, **split),
        "ctr_samples": with_time_split(build_ctr_samples(indexed, users, **ctr_input, **hist), **split),
    }
    try:
        return publish_range(root, "samples", days, outputs, lambda ds: {"history_ds": lookback[ds]},
                             copies={"item_corpus": build_item_corpus(items)}, batch=batch, threads=write_threads(cfg))
    finally:
        indexed.unpersist()


def run(spark, cfg: dict, ds: str) -> dict:
    """The five sample tables of one day (the range of one day)."""
    return run_range(spark, cfg, [ds])[ds]


def main(argv: list[str] | None = None) -> int:
    return run_job("build_samples", run_range, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
