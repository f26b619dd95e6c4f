"""The Spark ETL over each public dataset converted by its adapter (skips without the data)."""

from __future__ import annotations

import collections

import pytest

from common.arrow_io import read_partition
from common.config import load_config
from common.paths import published_ds
from jobs import build_samples, sessionize, validate
from sources import amazon_scientific, bestbuy, esci
from tests.test_adapters import dataset_dir

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _cfg(root):
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    return cfg


def _etl(spark, cfg, days):
    counts = {}
    for ds in days:
        summary = validate.run(spark, cfg, ds)
        for table, s in summary.items():
            assert s["rows_in"] == s["rows_out"] + s["rows_quarantined"], (ds, table)
        sessionize.run(spark, cfg, ds)
        counts[ds] = build_samples.run(spark, cfg, ds)
    return counts


def test_amazon_scientific_etl_keeps_the_leave_one_out_split(spark, tmp_path):
    src = dataset_dir("amazon_scientific")
    amazon_scientific.convert(src, tmp_path, start_ds="2026-11-01", days=3)
    cfg = _cfg(tmp_path)
    ds = "2026-11-01"
    counts = _etl(spark, cfg, [ds])[ds]
    samples = read_partition(tmp_path, "samples", "karma_samples", ds).to_pylist()
    users = {r["user_id"] for r in read_partition(tmp_path, "raw", "behavior_events", ds).to_pylist()}
    splits = collections.Counter(r["split"] for r in samples)
    # Every user of the day has exactly one valid and one test target, after a non-empty history.
    assert splits["valid"] == splits["test"] == len(users)
    assert splits["train"] > 0
    assert counts["karma_samples"] == len(samples)
    assert counts["item_corpus"] == 4385
    assert counts["aigq_direct_sft"] == 0
    assert counts["aigq_think_sft"] == 0  # no queries in this log


def test_bestbuy_etl_builds_query_samples(spark, tmp_path):
    src = dataset_dir("bestbuy_search")
    bestbuy.convert(src, tmp_path)
    days = published_ds(tmp_path, "raw", "behavior_events")
    busiest = max(days, key=lambda d: read_partition(tmp_path, "raw", "behavior_events", d).num_rows)
    cfg = _cfg(tmp_path)
    counts = _etl(spark, cfg, [busiest])[busiest]
    assert counts["aigq_direct_sft"] > 0
    assert counts["aigq_think_sft"] > 0
    assert counts["karma_samples"] > 0
    direct = read_partition(tmp_path, "samples", "aigq_direct_sft", busiest).to_pylist()
    assert {r["label_source"] for r in direct} == {"search_session"}  # no HintQ exposures in this log
    for r in direct:  # targets are normalised and unique
        assert r["target_queries"] == list(dict.fromkeys(r["target_queries"]))
        assert all(q == " ".join(q.lower().split()) for q in r["target_queries"])
        # the session's own queries never leak into the history before it
        assert all(h["event_time"] < r["event_time"] for h in r["history"])


def test_esci_etl(spark, tmp_path):
    src = dataset_dir("esci_sample")
    esci.convert(src, tmp_path, ds="2026-11-01")
    counts = _etl(spark, _cfg(tmp_path), ["2026-11-01"])["2026-11-01"]
    assert counts["karma_samples"] > 0
    assert counts["aigq_direct_sft"] > 0
    assert counts["item_corpus"] == read_partition(tmp_path, "raw", "items", "2026-11-01").num_rows
