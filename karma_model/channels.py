"""The heuristic retrieval channels of the fused u2i list, fitted once and saved beside the model.

:class:`HeuristicChannels` holds the three heuristics of :mod:`karma_model.baselines` as tuned on
the valid split by :mod:`karma_model.evaluate` (co-occurrence, MiniLM text mean, popularity) and
turns histories into candidate lists (:meth:`HeuristicChannels.lists`); :func:`karma_lists` does
the same for KARMA's exact neighbours. :mod:`karma_model.fusion` merges them.

Saved as ``retrieval/`` in the model folder (:meth:`HeuristicChannels.save`): ``channels.json``
(parameters, item ids), ``cooccurrence.npz`` (the transition matrix), ``popularity.npy``,
``text_items.npy`` (MiniLM vectors of the catalogue); the nightly export loads them
(:meth:`HeuristicChannels.load`), so it re-fits nothing and encodes only query strings.

:func:`evaluate_baselines` fits and tunes each heuristic on the valid split (the baselines of the
evaluation report and the channels); :func:`evaluate_fusion` fits the fused list on valid without
and with KARMA. A split is duck-typed as :class:`karma_model.evaluate.EvalSplit` (``targets``,
``exclude``, ``baseline_histories``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from common.text_encoder import encode_texts
from karma_model.baselines import (
    CooccurrenceBaseline,
    PopularityBaseline,
    TextEmbeddingBaseline,
    evaluate_ranks,
    sequences_from_samples,
    topk_items,
    tune,
)
from karma_model.fusion import (
    HEURISTIC_CHANNELS,
    CandidatePool,
    channel_metrics,
    fit_fusion,
    fused_metrics,
)
from karma_model.metrics import DEFAULT_KS, exact_topk_and_ranks, retrieval_metrics

logger = logging.getLogger(__name__)

RETRIEVAL_DIR = "retrieval"
CHANNELS_FILE = "channels.json"
FUSION_FILE = "fusion.json"  # karma_model.evaluate's fitted fusion, beside the channels
BASELINES = ("popularity", "cooccurrence", "text")
TUNE_METRIC = "hr@200"
GRIDS: dict[str, dict[str, list]] = {
    "popularity": {"half_life": [None, 86_400.0, 3 * 86_400.0]},
    "cooccurrence": {"window": [1, 3, 5], "normalize": ["none", "row"], "backward_weight": [0.0, 0.5]},
    "text": {"decay": [0.5, 0.8, 1.0]},
}



class _PureCooccurrence:
    """Co-occurrence scores without the popularity back-off (a non-candidate scores exactly 0)."""

    def __init__(self, model: CooccurrenceBaseline):
        self.model = model
        self.n_items = model.n_items

    def score(self, histories):
        return (self.model.user_weights(histories) @ self.model.transitions).toarray()


def _drop_nonpositive(idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.where(scores > 0, idx, -1)


@dataclass
class HeuristicChannels:
    """Fitted co-occurrence, text and popularity channels over one catalogue (``item_ids`` order)."""

    item_ids: list[str]
    cooccurrence: CooccurrenceBaseline
    text: TextEmbeddingBaseline
    popularity: PopularityBaseline
    history_len: int = 20  # behaviours per history the channels were tuned on (the export reads as many)

    def lists(self, histories: Sequence[Sequence], depth: int,
              exclude: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
        """Channel → ``(n, depth)`` item rows best first (-1: none), history items filtered
        (``exclude``: these rows per user instead; the evaluation spares each target, as it does
        for every model).

        ``histories``: per user, item rows (int) or query strings, oldest first (as
        :class:`karma_model.evaluate.EvalSplit.baseline_histories`).
        """
        out = {}
        if not len(histories):
            return {c: np.zeros((0, depth), dtype=np.int64) for c in ("cooccurrence", "text", "popularity")}
        idx, scores = topk_items(_PureCooccurrence(self.cooccurrence), histories, depth, exclude_lists=exclude)
        out["cooccurrence"] = _drop_nonpositive(idx, scores)
        idx, scores = topk_items(self.text, histories, depth, exclude_lists=exclude)
        empty = np.asarray([not any(h is not None for h in hist) for hist in histories])
        idx[empty] = -1  # an empty history has no text mean
        out["text"] = np.where(np.isfinite(scores), idx, -1)  # -inf: a filtered item (small catalogues)
        idx, scores = topk_items(self.popularity, histories, depth, exclude_lists=exclude)
        out["popularity"] = _drop_nonpositive(idx, scores)
        return out

    def save(self, folder: str | Path, params: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / "cooccurrence.npz", self.cooccurrence.transitions.tocsr())
        np.save(folder / "cooccurrence_popularity.npy", self.cooccurrence.popularity)
        np.save(folder / "popularity.npy", self.popularity.counts)
        np.save(folder / "text_items.npy", np.asarray(self.text.item_embeddings, dtype=np.float32))
        meta = {
            "item_ids": list(self.item_ids),
            "history_len": int(self.history_len),
            "cooccurrence": {"max_history": self.cooccurrence.max_history, "decay": self.cooccurrence.decay},
            "text": {"max_history": self.text.max_history, "decay": self.text.decay},
            "params": params or {},
        }
        (folder / CHANNELS_FILE).write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, encoder: Callable | None = None) -> HeuristicChannels:
        """Reload :meth:`save`'s folder; ``FileNotFoundError`` naming the missing file."""
        folder = Path(folder)
        meta_path = folder / CHANNELS_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no retrieval channels (evaluate the model first)")
        meta = json.loads(meta_path.read_text())
        n = len(meta["item_ids"])
        cooc = CooccurrenceBaseline(n, max_history=int(meta["cooccurrence"]["max_history"]),
                                    decay=float(meta["cooccurrence"]["decay"]))
        cooc.transitions = sp.load_npz(folder / "cooccurrence.npz").tocsr()
        cooc.popularity = np.load(folder / "cooccurrence_popularity.npy")
        pop = PopularityBaseline(n)
        pop.counts = np.load(folder / "popularity.npy")
        text = TextEmbeddingBaseline(item_embeddings=np.load(folder / "text_items.npy"), encoder=encoder,
                                     max_history=int(meta["text"]["max_history"]), decay=float(meta["text"]["decay"]))
        text.fit()
        for name, arr in (("cooccurrence.npz", cooc.transitions), ("popularity.npy", pop.counts),
                          ("text_items.npy", text.item_embeddings)):
            if arr.shape[0] != n:
                raise ValueError(f"{folder / name}: {arr.shape[0]} rows for {n} item ids")
        return cls(list(meta["item_ids"]), cooc, text, pop, int(meta.get("history_len", 20)))


def karma_lists(user_emb: np.ndarray, item_emb: np.ndarray, exclude: Sequence[Sequence[int]],
                depth: int) -> np.ndarray:
    """``(n, depth)`` KARMA's exact nearest items (inner product), the ``exclude`` rows filtered."""
    if not len(user_emb):
        return np.zeros((0, depth), dtype=np.int64)
    no_target = np.full(len(user_emb), -1, dtype=np.int64)  # -1 matches no item: exclude is taken as is
    res = exact_topk_and_ranks(user_emb, item_emb, no_target, exclude, ks=(depth,))
    out = np.full((len(user_emb), depth), -1, dtype=np.int64)
    out[:, : res.topk_idx.shape[1]] = np.where(np.isfinite(res.topk_scores), res.topk_idx, -1)  # -inf: filtered
    return out


def evaluate_fusion(channels: HeuristicChannels, splits: Mapping, karma: Mapping[str, np.ndarray] | None = None,
                    item_emb: np.ndarray | None = None, depth: int = 400, k: int = 200,
                    ks: Sequence[int] = (10, 50, 200)) -> dict:
    """Fit the fused list without and with KARMA on ``splits["valid"]``; metrics on every split.

    ``splits``: name → :class:`karma_model.evaluate.EvalSplit`; ``karma``: split name → the
    split's ``e_u`` (with ``item_emb``, the catalogue's ``e_i``); without them only the fusion of
    the heuristics is fitted. Returns ``{"depth", "k", "without": {"fit", "metrics"}, "with": ...,
    "channels": {split: per-channel metrics}, "shares": {variant: {channel: share of served items}}}``.
    """
    valid = splits.get("valid")
    if valid is None or not len(valid):
        raise ValueError("the fusion is fitted on the valid split, which is empty")
    pools = {}
    for name, split in splits.items():
        if not len(split):
            continue
        # history items filtered, each target spared: the convention of every metric here
        exclude = [[r for r in rows if r != t] for rows, t in zip(split.exclude, split.targets, strict=True)]
        lists = channels.lists(split.baseline_histories, depth, exclude)
        if karma is not None:
            lists = {"karma": karma_lists(karma[name], item_emb, exclude, depth), **lists}
        pools[name] = CandidatePool(lists)
    heuristics = list(HEURISTIC_CHANNELS)
    out: dict = {"depth": depth, "k": k, "channels": {}, "shares": {}}
    without = fit_fusion(pools["valid"], valid.targets, heuristics, k=k)
    fits = {"without": without}
    if karma is not None:
        fits["with"] = fit_fusion(pools["valid"], valid.targets, ["karma", *heuristics], k=k, start=without)
    for variant, fit in fits.items():
        out[variant] = {"fit": fit.to_dict(), "metrics": {}}
        for name, pool in pools.items():
            out[variant]["metrics"][name] = fused_metrics(pool, splits[name].targets, fit, ks)
        out["shares"][variant] = pools["valid"].top(fit.weights, fit.k0, k).shares()
    for name, pool in pools.items():
        out["channels"][name] = channel_metrics(pool, splits[name].targets, ks)
    return out


def evaluate_baselines(names: Sequence[str], catalog, train_rows: Sequence[Mapping], splits: Mapping,
                       ks=DEFAULT_KS, grids: Mapping[str, Mapping] = GRIDS, text_encoder=None,
                       fitted: dict | None = None) -> dict:
    """Each baseline fitted on ``train_rows`` and tuned on ``splits["valid"]``; metrics on every split.

    ``fitted``, when given, receives each baseline's tuned model by name (the fusion's channels)."""
    n_items = len(catalog)
    sequences, timestamps = sequences_from_samples(train_rows, catalog.row, "train")
    if not sequences:
        raise ValueError("no training sequences for the baselines")
    valid = splits.get("valid")
    if valid is None or not len(valid):
        raise ValueError("baselines are tuned on the valid split, which is empty")
    builders = {
        "popularity": lambda **p: PopularityBaseline(n_items, **p),
        "cooccurrence": lambda **p: CooccurrenceBaseline(n_items, **p),
    }
    if "text" in names:
        encode = text_encoder or encode_texts
        item_vecs = encode(catalog.texts)
        builders["text"] = lambda **p: TextEmbeddingBaseline(item_embeddings=item_vecs, encoder=encode, **p)
    out = {}
    for name in names:
        if name not in builders:
            raise ValueError(f"unknown baseline {name!r} (known: {BASELINES})")
        t0 = time.perf_counter()
        metric = TUNE_METRIC if TUNE_METRIC in {f"hr@{k}" for k in ks} else f"hr@{max(ks)}"
        res = tune(builders[name], grids[name], sequences, valid.baseline_histories, valid.targets, metric, ks,
                   train_timestamps=timestamps)
        metrics = {}
        for split_name, split in splits.items():
            if len(split):
                ranks = evaluate_ranks(res.best_model, split.baseline_histories, split.targets, split.exclude)
                metrics[split_name] = retrieval_metrics(ranks, ks)
        if fitted is not None:
            fitted[name] = res.best_model
        out[name] = {"params": res.best_params, "metrics": metrics, "n_trials": len(res.trials),
                     "seconds": round(time.perf_counter() - t0, 2)}
        logger.info("baseline %s %s: test %s", name, res.best_params, metrics.get("test", {}).get(metric))
    return out
