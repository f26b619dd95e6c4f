"""jobs/build_samples: history windows, label lists, triggers, splits, and a whole-day rerun."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from common import schemas
from common.arrow_io import read_partition
from common.config import load_config
from common.paths import table_path
from jobs import build_samples, sessionize, validate
from jobs.build_samples import (
    attach_history,
    direct_from_search_sessions,
    index_behaviours,
    with_behaviour_text,
)
from tests.jobs_fixtures import DS1, DS2, ev, ts, write_tiny_dataset

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def tiny_run(spark, tmp_path_factory):
    """validate → sessionize → build_samples for both days of the tiny dataset."""
    cfg = load_config(environ={})
    cfg["data_root"] = str(tmp_path_factory.mktemp("samples") / "data")
    write_tiny_dataset(cfg["data_root"])
    counts = {}
    for ds in (DS1, DS2):
        validate.run(spark, cfg, ds)
        sessionize.run(spark, cfg, ds)
        counts[ds] = build_samples.run(spark, cfg, ds)
    return cfg, counts


def _rows(cfg, table, ds=DS2):
    rows = read_partition(cfg["data_root"], "samples", table, ds).to_pylist()
    return sorted(rows, key=lambda r: (r.get("user_id"), str(r.get("event_time")), r.get("query") or ""))


def _brief(history):
    return [(h["event_type"], h["text"], h["time_bucket"]) for h in history]


def test_attach_history_is_strictly_before_capped_and_bucketed(spark):
    items = spark.createDataFrame([("i1", "red shoe", None, "shoe", None, [], None, None)], schemas.spark_schema("items"))
    events = spark.createDataFrame(
        [
            ev("u1", ts(1, 1), "search", query="q1"),
            ev("u1", ts(1, 2), "click", item="i1"),
            ev("u1", ts(2, 9, 30), "search", query="q2"),
            ev("u1", ts(2, 10), "click", item="i1"),  # same instant as the anchor: excluded
            ev("u1", ts(2, 10), "view", item="i1"),  # not a behaviour type
        ],
        schemas.spark_schema("behavior_events"),
    )
    beh = with_behaviour_text(events, items)
    anchors = spark.createDataFrame([("u1", ts(2, 10), "a1"), ("u1", ts(1, 1), "a0"), ("u9", ts(2, 10), "a9")],
                                    "user_id string, event_time timestamp, sample_id string")
    out = {r.sample_id: r.history for r in attach_history(index_behaviours(beh, 2), anchors).collect()}
    assert _brief(out["a1"]) == [("click", "red shoe", "1d_ago"), ("search", "q2", "lt_1h")]
    assert out["a1"][0]["category"] == "shoe"
    assert out["a1"][0]["item_id"] == "i1"
    assert out["a0"] == []
    assert out["a9"] == []
    longer = {r.sample_id: r.history for r in attach_history(index_behaviours(beh, 5), anchors).collect()}
    assert _brief(longer["a1"]) == [("search", "q1", "1d_ago"), ("click", "red shoe", "1d_ago"), ("search", "q2", "lt_1h")]


def test_karma_samples_targets_history_negatives_split(tiny_run):
    cfg, counts = tiny_run
    rows = _rows(cfg, "karma_samples")
    assert [(r["user_id"], r["target_item_id"], r["split"]) for r in rows] == [
        ("u1", "i3", "train"),  # 09:02 -> first 80% of the day
    ]  # u2's 23:00 click has no earlier behaviour: dropped (needs a history)
    (u1,) = rows
    assert _brief(u1["history"]) == [
        ("search", "red shoe", "1d_ago"), ("click", "red running shoe", "1d_ago"), ("search", "Blue  Hat", "lt_1h")
    ]
    assert u1["hard_negative_ids"] == ["i2"]  # viewed in request r1, not clicked
    assert counts[DS1]["karma_samples"] == 1  # day 1: the click on i1 after the search "red shoe"


def test_direct_targets_clicked_first_then_ranker_order(tiny_run):
    cfg, _ = tiny_run
    (row,) = _rows(cfg, "aigq_direct_sft")
    assert row["request_id"] == "h1"
    assert row["label_source"] == "hintq"
    assert row["target_queries"] == ["red hat", "hat", "blue shoe"]  # normalised, de-duplicated
    assert (row["gender"], row["age_bucket"], row["city"]) == ("f", "25-34", "hz")
    assert [h["text"] for h in row["history"]] == ["red shoe", "red running shoe", "Blue  Hat", "blue wool hat"]


def test_think_targets_sources_and_triggers(tiny_run):
    cfg, _ = tiny_run
    (row,) = _rows(cfg, "aigq_think_sft")
    assert row["event_time"] == ts(2, 9)  # the day session starts at the first search
    assert [h["text"] for h in row["history"]] == ["red shoe", "red running shoe"]
    assert [(t["query"], t["source"], t["triggers"]) for t in row["targets"]] == [
        ("red hat", "hint_click", [0, 1]),
        ("blue hat", "search", []),
        ("hat", "ranker", []),
        ("blue shoe", "ranker", [0, 1]),
    ]


def test_session_anchors_add_direct_search_sessions_and_later_think_anchors(spark, tiny_run, tmp_path):
    cfg = load_config(environ={"PIPELINE__SAMPLES__SESSION_ANCHORS": "true"})
    # validate and sessionize do not read the samples settings: start from the tiny run's clean and
    # sessions areas (a copy) and rebuild only the samples, which the setting changes.
    cfg["data_root"] = str(shutil.copytree(tiny_run[0]["data_root"], tmp_path / "data"))
    for ds in (DS1, DS2):
        build_samples.run(spark, cfg, ds)
    direct = [(r["event_time"], r["label_source"], r["target_queries"]) for r in _rows(cfg, "aigq_direct_sft")]
    assert sorted(direct) == [
        (ts(2, 9), "search_session", ["blue hat"]),
        (ts(2, 10), "hintq", ["red hat", "hat", "blue shoe"]),
        (ts(2, 10), "search_session", ["red hat"]),
    ]
    think = sorted(_rows(cfg, "aigq_think_sft"), key=lambda r: r["event_time"])
    assert [r["event_time"] for r in think] == [ts(2, 9), ts(2, 10)]
    assert len({r["sample_id"] for r in think}) == 2
    # The day-session row is unchanged; the 10:00 row only sees what happened from 10:00 on,
    # and its history already holds the morning's search and click.
    assert [t["query"] for t in think[0]["targets"]] == ["red hat", "blue hat", "hat", "blue shoe"]
    assert [(t["query"], t["source"], t["triggers"]) for t in think[1]["targets"]] == [
        ("red hat", "hint_click", [0, 1, 2, 3]),
        ("hat", "ranker", [2, 3]),
        ("blue shoe", "ranker", [0, 1, 2, 3]),
    ]
    assert [h["text"] for h in think[1]["history"]] == ["red shoe", "red running shoe", "Blue  Hat", "blue wool hat"]


def test_ctr_samples_and_item_corpus(tiny_run):
    cfg, _ = tiny_run
    ctr = _rows(cfg, "ctr_samples")
    assert [(r["query"], r["position"], r["label"]) for r in ctr] == [("Blue shoe", 0, 0), ("hat", 2, 0), ("red hat", 1, 1)]
    assert all(r["recent_queries"] == ["red shoe", "Blue  Hat"] for r in ctr)
    # DS1 has no impressions (a plain search log): one row per search, label = its request got a click.
    ((q, pos, label, recent),) = [(r["query"], r["position"], r["label"], r["recent_queries"])
                                  for r in _rows(cfg, "ctr_samples", DS1)]
    assert (q, pos, label, recent) == ("red shoe", 0, 1, [])
    corpus = {r["item_id"]: r["text"] for r in _rows(cfg, "item_corpus")}
    assert corpus["i1"] == "red running shoe | wear > shoe | acme | red"
    assert corpus["i2"] == "blue shoe | wear > shoe | acme"


def test_direct_fallback_from_search_sessions(spark):
    sessions = sessionize.with_session_id(
        spark.createDataFrame(
            [
                ev("u1", ts(1, 9), "search", query="Sock", request="s1"),
                ev("u1", ts(1, 9, 1), "search", query="boot", request="s2"),
                ev("u1", ts(1, 9, 2), "click", item="i1", request="s2"),
                ev("u1", ts(1, 9, 3), "search", query="sock ", request="s3"),
            ],
            schemas.spark_schema("behavior_events"),
        ),
        30,
        DS1,
    )
    (row,) = direct_from_search_sessions(sessions, max_queries=10).collect()
    assert row.target_queries == ["boot", "sock"]  # the query that led to a click first
    assert row.label_source == "search_session"
    assert row.event_time == ts(1, 9).replace(tzinfo=None)


def _content_hash(root, ds):
    digest = hashlib.sha256()
    for area, tables in (("clean", schemas.RAW_TABLES), ("sessions", schemas.SESSION_TABLES), ("samples", schemas.SAMPLE_TABLES)):
        for table in tables:
            rows = read_partition(root, area, table, ds).to_pylist()
            for row in sorted(repr(sorted(r.items())) for r in rows):
                digest.update(row.encode())
    return digest.hexdigest()


def test_rerun_of_a_day_gives_identical_partitions(spark, tiny_run):
    cfg, counts = tiny_run
    before = _content_hash(cfg["data_root"], DS2)
    validate.run(spark, cfg, DS2)
    sessionize.run(spark, cfg, DS2)
    again = build_samples.run(spark, cfg, DS2)
    assert again == counts[DS2]
    assert _content_hash(cfg["data_root"], DS2) == before
    for table in schemas.SAMPLE_TABLES:  # no leftover temporaries or duplicate partitions
        names = sorted(p.name for p in table_path(cfg["data_root"], "samples", table).iterdir())
        assert names == [f"ds={DS1}", f"ds={DS2}"], table
