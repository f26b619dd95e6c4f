"""jobs/validate: row reasons, quarantine accounting, file-level contract failures, reruns."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import schemas
from common.arrow_io import read_partition, write_partition
from common.paths import is_published, partition_path
from common.publish import read_manifest
from jobs import validate
from tests.jobs_fixtures import DS1, DS2, ITEMS, USERS, ev, ts, write_tiny_dataset

pytestmark = pytest.mark.spark


def _write_base(root, events, ds=DS1):
    write_partition(root, "raw", "items", DS1, ITEMS)
    write_partition(root, "raw", "users", DS1, USERS)
    write_partition(root, "raw", "behavior_events", ds, events)


def test_each_bad_row_gets_its_reason_and_counts_add_up(spark, cfg):
    root = cfg["data_root"]
    events = [
        ev("u1", ts(1, 1), "search", query="red shoe"),
        ev("u1", ts(1, 1), "search", query="red shoe"),  # exact duplicate
        ev("u1", ts(1, 0, 30), "click", item="i1"),  # out of order: fine
        ev("u1", ts(1, 2), "search", query=None),  # search with a null query
        ev("u1", ts(1, 2), "search", query="   "),  # blank query
        ev(None, ts(1, 3), "click", item="i1"),
        ev("", ts(1, 3), "click", item="i1"),
        ev("u2", None, "click", item="i1"),
        ev("u2", ts(2, 0), "click", item="i1"),  # belongs to the next day's partition
        ev("u2", ts(1, 4), "teleport", item="i1"),
        ev("u2", ts(1, 4), "click", item=None),
        ev("u2", ts(1, 4), "click", item="i1", scene="moon"),
        ev("u2", ts(1, 5), "search", query="x" * 257),
        ev("u2", ts(1, 5), "search", query="x" * 256),  # exactly at the cap: fine
    ]
    _write_base(root, events)
    summary = validate.run(spark, cfg, DS1)
    be = summary["behavior_events"]
    assert be["rows_in"] == 14
    assert be["rows_out"] == 3
    assert be["rows_quarantined"] == 11
    assert be["reasons"] == {
        "duplicate": 1,
        "event_time_outside_partition": 1,
        "item_event_without_item_id": 1,
        "null_event_time": 1,
        "null_user_id": 2,
        "search_without_query": 2,
        "text_too_long": 1,
        "unknown_event_type": 1,
        "unknown_scene": 1,
    }
    quarantined = read_partition(root, "quarantine", "behavior_events", DS1)
    assert quarantined.schema.names == schemas.BEHAVIOR_EVENTS.names + ["reason"]
    by_row = {(r["user_id"], r["event_type"], r["query"], r["scene"]): r["reason"] for r in quarantined.to_pylist()}
    assert by_row[("u1", "search", None, "search")] == "search_without_query"
    assert by_row[("u2", "teleport", None, "search")] == "unknown_event_type"
    clean = read_partition(root, "clean", "behavior_events", DS1)
    assert clean.num_rows == 3
    assert clean.schema.equals(schemas.BEHAVIOR_EVENTS)
    assert read_manifest(partition_path(root, "clean", "behavior_events", DS1))["rows"] == 3
    assert read_manifest(partition_path(root, "quarantine", "behavior_events", DS1))["rows"] == 11


def test_invalid_utf8_is_quarantined(spark, cfg, tmp_path):
    root = cfg["data_root"]
    _write_base(root, [ev("u1", ts(1, 1), "search", query="ok")])
    raw = pa.array([b"fine", b"bad \xff\xfe bytes"], pa.binary())
    bad_strings = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # skips UTF-8 validation
    table = pa.table(
        {
            "user_id": ["u1", "u1"],
            "event_time": pa.array([ts(1, 1), ts(1, 2)], schemas.TS),
            "event_type": ["search", "search"],
            "query": bad_strings,
            "item_id": pa.array([None, None], pa.string()),
            "scene": ["search", "search"],
            "request_id": pa.array([None, None], pa.string()),
        }
    )
    part = partition_path(root, "raw", "behavior_events", DS1)
    pq.write_table(table, part / "part-00000.parquet")
    summary = validate.run(spark, cfg, DS1)["behavior_events"]
    assert summary["reasons"] == {"invalid_utf8": 1}
    assert summary["rows_out"] == 1


def test_hintq_and_impression_rules(spark, cfg):
    root = cfg["data_root"]
    _write_base(root, [ev("u1", ts(1, 1), "search", query="ok")])
    exposure = dict(request_id="h1", user_id="u1", event_time=ts(1, 1), shown_queries=["a", "b", "c"],
                    ranker_scores=[0.1, 0.2, 0.3], clicked_query="a")
    write_partition(root, "raw", "hintq_exposures", DS1, [
        exposure,
        {**exposure, "clicked_query": "z"},  # duplicate request id, and "z" was not shown
        {**exposure, "request_id": "h2", "clicked_query": "z"},
        {**exposure, "request_id": "h3", "shown_queries": []},
        {**exposure, "request_id": "h4", "ranker_scores": [0.5]},
        {**exposure, "request_id": "h5", "clicked_query": None},  # exposure with no click: valid
    ])
    write_partition(root, "raw", "query_impressions", DS1, [
        dict(user_id="u1", event_time=ts(1, 1), query="a", position=0, clicked=True),
        dict(user_id="u1", event_time=ts(1, 1), query="a", position=-1, clicked=False),
        dict(user_id="u1", event_time=ts(1, 1), query=None, position=1, clicked=False),
    ])
    summary = validate.run(spark, cfg, DS1)
    assert summary["hintq_exposures"]["reasons"] == {
        "clicked_query_not_shown": 2, "no_shown_queries": 1, "ranker_scores_length_mismatch": 1
    }
    assert summary["hintq_exposures"]["rows_out"] == 2
    assert summary["query_impressions"]["reasons"] == {"bad_position": 1, "null_query": 1}


def test_item_impression_rules_and_a_source_without_result_pages(spark, cfg):
    root = cfg["data_root"]
    _write_base(root, [ev("u1", ts(1, 1), "search", query="ok", request="s1")])
    page = dict(request_id="s1", user_id="u1", event_time=ts(1, 1), item_id="i1", position=0, clicked=True)
    write_partition(root, "raw", "item_impressions", DS1, [
        page,
        {**page, "item_id": "i2", "clicked": False},  # the same slot of the same page: a keyed duplicate
        {**page, "position": 1, "item_id": "i1", "clicked": False},  # the same item twice on a page: fine
        {**page, "request_id": None, "position": 2},
        {**page, "item_id": " ", "position": 3},
        {**page, "position": -1},
        {**page, "position": 4, "clicked": None},
        {**page, "position": 5, "event_time": ts(2, 0)},
    ])
    summary = validate.run(spark, cfg, DS1)["item_impressions"]
    assert summary["reasons"] == {"bad_position": 1, "duplicate": 1, "event_time_outside_partition": 1,
                                  "null_clicked": 1, "null_item_id": 1, "null_request_id": 1}
    assert (summary["rows_in"], summary["rows_out"]) == (8, 2)
    quarantined = read_partition(root, "quarantine", "item_impressions", DS1)
    assert quarantined.schema.names == schemas.ITEM_IMPRESSIONS.names + ["reason"]
    assert {r["position"]: r["reason"] for r in quarantined.to_pylist() if r["reason"] != "duplicate"} == {
        2: "null_request_id", 3: "null_item_id", -1: "bad_position", 4: "null_clicked",
        5: "event_time_outside_partition"}
    clean = read_partition(root, "clean", "item_impressions", DS1)
    assert clean.schema.equals(schemas.ITEM_IMPRESSIONS) and sorted(clean["position"].to_pylist()) == [0, 1]
    # a source without result pages (the public datasets) writes no raw partition: an empty clean one
    write_partition(root, "raw", "behavior_events", DS2, [ev("u1", ts(2, 1), "search", query="ok")])
    summary = validate.run(spark, cfg, DS2)["item_impressions"]
    assert (summary["rows_in"], summary["rows_out"], summary["files"]) == (0, 0, 0)
    assert is_published(partition_path(root, "clean", "item_impressions", DS2))
    assert read_partition(root, "clean", "item_impressions", DS2).num_rows == 0


def _corrupt(root, kind):
    part = partition_path(root, "raw", "behavior_events", DS2)
    path = part / "part-00000.parquet"
    table = pq.read_table(path)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "wrong_type":
        idx = table.schema.get_field_index("request_id")
        pq.write_table(table.set_column(idx, "request_id", pa.array([1] * table.num_rows, pa.int64())), path)
    elif kind == "missing_column":
        pq.write_table(table.drop_columns(["scene"]), path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "cannot read Parquet file"),
        ("wrong_type", "column 'request_id' has type int64, expected string"),
        ("missing_column", "missing column 'scene'"),
    ],
)
def test_bad_input_file_fails_naming_file_and_publishes_nothing(spark, cfg, kind, message):
    root = cfg["data_root"]
    write_tiny_dataset(root)
    path = _corrupt(root, kind)
    with pytest.raises(validate.InputContractError) as err:
        validate.run(spark, cfg, DS2)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    for area in ("clean", "quarantine"):
        for table in schemas.RAW_TABLES:
            assert not partition_path(root, area, table, DS2).exists(), (area, table)


def test_entry_point_exits_2_on_bad_input(cfg):
    """The job as spark would run it: a separate process, exit status 2, file named on stderr.
    A ``--through`` range is one pass published all or nothing: a bad file on DS2 leaves DS1
    unpublished too."""
    root = cfg["data_root"]
    write_tiny_dataset(root)
    path = _corrupt(root, "missing_column")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.validate", "--ds", DS1, "--through", DS2, "--data-root", root],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"file {path} is missing column 'scene'" in proc.stderr
    assert [json.loads(line)["ds"] for line in proc.stdout.splitlines() if line.startswith("{")] == []
    for ds in (DS1, DS2):
        assert not partition_path(root, "clean", "behavior_events", ds).exists(), ds


def test_rerun_replaces_partition_with_identical_content(spark, cfg):
    root = cfg["data_root"]
    write_tiny_dataset(root)
    first = validate.run(spark, cfg, DS2)
    before = read_partition(root, "clean", "behavior_events", DS2).sort_by("event_time")
    second = validate.run(spark, cfg, DS2)
    after = read_partition(root, "clean", "behavior_events", DS2).sort_by("event_time")
    assert first == second
    assert before.equals(after)
    assert after.num_rows == 7
    siblings = [p.name for p in partition_path(root, "clean", "behavior_events", DS2).parent.iterdir()]
    assert siblings == ["ds=2026-11-02"]
    assert is_published(partition_path(root, "clean", "items", DS2))  # snapshot re-published for ds
