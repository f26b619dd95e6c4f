"""Multi-channel retrieval: the u2i list is a weighted reciprocal-rank fusion of candidate channels.

Channels (:data:`CHANNELS`) each give every user a ranked candidate list (history items filtered):
``karma`` (the model's ANN or exact neighbours), ``cooccurrence`` (items that followed the user's
recent items), ``text`` (MiniLM text mean) and ``popularity``. The fused score of an item is

    ``s(i) = Σ_c w_c / (k0 + r_c(i))``   (``r_c(i)`` its 1-based rank in channel c; absent: no term)

and the list is the items by ``s`` (ties: the lower item row first, so a list is deterministic).
The ``channel`` of a served item is the channel with the largest term ``w_c / (k0 + r_c)``.

Why reciprocal ranks and not the channels' scores: the scores live on unrelated scales (cosines,
transition counts, click counts) that drift from day to day, while ranks are comparable and a
weight then reads as "how much this channel's top is worth". Why weights and not quotas: a weight
lets an item that two channels agree on rise above either channel's own top item, which quotas
cannot express, and it degenerates to a single channel when the other weights are 0.

Fitting (:func:`fit_fusion`, on the valid split only): coordinate ascent over a weight grid and
``k0``, starting from the best single channel, accepting only strict gains of ``metric``. So the
fused list scores at least the best single channel on valid, and the fit *with* KARMA starts from
the fit *without* it: it scores at least as much, and the gate (:mod:`karma_model.release`) asks
for a margin on top.

All of it runs on a :class:`CandidatePool`: the union of the channels' candidates, one entry per
(user, item), holding each channel's rank; scoring a weight vector is one matrix product over the
entries, so a fit is a few hundred of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from karma_model.metrics import retrieval_metrics

CHANNELS = ("karma", "cooccurrence", "text", "popularity")
#: Weight the popularity channel always has on top of its fitted one: far below any fitted term, so
#: it only orders the items no weighted channel proposes, after all of them (a cold user still
#: gets a full list, and a list is never shorter because a fit gave popularity no weight).
BACKOFF_WEIGHT = 1e-9
HEURISTIC_CHANNELS = tuple(c for c in CHANNELS if c != "karma")
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
K0_GRID = (5.0, 20.0, 60.0, 150.0)


class CandidatePool:
    """The union of channel candidate lists: one entry per (user, item) with each channel's rank.

    ``lists``: channel name → ``(n_users, depth)`` item rows, best first, ``-1`` for no candidate.

    >>> pool = CandidatePool({"a": np.array([[3, 1]]), "b": np.array([[1, -1]])})
    >>> pool.items.tolist(), pool.ranks.tolist()
    ([1, 3], [[2, 1], [1, 0]])
    """

    def __init__(self, lists: Mapping[str, np.ndarray]):
        if not lists:
            raise ValueError("no channels")
        self.channels = tuple(lists)
        shapes = {np.asarray(v).shape[0] for v in lists.values()}
        if len(shapes) != 1:
            raise ValueError(f"channel lists cover different user counts: {sorted(shapes)}")
        self.n_users = shapes.pop()
        rows, items, chans, ranks = [], [], [], []
        for c, name in enumerate(self.channels):
            arr = np.asarray(lists[name], dtype=np.int64)
            if arr.ndim != 2:
                raise ValueError(f"channel {name!r}: expected (n_users, depth), got shape {arr.shape}")
            r, pos = np.nonzero(arr >= 0)
            rows.append(r)
            items.append(arr[r, pos])
            chans.append(np.full(r.size, c, dtype=np.int64))
            ranks.append(pos + 1)
        rows_a, items_a = np.concatenate(rows), np.concatenate(items)
        chans_a, ranks_a = np.concatenate(chans), np.concatenate(ranks)
        self.n_items = int(items_a.max()) + 1 if items_a.size else 1
        keys = rows_a * self.n_items + items_a
        unique, inverse = np.unique(keys, return_inverse=True)  # sorted by (row, item)
        self.keys = unique
        self.rows = unique // self.n_items
        self.items = unique % self.n_items
        self.ranks = np.zeros((unique.size, len(self.channels)), dtype=np.int64)  # 0 = not a candidate
        # a channel lists an item once; if it repeats one, its best rank counts
        order = np.argsort(-ranks_a, kind="stable")
        self.ranks[inverse[order], chans_a[order]] = ranks_a[order]
        self.starts = np.searchsorted(self.rows, np.arange(self.n_users + 1))

    def __len__(self) -> int:
        return int(self.keys.size)

    def _weights(self, weights: Mapping[str, float]) -> np.ndarray:
        w = np.asarray([float(weights.get(c, 0.0)) for c in self.channels])
        if "popularity" in self.channels:
            w[self.channels.index("popularity")] += BACKOFF_WEIGHT
        return w

    def _inverse_ranks(self, k0: float) -> np.ndarray:
        """``1 / (k0 + r_c)`` per entry and channel, 0 where a channel lacks the item."""
        return np.where(self.ranks > 0, 1.0 / (k0 + self.ranks), 0.0)

    def terms(self, weights: Mapping[str, float], k0: float) -> np.ndarray:
        """``(n_entries, n_channels)`` terms ``w_c / (k0 + r_c)`` (0 where a channel lacks the item)."""
        return self._inverse_ranks(k0) * self._weights(weights)[None, :]

    def scores(self, weights: Mapping[str, float], k0: float) -> np.ndarray:
        """Fused score of every entry (one matrix-vector product: the fit calls it hundreds of times)."""
        return self._inverse_ranks(k0) @ self._weights(weights)

    def target_entries(self, targets: Sequence[int]) -> np.ndarray:
        """Entry index of each user's target item, ``-1`` when no channel proposes it."""
        targets = np.asarray(targets, dtype=np.int64)
        keys = np.arange(self.n_users, dtype=np.int64) * self.n_items + targets
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, max(len(self) - 1, 0))
        found = (targets >= 0) & (targets < self.n_items) & (self.keys[pos] == keys) if len(self) else \
            np.zeros(self.n_users, dtype=bool)
        return np.where(found, pos, -1)

    def target_ranks(self, target_entries: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """1-based fused rank of each target (ties count against it); ``inf`` when it is absent or
        scores 0 (no weighted channel proposes it)."""
        has = target_entries >= 0
        t = np.where(has, scores[np.maximum(target_entries, 0)], np.inf)
        t = np.where(t > 0, t, np.inf)
        above = scores >= t[self.rows]
        counts = np.bincount(self.rows[above], minlength=self.n_users).astype(np.float64)
        return np.where(np.isfinite(t), counts, np.inf)

    def top(self, weights: Mapping[str, float], k0: float, k: int) -> FusedLists:
        """Each user's ``k`` best fused items (fewer when the channels propose fewer)."""
        terms = self.terms(weights, k0)
        scores = terms.sum(axis=1)
        keep = scores > 0
        order = np.lexsort((self.items, -scores, self.rows))  # by user, score desc, item row asc
        order = order[keep[order]]
        rows = self.rows[order]
        first = np.searchsorted(rows, np.arange(self.n_users))
        pos = np.arange(order.size) - first[rows]
        take = pos < k
        order, rows, pos = order[take], rows[take], pos[take]
        items = np.full((self.n_users, k), -1, dtype=np.int64)
        out_scores = np.zeros((self.n_users, k), dtype=np.float64)
        channel = np.full((self.n_users, k), -1, dtype=np.int64)
        items[rows, pos] = self.items[order]
        out_scores[rows, pos] = scores[order]
        channel[rows, pos] = terms[order].argmax(axis=1)
        return FusedLists(items, out_scores, channel, self.channels)


@dataclass
class FusedLists:
    """Fused top-k per user: item rows (-1 = none), scores, and the index into ``channels`` of the
    channel that contributed most to each item."""

    items: np.ndarray
    scores: np.ndarray
    channel: np.ndarray
    channels: tuple[str, ...]

    def channel_names(self, row: int) -> list[str]:
        return [self.channels[c] for c in self.channel[row] if c >= 0]

    def shares(self) -> dict[str, float]:
        """Share of the served items that each channel contributed."""
        served = self.channel[self.channel >= 0]
        total = max(served.size, 1)
        return {c: float((served == i).sum()) / total for i, c in enumerate(self.channels)}


@dataclass
class FusionFit:
    """Fitted weights (normalised to sum 1), ``k0`` and the valid metric they reached."""

    weights: dict[str, float]
    k0: float
    metric: str
    value: float
    evaluations: int = 0
    trials: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("trials")
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionFit:
        return cls(dict(data["weights"]), float(data["k0"]), str(data["metric"]), float(data["value"]),
                   int(data.get("evaluations", 0)))


def _hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {c: (w / total if total > 0 else 0.0) for c, w in weights.items()}


def fit_fusion(pool: CandidatePool, targets: Sequence[int], channels: Sequence[str], k: int = 200,
               grid: Sequence[float] = WEIGHT_GRID, k0_grid: Sequence[float] = K0_GRID, passes: int = 3,
               start: FusionFit | None = None) -> FusionFit:
    """Fit the weights of ``channels`` (the others stay 0) and ``k0`` to maximise HR@``k``.

    Coordinate ascent from the best single channel (or from ``start`` when it scores more): each
    pass tries every grid value of every channel's weight and every ``k0``, keeping strict gains.

    >>> pool = CandidatePool({"a": np.array([[1, 2], [1, 2]]), "b": np.array([[3, 4], [4, 3]])})
    >>> fit = fit_fusion(pool, [3, 4], ["a", "b"], k=1)
    >>> fit.value, fit.weights["b"] > 0
    (1.0, True)
    """
    unknown = [c for c in channels if c not in pool.channels]
    if unknown:
        raise ValueError(f"channels {unknown} are not in the pool ({pool.channels})")
    if not channels:
        raise ValueError("no channels to fit")
    entries = pool.target_entries(targets)
    metric = f"hr@{k}"
    n_eval = 0
    trials: list[dict] = []

    def evaluate(weights: Mapping[str, float], k0: float) -> float:
        nonlocal n_eval
        n_eval += 1
        value = _hit_rate(pool.target_ranks(entries, pool.scores(weights, k0)), k)
        trials.append({"weights": dict(weights), "k0": k0, metric: value})
        return value

    best_w, best_k0, best = None, k0_grid[0], -math.inf
    for c in channels:  # best single channel (k0 does not change a single channel's order)
        w = {x: float(x == c) for x in channels}
        value = evaluate(w, best_k0)
        if value > best:
            best_w, best = w, value
    if start is not None:
        w = {c: float(start.weights.get(c, 0.0)) for c in channels}
        if sum(w.values()) > 0:
            value = evaluate(w, start.k0)
            if value > best:
                best_w, best_k0, best = w, start.k0, value
    for _ in range(passes):
        improved = False
        for c in channels:
            for g in grid:
                if g == best_w[c]:
                    continue
                w = {**best_w, c: g}
                if sum(w.values()) <= 0:
                    continue
                value = evaluate(w, best_k0)
                if value > best:
                    best_w, best, improved = w, value, True
        for k0 in k0_grid:
            if k0 != best_k0:
                value = evaluate(best_w, k0)
                if value > best:
                    best_k0, best, improved = k0, value, True
        if not improved:
            break
    weights = {c: 0.0 for c in pool.channels}
    weights.update(_normalised(best_w))
    return FusionFit(weights, float(best_k0), metric, float(best), n_eval, trials)


def fused_metrics(pool: CandidatePool, targets: Sequence[int], fit: FusionFit, ks: Sequence[int]) -> dict:
    """HR/NDCG@K of the fused list (a target no weighted channel proposes is a miss)."""
    ranks = pool.target_ranks(pool.target_entries(targets), pool.scores(fit.weights, fit.k0))
    return retrieval_metrics(ranks, ks)


def channel_metrics(pool: CandidatePool, targets: Sequence[int], ks: Sequence[int]) -> dict[str, dict]:
    """HR/NDCG@K of each channel alone, over its candidate list (beyond it: a miss)."""
    entries = pool.target_entries(targets)
    out = {}
    for c, name in enumerate(pool.channels):
        rank = np.where(entries >= 0, pool.ranks[np.maximum(entries, 0), c], 0).astype(np.float64)
        out[name] = retrieval_metrics(np.where(rank > 0, rank, np.inf), ks)
    return out
