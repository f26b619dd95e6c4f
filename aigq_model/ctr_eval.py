"""How a CTR model is measured: ROC AUC and log-loss (pure numpy), a model's scores on labelled
``ctr_samples`` rows, and the smoothed per-query empirical CTR baseline it is compared against."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from aigq_model.ctr_model import as_ctr_model, encode_rows, predict_probs
from aigq_model.parsing import normalize_query

_EPS = 1e-7


def auc(labels, scores) -> float:
    """ROC AUC by Mann-Whitney with average ranks for ties; NaN when one class is missing.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])  # the tie counts one half
    0.875
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    n_pos = int((y == 1).sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]); NaN when empty."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), _EPS, 1 - _EPS)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def score_metrics(labels, probs) -> dict:
    """``{"auc", "logloss", "n", "positives"}``; undefined values are ``None`` (JSON-safe)."""
    y = np.asarray(labels, dtype=np.int64).ravel()

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    return {
        "auc": clean(auc(y, probs)) if y.size else None,
        "logloss": clean(logloss(y, probs)),
        "n": int(y.size),
        "positives": int(y.sum()),
    }


def evaluate_ctr(model, rows: Sequence[Mapping], use_position: bool = False) -> dict:
    """``{"auc", "logloss", "n", "positives"}`` of a model (or scorer) on labelled rows, scored
    as at serving time (position 0) unless ``use_position``."""
    m = as_ctr_model(model)
    probs = predict_probs(m, encode_rows(rows, m.config, use_position))
    return score_metrics([int(r.get("label") or 0) for r in rows], probs)



class QueryCTRBaseline:
    """Popularity baseline: the query's smoothed empirical CTR on the training rows,
    ``(clicks + prior * mean) / (impressions + prior)``, the global mean for unseen queries."""

    def __init__(self, rows: Sequence[Mapping], prior: float = 10.0):
        clicks: dict[str, float] = {}
        shown: dict[str, int] = {}
        for r in rows:
            q = normalize_query(r.get("query"))
            clicks[q] = clicks.get(q, 0.0) + float(r.get("label") or 0)
            shown[q] = shown.get(q, 0) + 1
        n = sum(shown.values())
        self.mean = sum(clicks.values()) / n if n else 0.0
        self.ctr = {q: (clicks[q] + prior * self.mean) / (shown[q] + prior) for q in shown}

    def predict_rows(self, rows: Sequence[Mapping]) -> np.ndarray:
        return np.array([self.ctr.get(normalize_query(r.get("query")), self.mean) for r in rows], dtype=np.float64)
