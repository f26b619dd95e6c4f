"""Retrieval metrics: every model reduces to 1-based ranks of the next item, then HR/NDCG/MRR.

Conventions (generative-recommenders style):

- A rank is the 1-based position of the target among all catalogue items; items in the user's
  history are filtered out first (they can never outrank the target), the target itself is
  never filtered.
- Ties count against the target by default (``ties="pessimistic"``), so a collapsed model that
  gives every item the same score ranks the target last, not first.
- Ranks from an approximate index are computed over its top-K list; a target outside it is a
  miss (rank ``inf``).

Arrays may be numpy arrays or CPU torch tensors; results are numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_KS = (10, 50, 200, 1000)
_TIES = ("pessimistic", "optimistic", "mean")


def _np(x, dtype=None) -> np.ndarray:
    """numpy view of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def exclusion_mask(exclude_lists: Sequence[Iterable[int]], n_items: int, target_idx=None) -> np.ndarray:
    """Dense ``(n_users, n_items)`` boolean mask from per-user lists of item indices.

    The target (when given) is never masked. Negative or out-of-range indices are ignored.

    >>> exclusion_mask([[0, 2], [1]], 3, target_idx=[2, 0]).astype(int).tolist()
    [[1, 0, 0], [0, 1, 0]]
    """
    mask = np.zeros((len(exclude_lists), n_items), dtype=bool)
    for row, items in enumerate(exclude_lists):
        idx = np.fromiter((int(i) for i in items), dtype=np.int64)
        idx = idx[(idx >= 0) & (idx < n_items)]
        mask[row, idx] = True
    if target_idx is not None:
        mask[np.arange(len(exclude_lists)), _np(target_idx, np.int64)] = False
    return mask


def ranks_from_scores(scores, target_idx, exclude_mask=None, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of each row's target among all items, excluded items filtered out.

    ``scores``: ``(n_users, n_items)``; ``target_idx``: ``(n_users,)``; ``exclude_mask``: boolean
    ``(n_users, n_items)``, True = filtered (e.g. history items). ``ties``: ``"pessimistic"``
    (equal scores rank above the target), ``"optimistic"`` or ``"mean"`` (expected rank under
    random tie-breaking, float).

    >>> s = np.array([[0.9, 0.5, 0.7, 0.1]])
    >>> ranks_from_scores(s, [1]).tolist()
    [3]
    >>> ranks_from_scores(s, [1], exclude_mask=np.array([[True, False, False, False]])).tolist()
    [2]
    >>> ranks_from_scores(np.zeros((1, 4)), [1]).tolist()  # a constant scorer ranks the target last
    [4]
    """
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    scores = _np(scores)
    target_idx = _np(target_idx, np.int64)
    if scores.ndim != 2 or target_idx.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (n_users, n_items) and target_idx (n_users,); got {scores.shape}, "
                         f"{target_idx.shape}")
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, target_idx][:, None]  # (n_users, 1)
    valid = np.ones_like(scores, dtype=bool) if exclude_mask is None else ~_np(exclude_mask, bool)
    valid[rows, target_idx] = False  # the target is neither excluded nor compared with itself
    greater = ((scores > target_scores) & valid).sum(axis=1)
    if ties == "optimistic":
        return greater + 1
    equal = ((scores == target_scores) & valid).sum(axis=1)
    if ties == "pessimistic":
        return greater + equal + 1
    return greater + equal / 2.0 + 1


def hit_rate_at_k(ranks, k: int) -> float:
    """Share of rows whose target ranks within the top ``k``.

    >>> hit_rate_at_k([1, 3, 11, float("inf")], 10)
    0.5
    """
    ranks = _np(ranks, np.float64)
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def ndcg_at_k(ranks, k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 1)`` if ``rank <= k`` else 0.

    >>> ndcg_at_k([1, 3, 11], 10)  # (1 + 0.5 + 0) / 3
    0.5
    """
    ranks = _np(ranks, np.float64)
    if not ranks.size:
        return float("nan")
    gains = np.zeros_like(ranks)
    hit = ranks <= k
    gains[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return float(gains.mean())


def mrr(ranks) -> float:
    """Mean reciprocal rank (a miss, rank ``inf``, contributes 0).

    >>> mrr([1, 2, 4, float("inf")])
    0.4375
    """
    ranks = _np(ranks, np.float64)
    return float(np.mean(1.0 / ranks)) if ranks.size else float("nan")


def retrieval_metrics(ranks, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Flat dict of HR@K and NDCG@K for each K, plus MRR and the row count.

    >>> retrieval_metrics([1, 3], ks=(1, 10))
    {'hr@1': 0.5, 'ndcg@1': 0.5, 'hr@10': 1.0, 'ndcg@10': 0.75, 'mrr': 0.6666666666666666, 'n': 2}
    """
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    out["n"] = int(_np(ranks).size)
    return out


def recall_loss(exact_metrics: Mapping[str, float], index_metrics: Mapping[str, float]) -> dict[str, float]:
    """Absolute drop (exact minus index) of every metric both dicts share, except the row count.

    >>> recall_loss({"hr@10": 0.5, "ndcg@10": 0.3, "n": 4}, {"hr@10": 0.4, "ndcg@10": 0.3, "n": 4})
    {'hr@10': 0.09999999999999998, 'ndcg@10': 0.0}
    """
    return {k: float(exact_metrics[k]) - float(index_metrics[k]) for k in exact_metrics
            if k in index_metrics and k != "n"}


class ExactResult(NamedTuple):
    """Exact top-K (item indices and scores, best first, history filtered) and target ranks."""

    topk_idx: np.ndarray  # (n_users, max_k) int64
    topk_scores: np.ndarray  # (n_users, max_k) float32
    ranks: np.ndarray  # (n_users,) int64


def exact_topk_and_ranks(
    user_emb,
    item_emb,
    target_idx,
    exclude_lists: Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 256,
    item_chunk: int = 65_536,
) -> ExactResult:
    """Exact inner-product retrieval over the full catalogue, in user and item blocks.

    Memory stays near ``chunk * item_chunk`` float32 scores (64 MiB by default), whatever the
    catalogue size. Ranks are pessimistic on ties (see :func:`ranks_from_scores`); the top-K
    list excludes history items.

    >>> items = np.eye(4, dtype=np.float32)
    >>> users = np.array([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32)
    >>> res = exact_topk_and_ranks(users, items, [2], exclude_lists=[[1]], ks=(2,))
    >>> res.topk_idx.tolist(), res.ranks.tolist()
    ([[2, 0]], [1])
    """
    user_emb = _np(user_emb, np.float32)
    item_emb = _np(item_emb, np.float32)
    target_idx = _np(target_idx, np.int64)
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    max_k = min(max(ks), n_items)
    if target_idx.shape != (n_users,):
        raise ValueError(f"target_idx must have shape ({n_users},), got {target_idx.shape}")
    topk_idx = np.full((n_users, max_k), -1, dtype=np.int64)
    topk_scores = np.full((n_users, max_k), -np.inf, dtype=np.float32)
    ranks = np.ones(n_users, dtype=np.int64)
    for u0 in range(0, n_users, chunk):
        u1 = min(u0 + chunk, n_users)
        users = user_emb[u0:u1]
        targets = target_idx[u0:u1]
        rows = np.arange(u1 - u0)
        target_scores = np.einsum("ud,ud->u", users, item_emb[targets])[:, None]  # (u, 1)
        ex_rows, ex_cols = _exclusion_pairs(exclude_lists, u0, u1, targets, n_items)
        best_idx = np.empty((u1 - u0, 0), dtype=np.int64)
        best_scores = np.empty((u1 - u0, 0), dtype=np.float32)
        for i0 in range(0, n_items, item_chunk):
            i1 = min(i0 + item_chunk, n_items)
            scores = users @ item_emb[i0:i1].T  # (u, items in block)
            in_block = (ex_cols >= i0) & (ex_cols < i1)
            scores[ex_rows[in_block], ex_cols[in_block] - i0] = -np.inf
            ranks[u0:u1] += (scores >= target_scores).sum(axis=1)
            has_target = (targets >= i0) & (targets < i1)
            own = scores[rows[has_target], targets[has_target] - i0]  # the target is never compared with itself
            ranks[u0:u1][has_target] -= own >= target_scores[has_target, 0]
            best_idx, best_scores = _merge_topk(best_idx, best_scores, scores, i0, max_k)
        topk_idx[u0:u1, : best_idx.shape[1]] = best_idx
        topk_scores[u0:u1, : best_scores.shape[1]] = best_scores
    return ExactResult(topk_idx, topk_scores, ranks)


def _exclusion_pairs(exclude_lists, u0: int, u1: int, targets: np.ndarray, n_items: int):
    """(row, col) pairs to filter for users ``u0:u1``, the targets left out."""
    if exclude_lists is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = [], []
    for r, items in enumerate(exclude_lists[u0:u1]):
        idx = np.unique(np.fromiter((int(i) for i in items), dtype=np.int64))
        idx = idx[(idx >= 0) & (idx < n_items) & (idx != targets[r])]
        rows.append(np.full(idx.size, r, dtype=np.int64))
        cols.append(idx)
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _merge_topk(best_idx, best_scores, block_scores, offset: int, k: int):
    """Merge a block's scores into the running top-``k`` (sorted best first)."""
    kb = min(k, block_scores.shape[1])
    part = np.argpartition(-block_scores, kb - 1, axis=1)[:, :kb]
    cand_idx = np.concatenate([best_idx, part + offset], axis=1)
    cand_scores = np.concatenate([best_scores, np.take_along_axis(block_scores, part, axis=1)], axis=1)
    order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_idx, order, axis=1), np.take_along_axis(cand_scores, order, axis=1)


def ranks_from_topk(topk_ids, target_ids, exclude_lists: Sequence[Iterable] | None = None,
                    invalid=-1) -> np.ndarray:
    """1-based ranks from an index search result (``(n_users, K)`` ids, best first).

    Excluded ids (history) and ``invalid`` fillers (faiss pads with -1) are dropped before
    counting; a target not in the remaining list is a miss, rank ``inf``. Search with
    ``K = max(ks) + longest history`` so that filtering still leaves ``max(ks)`` candidates.

    >>> ranks_from_topk([[7, 3, 5, -1]], [5], exclude_lists=[[3]]).tolist()
    [2.0]
    >>> ranks_from_topk([["b", "a"]], ["z"]).tolist()
    [inf]
    """
    topk_ids = _np(topk_ids)
    ranks = np.full(topk_ids.shape[0], np.inf)
    for row, target in enumerate(_np(target_ids)):
        ids = topk_ids[row]
        if ids.dtype == object:
            drop = np.array([i is None or i == invalid for i in ids], dtype=bool)
        elif ids.dtype.kind in "iuf":
            drop = ids == invalid
        else:
            drop = np.zeros(ids.shape, dtype=bool)
        if exclude_lists is not None:
            excluded = [e for e in exclude_lists[row] if e != target]
            if excluded:
                drop |= np.isin(ids, np.asarray(excluded))
        hits = np.flatnonzero(ids[~drop] == target)
        if hits.size:
            ranks[row] = hits[0] + 1
    return ranks


def topk_recall(approx_ids, exact_ids, k: int) -> float:
    """Mean overlap ``|approx[:k] ∩ exact[:k]| / k`` (an index's recall@k against exact search).

    >>> topk_recall([[1, 2, 3]], [[3, 1, 9]], 3)
    0.6666666666666666
    """
    approx_ids, exact_ids = _np(approx_ids), _np(exact_ids)
    hits = [np.intersect1d(a[:k], e[:k]).size for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits) / k) if hits else float("nan")
