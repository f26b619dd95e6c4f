"""Collapse diagnostics: attention-sink ratio, information abundance, semantic fidelity.

- Attention sinks (docs/method.md, "KARMA"): ``α(l,h) = mean_{i≥k} A[i,k]`` with ``k`` the row's first
  real token; the sink ratio is the share of (layer, head) pairs with ``α > ε`` (ε = 0.3).
- Embedding collapse: information abundance ``‖σ‖₁ / ‖σ‖∞`` of the user-embedding matrix.
- Semantic fidelity of text decoded from ``e_u``: token accuracy and ROUGE-L F.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

SINK_EPS = 0.3


def _np(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if dtype is None else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass(frozen=True)
class SinkStats:
    """Attention-sink summary of one model on one batch (or a pooled eval set)."""

    alpha: np.ndarray  # (layers, heads): α(l,h), for the heatmap
    layer_alpha_mean: np.ndarray  # (layers,): mean over heads of α
    layer_sink_share: np.ndarray  # (layers,): share of heads with α > eps
    sink_ratio: float  # share of all (l,h) with α > eps
    eps: float

    def to_dict(self) -> dict:
        return {
            "sink_ratio": self.sink_ratio,
            "eps": self.eps,
            "layer_alpha_mean": self.layer_alpha_mean.tolist(),
            "layer_sink_share": self.layer_sink_share.tolist(),
            "alpha": self.alpha.tolist(),
        }


def first_token_positions(attention_mask) -> np.ndarray:
    """Index of each row's first real (mask = 1) token; handles left padding.

    >>> first_token_positions([[0, 0, 1, 1], [1, 1, 1, 0]]).tolist()
    [2, 0]
    """
    mask = _np(attention_mask).astype(bool)
    if not mask.any(axis=1).all():
        raise ValueError("every row of attention_mask needs at least one real token")
    return mask.argmax(axis=1)


def attention_sink_alpha(attentions: Sequence, attention_mask=None) -> np.ndarray:
    """``α`` as a ``(layers, heads)`` array from per-layer ``(batch, heads, q, k)`` attention maps.

    For each row, ``k`` is its first real token and the mean runs over real query positions
    ``i ≥ k``; rows are then averaged with equal weight. Maps come from an HF model run with
    ``output_attentions=True`` and ``attn_implementation="eager"`` (sdpa/flash return none).
    """
    if attentions is None or len(attentions) == 0 or any(a is None for a in attentions):
        raise ValueError("no attention maps: run the model with output_attentions=True and eager attention")
    batch, _heads, q_len, k_len = tuple(attentions[0].shape)
    if q_len != k_len:
        raise ValueError(f"need full self-attention maps (q == k), got q={q_len}, k={k_len}")
    mask = np.ones((batch, k_len), dtype=bool) if attention_mask is None else _np(attention_mask).astype(bool)
    first = first_token_positions(mask)  # (batch,)
    positions = np.arange(q_len)[None, :]
    query_valid = mask & (positions >= first[:, None])  # (batch, q)
    weights = query_valid / query_valid.sum(axis=1, keepdims=True)  # per-row mean over queries
    rows = np.arange(batch)
    alpha = []
    for layer in attentions:
        if hasattr(layer, "detach"):  # gather the sink column in torch: no copy of the full map
            column = layer[torch.as_tensor(rows), :, :, torch.as_tensor(first)]  # (batch, heads, q)
            column = column.detach().float().cpu().numpy()
        else:
            column = np.asarray(layer)[rows, :, :, first]  # (batch, heads, q)
        per_row = np.einsum("bhq,bq->bh", column, weights)  # (batch, heads)
        alpha.append(per_row.mean(axis=0))
    return np.stack(alpha).astype(np.float64)  # (layers, heads)


def attention_sink_stats(attentions: Sequence, attention_mask=None, eps: float = SINK_EPS) -> SinkStats:
    """Sink ratio, per-layer means/shares and the α heatmap (see module docstring).

    >>> import numpy as np
    >>> sink = np.zeros((1, 2, 3, 3)); sink[..., 0] = 1.0  # every query attends to token 0 only
    >>> attention_sink_stats([sink, sink]).sink_ratio
    1.0
    """
    alpha = attention_sink_alpha(attentions, attention_mask)
    above = alpha > eps
    return SinkStats(
        alpha=alpha,
        layer_alpha_mean=alpha.mean(axis=1),
        layer_sink_share=above.mean(axis=1),
        sink_ratio=float(above.mean()),
        eps=eps,
    )


def information_abundance(matrix) -> float:
    """``‖σ‖₁ / ‖σ‖∞`` of the singular values: 1 for a rank-1 matrix, n for n equal values.

    >>> round(information_abundance(np.outer([1.0, 2.0, 3.0], [1.0, -1.0])), 6)
    1.0
    >>> round(information_abundance(np.eye(4) * 3.0), 6)
    4.0
    """
    sigma = np.linalg.svd(_np(matrix, np.float64), compute_uv=False)
    if sigma.size == 0 or sigma[0] <= 0:
        return 0.0
    return float(sigma.sum() / sigma.max())


def reconstruction_token_accuracy(logits, labels, ignore_index: int = -100, shift: bool = True) -> float:
    """Share of label tokens that are the argmax of the logits, ``ignore_index`` skipped.

    ``shift=True`` follows the HF causal-LM convention (labels aligned with ``input_ids``;
    ``logits[:, t]`` predicts ``labels[:, t + 1]``); use ``shift=False`` when they are aligned.

    >>> logits = np.eye(3)[None]  # predicts tokens 0, 1, 2 at positions 0, 1, 2
    >>> reconstruction_token_accuracy(logits, [[0, 1, 2]], shift=False)
    1.0
    >>> reconstruction_token_accuracy(logits, [[-100, 0, 2]])  # positions 0, 1 predict 0, 2
    0.5
    """
    pred = _np(logits).argmax(axis=-1)  # (batch, seq)
    labels = _np(labels, np.int64)
    if shift:
        pred, labels = pred[:, :-1], labels[:, 1:]
    keep = labels != ignore_index
    if not keep.any():
        return float("nan")
    return float((pred[keep] == labels[keep]).mean())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory).

    >>> lcs_length("ABCBDAB", "BDCABA")
    4
    """
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f(tokens_a: Sequence | str, tokens_b: Sequence | str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure of candidate ``a`` against reference ``b`` (LCS based).

    A ``str`` is split on whitespace; pass ``list(text)`` for character-level scoring (e.g.
    Chinese queries). Returns 0.0 when either side is empty.

    >>> rouge_l_f("the cat sat on the mat", "the cat on the mat")
    0.9090909090909091
    >>> round(rouge_l_f(list("iphone 17"), list("iphone 17 pro")), 4)  # 9 of 9 and 13 chars
    0.8182
    >>> rouge_l_f("", "a")
    0.0
    """
    a = tokens_a.split() if isinstance(tokens_a, str) else list(tokens_a)
    b = tokens_b.split() if isinstance(tokens_b, str) else list(tokens_b)
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
