"""Non-LLM baselines for next-item retrieval, scored exactly like KARMA (ranks → HR/NDCG).

- :class:`PopularityBaseline`: most popular items, optionally with a recency half-life.
- :class:`CooccurrenceBaseline`: items that followed the user's recent items in other users'
  sequences (sparse transition counts within a window), popularity back-off for ties.
- :class:`TextEmbeddingBaseline`: recency-weighted mean of the history's MiniLM embeddings
  against MiniLM embeddings of every item's text.

Inputs are plain Python: a sequence is a list of item indices (``0 .. n_items-1``) in time
order; a history for scoring is the same (the text baseline also takes query strings). Each
model has ``fit(sequences, timestamps=None)`` and ``score(histories) -> (n_users, n_items)``;
:func:`evaluate_ranks` scores users in bounded blocks and filters the history items,
:func:`topk_items` serves top-K lists the same way, and :func:`tune` picks parameters on the
validation split only.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.text_encoder import encode_texts
from karma_model.metrics import DEFAULT_KS, exclusion_mask, ranks_from_scores, retrieval_metrics

logger = logging.getLogger(__name__)


def _item_indices(history: Iterable) -> list[int]:
    """The item indices of a history (query strings and ``None`` dropped)."""
    return [int(h) for h in history if isinstance(h, int | np.integer) and h >= 0]


def _recency_weights(n: int, decay: float) -> np.ndarray:
    """``decay**j`` for the j-th most recent of ``n`` events, oldest first."""
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float64)


class PopularityBaseline:
    """Most popular items, the same list for every user.

    ``half_life`` (in the units of ``timestamps``) weights an event by ``0.5**(age/half_life)``
    with age measured from the newest training event; without timestamps the age is the number
    of steps from the end of its own sequence.

    >>> pop = PopularityBaseline(n_items=4).fit([[0, 1, 1], [1, 2]])
    >>> pop.score([[3]]).tolist()
    [[1.0, 3.0, 1.0, 0.0]]
    """

    def __init__(self, n_items: int, half_life: float | None = None):
        if half_life is not None and half_life <= 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        self.n_items = n_items
        self.half_life = half_life
        self.counts = np.zeros(n_items, dtype=np.float64)

    def fit(self, sequences: Sequence[Sequence[int]], timestamps: Sequence[Sequence[float]] | None = None):
        items, _seq_ids, ages = _flatten(sequences, timestamps)
        weights = np.ones(items.size) if self.half_life is None else 0.5 ** (ages / self.half_life)
        self.counts = np.bincount(items, weights=weights, minlength=self.n_items).astype(np.float64)
        return self

    def score(self, histories: Sequence[Sequence]) -> np.ndarray:
        """``(n_users, n_items)``: the same popularity row for everyone."""
        return np.broadcast_to(self.counts, (len(histories), self.n_items)).copy()


class CooccurrenceBaseline:
    """Item-to-item "what came next" scores from training sequences.

    ``C[a, b]`` sums ``gap_decay**(g-1)`` over pairs where ``b`` follows ``a`` by ``g ≤ window``
    steps in one sequence. A user's scores are ``Σ_j decay**j · C[h_{-1-j}, :]`` over the last
    ``max_history`` history items (j = 0 the most recent); ``normalize="row"`` turns ``C`` into
    ``P(b | a)`` so a popular last item does not drown the others. ``backward_weight`` > 0 also
    counts items that came *before* (``C + w·Cᵀ``), which helps on sparse logs. Popularity
    breaks ties, including the all-zero rows of users whose items were never seen.

    >>> cooc = CooccurrenceBaseline(n_items=4, window=1).fit([[0, 1], [0, 1], [0, 2], [3, 2]])
    >>> int(cooc.score([[0]])[0].argmax())
    1
    """

    def __init__(self, n_items: int, window: int = 3, max_history: int = 5, decay: float = 0.7,
                 gap_decay: float = 1.0, normalize: str = "none", backward_weight: float = 0.0,
                 popularity_weight: float = 1e-6):
        if window < 1 or max_history < 1:
            raise ValueError("window and max_history must be >= 1")
        if not 0 < decay <= 1 or not 0 < gap_decay <= 1:
            raise ValueError("decay and gap_decay must be in (0, 1]")
        if normalize not in ("none", "row"):
            raise ValueError(f"normalize must be 'none' or 'row', got {normalize!r}")
        if backward_weight < 0:
            raise ValueError("backward_weight must be >= 0")
        self.n_items = n_items
        self.window = window
        self.max_history = max_history
        self.decay = decay
        self.gap_decay = gap_decay
        self.normalize = normalize
        self.backward_weight = backward_weight
        self.popularity_weight = popularity_weight
        self.transitions: sp.csr_matrix = sp.csr_matrix((n_items, n_items))
        self.popularity = np.zeros(n_items)
        self._min_transition = 1.0

    def fit(self, sequences: Sequence[Sequence[int]], timestamps=None):
        items, seq_ids, _ages = _flatten(sequences, None)
        rows, cols, vals = [], [], []
        for gap in range(1, self.window + 1):
            same_seq = seq_ids[:-gap] == seq_ids[gap:]
            a, b = items[:-gap][same_seq], items[gap:][same_seq]
            keep = a != b
            rows.append(a[keep])
            cols.append(b[keep])
            vals.append(np.full(int(keep.sum()), self.gap_decay ** (gap - 1)))
        coo = sp.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.n_items, self.n_items),
        )
        matrix = coo.tocsr()  # duplicates summed
        if self.backward_weight > 0:
            matrix = matrix + self.backward_weight * matrix.T.tocsr()
        matrix.sum_duplicates()
        if self.normalize == "row":
            row_sums = np.asarray(matrix.sum(axis=1)).ravel()
            inv = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
            matrix = sp.diags(inv) @ matrix
        self.transitions = matrix.tocsr()
        self._min_transition = float(self.transitions.data.min()) if self.transitions.nnz else 1.0
        counts = np.bincount(items, minlength=self.n_items).astype(np.float64)
        self.popularity = counts / counts.max() if counts.size and counts.max() > 0 else counts
        logger.info("co-occurrence: %d items, %d non-zero transitions", self.n_items, self.transitions.nnz)
        return self

    def user_weights(self, histories: Sequence[Sequence]) -> sp.csr_matrix:
        """Sparse ``(n_users, n_items)`` recency weights of each user's last ``max_history`` items."""
        rows, cols, vals = [], [], []
        for r, history in enumerate(histories):
            recent = _item_indices(history)[-self.max_history:]
            rows.extend([r] * len(recent))
            cols.extend(recent)
            vals.extend(_recency_weights(len(recent), self.decay))
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), self.n_items))

    def score(self, histories: Sequence[Sequence]) -> np.ndarray:
        """``(n_users, n_items)`` float64 co-occurrence scores plus the popularity tie-breaker."""
        scores = (self.user_weights(histories) @ self.transitions).toarray()  # (n_users, n_items)
        # Back-off: a popularity term far below the smallest non-zero score orders the ties
        # (most of the catalogue scores 0) without letting an unseen item pass a seen one.
        scale = self.popularity_weight * self.decay ** (self.max_history - 1) * self._min_transition
        return scores + scale * self.popularity[None, :]


class TextEmbeddingBaseline:
    """Cosine between a recency-weighted mean of history text embeddings and item text embeddings.

    History entries are item indices (the item's text embedding is used) or query strings
    (encoded with MiniLM, cached). ``item_embeddings`` may be passed precomputed; otherwise
    ``fit`` encodes ``item_texts``. ``encoder`` defaults to :func:`common.text_encoder.encode_texts`.
    """

    def __init__(self, item_texts: Sequence[str] | None = None, decay: float = 0.8, max_history: int = 20,
                 item_embeddings: np.ndarray | None = None,
                 encoder: Callable[[Sequence[str]], np.ndarray] | None = None):
        if item_texts is None and item_embeddings is None:
            raise ValueError("need item_texts or item_embeddings")
        self.item_texts = item_texts
        self.decay = decay
        self.max_history = max_history
        self.item_embeddings = item_embeddings
        self._encoder = encoder
        self._query_cache: dict[str, np.ndarray] = {}

    @property
    def n_items(self) -> int:
        return len(self.item_embeddings) if self.item_embeddings is not None else len(self.item_texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = encode_texts
        return self._encoder(list(texts))

    def fit(self, sequences=None, timestamps=None):
        """Encode the catalogue (training sequences are not needed: the encoder is pretrained)."""
        if self.item_embeddings is None:
            self.item_embeddings = self.encode(self.item_texts)
        self.item_embeddings = np.asarray(self.item_embeddings, dtype=np.float32)
        return self

    def user_embeddings(self, histories: Sequence[Sequence]) -> np.ndarray:
        """``(n_users, dim)`` L2-normalised recency-weighted means; zeros for an empty history."""
        if self.item_embeddings is None:
            raise RuntimeError("call fit() first")
        recent = [[h for h in history if h is not None][-self.max_history:] for history in histories]
        new = sorted({h for hist in recent for h in hist if isinstance(h, str) and h not in self._query_cache})
        if new:
            self._query_cache.update(zip(new, self.encode(new), strict=True))
        out = np.zeros((len(histories), self.item_embeddings.shape[1]), dtype=np.float32)
        for r, hist in enumerate(recent):
            if not hist:
                continue
            vecs = np.stack([self._query_cache[h] if isinstance(h, str) else self.item_embeddings[int(h)]
                             for h in hist])
            mean = _recency_weights(len(hist), self.decay) @ vecs
            norm = np.linalg.norm(mean)
            out[r] = mean / norm if norm > 0 else mean
        return out

    def score(self, histories: Sequence[Sequence]) -> np.ndarray:
        """``(n_users, n_items)`` cosine similarities."""
        return self.user_embeddings(histories) @ self.item_embeddings.T  # (n_users, n_items)


def _flatten(sequences: Sequence[Sequence[int]], timestamps: Sequence[Sequence[float]] | None):
    """Concatenated items, their sequence ids and ages (time or steps before the newest event)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    items = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    seq_ids = np.repeat(np.arange(len(sequences)), lengths)
    if timestamps is None:
        ends = np.repeat(np.cumsum(lengths), lengths)
        ages = (ends - 1 - np.arange(items.size)).astype(np.float64)
    else:
        times = np.fromiter(itertools.chain.from_iterable(timestamps), dtype=np.float64, count=items.size)
        ages = times.max() - times if times.size else times
    return items, seq_ids, ages


def _user_chunk(n_items: int, chunk: int, max_cells: int) -> int:
    """Users per block so that a block's dense scores stay under ``max_cells`` values."""
    return max(1, min(chunk, max_cells // max(n_items, 1)))


def evaluate_ranks(model, histories: Sequence[Sequence], target_idx: Sequence[int],
                   exclude_lists: Sequence[Iterable[int]] | None = None, chunk: int = 1024,
                   max_cells: int = 2**24) -> np.ndarray:
    """Ranks of each target under ``model.score``, users scored in blocks of bounded size.

    History items are filtered (``exclude_lists`` defaults to each history's item indices).
    """
    target_idx = np.asarray(target_idx, dtype=np.int64)
    if exclude_lists is None:
        exclude_lists = [_item_indices(h) for h in histories]
    step = _user_chunk(model.n_items, chunk, max_cells)
    ranks = np.empty(len(histories), dtype=np.int64)
    for start in range(0, len(histories), step):
        stop = min(start + step, len(histories))
        scores = model.score(histories[start:stop])
        mask = exclusion_mask(exclude_lists[start:stop], scores.shape[1], target_idx[start:stop])
        ranks[start:stop] = ranks_from_scores(scores, target_idx[start:stop], mask)
    return ranks


def topk_items(model, histories: Sequence[Sequence], k: int, exclude_history: bool = True, chunk: int = 1024,
               max_cells: int = 2**24, exclude_lists: Sequence[Iterable[int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(item indices, scores)``, each ``(n_users, k)`` best first, history items filtered
    (``exclude_lists``: these item rows per user instead, e.g. the history without the target).

    >>> pop = PopularityBaseline(n_items=4).fit([[0, 1, 1], [2, 2, 2, 2]])
    >>> topk_items(pop, [[2], []], k=2)[0].tolist()
    [[1, 0], [2, 1]]
    """
    k = min(k, model.n_items)
    step = _user_chunk(model.n_items, chunk, max_cells)
    idx = np.empty((len(histories), k), dtype=np.int64)
    top = np.empty((len(histories), k), dtype=np.float64)
    for start in range(0, len(histories), step):
        stop = min(start + step, len(histories))
        scores = np.asarray(model.score(histories[start:stop]), dtype=np.float64)
        if exclude_lists is not None:
            scores[exclusion_mask(exclude_lists[start:stop], scores.shape[1])] = -np.inf
        elif exclude_history:
            scores[exclusion_mask([_item_indices(h) for h in histories[start:stop]], scores.shape[1])] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        top[start:stop] = np.take_along_axis(scores, idx[start:stop], axis=1)
    return idx, top


@dataclass
class TuneResult:
    """Best parameters (by ``metric`` on validation), the model fitted with them, and every trial."""

    best_params: dict[str, Any]
    best_model: Any
    best_metrics: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)


def tune(build: Callable[..., Any], grid: Mapping[str, Sequence], train_sequences: Sequence[Sequence[int]],
         valid_histories: Sequence[Sequence], valid_targets: Sequence[int], metric: str = "hr@200",
         ks: Sequence[int] = DEFAULT_KS, train_timestamps=None, chunk: int = 1024) -> TuneResult:
    """Grid search on the validation split: ``build(**params).fit(train)``, keep the best ``metric``.

    >>> seqs = [[0, 1], [0, 1], [0, 2], [2, 3]]
    >>> res = tune(lambda **p: CooccurrenceBaseline(4, **p), {"window": [1, 2]}, seqs, [[0]], [1], "hr@1", ks=(1,))
    >>> res.best_params, res.best_metrics["hr@1"]
    ({'window': 1}, 1.0)
    """
    names = list(grid)
    best: TuneResult | None = None
    trials = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        model = build(**params).fit(train_sequences, train_timestamps)
        metrics = retrieval_metrics(evaluate_ranks(model, valid_histories, valid_targets, chunk=chunk), ks)
        trials.append({**params, **metrics})
        logger.info("tune %s: %s = %.4f", params, metric, metrics[metric])
        if best is None or metrics[metric] > best.best_metrics[metric] or math.isnan(best.best_metrics[metric]):
            best = TuneResult(params, model, metrics)
    if best is None:
        raise ValueError("empty grid")
    best.trials = trials
    return best


def sequences_from_samples(samples: Iterable[Mapping], item_index: Mapping[str, int],
                           split: str = "train") -> tuple[list[list[int]], list[list[float]]]:
    """Per-user training sequences (history items then target) from ``karma_samples`` rows.

    Rows are dicts with the ``KARMA_SAMPLES`` fields (e.g. ``pyarrow.Table.to_pylist()``). Each
    user contributes only the sequence of their latest sample of ``split`` (samples of one user
    share prefixes; taking all would count them many times). Behaviours without a catalogue
    item (searches) are dropped. Returns ``(sequences, timestamps in seconds)``.
    """
    latest: dict[str, Mapping] = {}
    for row in samples:
        if row.get("split") != split:
            continue
        user = row["user_id"]
        if user not in latest or row["event_time"] > latest[user]["event_time"]:
            latest[user] = row
    sequences, timestamps = [], []
    for row in latest.values():
        events = [(b["item_id"], b["event_time"]) for b in row["history"] or []]
        events.append((row["target_item_id"], row["event_time"]))
        seq = [(item_index[i], t) for i, t in events if i is not None and i in item_index]
        if seq:
            sequences.append([i for i, _ in seq])
            timestamps.append([_seconds(t) for _, t in seq])
    return sequences, timestamps


def _seconds(t) -> float:
    return t.timestamp() if hasattr(t, "timestamp") else float(t)
