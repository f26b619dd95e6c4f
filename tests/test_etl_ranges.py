"""Range-native jobs: ``--ds A --through B`` is one pass over the range, published all or nothing."""

from __future__ import annotations

import shutil

import pytest

from common.arrow_io import read_partition
from common.config import load_config
from common.paths import SUCCESS, is_published, partition_path
from common.publish import read_manifest
from jobs import build_samples, sessionize, validate
from jobs import spark as spark_io
from sources.synthetic import generate

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
JOBS = (validate, sessionize, build_samples)
AREAS = {"clean": ("behavior_events", "hintq_exposures", "items"), "quarantine": ("behavior_events",),
         "sessions": ("behavior_sessions", "day_sessions", "hintq_sessions"),
         "samples": ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples", "item_corpus")}


def _cfg(root):
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    cfg["samples"]["lookback_days"] = 1  # day 3's histories must leave day 1 out
    return cfg


def _rows(root, area, table, ds):
    return sorted(repr(sorted(r.items())) for r in read_partition(root, area, table, ds).to_pylist())


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Three synthetic days built day by day and as one range, from the same raw data."""
    base = tmp_path_factory.mktemp("ranges")
    generate(base / "daily", DAYS[0], len(DAYS), n_users=25, n_items=80, events_per_user_day=10.0, seed=5,
             bad_row_rate=0.02)
    shutil.copytree(base / "daily" / "raw", base / "range" / "raw")
    daily, ranged = _cfg(base / "daily"), _cfg(base / "range")
    for job in JOBS:
        for ds in DAYS:
            job.run(spark, daily, ds)
    results = {job.__name__: job.run_range(spark, ranged, DAYS) for job in JOBS}
    return base / "daily", base / "range", ranged, results


def test_a_range_equals_its_days_built_one_by_one(built):
    """Same partitions, manifests and rows, including histories that reach back across days."""
    daily, ranged, _cfg_, results = built
    assert set(results["jobs.build_samples"]) == set(DAYS)
    for area, tables in AREAS.items():
        for table in tables:
            for ds in DAYS:
                one, many = partition_path(daily, area, table, ds), partition_path(ranged, area, table, ds)
                assert is_published(many), (area, table, ds)
                assert read_manifest(one) == read_manifest(many), (area, table, ds)
                assert _rows(daily, area, table, ds) == _rows(ranged, area, table, ds), (area, table, ds)
    # The lookback cut mattered: day 3's histories hold day 2's behaviour but nothing of day 1.
    hist = [h["event_time"].date().isoformat() for r in read_partition(ranged, "samples", "karma_samples", DAYS[2])
            .to_pylist() for h in r["history"]]
    assert DAYS[1] in hist and DAYS[0] not in hist
    assert sum(s["behavior_events"]["rows_quarantined"] for s in results["jobs.validate"].values()) > 0


def test_a_failing_range_publishes_nothing(spark, built, tmp_path, monkeypatch):
    _daily, ranged, _cfg_, _ = built
    root = tmp_path / "data"
    shutil.copytree(ranged, root)
    for ds in DAYS:
        shutil.rmtree(partition_path(root, "samples", "ctr_samples", ds))
    real = spark_io.write_staged

    def fail_on_ctr(df, table, *args, **kwargs):
        if table == "ctr_samples":
            raise RuntimeError("disk full")
        return real(df, table, *args, **kwargs)

    monkeypatch.setattr(spark_io, "write_staged", fail_on_ctr)
    before = {ds: partition_path(root, "samples", "karma_samples", ds).joinpath(SUCCESS).stat().st_mtime_ns
              for ds in DAYS}
    with pytest.raises(RuntimeError, match="disk full"):
        build_samples.run_range(spark, _cfg(root), DAYS)
    for ds in DAYS:  # the tables written before the failure were not published either
        assert not partition_path(root, "samples", "ctr_samples", ds).exists()
        assert partition_path(root, "samples", "karma_samples", ds).joinpath(SUCCESS).stat().st_mtime_ns == before[ds]
    leftovers = [p.name for p in (root / "samples").glob("*/.*")]
    assert leftovers == [], leftovers


def test_a_rerun_replaces_exactly_its_days(spark, built, tmp_path):
    _daily, ranged, _cfg_, _ = built
    root = tmp_path / "data"
    shutil.copytree(ranged, root)
    stamp = {ds: partition_path(root, "sessions", "behavior_sessions", ds).joinpath(SUCCESS).stat().st_mtime_ns
             for ds in DAYS}
    rows = {ds: _rows(root, "sessions", "behavior_sessions", ds) for ds in DAYS}
    sessionize.run_range(spark, _cfg(root), DAYS[1:])
    after = {ds: partition_path(root, "sessions", "behavior_sessions", ds).joinpath(SUCCESS).stat().st_mtime_ns
             for ds in DAYS}
    assert after[DAYS[0]] == stamp[DAYS[0]]
    assert all(after[ds] != stamp[ds] for ds in DAYS[1:])
    assert {ds: _rows(root, "sessions", "behavior_sessions", ds) for ds in DAYS} == rows
