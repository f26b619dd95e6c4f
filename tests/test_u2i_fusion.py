"""The fused u2i list: the fusion learns on planted channels, and a KARMA version that does not help
the channels it would join is refused while the export serves the fused list without it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from karma_model.fusion import CandidatePool, FusionFit, fit_fusion, fused_metrics

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def planted_lists(n_users: int = 400, n_items: int = 600, depth: int = 100, seed: int = 0):
    """Two channels that each rank the target (among their first 20) for a different half of the
    users, a third that never does; random filler elsewhere."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, n_items, n_users)
    lists = {}
    for name, share in (("a", (0.0, 0.5)), ("b", (0.4, 0.9)), ("noise", (1.0, 1.0))):
        arr = np.stack([rng.permutation(n_items)[:depth] for _ in range(n_users)])
        arr[arr == targets[:, None]] = -1  # the target appears only where planted
        lo, hi = int(share[0] * n_users), int(share[1] * n_users)
        arr[np.arange(lo, hi), rng.integers(0, 20, hi - lo)] = targets[lo:hi]
        lists[name] = arr
    return lists, targets


def test_fusion_beats_every_single_channel_and_ignores_a_useless_one():
    lists, targets = planted_lists()
    pool = CandidatePool(lists)
    fit = fit_fusion(pool, targets, ["a", "b", "noise"], k=50)
    single = {c: fit_fusion(pool, targets, [c], k=50).value for c in ("a", "b", "noise")}
    assert fit.value > max(single.values()) + 0.05  # the two halves together
    assert fit.weights["a"] > 0 and fit.weights["b"] > 0
    assert fit.weights["noise"] < min(fit.weights["a"], fit.weights["b"])
    assert sum(fit.weights.values()) == pytest.approx(1.0)
    # the fit generalises to other users drawn the same way
    lists2, targets2 = planted_lists(seed=1)
    held_out = fused_metrics(CandidatePool(lists2), targets2, fit, ks=(50,))["hr@50"]
    alone = fused_metrics(CandidatePool(lists2), targets2, FusionFit({"a": 1.0}, 60.0, "hr@50", 0.0), ks=(50,))
    assert held_out > alone["hr@50"] + 0.05


def test_fused_top_lists_are_deterministic_attributed_and_history_free():
    lists = {"karma": np.array([[5, 2, -1], [1, 3, 4]]), "popularity": np.array([[0, 1, 2], [0, 1, 2]])}
    pool = CandidatePool(lists)
    top = pool.top({"karma": 1.0, "popularity": 0.0}, 5.0, 4)
    assert top.items.tolist() == [[5, 2, 0, 1], [1, 3, 4, 0]]  # popularity only backs off
    assert [top.channel_names(r) for r in range(2)] == [["karma", "karma", "popularity", "popularity"],
                                                        ["karma", "karma", "karma", "popularity"]]
    assert (np.diff(top.scores, axis=1) <= 0).all()
    again = CandidatePool(lists).top({"karma": 1.0, "popularity": 0.0}, 5.0, 4)
    assert np.array_equal(again.items, top.items)
    fit = FusionFit({"karma": 0.5, "popularity": 0.5}, 5.0, "hr@4", 0.25, 3)
    assert FusionFit.from_dict(json.loads(json.dumps(fit.to_dict()))) == fit
    with pytest.raises(ValueError, match="different user counts"):
        CandidatePool({"a": np.zeros((2, 3), int), "b": np.zeros((3, 3), int)})


@pytest.mark.slow
@pytest.mark.spark
def test_a_karma_that_does_not_help_is_refused_and_u2i_serves_the_fusion_without_it(etl_two_days, tmp_path):
    """A collapsed KARMA (every history encodes to the same vector) joins the channels of the fused
    list, gains nothing on valid, is refused by the gate; the export then publishes the fused list
    of the other channels, and its manifest and rows say so."""
    import torch

    from base_lm.load import read_manifest
    from common.arrow_io import read_partition
    from common.config import load_config
    from common.paths import partition_path
    from common.publish import atomic_partition
    from common.registry import GateRejected, current_version
    from common.steps import write_json_atomic
    from export.u2i import export_u2i
    from karma_model.channels import FUSION_FILE, RETRIEVAL_DIR
    from karma_model.embed import embed_catalogue
    from karma_model.evaluate import evaluate
    from karma_model.load import save_karma
    from karma_model.model import KarmaModel
    from karma_model.release import register_karma
    from tests.test_base_lm import make_tiny_base
    from tests.test_karma_model import tiny_config

    ds = "2026-11-02"
    root = tmp_path / "data"
    shutil.copytree(etl_two_days, root)
    base = make_tiny_base(tmp_path / "base")
    config = tiny_config("act", max_steps=1)
    model, tok = KarmaModel.from_base(base, config)
    with torch.no_grad():
        model.user_proj.weight.zero_()  # collapsed: e_u = 0 for every user
    out = root / "models" / "karma_act" / ds
    manifest = {"name": "karma_act", "version": ds, "ds": ds, "ds_range": ["2026-11-01", ds], "variant": "act",
                "config": config.to_dict(), "base_model": {"path": str(base), "manifest": read_manifest(base)}}
    with atomic_partition(out, manifest) as t:
        save_karma(model, tok, t, manifest)
    metrics, _ = evaluate(out, root, ds, n_attention=2, n_decode=0, include_base=False, fusion_depth=100,
                          fusion_k=50, retrieval_dir=out / RETRIEVAL_DIR)
    summary = metrics["summary"]
    assert summary["fused_valid_hr@50"] == summary["fused_without_valid_hr@50"]  # KARMA adds nothing
    assert summary["fused_without_valid_hr@50"] >= summary["cooccurrence_hr@50"] - 1.0  # present, a number
    fusion = json.loads((out / RETRIEVAL_DIR / FUSION_FILE).read_text())
    assert fusion["without"]["fit"]["weights"]["karma"] == 0.0
    # the gate reads HR@200 by default; this tiny catalogue (200 items) puts every target in a top 200
    write_json_atomic(out / "metrics.json", metrics, default=str)
    info = embed_catalogue(out, root, ds, version=ds, index_section={"factory": "Flat"})
    with pytest.raises(GateRejected, match="with KARMA .* < without KARMA"):
        register_karma(root, out, ds, index_dir=info["index_dir"])
    assert current_version(root, "karma") is None

    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    cfg["export"] = {**cfg["export"], "batch_users": 16}
    result = export_u2i(cfg, str(root), ds, "run-1")
    assert result["serving"] == "fused_without_karma"
    assert result["embedding_path"] is None
    published = json.loads((partition_path(root, "exports", "u2i", ds) / "_manifest.json").read_text())
    assert published["retrieval"]["serving"] == "fused_without_karma"
    assert "refused" in published["retrieval"]["reason"]
    assert published["retrieval"]["fit"]["weights"]["karma"] == 0.0
    assert "not published" in published["user_interest_embedding"]
    u2i = read_partition(root, "exports", "u2i", ds).to_pylist()
    assert u2i and {r["model_name"] for r in u2i} == {"heuristics"}
    assert {r["channel"] for r in u2i} <= {"cooccurrence", "text", "popularity"}
    assert {r["index_version"] for r in u2i} == {None}
    per_user = {}
    for r in u2i:
        per_user.setdefault(r["user_id"], []).append(r["rank"])
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in per_user.values())
    assert not partition_path(root, "exports", "user_interest_embedding", ds).exists()


def test_channel_lists_filter_the_history_unless_told_to_spare_an_item():
    """The export filters every history item; the evaluation spares the target (as for every model):
    a user who re-clicks an item they viewed is a hit, not a miss."""
    from karma_model.baselines import CooccurrenceBaseline, PopularityBaseline, TextEmbeddingBaseline
    from karma_model.channels import HeuristicChannels

    seqs = [[0, 1, 2], [0, 1, 3], [1, 2, 3], [2, 3, 0]]
    vectors = np.eye(4, dtype=np.float32)
    channels = HeuristicChannels([f"i{i}" for i in range(4)], CooccurrenceBaseline(4, window=2).fit(seqs),
                                 TextEmbeddingBaseline(item_embeddings=vectors).fit(), PopularityBaseline(4).fit(seqs))
    served = channels.lists([[0, 1]], depth=4)
    assert all(not ({0, 1} & set(v[0].tolist())) for v in served.values())
    spared = channels.lists([[0, 1]], depth=4, exclude=[[0]])  # the target 1 stays a candidate
    assert 1 in spared["popularity"][0].tolist() and 1 in spared["text"][0].tolist()
    assert 0 not in spared["popularity"][0].tolist()
