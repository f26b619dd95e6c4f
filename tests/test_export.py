"""Nightly export: histories, gates, publishing (atomic under SIGKILL, idempotent reruns), u2q
retention, clear errors for missing or corrupt models, on tiny untrained models (no Spark)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aigq_model.parsing import Blocklist
from common.arrow_io import read_partition
from common.config import load_config
from common.paths import partition_path, published_ds
from common.publish import read_manifest
from common.registry import set_current
from export import gates
from export.data import BehaviourLog, ExportInputError, anchor_time, time_bucket
from export.gates import GateFailed
from export.publish import content_hash
from tests.export_fixtures import (
    D1,
    make_clean_root,
    register_tiny_karma,
    register_tiny_policy,
    tiny_base,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

REPO = Path(__file__).resolve().parents[1]
D3 = "2026-11-03"
EXPORTS = ("u2q", "x2q", "u2i", "user_interest_embedding")


def ts(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def ev(user, t, etype, query=None, item=None, request=None) -> dict:
    return dict(user_id=user, event_time=t, event_type=etype, query=query, item_id=item, scene="search",
                request_id=request)


# --- histories -------------------------------------------------------------------------------------
def test_history_is_strictly_before_the_anchor_ordered_capped_and_bucketed():
    items = [dict(item_id="i1", title="red shoe", leaf_category="shoe"), dict(item_id="i2", title=None,
                                                                               leaf_category=None)]
    events = [
        ev("u1", ts(1, 1), "search", query="Red Shoe"),
        ev("u1", ts(1, 2), "click", item="i1"),
        ev("u1", ts(2, 9), "buy", item="i2"),  # same instant: search < view < click < cart < buy
        ev("u1", ts(2, 9), "search", query="b"),
        ev("u1", ts(2, 9), "search", query="a"),
        ev("u1", ts(2, 10), "view", item="i1"),  # not a behaviour
        ev("u1", ts(2, 11), "exit"),  # not a behaviour
        ev("u1", ts(3, 0), "click", item="i1"),  # at the anchor: excluded
        ev("u2", ts(2, 8), "cart", item="i9"),  # unknown item: text = id, no category
    ]
    log = BehaviourLog(events, pa.Table.from_pylist(items))
    hist = log.history("u1", anchor_time("2026-11-02"), 4)
    assert [(h["event_type"], h["text"], h["time_bucket"]) for h in hist] == [
        ("click", "red shoe", "1d_ago"), ("search", "a", "lt_1d"), ("search", "b", "lt_1d"), ("buy", "i2", "lt_1d")]
    assert hist[0]["category"] == "shoe"
    assert hist[0]["item_id"] == "i1"
    assert hist[0]["event_time"] == ts(1, 2)
    assert hist[3]["category"] is None
    assert log.history("u1", ts(1, 1, 30), 20)[0]["time_bucket"] == "lt_1h"
    assert log.history("u1", ts(1, 1), 20) == []  # nothing strictly before
    assert log.history("u2", anchor_time("2026-11-02"), 20)[0]["text"] == "i9"
    assert log.history("nobody", anchor_time("2026-11-02"), 20) == []
    assert [time_bucket(s) for s in (3599.9, 86400 * 7.9, 86400 * 8)] == ["lt_1h", "4_7d_ago", "gt_7d_ago"]


@pytest.mark.spark
@pytest.mark.slow
def test_history_matches_the_spark_samples(etl_two_days):
    """Every history of the three sample tables, rebuilt in pandas at the same anchors."""
    from common.paths import previous_ds
    from export.data import read_days, read_snapshot

    root = etl_two_days  # D1 and D2 through the Spark jobs (shared, read-only)
    cfg = load_config(environ={})
    ds = "2026-11-02"
    days = [*previous_ds(ds, int(cfg["samples"]["lookback_days"])), ds]
    log = BehaviourLog(read_days(root, "clean", "behavior_events", days), read_snapshot(root, "items", ds)[0])
    n = int(cfg["samples"]["history_len"])
    checked = 0
    for table in ("aigq_direct_sft", "aigq_think_sft", "karma_samples"):
        for row in read_partition(root, "samples", table, ds).to_pylist():
            assert log.history(row["user_id"], row["event_time"], n) == row["history"], (table, row["sample_id"])
            checked += 1
    assert checked > 100


# --- gates -----------------------------------------------------------------------------------------
def test_each_gate_reports_a_violation_with_numbers():
    t = pa.table({"user_id": ["a", "a", "b", None], "rank": [1, 1, 1, 2], "query": ["x", "y", "bad", "z"],
                  "score": [0.1, 2.0, float("nan"), 0.5], "emb": [[1.0, 2.0], [1.0], [float("inf"), 0.0], [1.0, 2.0]]})
    assert gates.check_coverage(t, ["a", "b", "c", "d"], 0.9) == [
        "coverage 0.5000 (2 of 4 expected users) < min 0.9000"]
    assert gates.check_coverage(t, ["a", "b"], 1.0) == []
    assert gates.check_null_rates(t, 0.0) == ["user_id: null rate 0.2500 (1 of 4 rows) > max 0.0000"]
    assert gates.check_null_rates(t, {"*": 0.0, "user_id": 0.5}) == []
    assert gates.check_duplicates(t, ["user_id", "rank"]) == [
        "duplicate keys (user_id, rank): 1 extra rows over 1 keys, e.g. (a, 1)"]
    assert gates.check_duplicates(t, ["user_id", "query"]) == []
    assert gates.check_range(t, "score", 0.0, 1.0) == [
        "score: 2 of 4 values outside [0, 1] or not finite (min 0.1, max 2)"]
    assert gates.check_blocklist(t, Blocklist(["bad"])) == ["query: 1 block-listed values of 4, e.g. 'bad'"]
    assert gates.check_blocklist(t, Blocklist(["nothing"])) == []
    assert gates.check_list_lengths(t, ["user_id"], 1, 1) == [
        "lists per (user_id): 1 of 3 outside [1, 1] (shortest 1, longest 2)"]
    assert gates.check_value_lengths(t, "emb", 2, 2) == [
        "emb: 1 of 4 lists with length outside [2, 2] (shortest 1, longest 2)"]
    assert gates.check_finite_lists(t, "emb") == ["emb: 1 non-finite values in 1 of 4 rows"]
    assert gates.check_min_rows(t.slice(0, 0), 1) == ["0 rows < min 1"]

    results = gates.run_gates({"coverage": gates.check_coverage(t, ["a", "c"], 1.0), "nulls": []})
    assert results["nulls"] == {"passed": True, "failures": []}
    with pytest.raises(GateFailed, match=r"u2q: validation gate failed \(coverage: coverage 0.5000 \(1 of 2") as e:
        gates.enforce("u2q", results)
    assert list(e.value.failures) == ["coverage"]


# --- the exports on tiny models ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    """Three days of clean data, untrained tiny Direct/Think policies and KARMA model + index."""
    work = tmp_path_factory.mktemp("export")
    root = make_clean_root(work / "data", D1, 3)
    base = tiny_base(work / "base")
    register_tiny_policy(root, base, work, "aigq_direct", "direct", D1)
    register_tiny_policy(root, base, work, "aigq_think", "think", D1)
    register_tiny_karma(root, base, work, D1)
    return root


@pytest.fixture()
def root(base_root, tmp_path):
    """A private copy of the base root (tests may break models or publish)."""
    dst = tmp_path / "data"
    shutil.copytree(base_root, dst)
    manifest = dst / "models" / "karma" / D1 / "manifest.json"  # the release records an absolute path
    manifest.write_text(manifest.read_text().replace(str(base_root), str(dst)))
    return dst


def _cfg(root: Path, **export) -> dict:
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    cfg["export"] = {**cfg["export"], "batch_users": 16, **export}
    cfg["export"]["generate"] = {**cfg["export"]["generate"], "max_new_tokens": 16}
    return cfg


def _table(root, table, ds):
    return read_partition(root, "exports", table, ds)


def test_all_tables_publish_with_manifests_and_rerun_identically(root):
    from export.u2i import export_u2i
    from export.u2q import export_u2q
    from export.x2q import export_x2q

    cfg = _cfg(root)
    first = {"u2q": export_u2q(cfg, str(root), D3, "run-1"), "x2q": export_x2q(cfg, str(root), D3, "run-1"),
             "u2i": export_u2i(cfg, str(root), D3, "run-1")}
    for t in EXPORTS:
        path = partition_path(root, "exports", t, D3)
        assert (path / "_SUCCESS").is_file(), t
        manifest = read_manifest(path)
        assert manifest["run_id"] == "run-1"
        assert manifest["rows"] > 0
        assert all(g["passed"] for g in manifest["gates"].values()), manifest["gates"]
    u2q = _table(root, "u2q", D3)
    man = read_manifest(partition_path(root, "exports", "u2q", D3))
    assert man["model"] == {"name": "aigq_direct", "version": D1, "path": str(root / "models/aigq_direct" / D1),
                            "preferred": "aigq_direct_grpo", "fallback_used": True}
    active = man["counts"]["active_users"]
    assert u2q.num_rows == 10 * active
    assert set(u2q["source"].to_pylist()) <= {"model", "history", "fallback"}
    assert "history" in set(u2q["source"].to_pylist())  # the default merge puts own searches in
    assert man["lists"]["mode"] == "hybrid"
    assert set(u2q["generated_at"].to_pylist()) == {anchor_time(D3)}
    u2i = _table(root, "u2i", D3)
    emb = _table(root, "user_interest_embedding", D3)
    assert u2i.num_rows == 50 * active
    assert emb.num_rows == active
    assert {len(e) for e in emb["embedding"].to_pylist()} == {16}
    x2q = _table(root, "x2q", D3)
    assert x2q.num_rows > 0
    assert set(x2q["trigger_type"].to_pylist()) <= {"item", "query"}
    assert min(x2q["score"].to_pylist()) >= 0
    assert max(x2q["score"].to_pylist()) <= 1

    # Rerun with another run id: the same content (run_id is not content), fresh manifests.
    second = {"u2q": export_u2q(cfg, str(root), D3, "run-2"), "x2q": export_x2q(cfg, str(root), D3, "run-2"),
              "u2i": export_u2i(cfg, str(root), D3, "run-2")}
    for t in ("u2q", "x2q", "u2i"):
        assert second[t]["content_hash"] == first[t]["content_hash"], t
    assert content_hash(_table(root, "u2q", D3), ["user_id", "run_ds", "rank"]) == first["u2q"]["content_hash"]
    assert set(_table(root, "u2q", D3)["run_id"].to_pylist()) == {"run-2"}
    assert not [p for p in (root / "exports" / "u2q").iterdir() if p.name.startswith(".")]


def test_u2q_keeps_each_users_most_recent_m_runs(root):
    from export.u2q import export_u2q

    cfg = _cfg(root, u2q_keep_runs=2, keep_partitions=2)
    active = {}
    for ds in (D1, "2026-11-02", D3):
        out = export_u2q(cfg, str(root), ds, f"run-{ds}")
        snap = _table(root, "u2q", ds)
        active[ds] = set(snap.filter(pc.equal(snap["run_ds"], ds))["user_id"].to_pylist())
        assert len(active[ds]) == out["counts"]["active_users"]
    assert published_ds(root, "exports", "u2q") == ["2026-11-02", D3]  # keep_partitions=2
    snap = _table(root, "u2q", D3).to_pandas()
    runs = snap.groupby("user_id")["run_ds"].apply(lambda s: sorted(set(s))).to_dict()
    everyone = set().union(*active.values())
    assert set(runs) == everyone  # users not active today keep their lists
    for user, dates in runs.items():
        had = sorted(d for d in active if user in active[d])
        assert dates == had[-2:], user  # the newest M=2 runs of each user
    assert snap.groupby(["user_id", "run_ds"]).size().max() == 10
    assert not snap.duplicated(["user_id", "run_ds", "rank"]).any()
    # With M=1 only the newest run of each user remains.
    export_u2q(_cfg(root, u2q_keep_runs=1, keep_partitions=0), str(root), D3, "run-m1")
    snap = _table(root, "u2q", D3).to_pandas()
    assert (snap.groupby("user_id")["run_ds"].nunique() == 1).all()


def test_a_policy_that_loses_to_the_best_heuristic_is_refused_and_u2q_serves_that_heuristic(root):
    """Real evaluation of the tiny untrained policy next to the heuristics (scored on D3's searches
    from the start of D3, merge fitted on D2's), the real gate, the real export."""
    from aigq_model.baselines import BASELINES, own_queries
    from aigq_model.hybrid import MergePlan, merge
    from aigq_model.load import load_aigq
    from aigq_model.release import register_policy
    from aigq_model.run_eval import evaluate_model
    from common.registry import GateRejected, read_decision
    from export.data import build_samples, profiles, read_days, read_snapshot
    from export.u2q import export_u2q

    cfg = _cfg(root)
    version = root / "models" / "aigq_direct" / D1
    (root / "models" / "aigq_direct" / "CURRENT").unlink()  # the first day: nothing registered yet
    events = read_days(root, "clean", "behavior_events", [D1, "2026-11-02", D3])
    items = read_snapshot(root, "items", D3)[0]
    log, users = BehaviourLog(events, items), profiles(read_snapshot(root, "users", D3)[0])
    active = sorted(set(events["user_id"].to_pylist()))
    samples = build_samples(log, active, users, "2026-11-02", 20)  # truth: D3's searches
    fit = build_samples(log, active, users, D1, 20)  # truth: D2's searches
    model, tok = load_aigq(version)
    results, info = evaluate_model(model, tok, samples, events, items, name="aigq_direct", ks=(10, 30),
                                   baselines=("popularity", "cooccurrence", "own_history+popularity"), semantic=False,
                                   gen_config={"max_new_tokens": 16}, fit_samples=fit)
    metric = "query_hr@10"
    heuristics = ("popularity", "cooccurrence", "own_history+popularity", "heuristic_merge")
    best = info["exported"]["best_heuristic"][metric]
    assert results[best]["all"][metric] == max(results[b]["all"][metric] for b in heuristics)
    assert results["hybrid"]["all"][metric] < results[best]["all"][metric] + 0.01  # the untrained policy loses
    assert results[best]["all"][metric] > 0  # the truth is reachable: the heuristic hits
    (version / "metrics.json").write_text(json.dumps({"model": "aigq_direct", "results": results, "info": info}))
    with pytest.raises(GateRejected, match=f"best heuristic {best.replace('+', '[+]')} "):
        register_policy(version / "metrics.json", cfg)
    assert read_decision(root, "aigq_direct", D1)["registered"] is False

    out = export_u2q(cfg, str(root), D3, "run-h")
    man = read_manifest(partition_path(root, "exports", "u2q", D3))
    assert out["mode"] == man["lists"]["mode"] == "heuristic"
    assert man["lists"]["heuristic"] == best
    assert best in man["lists"]["reason"]
    assert man["model"]["name"] is None
    u2q = _table(root, "u2q", D3).to_pandas()
    assert set(u2q["source"]) == {"heuristic"}
    assert set(u2q["model_name"]) == {f"heuristic:{best}"}
    assert man["counts"]["heuristic_rows"] == len(u2q) == 10 * man["counts"]["active_users"]
    # every full list is the heuristic's list at the end of D3 (recomputed here from its parts)
    served = u2q.sort_values("rank").groupby("user_id")["query"].apply(list).to_dict()
    today = build_samples(log, sorted(served), users, D3, 20)
    if best in BASELINES:
        expected = BASELINES[best]().fit(events).recommend_many(today, k=10)
    else:  # heuristic_merge: own searches fused with a baseline by the plan fitted without the policy
        plan = MergePlan.from_dict(info["exported"]["heuristic_merge"])
        assert man["lists"]["merge"] == plan.to_dict()
        expected = []
        for s in today:
            mp = plan.for_user(own_queries(s["history"], s["event_time"]))
            h = BASELINES[mp.heuristic_name]().fit(events).recommend(s["history"], s["event_time"], 10, s["user_id"]) \
                if mp.heuristic_name else []
            expected.append(merge([], own_queries(s["history"], s["event_time"]), h, 10, mp)[0])
    full = [(s["user_id"], lst) for s, lst in zip(today, expected, strict=True) if len(lst) == 10]
    assert full
    assert all(served[u] == lst for u, lst in full)


def test_u2q_carries_runs_from_a_partition_written_with_the_old_ds_column(tmp_path):
    """Partitions published before ``run_ds`` was named so hold the run's date as ``ds``: the next
    run still carries their lists, dated by that column."""
    import pyarrow.parquet as pq

    from common.publish import atomic_partition
    from common.schemas import U2Q
    from export.u2q import carry_previous_runs, previous_snapshot

    legacy = pa.schema([pa.field("ds", pa.string()) if f.name == "run_ds" else f for f in U2Q])
    rows = [dict(user_id=u, ds=d, run_id="r", rank=1, query="q", source="model", model_name="m",
                 model_version="v", generated_at=ts(2, 0)) for u in ("a", "b") for d in ("2026-10-31", D1)]
    with atomic_partition(partition_path(tmp_path, "exports", "u2q", D1), {"rows": len(rows)}) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=legacy), tmp / "part-00000.parquet")
    previous, previous_ds = previous_snapshot(tmp_path, D3)
    assert previous_ds == D1
    assert previous.schema.equals(U2Q)
    assert sorted(zip(previous["user_id"].to_pylist(), previous["run_ds"].to_pylist(), strict=True)) == [
        ("a", "2026-10-31"), ("a", D1), ("b", "2026-10-31"), ("b", D1)]
    carried = carry_previous_runs(previous, D3, {"a"}, 2)
    assert sorted(zip(carried["user_id"].to_pylist(), carried["run_ds"].to_pylist(), strict=True)) == [
        ("a", D1), ("b", "2026-10-31"), ("b", D1)]


def test_constrained_decoding_serves_only_the_windows_searched_queries(root):
    """``known_queries: true``: the run's vocabulary is every query searched in the window (the
    decoder itself is tested on a trained policy in test_aigq_trie); every query the run's policy
    writes with the run's settings is one of them, and the u2q / x2q manifests record the setting;
    off, no vocabulary is built."""
    from aigq_model.generate import generate_lists
    from aigq_model.parsing import normalize_query
    from export.data import ExportConfig, build_samples
    from export.u2q import U2QGeneration, export_u2q
    from export.x2q import export_x2q

    assert U2QGeneration(_cfg(root), str(root), D3, "run-0", ExportConfig.from_config(_cfg(root))).known is None
    cfg = _cfg(root)
    # query_beam: the fixture's barely trained policy never writes a <q> greedily
    cfg["export"]["generate"] = {**cfg["export"]["generate"], "known_queries": True, "strategy": "query_beam",
                                 "num_beams": 4}
    gen = U2QGeneration(cfg, str(root), D3, "run-k", ExportConfig.from_config(cfg))
    searched = {normalize_query(e["query"]) for e in gen.inputs.events.to_pylist() if e["event_type"] == "search"}
    assert set(gen.known) == searched - {""}
    export_u2q(cfg, str(root), D3, "run-known")
    manifest = json.loads((root / "exports" / "u2q" / f"ds={D3}" / "_manifest.json").read_text())
    assert manifest["decoding"]["known_queries"] is True
    # the run's policy with the run's settings writes known queries only (the served list may be
    # the heuristic's when the policy loses its gate, so the generation is checked directly)
    users = sorted(gen.inputs.active)[:16]
    samples = build_samples(gen.inputs.log, users, gen.inputs.profile, D3, gen.ex.max_history)
    gens = generate_lists(gen.model, gen.tok, samples, k=10, decoding=gen.decoding, fallback=gen.popular,
                          style=gen.style, max_history=gen.max_history, known_queries=gen.known)
    written = [q for g in gens for q in g.queries[: g.n_model]]
    assert written and all(q in searched for q in written)
    assert not export_x2q(cfg, str(root), D3, "run-known").get("skipped")
    manifest = json.loads((root / "exports" / "x2q" / f"ds={D3}" / "_manifest.json").read_text())
    assert manifest["decoding"]["known_queries"] is True


def test_a_failed_gate_publishes_nothing_and_keeps_the_previous_partition(root):
    from export.u2q import export_u2q

    export_u2q(_cfg(root), str(root), D3, "good")
    before = content_hash(_table(root, "u2q", D3), ["user_id", "run_ds", "rank"])
    with pytest.raises(GateFailed) as e:  # a block-list that blocks everything leaves empty lists
        export_u2q(_cfg(root, blocklist=["regex:."]), str(root), D3, "bad")
    assert "coverage" in e.value.failures
    assert "0 of" in e.value.failures["coverage"][0]
    assert content_hash(_table(root, "u2q", D3), ["user_id", "run_ds", "rank"]) == before
    assert read_manifest(partition_path(root, "exports", "u2q", D3))["run_id"] == "good"
    assert not [p for p in (root / "exports" / "u2q").iterdir() if p.name.startswith(".")]
    with pytest.raises(GateFailed, match="list_lengths"):
        export_u2q(_cfg(root, min_list_len=11), str(root), D3, "bad")


def _cli(module: str, root: Path, *args: str, env: dict | None = None, **kw):
    cmd = [sys.executable, "-m", module, "--ds", D3, "--data-root", str(root), "--batch-users", "8", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PIPELINE__EXPORT__GENERATE__MAX_NEW_TOKENS": "16",
                **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_missing_or_corrupt_models_fail_clearly_and_leave_exports_untouched(root):
    from export.u2i import export_u2i
    from export.u2q import export_u2q
    from export.x2q import export_x2q

    cfg = _cfg(root)
    export_u2q(cfg, str(root), D3, "good")
    export_u2i(cfg, str(root), D3, "good")
    hashes = {t: read_manifest(partition_path(root, "exports", t, D3))["content_hash"] for t in ("u2q", "u2i")}

    # Registered but corrupt weights: the error names the folder.
    set_current(root, "aigq_direct", D1)
    (root / "models" / "aigq_direct" / D1 / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportInputError, match=str(root / "models" / "aigq_direct" / D1)):
        export_u2q(cfg, str(root), D3, "bad")

    # The KARMA index is gone: the error names the index file.
    index_dir = Path(read_manifest_json(root / "models" / "karma" / D1)["index_dir"])
    (index_dir / "index.faiss").unlink()
    with pytest.raises(ExportInputError, match=str(index_dir / "index.faiss")):
        export_u2i(cfg, str(root), D3, "bad")
    for t, h in hashes.items():
        assert read_manifest(partition_path(root, "exports", t, D3))["content_hash"] == h
        assert content_hash(_table(root, t, D3), ["user_id", "rank"] if t == "u2i" else ["user_id", "run_ds", "rank"]) == h

    # No policy registered at all: u2q does not fail, it serves the best heuristic list and says so.
    (root / "models" / "aigq_direct" / "CURRENT").unlink()
    proc = _cli("export.u2q", root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    lists = read_manifest(partition_path(root, "exports", "u2q", D3))["lists"]
    assert lists["mode"] == "heuristic", lists
    today = _table(root, "u2q", D3).to_pandas().query("run_ds == @D3")
    assert set(today["source"]) <= {"heuristic", "fallback"} and (today["source"] == "heuristic").any()
    assert today["model_name"].str.startswith("heuristic:").all()

    # No Think policy: x2q is skipped and writes nothing.
    shutil.rmtree(root / "models" / "aigq_think")
    result = export_x2q(cfg, str(root), D3, "x")
    assert result["skipped"]
    assert "aigq_think" in result["reason"]
    assert not (root / "exports" / "x2q").exists()


def read_manifest_json(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("module,tables,previous", [("export.u2q", ["u2q"], False),
                                                     ("export.u2i", ["u2i", "user_interest_embedding"], True)])
def test_sigkill_mid_write_leaves_no_visible_partition_and_the_rerun_completes(root, module, tables, previous):
    """A writer SIGKILLed after its first batch hit the disk: nothing new is visible (a partition
    published before stays as it was); the rerun cleans the leftovers and publishes without
    duplicates."""
    ds_dir = {t: partition_path(root, "exports", t, D3) for t in tables}
    before = {}
    if previous:
        from export.u2i import export_u2i

        export_u2i(_cfg(root), str(root), D3, "before")
        before = {t: (read_manifest(p)["content_hash"], sorted(x.name for x in p.iterdir())) for t, p in ds_dir.items()}
    proc = _cli(module, root, env={"EXPORT_FAULT_AFTER_BATCH": "0", "EXPORT_FAULT_ACTION": "sleep"})
    staged = None
    deadline = time.monotonic() + 240
    while staged is None and time.monotonic() < deadline and proc.poll() is None:
        parent = ds_dir[tables[0]].parent
        if parent.is_dir():
            staged = next((p for p in parent.glob(f".tmp-{ds_dir[tables[0]].name}-*/part-00000.parquet")), None)
        time.sleep(0.2)
    assert staged is not None, proc.communicate(timeout=5)[1][-2000:] if proc.poll() is not None else "no staged batch"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    for t, path in ds_dir.items():
        if previous:  # the earlier partition, byte for byte the same files and manifest
            assert (read_manifest(path)["content_hash"], sorted(x.name for x in path.iterdir())) == before[t]
            assert read_manifest(path)["run_id"] == "before"
            assert published_ds(root, "exports", t) == [D3]
        else:
            assert not path.exists(), t
            assert published_ds(root, "exports", t) == [], t
    assert staged.parent.exists()  # the half-written staging folder is all that is left

    proc = _cli(module, root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    for t, path in ds_dir.items():
        assert (path / "_SUCCESS").is_file()
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], t  # leftovers removed
    main = _table(root, tables[0], D3)
    keys = ["user_id", "run_ds", "rank"] if tables[0] == "u2q" else ["user_id", "rank"]
    assert gates.check_duplicates(main, keys) == []
    n_users = len(set(main["user_id"].to_pylist()))
    assert main.num_rows == n_users * (10 if tables[0] == "u2q" else 50) == result["rows"]


def test_export_token_budget_caps_think_outputs_too():
    from export.models import decoding

    cfg = {"aigq": {"generate": {"max_new_tokens": 96, "max_new_tokens_think": 224}}}
    dec, _ = decoding(cfg, {})
    assert (dec.max_new_tokens, dec.max_new_tokens_think) == (96, 224)
    dec, _ = decoding(cfg, {"max_new_tokens": 16})  # export.generate budget
    assert (dec.max_new_tokens, dec.max_new_tokens_think) == (16, 16)
    dec, _ = decoding(cfg, {"max_new_tokens": 16, "max_new_tokens_think": 40})
    assert (dec.max_new_tokens, dec.max_new_tokens_think) == (16, 40)
    dec, _ = decoding(cfg, {}, max_new_tokens=32)  # the DAG's Param
    assert (dec.max_new_tokens, dec.max_new_tokens_think) == (32, 32)


def test_u2i_of_a_refused_day_fuses_without_karma_and_embeds_with_the_registered_version(root, tmp_path):
    """Day 3's KARMA is refused while day 1's stays registered: u2i serves day 3's fusion of the
    other channels (null index_version allowed), the embeddings come from day 1's model."""
    from common.registry import commit_version, record_decision, stage_version
    from export.u2i import export_u2i
    from tests.export_fixtures import fit_tiny_channels

    tmp = stage_version(root, "karma", D3)
    fit_tiny_channels(root, D3, tmp)
    commit_version(tmp, root, "karma", D3, {"ds": D3, "metrics": {}})
    record_decision(root, "karma", D3, registered=False, failures=["fused valid hr@200 with KARMA 0.4 < ..."],
                    serving=D1)
    result = export_u2i(_cfg(root), str(root), D3, "run-1")
    assert result["serving"] == "fused_without_karma"
    manifest = read_manifest(partition_path(root, "exports", "u2i", D3))
    assert manifest["retrieval"]["channels_version"] == D3
    assert manifest["model"]["version"] == D1
    u2i = _table(root, "u2i", D3)
    assert set(u2i.column("model_name").to_pylist()) == {"heuristics"}
    assert set(u2i.column("channel").to_pylist()) <= {"cooccurrence", "text", "popularity"}
    emb = _table(root, "user_interest_embedding", D3)
    assert set(emb.column("model_version").to_pylist()) == {D1}
    assert emb.num_rows == len(set(u2i.column("user_id").to_pylist()))
