"""jobs/sessionize: gap sessions (boundary, order, single events), exposures, day sessions."""

from __future__ import annotations

import pytest

from common import schemas
from jobs.sessionize import build_day_sessions, filter_clicked_exposures, with_session_id
from tests.jobs_fixtures import DS1, ev, ts

pytestmark = pytest.mark.spark


def _events(spark, rows):
    return spark.createDataFrame(rows, schemas.spark_schema("behavior_events"))


def test_gap_sessions_boundary_order_and_single_event_user(spark):
    from pyspark.testing import assertDataFrameEqual

    rows = [
        ev("u1", ts(1, 10, 30), "click", item="i1"),  # arrives out of order
        ev("u1", ts(1, 10, 0), "search", query="a"),
        ev("u1", ts(1, 11, 0), "search", query="b"),  # gap exactly 30 min: same session
        ev("u1", ts(1, 11, 30, 1), "search", query="c"),  # gap 30 min 1 s: new session
        ev("u1", ts(1, 11, 30, 1), "click", item="i9"),  # same instant: ordered after the search
        ev("u2", ts(1, 8, 0), "exit", scene="other"),  # a user with one event
    ]
    out = with_session_id(_events(spark, rows), 30, DS1).select("user_id", "event_time", "event_type", "session_seq", "session_id")
    expected = [
        ("u1", ts(1, 10, 0), "search", 1, "u1|2026-11-01|1"),
        ("u1", ts(1, 10, 30), "click", 1, "u1|2026-11-01|1"),
        ("u1", ts(1, 11, 0), "search", 1, "u1|2026-11-01|1"),
        ("u1", ts(1, 11, 30, 1), "search", 2, "u1|2026-11-01|2"),
        ("u1", ts(1, 11, 30, 1), "click", 2, "u1|2026-11-01|2"),
        ("u2", ts(1, 8, 0), "exit", 1, "u2|2026-11-01|1"),
    ]
    assertDataFrameEqual(out, spark.createDataFrame(expected, out.schema))


def test_duplicate_events_stay_in_one_session(spark):
    rows = [ev("u1", ts(1, 9), "search", query="a")] * 2 + [ev("u1", ts(1, 12), "search", query="a")]
    seqs = sorted(r.session_seq for r in with_session_id(_events(spark, rows), 30, DS1).collect())
    assert seqs == [1, 1, 2]


def test_exposure_without_click_is_dropped(spark):
    exposures = spark.createDataFrame(
        [
            ("h1", "u1", ts(1, 9), ["a", "b", "c"], [0.3, 0.2, 0.1], "b"),
            ("h2", "u1", ts(1, 10), ["a", "b", "c"], None, None),
        ],
        schemas.spark_schema("hintq_exposures"),
    )
    assert [r.request_id for r in filter_clicked_exposures(exposures).collect()] == ["h1"]


def test_day_sessions_from_first_search_entry_to_last_exit(spark):
    from pyspark.testing import assertDataFrameEqual

    rows = [
        ev("u1", ts(1, 7), "click", item="i1", scene="home"),  # before the first search entry
        ev("u1", ts(1, 9), "search", query="a"),
        ev("u1", ts(1, 9, 5), "exit", scene="other"),
        ev("u1", ts(1, 12), "search", query="b", scene="hintq"),
        ev("u1", ts(1, 12, 5), "exit", scene="other"),  # the last exit ends the day session
        ev("u1", ts(1, 13), "click", item="i2", scene="home"),  # after it: outside
        ev("u2", ts(1, 8), "click", item="i1", scene="search"),  # entry through a search-scene click
        ev("u2", ts(1, 8, 3), "click", item="i2", scene="home"),  # no exit: ends at the last event
        ev("u3", ts(1, 8), "click", item="i1", scene="home"),  # never enters search: no session
    ]
    out = build_day_sessions(_events(spark, rows))
    expected = [
        ("u1", ts(1, 9), ts(1, 12, 5), 4, 2, True),
        ("u2", ts(1, 8), ts(1, 8, 3), 2, 0, False),
    ]
    assertDataFrameEqual(out, spark.createDataFrame(expected, schemas.spark_schema("day_sessions")))
