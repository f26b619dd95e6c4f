"""Tiny hand-made raw datasets for the Spark job tests."""

from __future__ import annotations

import datetime as dt

from common.arrow_io import write_partition

DS1, DS2 = "2026-11-01", "2026-11-02"


def ts(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=dt.UTC)


def ev(user, t, etype, query=None, item=None, scene="search", request=None) -> dict:
    return dict(user_id=user, event_time=t, event_type=etype, query=query, item_id=item, scene=scene, request_id=request)


ITEMS = [
    dict(item_id="i1", title="red running shoe", category_path="wear > shoe", leaf_category="shoe", brand="acme", tags=["red"]),
    dict(item_id="i2", title="blue shoe", category_path="wear > shoe", leaf_category="shoe", brand="acme", tags=[]),
    dict(item_id="i3", title="blue wool hat", category_path="wear > hat", leaf_category="hat", brand="zed", tags=["wool"]),
]
USERS = [dict(user_id="u1", gender="f", age_bucket="25-34", city="hz"), dict(user_id="u2", gender="m")]

DAY1_EVENTS = [
    ev("u1", ts(1, 1), "search", query="red shoe", request="r0"),
    ev("u1", ts(1, 1, 1), "view", item="i1", request="r0"),
    ev("u1", ts(1, 1, 1), "view", item="i2", request="r0"),
    ev("u1", ts(1, 1, 2), "click", item="i1", request="r0"),
    ev("u1", ts(1, 1, 5), "exit", scene="other"),
]
DAY2_EVENTS = [
    ev("u1", ts(2, 9), "search", query="Blue  Hat", request="r1"),
    ev("u1", ts(2, 9, 1), "view", item="i2", request="r1"),
    ev("u1", ts(2, 9, 1), "view", item="i3", request="r1"),
    ev("u1", ts(2, 9, 2), "click", item="i3", request="r1"),
    ev("u1", ts(2, 9, 5), "exit", scene="other"),
    ev("u1", ts(2, 10), "search", query="red hat", scene="hintq", request="h1"),
    ev("u2", ts(2, 23), "click", item="i1", scene="home"),  # test split, single-event day
]
DAY2_EXPOSURES = [
    dict(request_id="h1", user_id="u1", event_time=ts(2, 10), shown_queries=["Blue shoe", "red hat", "hat"],
         ranker_scores=[0.2, 0.5, 0.9], clicked_query="red hat"),
    dict(request_id="h2", user_id="u2", event_time=ts(2, 22), shown_queries=["hat", "shoe", "sock"],
         ranker_scores=None, clicked_query=None),
]
DAY2_IMPRESSIONS = [
    dict(user_id="u1", event_time=ts(2, 10), query=q, position=i, clicked=q == "red hat")
    for i, q in enumerate(["Blue shoe", "red hat", "hat"])
]


def write_tiny_dataset(root) -> None:
    """Two days: u1 shops for shoes, then hats (with a clicked HintQ exposure on day 2)."""
    write_partition(root, "raw", "items", DS1, ITEMS)
    write_partition(root, "raw", "users", DS1, USERS)
    write_partition(root, "raw", "behavior_events", DS1, DAY1_EVENTS)
    write_partition(root, "raw", "behavior_events", DS2, DAY2_EVENTS)
    write_partition(root, "raw", "hintq_exposures", DS2, DAY2_EXPOSURES)
    write_partition(root, "raw", "query_impressions", DS2, DAY2_IMPRESSIONS)
