"""Sharded nightly generation (u2q, u2i): the shard split, staged parts, the merge + publish step,
and ``nightly_export`` with mapped shard tasks (``dag.test()``), on tiny models without Spark.

The Direct policy here is the tiny untrained one with random weights and a strong ``<q>``/eos
direction, so greedy decoding writes varied tokens and some parseable queries: if the batch a
user lands in (which changes with the shard count) changed their list, these tests would see it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.arrow_io import read_partition
from common.config import load_config
from common.paths import partition_path, published_ds
from common.publish import read_manifest
from export.data import ExportConfig, ExportInputError, load_active, shard_of, shard_users, users_digest
from export.staging import STAGING, clean_staging, part_name, read_parts, run_folder_name, staging_dir
from tests.export_fixtures import D1, D2, make_clean_root, register_folder, register_tiny_karma, tiny_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "nightly_export.py"
D3 = "2026-11-03"
TABLES = ("u2q", "u2i", "user_interest_embedding")
KEYS = {"u2q": ["user_id", "run_ds", "rank"], "u2i": ["user_id", "rank"], "user_interest_embedding": ["user_id"]}


# --- the split -------------------------------------------------------------------------------------
def test_shard_assignment_is_a_stable_partition_of_the_users():
    users = [f"u{i:06d}" for i in range(2000)] + ["ü-ß", "用户", ""]
    shuffled = users[:]
    random.Random(0).shuffle(shuffled)
    for n in (1, 2, 3, 7, 16):
        parts = [shard_users(users, i, n) for i in range(n)]
        assert sum(len(p) for p in parts) == len(users)  # disjoint ...
        assert set().union(*map(set, parts)) == set(users)  # ... and complete
        assert all(p == [u for u in users if u in set(p)] for p in parts)  # input order kept
        # independent of row order: the same users land in the same shard
        assert [set(shard_users(shuffled, i, n)) for i in range(n)] == [set(p) for p in parts]
        if n <= 7:
            assert min(len(p) for p in parts) > len(users) / n * 0.8  # roughly balanced
    assert shard_users(users, 0, 1) == users
    # crc32 of the UTF-8 id: pinned, the same in every process and on every machine
    assert [shard_of("alice", n) for n in (1, 2, 3, 4)] == [0, 1, 2, 3]
    code = "from export.data import shard_of; print([shard_of(u, 7) for u in ('alice', 'u000001', '用户')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "123"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([shard_of(u, 7) for u in ("alice", "u000001", "用户")])
    assert users_digest(["b", "a"]) == users_digest(["a", "b"]) != users_digest(["a"])
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            shard_users(users, *bad)


def test_shard_arguments_are_checked(tmp_path, capsys):
    from export.u2q import main

    common = ["--ds", D3, "--data-root", str(tmp_path)]
    for bad in (["--shard", "0"], ["--shard", "0", "--num-shards", "2"], ["--stage-only", "--num-shards", "2"],
                ["--shard", "2", "--num-shards", "2", "--stage-only"], ["--publish-parts"],
                ["--publish-parts", "--stage-only", "--shard", "0", "--num-shards", "1"]):
        with pytest.raises(SystemExit) as e:
            main([*common, *bad])
        assert e.value.code == 2, bad
    assert run_folder_name("manual__2026-11-02T00:00:00+00:00") != run_folder_name("manual__2026-11-02T00_00_00_00_00")
    assert "/" not in run_folder_name("a/../b")
    assert not run_folder_name(".hidden").startswith(".")


@pytest.mark.airflow
def test_shard_count_comes_from_the_param_else_the_config(monkeypatch):
    from dags.nightly_export import shard_count

    monkeypatch.delenv("PIPELINE__RUNTIME__EXPORT_SHARDS", raising=False)
    assert shard_count({"shards": 0}) == int(load_config()["runtime"]["export_shards"]) == 1
    monkeypatch.setenv("PIPELINE__RUNTIME__EXPORT_SHARDS", "4")
    assert shard_count({"shards": 0}) == 4
    assert shard_count({"shards": 2}) == 2
    monkeypatch.setenv("PIPELINE__RUNTIME__EXPORT_SHARDS", "-1")
    with pytest.raises(ValueError, match="export shards"):
        shard_count({})


# --- parts and the publish step, in process ----------------------------------------------------------
def register_noisy_policy(root: Path, base_dir: Path, work: Path, version: str) -> Path:
    """An untrained Direct policy with random weights (seeded) that writes varied tokens and some
    ``<q>``-separated queries under greedy decoding."""
    from aigq_model.load import save_aigq
    from aigq_model.parsing import Q_MARK
    from aigq_model.train_sft import SFTConfig, prepare_model

    model, tok = prepare_model(base_dir, SFTConfig(kind="direct"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        head = model.get_output_embeddings().weight
        direction = torch.randn(head.shape[1], generator=gen)
        head[tok.convert_tokens_to_ids(Q_MARK)] = direction * 0.5
        head[tok.eos_token_id] = direction * 0.3
    src = save_aigq(model, tok, work / f"noisy-direct-{version}")
    return register_folder(root, "aigq_direct", version, src,
                           {"format": "aigq", "kind": "direct", "style": "compressed", "ds": version,
                            "config": {"max_history": 20, "kind": "direct"}})


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    """Three days of clean data, the noisy Direct policy, a tiny KARMA model + index (no Think
    policy: x2q is skipped)."""
    work = tmp_path_factory.mktemp("shards")
    root = make_clean_root(work / "data", D1, 3)
    base = tiny_base(work / "base")
    register_noisy_policy(root, base, work, D1)
    register_tiny_karma(root, base, work, D1)
    return root


def _copy_root(base_root: Path, dst: Path) -> Path:
    shutil.copytree(base_root, dst)
    manifest = dst / "models" / "karma" / D1 / "manifest.json"  # the release records an absolute path
    manifest.write_text(manifest.read_text().replace(str(base_root), str(dst)))
    return dst


@pytest.fixture()
def root(base_root, tmp_path):
    return _copy_root(base_root, tmp_path / "data")


def _cfg(root: Path) -> dict:
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    cfg["export"] = {**cfg["export"], "batch_users": 8}
    cfg["export"]["generate"] = {**cfg["export"]["generate"], "max_new_tokens": 24}
    return cfg


def _rows(root: Path, table: str, ds: str) -> list[dict]:
    """The published rows without ``run_id`` (it names the run, not the content), sorted."""
    t = read_partition(root, "exports", table, ds)
    t = t.select([c for c in t.column_names if c != "run_id"])
    return t.sort_by([(k, "ascending") for k in KEYS[table]]).to_pylist()


def _files(root: Path, table: str, ds: str) -> dict[str, bytes]:
    path = partition_path(root, "exports", table, ds)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _stage(cfg, root, ds, run_id, shards, n):
    from export.u2i import stage_u2i_shard
    from export.u2q import stage_u2q_shard

    for i in shards:
        stage_u2q_shard(cfg, str(root), ds, run_id, i, n)
        stage_u2i_shard(cfg, str(root), ds, run_id, i, n)


@pytest.mark.slow
def test_sharded_parts_publish_exactly_the_unsharded_rows(root):
    from export.u2i import export_u2i, publish_u2i_parts
    from export.u2q import export_u2q, publish_u2q_parts

    cfg = _cfg(root)
    export_u2q(cfg, str(root), D2, "previous")  # earlier runs for the carry
    single = {"u2q": export_u2q(cfg, str(root), D3, "single"), "u2i": export_u2i(cfg, str(root), D3, "single")}
    assert single["u2q"]["counts"]["model_rows"] > 0  # the noisy policy writes queries of its own
    assert single["u2q"]["rows"] > single["u2q"]["rows_today"]  # and runs were carried
    ref = {t: (read_manifest(partition_path(root, "exports", t, D3)), _rows(root, t, D3)) for t in TABLES}
    active = load_active(root, D3, ExportConfig.from_config(cfg))
    assert len(active) == single["u2q"]["counts"]["active_users"] > 3
    for n in (1, 3):
        run_id = f"sharded-{n}"
        _stage(cfg, root, D3, run_id, range(n), n)
        parts = read_parts(root, "u2q", D3, run_id, n)
        assert [p.manifest["users_sha256"] for p in parts] == [users_digest(shard_users(active, i, n))
                                                               for i in range(n)]
        out = {"u2q": publish_u2q_parts(cfg, str(root), D3, run_id, n),
               "u2i": publish_u2i_parts(cfg, str(root), D3, run_id, n)}
        assert out["u2q"]["shards"] == out["u2i"]["shards"] == n
        for t in TABLES:
            manifest = read_manifest(partition_path(root, "exports", t, D3))
            assert manifest["content_hash"] == ref[t][0]["content_hash"], (n, t)
            assert _rows(root, t, D3) == ref[t][1], (n, t)  # float embeddings and scores bit for bit
            assert manifest["run_id"] == run_id
            assert manifest["shards"]["count"] == n
            assert all(g["passed"] for g in manifest["gates"].values())
        for t in ("u2q", "u2i"):
            assert read_manifest(partition_path(root, "exports", t, D3))["counts"] == ref[t][0]["counts"]
        assert not (root / "exports" / STAGING).exists()  # the run's staging is gone (and empty parents)
        assert published_ds(root, "exports", "u2q") == [D2, D3]


@pytest.mark.slow
def test_publish_needs_every_part_and_a_rerun_replaces_a_shards_part(root):
    from export.u2i import publish_u2i_parts
    from export.u2q import export_u2q, main, publish_u2q_parts, stage_u2q_shard

    cfg = _cfg(root)
    export_u2q(cfg, str(root), D3, "before")
    before = _files(root, "u2q", D3)
    _stage(cfg, root, D3, "r", [0, 2], 3)
    argv = ["--ds", D3, "--data-root", str(root), "--run-id", "r", "--publish-parts", "--num-shards", "3"]
    assert main(argv) == 4  # ExportInputError: the DAG fails the task without retrying
    with pytest.raises(ExportInputError, match=r"2 of 3 shard parts complete .*missing shards \[1\]"):
        publish_u2i_parts(cfg, str(root), D3, "r", 3)
    assert _files(root, "u2q", D3) == before
    assert not partition_path(root, "exports", "u2i", D3).exists()

    run_dir = staging_dir(root, "u2q", D3, "r")
    first = stage_u2q_shard(cfg, str(root), D3, "r", 1, 3)
    stage_u2q_shard(cfg, str(root), D3, "r", 1, 3)  # a retry replaces the part whole
    assert sorted(p.name for p in run_dir.iterdir()) == [part_name(i, 3) for i in range(3)]  # nothing hidden
    assert first["part"] == str(run_dir / part_name(1, 3))

    # A part written for other users (other inputs) is refused, naming the part.
    manifest_file = run_dir / part_name(2, 3) / "_manifest.json"
    good = manifest_file.read_text()
    manifest_file.write_text(json.dumps({**json.loads(good), "users_sha256": "0" * 64}))
    with pytest.raises(ExportInputError, match=part_name(2, 3)):
        publish_u2q_parts(cfg, str(root), D3, "r", 3)
    manifest_file.write_text(json.dumps({**json.loads(good), "model": {"name": "aigq_direct", "version": "x"}}))
    with pytest.raises(ExportInputError, match="disagree on \\['model'\\]"):
        publish_u2q_parts(cfg, str(root), D3, "r", 3)
    assert _files(root, "u2q", D3) == before
    manifest_file.write_text(good)
    stale = run_dir.parent / "stale-run"  # another run's leftovers, untouched for long: removed too
    (stale / part_name(0, 1)).mkdir(parents=True)
    for path in (stale / part_name(0, 1), stale):
        os.utime(path, (0, 0))
    assert publish_u2q_parts(cfg, str(root), D3, "r", 3)["shards"] == 3
    assert read_manifest(partition_path(root, "exports", "u2q", D3))["run_id"] == "r"
    assert not run_dir.exists()
    assert not stale.exists()
    assert staging_dir(root, "u2i", D3, "r").is_dir()  # u2i's parts wait for publish_u2i


@pytest.mark.slow
def test_a_killed_shard_leaves_no_visible_part_and_its_rerun_completes(root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PIPELINE__EXPORT__GENERATE__MAX_NEW_TOKENS": "8"}
    cmd = [sys.executable, "-m", "export.u2q", "--ds", D3, "--data-root", str(root), "--batch-users", "4",
           "--run-id", "k", "--shard", "0", "--num-shards", "2", "--stage-only"]
    proc = subprocess.run(cmd, cwd=REPO, env={**env, "EXPORT_FAULT_AFTER_BATCH": "0"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = staging_dir(root, "u2q", D3, "k")
    assert [p.name for p in run_dir.iterdir() if not p.name.startswith(".")] == []
    assert [p for p in run_dir.glob(f".tmp-{part_name(0, 2)}-*/u2q/part-00000.parquet")]  # the half-written part
    with pytest.raises(ExportInputError, match="missing shards \\[0, 1\\]"):
        read_parts(root, "u2q", D3, "k", 2)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in run_dir.iterdir()) == [part_name(0, 2)]  # leftovers removed
    assert result["users"] == read_manifest(run_dir / part_name(0, 2))["users"] > 0
    assert clean_staging(root, older_than_s=0) == [run_dir]
    assert not (root / "exports" / STAGING).exists()


# --- the DAG ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("nightly_export")


@pytest.fixture(scope="module")
def dag_root(base_root, tmp_path_factory):
    """A root with u2q of D1 published (so D2 carries earlier runs)."""
    from export.u2q import export_u2q

    root = _copy_root(base_root, tmp_path_factory.mktemp("dag") / "data")
    export_u2q(_cfg(root), str(root), D1, "d1")
    return root


def _dag_run(dag, root: Path, shards: int):
    conf = {"data_root": str(root), "batch_users": 8, "max_new_tokens": 24, "shards": shards}
    return dag.test(logical_date=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), run_conf=conf)


def _tis(run) -> dict[tuple[str, int], object]:
    return {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}


def _ok(run) -> bool:
    return str(run.state) in ("success", "DagRunState.SUCCESS")


@pytest.mark.airflow
@pytest.mark.slow
def test_dag_with_three_shards_publishes_the_rows_of_one_shard(dag, dag_root):
    results = {}
    for shards in (1, 3):
        run = _dag_run(dag, dag_root, shards)
        assert _ok(run), run.state
        tis = _tis(run)
        assert sorted(k for k in tis if k[0] in ("u2q", "u2i")) == [
            (t, i) for t in ("u2i", "u2q") for i in range(shards)]  # one mapped instance per shard
        assert str(tis[("x2q", -1)].state).endswith("skipped")  # no Think policy in this root
        assert str(tis[("report", -1)].state).endswith("success")
        assert str(tis[("watcher", -1)].state).endswith("skipped")  # nothing failed
        results[shards] = {t: (read_manifest(partition_path(dag_root, "exports", t, D2)), _rows(dag_root, t, D2))
                           for t in TABLES}
        assert not (dag_root / "exports" / STAGING).exists()
    for t in TABLES:
        one, three = results[1][t], results[3][t]
        assert one[0]["shards"]["count"] == 1
        assert three[0]["shards"]["count"] == 3
        assert three[0]["content_hash"] == one[0]["content_hash"], t
        assert three[1] == one[1], t
    assert results[3]["u2q"][0]["previous_ds"] == D1
    assert results[3]["u2q"][0]["rows_carried"] > 0
    assert results[3]["u2q"][0]["counts"]["model_rows"] > 0


@pytest.mark.airflow
@pytest.mark.slow
def test_dag_a_failing_shard_is_retried_alone_then_nothing_is_published(dag, dag_root, monkeypatch):
    if not partition_path(dag_root, "exports", "u2q", D2).exists():
        assert _ok(_dag_run(dag, dag_root, 1))
    before = {t: _files(dag_root, t, D2) for t in TABLES}
    published = {t: published_ds(dag_root, "exports", t) for t in TABLES}
    monkeypatch.setenv("EXPORT_FAIL_SHARD", "u2q:1,u2i:2")
    for task in dag.tasks:  # retry at once (the DAG waits 5 minutes)
        monkeypatch.setattr(task, "retry_delay", dt.timedelta(0))
    run = _dag_run(dag, dag_root, 3)
    assert not _ok(run)
    tis = _tis(run)
    state = {k: str(ti.state).rsplit(".", 1)[-1].lower() for k, ti in tis.items()}
    for table, bad in (("u2q", 1), ("u2i", 2)):
        for i in range(3):
            assert state[(table, i)] == ("failed" if i == bad else "success"), (table, i)
            assert tis[(table, i)].try_number == (2 if i == bad else 1), (table, i)  # retried alone
        assert state[(f"publish_{table}", -1)] == "upstream_failed"
    assert state[("report", -1)] == "success"  # all_done: the report shows the failure
    assert state[("watcher", -1)] == "failed"  # and the run fails
    for t in TABLES:  # nothing published; the earlier partition byte for byte as it was
        assert _files(dag_root, t, D2) == before[t], t
        assert published_ds(dag_root, "exports", t) == published[t]
    # The failed run's staging keeps the parts of the shards that succeeded (a cleared rerun of the
    # failed shard completes them); the failed shard left no part.
    for table, bad in (("u2q", 1), ("u2i", 2)):
        run_dir = staging_dir(dag_root, table, D2, run.run_id)
        assert sorted(p.name for p in run_dir.iterdir()) == [part_name(i, 3) for i in range(3) if i != bad]
    subprocess.run([sys.executable, "-m", "export.publish", "clean-staging", "--data-root", str(dag_root),
                    "--older-than-hours", "0"], cwd=REPO, check=True, capture_output=True)
    assert not (dag_root / "exports" / STAGING).exists()
