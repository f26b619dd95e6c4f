"""IL-GRPO rewards for generated AIGQ query lists (pure functions, no model calls).

Query level, per generated slot ``j``, in hindsight: against the queries ``T`` the user actually
searched after the prompt's time (in the training day, before its held-out part; never the
evaluation day's)::

    R_query(q_j) = max_{t in T} (w_exact * [q_j == t] + w_rouge * ROUGE-L(q_j, t) + w_sem * cos(q_j, t))
                 + w_ctr * clip(gamma * p_ctr(q_j | u), 0, beta) + w_len * r_len(q_j)

(the max is 0 when the user searched nothing later). The paper's query term is ROUGE-L against
the slot's reference query (the training target, i.e. the hints the ranker showed), which
rewards copying the shown list; the hindsight term rewards what the goal measures, a query the
user searches.

Sequence level: ``R_seq = w_fmt * r_fmt + w_rep * r_rep`` (well-formed list, duplicate /
near-duplicate penalty). Both are clipped to ``±reward_clip``. The Think variant's trigger
reward is ``trigger_rouge`` (ROUGE-L F over behaviour index sequences). Strings are compared
after ``aigq_model.parsing.normalize_query``; tokens are whitespace-separated words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from aigq_model.ctr_model import ctr_reward
from aigq_model.parsing import normalize_query


def _lcs(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)), one row of memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _lcs_f1(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    lcs = _lcs(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over the whitespace tokens of the normalised strings; 0.0 when either is empty.

    >>> rouge_l("Red running shoe", "red shoe")  # LCS 2, P = 2/3, R = 1
    0.8
    >>> rouge_l("red shoe", ""), rouge_l("shoe red", "red shoe")
    (0.0, 0.5)
    """
    return _lcs_f1(normalize_query(candidate).split(), normalize_query(reference).split())


def length_reward(
    query: str, min_words: int = 1, max_words: int = 6, min_chars: int = 2, max_chars: int = 40
) -> float:
    """0.0 inside the bounds; outside, minus the relative distance to each violated bound
    (summed, at most 1.0), so the reward lies in [-1, 0]. An empty query gets -1.0.

    >>> length_reward("red shoe"), length_reward(""), length_reward("x")
    (0.0, -1.0, -0.5)
    >>> round(length_reward("a b c d e f g h"), 4)  # 8 words > 6: -(8 - 6) / 6
    -0.3333
    """
    q = normalize_query(query)
    if not q:
        return -1.0
    words, chars = len(q.split(" ")), len(q)
    excess = 0.0
    if words < min_words:
        excess += (min_words - words) / min_words
    if words > max_words:
        excess += (words - max_words) / max_words
    if chars < min_chars:
        excess += (min_chars - chars) / min_chars
    if chars > max_chars:
        excess += (chars - max_chars) / max_chars
    return -min(1.0, excess) if excess > 0 else 0.0


def format_reward(malformed: bool, n_queries: int, expected: int | None = None) -> float:
    """+1.0 for a well-formed non-empty list, -1.0 for a malformed or empty one. With
    ``expected``, a well-formed list of the wrong length gets ``1 - |n - expected| / expected``
    (at least -1.0).

    >>> format_reward(False, 10), format_reward(True, 10), format_reward(False, 0)
    (1.0, -1.0, -1.0)
    >>> format_reward(False, 5, expected=10)
    0.5
    """
    if malformed or n_queries <= 0:
        return -1.0
    if expected is None or expected <= 0 or n_queries == expected:
        return 1.0
    return max(-1.0, 1.0 - abs(n_queries - expected) / expected)


def repetition_penalty(queries: Sequence[str], near_threshold: float = 0.8, near_weight: float = 0.5) -> float:
    """``-(exact + near_weight * near) / len(queries)`` (<= 0). Each query is compared with the
    earlier ones after normalisation: an exact duplicate counts 1, otherwise a near-duplicate
    (ROUGE-L >= ``near_threshold`` with an earlier query) counts ``near_weight``. Empty queries
    are neither counted nor compared (the length reward handles them).

    >>> repetition_penalty(["red shoe", "Red shoe!", "blue hat", "dress"])  # one exact duplicate of four
    -0.25
    >>> repetition_penalty(["red running shoe", "red shoe", "hat", "cap"])  # ROUGE-L 0.8: near duplicate
    -0.125
    >>> repetition_penalty([])
    0.0
    """
    if not queries:
        return 0.0
    seen: list[list[str]] = []
    exact = near = 0
    for raw in queries:
        q = normalize_query(raw)
        if not q:
            continue
        toks = q.split(" ")
        if toks in seen:
            exact += 1
        elif any(_lcs_f1(toks, s) >= near_threshold for s in seen):
            near += 1
        seen.append(toks)
    return -(exact + near_weight * near) / len(queries)


def trigger_rouge(generated: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F over trigger index sequences. Both empty (a "new interest" predicted as such)
    is a perfect match, 1.0; exactly one empty is 0.0.

    >>> trigger_rouge([1, 3, 5], [1, 5]), trigger_rouge([], []), trigger_rouge([2], [])
    (0.8, 1.0, 0.0)
    """
    if not generated and not reference:
        return 1.0
    return _lcs_f1(list(generated), list(reference))


@dataclass
class RewardConfig:
    """IL-GRPO reward weights (``aigq.grpo.reward`` style section)."""

    w_ctr: float = 1.0
    w_exact: float = 1.0
    w_rouge: float = 0.0
    w_sem: float = 0.0
    w_len: float = 1.0
    w_fmt: float = 1.0
    w_rep: float = 1.0
    gamma: float = 1.0
    beta: float = 1.0
    reward_clip: float = 10.0
    near_threshold: float = 0.8

    def __post_init__(self):
        if self.reward_clip <= 0:
            raise ValueError("reward_clip must be > 0")
        if self.beta < 0:
            raise ValueError("beta must be >= 0")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> RewardConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown reward settings: {sorted(unknown)}")
        return cls(**section)


def _clip(x: float, bound: float) -> float:
    return float(min(bound, max(-bound, x)))


def hindsight_match(
    query: str, issued: Sequence[str], cfg: RewardConfig, cosines: Sequence[float] | None = None
) -> float:
    """The hindsight term of one slot: the best over the later searches ``issued`` of
    ``w_exact * exact + w_rouge * ROUGE-L + w_sem * cosine`` (normalised strings; ``cosines[t]``
    = the embedding cosine of ``query`` and ``issued[t]``, needed when ``w_sem`` is not 0);
    0.0 without later searches.

    >>> cfg = RewardConfig(w_exact=1.0, w_rouge=0.5)
    >>> hindsight_match("Red Shoe", ["hat", "red shoe"], cfg), hindsight_match("red boot", ["red shoe"], cfg)
    (1.5, 0.25)
    >>> hindsight_match("red shoe", [], cfg), hindsight_match("a", ["b"], RewardConfig(w_sem=1.0), [0.4])
    (0.0, 0.4)
    """
    if not issued:
        return 0.0
    if cfg.w_sem and (cosines is None or len(cosines) != len(issued)):
        raise ValueError(f"w_sem {cfg.w_sem} needs one cosine per later search ({len(issued)})")
    q = normalize_query(query)
    best = 0.0
    for t, truth in enumerate(issued):
        truth = normalize_query(truth)
        score = cfg.w_exact * float(bool(q) and q == truth) + cfg.w_rouge * rouge_l(q, truth)
        if cfg.w_sem:
            score += cfg.w_sem * float(cosines[t])
        best = max(best, score)
    return best


def query_rewards(
    queries: Sequence[str],
    issued: Sequence[str],
    ctr_probs: Sequence[float] | None,
    cfg: RewardConfig,
    cosines: Sequence[Sequence[float]] | None = None,
) -> list[float]:
    """Per-slot ``R_query``: ``hindsight_match(q_j, issued) + w_ctr * ctr_reward(p_j) + w_len *
    length_reward(q_j)``, clipped to ``±reward_clip``. ``ctr_probs=None`` drops the CTR term;
    ``cosines[j]`` are slot j's cosines to ``issued`` (the semantic term).

    >>> query_rewards(["red shoe", "hat"], ["red shoe"], [0.3, 0.1], RewardConfig())
    [1.3, 0.1]
    >>> query_rewards(["red boots"], ["red shoe"], None, RewardConfig(w_rouge=0.5))  # partial credit
    [0.25]
    >>> query_rewards(["red shoe"], ["red shoe"], None, RewardConfig(w_exact=20.0))
    [10.0]
    """
    if ctr_probs is not None and len(ctr_probs) != len(queries):
        raise ValueError(f"{len(ctr_probs)} CTR probabilities for {len(queries)} queries")
    ctr = ctr_reward(ctr_probs, cfg.gamma, cfg.beta) if ctr_probs is not None else None
    out = []
    for j, q in enumerate(queries):
        r = hindsight_match(q, issued, cfg, None if cosines is None else cosines[j])
        r += cfg.w_len * length_reward(q)
        if ctr is not None:
            r += cfg.w_ctr * float(ctr[j])
        out.append(_clip(r, cfg.reward_clip))
    return out


def sequence_reward(
    queries: Sequence[str], malformed: bool, cfg: RewardConfig, expected: int | None = None
) -> float:
    """``R_seq = w_fmt * format_reward + w_rep * repetition_penalty``, clipped to ``±reward_clip``.

    >>> sequence_reward(["red shoe", "red shoe"], False, RewardConfig())  # 1 - 1/2
    0.5
    >>> sequence_reward([], True, RewardConfig())
    -1.0
    """
    r = cfg.w_fmt * format_reward(malformed, len(queries), expected)
    r += cfg.w_rep * repetition_penalty(queries, cfg.near_threshold)
    return _clip(r, cfg.reward_clip)
