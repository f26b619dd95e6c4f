"""faiss item index: build, publish, load, search, and clear errors for broken folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from karma_model.index import IndexLoadError, IndexParams, build_index, index_ranks, load_index, save_index
from karma_model.metrics import exact_topk_and_ranks, ranks_from_topk, recall_loss, retrieval_metrics


@pytest.fixture()
def vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["HNSW32,Flat", "IVF4,Flat"])
def test_round_trip_finds_exact_nearest_neighbour(tmp_path, vectors, factory):
    ids = [f"item-{i}" for i in range(len(vectors))]
    built = build_index(vectors, ids, IndexParams(factory=factory, nprobe=4))
    out = save_index(built, tmp_path / "index", model_version="karma-test-1")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["factory"] == factory
    assert manifest["dim"] == 16
    assert manifest["n"] == 300
    assert manifest["metric"] == "ip"
    assert manifest["model_version"] == "karma-test-1"
    assert "build_seconds" in manifest  # karma_model.evaluate reports it

    loaded = load_index(out)
    rng = np.random.default_rng(1)
    queries = vectors[:20] + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
    scores, found = loaded.search(queries, k=5)
    assert found.shape == (20, 5)
    assert scores.shape == (20, 5)
    exact = exact_topk_and_ranks(queries / np.linalg.norm(queries, axis=1, keepdims=True), vectors,
                                 np.arange(20), ks=(5,))
    assert found[:, 0].tolist() == [ids[i] for i in exact.topk_idx[:, 0]]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # index ranks with history filtering: drop each query's own item, the next one ranks first
    ranks = ranks_from_topk(found, found[:, 1], exclude_lists=[[f] for f in found[:, 0]])
    assert ranks.tolist() == [1.0] * 20


def test_ivf_pq_trains_on_a_sample(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    built = build_index(x, np.arange(2000), IndexParams(factory="IVF8,PQ4x4", train_size=1000, nprobe=8))
    _, found = built.search(x[:10], 10)
    assert found.dtype.kind == "i"
    assert (found[:, :10] == np.arange(10)[:, None]).any(axis=1).mean() >= 0.8
    loaded = load_index(save_index(built, tmp_path / "ivfpq"), nprobe=2)
    assert loaded.params.nprobe == 2
    assert len(loaded) == 2000


def test_missing_results_are_none(vectors):
    built = build_index(vectors[:3], ["a", "b", "c"], IndexParams(factory="Flat"))
    _, found = built.search(vectors[:1], k=5)
    assert found[0, 0] == "a"
    assert found[0, 3:].tolist() == [None, None]


def test_corrupt_or_missing_index_names_the_path(tmp_path, vectors):
    out = save_index(build_index(vectors, list(range(300))), tmp_path / "index")
    blob = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(IndexLoadError, match=str(out / "index.faiss")):
        load_index(out)
    (out / "index.faiss").unlink()
    with pytest.raises(IndexLoadError, match="missing index file"):
        load_index(out)
    with pytest.raises(IndexLoadError, match=str(tmp_path / "nowhere")):
        load_index(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(IndexLoadError, match="not published"):
        load_index(tmp_path / "half")


def test_build_rejects_mismatched_ids(vectors):
    with pytest.raises(ValueError, match="item ids"):
        build_index(vectors, ["only-one"])
    with pytest.raises(ValueError, match="metric"):
        IndexParams(metric="cosine")


def test_index_ranks_match_exact_ranks_with_history_filtered(vectors):
    rng = np.random.default_rng(2)
    users = rng.normal(size=(40, 16)).astype(np.float32)
    targets = rng.integers(0, 300, size=40)
    history = [rng.choice(300, size=6, replace=False).tolist() for _ in range(40)]
    exact = exact_topk_and_ranks(users, vectors, targets, history, ks=(10, 50))
    ids = np.array([f"i{i}" for i in range(300)], dtype=object)
    flat = build_index(vectors, ids, IndexParams(factory="Flat"))
    ranks = index_ranks(flat, users, ids[targets], [ids[h].tolist() for h in history], ks=(10, 50))
    expected = np.where(exact.ranks <= 50, exact.ranks, np.inf)
    assert ranks.tolist() == expected.tolist()
    assert recall_loss(retrieval_metrics(exact.ranks, (10, 50)), retrieval_metrics(ranks, (10, 50))) == {
        "hr@10": 0.0, "ndcg@10": 0.0, "hr@50": 0.0, "ndcg@50": 0.0, "mrr": pytest.approx(0.0, abs=0.02)}
