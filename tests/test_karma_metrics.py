"""Retrieval metrics, collapse diagnostics and baselines on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from karma_model.baselines import (
    CooccurrenceBaseline,
    PopularityBaseline,
    TextEmbeddingBaseline,
    evaluate_ranks,
    sequences_from_samples,
    tune,
)
from karma_model.diagnostics import (
    attention_sink_stats,
    information_abundance,
    reconstruction_token_accuracy,
    rouge_l_f,
)
from karma_model.metrics import (
    exact_topk_and_ranks,
    exclusion_mask,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ranks_from_scores,
    ranks_from_topk,
    recall_loss,
    retrieval_metrics,
)

# ---------------------------------------------------------------- metrics


def test_hit_rate_and_ndcg_exact_values():
    ranks = np.array([1, 2, 5, 11, np.inf])
    assert hit_rate_at_k(ranks, 1) == pytest.approx(0.2)
    assert hit_rate_at_k(ranks, 10) == pytest.approx(0.6)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert ndcg_at_k(ranks, 1) == pytest.approx(0.2)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11) / 5)
    out = retrieval_metrics(ranks, ks=(1, 10))
    assert list(out) == ["hr@1", "ndcg@1", "hr@10", "ndcg@10", "mrr", "n"]
    assert out["n"] == 5
    assert out["hr@10"] == pytest.approx(0.6)


def test_ranks_from_scores_and_history_filtering():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.1, 0.2, 0.3, 0.4, 0.5]])
    target = np.array([3, 0])
    assert ranks_from_scores(scores, target).tolist() == [4, 5]
    mask = exclusion_mask([[0, 1], [4, 0]], 5, target)  # the target (item 0 of row 1) is never excluded
    assert mask[1].tolist() == [False, False, False, False, True]
    assert ranks_from_scores(scores, target, mask).tolist() == [2, 4]
    # torch tensors work the same way
    assert ranks_from_scores(torch.tensor(scores), torch.tensor(target), torch.tensor(mask)).tolist() == [2, 4]


def test_ties_count_against_the_target_by_default():
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert ranks_from_scores(scores, [1]).tolist() == [3]
    assert ranks_from_scores(scores, [1], ties="optimistic").tolist() == [1]
    assert ranks_from_scores(scores, [1], ties="mean").tolist() == [2.0]


def test_exact_topk_and_ranks_matches_dense_ranks_across_blocks():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(7, 8)).astype(np.float32), rng.normal(size=(53, 8)).astype(np.float32)
    target = rng.integers(0, 53, size=7)
    history = [rng.choice(53, size=5, replace=False).tolist() for _ in range(7)]
    history[0].append(int(target[0]))  # a target inside the history still counts
    res = exact_topk_and_ranks(users, items, target, history, ks=(5, 10), chunk=3, item_chunk=11)
    scores = users @ items.T
    mask = exclusion_mask(history, 53, target)
    assert res.ranks.tolist() == ranks_from_scores(scores, target, mask).tolist()
    masked = np.where(mask, -np.inf, scores)
    assert res.topk_idx.tolist() == np.argsort(-masked, axis=1)[:, :10].tolist()
    assert not np.isin(res.topk_idx[1], history[1]).any()


def test_ranks_from_topk_filters_history_and_counts_misses():
    topk = np.array([[4, 1, 2, 3], [0, 1, 2, -1], [5, 6, 7, 8]])
    ranks = ranks_from_topk(topk, [2, 2, 9], exclude_lists=[[4], [0, 1], []])
    assert ranks.tolist() == [2.0, 1.0, math.inf]
    assert ranks_from_topk(np.array([["a", "b"]], dtype=object), ["b"], [["a"]]).tolist() == [1.0]
    assert recall_loss({"hr@10": 0.5, "n": 3}, {"hr@10": 0.25, "n": 3}) == {"hr@10": 0.25}


# ------------------------------------------------------------ diagnostics


def _causal_uniform(batch: int, heads: int, seq: int) -> torch.Tensor:
    rows = torch.tril(torch.ones(seq, seq))
    return (rows / rows.sum(-1, keepdim=True)).expand(batch, heads, seq, seq).clone()


def test_sink_ratio_all_mass_on_first_token_is_one():
    att = torch.zeros(2, 3, 4, 4)
    att[..., 0] = 1.0
    stats = attention_sink_stats((att, att), torch.ones(2, 4))
    assert stats.sink_ratio == 1.0
    assert stats.alpha.shape == (2, 3)
    np.testing.assert_allclose(stats.alpha, 1.0)
    assert stats.layer_sink_share.tolist() == [1.0, 1.0]


def test_sink_ratio_identity_maps_and_mixed_heads():
    eye = torch.eye(4).expand(1, 2, 4, 4).clone()  # each token attends to itself: α = 1/4
    stats = attention_sink_stats((eye,), torch.ones(1, 4))
    np.testing.assert_allclose(stats.alpha, 0.25)
    assert stats.sink_ratio == 0.0
    # causal uniform: α = mean_i 1/(i+1) over 4 positions = (1 + 1/2 + 1/3 + 1/4) / 4 ≈ 0.52
    layer = _causal_uniform(1, 2, 4)
    layer[:, 1] = torch.eye(4)  # head 1: no sink
    stats = attention_sink_stats((layer, eye), torch.ones(1, 4))
    np.testing.assert_allclose(stats.alpha[0], [(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 0.25])
    assert stats.layer_sink_share.tolist() == [0.5, 0.0]
    assert stats.sink_ratio == 0.25


def test_sink_uses_each_rows_first_real_token_under_left_padding():
    att = torch.zeros(2, 1, 4, 4)
    att[0, :, :, 0] = 1.0  # row 0 unpadded, sink on position 0
    att[1, :, :, 2] = 1.0  # row 1 left-padded by 2, sink on its first real token (position 2)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert attention_sink_stats((att,), mask).sink_ratio == 1.0
    att[1] = 0.0
    att[1, :, :, 0] = 1.0  # mass on a pad column does not count
    np.testing.assert_allclose(attention_sink_stats((att,), mask).alpha, [[0.5]])


def test_information_abundance_known_answers():
    rng = np.random.default_rng(0)
    assert information_abundance(np.outer(rng.normal(size=10), rng.normal(size=6))) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert information_abundance(q[:, :5] * 2.0) == pytest.approx(5.0)
    assert information_abundance(np.diag([4.0, 2.0, 2.0])) == pytest.approx(2.0)
    assert information_abundance(np.zeros((3, 3))) == 0.0


def test_reconstruction_token_accuracy():
    logits = torch.zeros(1, 4, 5)
    logits[0, torch.arange(4), torch.tensor([1, 2, 0, 4])] = 1.0  # predicts 1, 2, 0, 4
    labels = torch.tensor([[9, 1, 2, 3]])  # shifted targets 1, 2, 3
    assert reconstruction_token_accuracy(logits, labels) == pytest.approx(2 / 3)
    labels = torch.tensor([[-100, 1, -100, 4]])
    assert reconstruction_token_accuracy(logits, labels, shift=False) == pytest.approx(0.5)


def test_rouge_l_hand_examples():
    assert rouge_l_f("a b c d", "a b c d") == 1.0
    assert rouge_l_f("a b c d", "x y") == 0.0
    # LCS("police killed the gunman", "police kill the gunman") = 3: P = R = 3/4
    assert rouge_l_f("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # candidate 2 tokens, reference 4, LCS 2: P = 1, R = 0.5, F = 2/3
    assert rouge_l_f(["b", "d"], ["a", "b", "c", "d"]) == pytest.approx(2 / 3)
    assert rouge_l_f([], ["a"]) == 0.0


# -------------------------------------------------------------- baselines


def test_cooccurrence_predicts_what_followed_the_last_item():
    sequences = [[0, 1, 2], [0, 1, 3], [5, 1, 2], [4, 3], [4, 3], [4, 3], [4, 3]]
    cooc = CooccurrenceBaseline(n_items=6, window=1, max_history=2, decay=0.5).fit(sequences)
    scores = cooc.score([[0, 1]])[0]
    # after 1 came 2 twice and 3 once; the older item 0 (weight 0.5) adds 1 to item 1 (filtered)
    assert scores[2] > scores[3] > scores[5]
    ranks = evaluate_ranks(cooc, [[0, 1]], [2])
    assert ranks.tolist() == [1]
    # an unseen history backs off to popularity: 3 (5 times) before 1 (3 times)
    fallback = cooc.score([[]])[0]
    assert fallback.argmax() == 3
    assert fallback[1] > fallback[2]


def test_cooccurrence_window_and_recency_decay():
    sequences = [[0, 9, 1], [2, 3]]
    narrow = CooccurrenceBaseline(n_items=10, window=1).fit(sequences)
    wide = CooccurrenceBaseline(n_items=10, window=2).fit(sequences)
    assert narrow.score([[0]])[0][1] < 1e-3
    assert wide.score([[0]])[0][1] == pytest.approx(1.0, abs=1e-3)
    # the most recent item dominates with a strong decay
    strong = CooccurrenceBaseline(n_items=10, window=1, max_history=2, decay=0.1).fit(sequences)
    assert strong.score([[0, 2]])[0].argmax() == 3


def test_popularity_with_half_life_and_tune_selects_on_validation():
    seqs = [[0, 0, 0, 1], [1]]
    times = [[0.0, 0.0, 0.0, 10.0], [10.0]]
    plain = PopularityBaseline(3).fit(seqs, times)
    assert plain.score([[2]])[0].tolist() == [3.0, 2.0, 0.0]
    recent = PopularityBaseline(3, half_life=1.0).fit(seqs, times)
    assert recent.score([[2]])[0].argmax() == 1  # old item 0 decays below item 1
    result = tune(lambda **p: PopularityBaseline(3, **p), {"half_life": [None, 1.0]}, seqs,
                  valid_histories=[[2], [2]], valid_targets=[1, 1], metric="hr@1", ks=(1,), train_timestamps=times)
    assert result.best_params == {"half_life": 1.0}
    assert [t["hr@1"] for t in result.trials] == [0.0, 1.0]


def test_text_baseline_with_a_stub_encoder():
    vocab = {"red shoes": [1, 0, 0], "blue shirt": [0, 1, 0], "red sneakers": [0.9, 0.1, 0], "lamp": [0, 0, 1]}

    def encode(texts):
        out = np.array([vocab[t] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    items = ["red shoes", "blue shirt", "red sneakers", "lamp"]
    model = TextEmbeddingBaseline(items, decay=0.5, encoder=encode).fit()
    # an old "lamp" click, then a "red shoes" click (filtered): red sneakers ranks first
    assert evaluate_ranks(model, [[3, 0]], [2]).tolist() == [1]
    # a query string is encoded; it is not an item, so nothing is filtered
    assert evaluate_ranks(model, [[3, "red shoes"]], [2]).tolist() == [2]
    assert model.score([[]]).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_sequences_from_samples_keeps_each_users_latest_train_sample():
    def row(user, t, target, hist, split="train"):
        return {"user_id": user, "event_time": t, "target_item_id": target, "split": split,
                "history": [{"item_id": i, "event_time": ht} for i, ht in hist]}

    samples = [row("u1", 2, "b", [("a", 1)]), row("u1", 3, "c", [("a", 1), (None, 1.5), ("b", 2)]),
               row("u2", 9, "a", [("c", 8)], split="valid")]
    seqs, times = sequences_from_samples(samples, {"a": 0, "b": 1, "c": 2})
    assert seqs == [[0, 1, 2]]
    assert times == [[1.0, 2.0, 3.0]]


# ----------------------------------------------------------------- MiniLM


def test_minilm_encoder_offline_related_phrases_are_closer():
    from common.text_encoder import encode_texts

    emb = encode_texts(["running shoes for men", "men's jogging sneakers", "stainless steel saucepan"],
                       batch_size=8)
    assert emb.shape == (3, 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_cooccurrence_backward_weight_and_topk_items():
    from karma_model.baselines import topk_items

    sequences = [[0, 1], [0, 1], [2, 3], [1]]  # popularity 1 > 0 > 2 = 3
    forward = CooccurrenceBaseline(n_items=4, window=1).fit(sequences)
    both = CooccurrenceBaseline(n_items=4, window=1, backward_weight=0.5).fit(sequences)
    assert forward.score([[1]])[0][0] < 1e-3
    assert both.score([[1]])[0][0] == pytest.approx(1.0, abs=1e-3)
    idx, scores = topk_items(both, [[3], [2]], k=2)  # then popularity, history filtered
    assert idx.tolist() == [[2, 1], [3, 1]]
    assert np.all(np.diff(scores, axis=1) <= 0)
