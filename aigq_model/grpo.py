"""IL-GRPO (interest-level GRPO) for AIGQ policies, and plain sequence-level GRPO as the baseline.

For each prompt, ``G`` lists are sampled; each list is parsed into query slots and rewarded
per slot (``R_query``) and as a whole (``R_seq``); statistics are taken over the ``G``
rollouts of the prompt. A token of query slot ``j`` of rollout ``i`` gets::

    A = (R_query_ij - mu_j) / sqrt(var_j + eps) + lam * (R_seq_i - mu_S) / sqrt(var_S + eps)

(``mu_j``, ``var_j`` over the rollouts that *have* slot ``j``, population variance), clipped to
``±adv_clip``; separator / format tokens (``<q>``, ``<think>``, rationale, eos) get the
sequence term only; Think trigger tokens (``[1,3]``) get only their interest point's
group-normalised trigger reward. ``mode="sequence"`` gives every token one group-normalised
scalar per list (plain GRPO). The loss is a token-level clipped surrogate with
entropy-adaptive bounds (``eps_high`` for tokens at or above the minibatch's entropy
percentile), minus a linearly decaying entropy bonus, plus an optional k3 KL to a frozen
reference policy.

This module is the pure part (token -> slot mapping, advantages, filters, loss terms); the
loop that samples, rewards and updates is :mod:`aigq_model.grpo_trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from aigq_model.parsing import ParsedList, ParsedThink, parse_direct, parse_think

SEP = -1  # format token: sequence advantage only
TRIGGER = -2  # Think trigger-bracket token: its interest point's trigger advantage only
MODES = ("il", "sequence")
KINDS = ("direct", "think", "plain")


# --- token -> slot mapping ------------------------------------------------------------------
@dataclass
class TokenSlots:
    """Per generated token: ``slot`` (query index j >= 0, ``SEP`` or ``TRIGGER``) and ``point``
    (interest point index of a ``TRIGGER`` token, -1 elsewhere); ``parsed`` is the parse the
    slots follow."""

    slot: list[int]
    point: list[int]
    parsed: ParsedList | ParsedThink = field(repr=False)


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's text such that ``"".join`` is the decoded sequence: incremental decoding,
    so byte-level pieces of one character and tokenizer-added spaces land on the right token."""
    out, prev = [], ""
    for k in range(len(ids)):
        cur = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)
        out.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([ids[k]]))
        prev = cur if cur.startswith(prev) else prev + out[-1]
    return out


def token_slots(texts: Sequence[str], kind: str = "direct", complete: bool = True) -> TokenSlots:
    """Map generated tokens (their texts, in order) to the parser's query slots.

    The concatenated text is parsed (``parse_direct`` / ``parse_think`` with ``complete``: by
    default a truncated output keeps its partial last slot; the trainer passes ``complete=False``
    for rollouts that hit ``max_new_tokens``, as serving does, so a cut-off query is not rewarded
    as a query and its tokens take the (format-penalised) sequence term), and a token
    belongs to query ``j`` when its characters overlap the parser's span of the j-th query, so
    slot ``j`` is exactly ``parsed.queries[j]``. Consequences: slots count the parser's
    *non-empty* queries (``<q><q> a``: ``a`` is slot 0, the empty segment is SEP); text before
    the first ``<q>``, markers, whitespace-only tokens, Think rationales, eos and anything after
    an end marker are SEP; a duplicate query keeps its own slot; a token merging a marker with
    query text (``shoe<q>``) belongs to that query, one straddling two queries to the first.
    For Think, tokens of a trigger bracket ``[1,3]`` are ``TRIGGER`` with ``point`` = the index
    of their interest point in ``parsed.points`` (brackets of points without queries are SEP).

    >>> ts = token_slots(["junk", "<q>", " red", " shoe", "<q>", "<q>", " hat", "<eos>"])
    >>> ts.slot, ts.parsed.queries
    ([-1, -1, 0, 0, -1, -1, 1, -1], ['red shoe', 'hat'])
    >>> token_slots(["<think>", "[", "2", "]", " x", "</think>", "<q>", " a"], "think").slot
    [-1, -2, -2, -2, -1, -1, -1, 0]
    """
    text = "".join(texts)
    parsed = parse_think(text, complete) if kind == "think" else parse_direct(text, complete)
    trig_spans = getattr(parsed, "trigger_spans", [])
    trig_points = []
    if trig_spans:
        firsts, n = [], 0  # char offset of each point's first query
        for p in parsed.points:
            firsts.append(parsed.spans[n][0])
            n += len(p.queries)
        for _s, e in trig_spans:
            trig_points.append(next(k for k, f in enumerate(firsts) if f >= e))
    slots, points, pos = [], [], 0
    for t in texts:
        a, b = pos, pos + len(t)
        pos = b
        j = next((j for j, (s, e) in enumerate(parsed.spans) if s < b and a < e), None)
        if j is not None:
            slots.append(j)
            points.append(-1)
            continue
        k = next((k for k, (s, e) in enumerate(trig_spans) if s < b and a < e), None)
        slots.append(SEP if k is None else TRIGGER)
        points.append(-1 if k is None else trig_points[k])
    return TokenSlots(slots, points, parsed)


# --- advantages -----------------------------------------------------------------------------
def _clip(x: float, bound: float) -> float:
    return max(-bound, min(bound, float(x)))


def group_normalise(values: Sequence[float], eps: float = 1e-6) -> list[float]:
    """``(v - mean) / sqrt(var + eps)`` with the population variance; fewer than 2 values give 0.

    >>> [round(x, 4) for x in group_normalise([1.0, 0.0, -1.0])]
    [1.2247, 0.0, -1.2247]
    """
    n = len(values)
    if n < 2:
        return [0.0] * n
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / n
    if var + eps <= 0:
        return [0.0] * n
    return [(v - mu) / math.sqrt(var + eps) for v in values]


def positionwise_normalise(rows: Sequence[Sequence[float]], eps: float = 1e-6) -> list[list[float]]:
    """Group-normalise position ``j`` over the rows that have a position ``j`` (ragged rows).

    >>> positionwise_normalise([[1.0, 5.0], [0.0], [2.0]], eps=0.0)[0]
    [0.0, 0.0]
    """
    out = [[0.0] * len(r) for r in rows]
    for j in range(max((len(r) for r in rows), default=0)):
        have = [i for i, r in enumerate(rows) if j < len(r)]
        for i, z in zip(have, group_normalise([rows[i][j] for i in have], eps), strict=True):
            out[i][j] = z
    return out


def il_grpo_advantages(
    query_rewards: Sequence[Sequence[float]],
    seq_rewards: Sequence[float],
    lam: float,
    eps: float = 1e-6,
    reward_clip: float = 10.0,
    adv_clip: float = 2.0,
) -> tuple[list[list[float]], list[float]]:
    """``(slot_adv, seq_adv)`` for the G rollouts of one prompt: ``slot_adv[i][j]`` = slot term +
    sequence term clipped to ``±adv_clip`` (the advantage of every token of slot j), ``seq_adv[i]``
    = the clipped sequence term alone (format tokens). Rewards are clipped to ``±reward_clip`` first.

    >>> slot, seq = il_grpo_advantages([[1.0], [0.0]], [0.0, 0.0], lam=0.5, eps=0.0)
    >>> slot, seq
    ([[1.0], [-1.0]], [0.0, 0.0])
    """
    q = [[_clip(r, reward_clip) for r in row] for row in query_rewards]
    s = group_normalise([_clip(r, reward_clip) for r in seq_rewards], eps)
    slot_z = positionwise_normalise(q, eps)
    slot_adv = [[_clip(z + lam * si, adv_clip) for z in row] for row, si in zip(slot_z, s, strict=True)]
    return slot_adv, [_clip(lam * si, adv_clip) for si in s]


def total_reward(query_rewards: Sequence[float], seq_reward: float, lam: float) -> float:
    """The one scalar of a list for plain GRPO, the logs and the difficulty filter: the mean
    query reward of the list (0 without queries) + ``lam`` x its sequence reward, the same
    weighting of the two levels as IL-GRPO (a mean, so list length is rewarded only through
    ``R_seq``).

    >>> total_reward([1.0, 0.0], 1.0, lam=0.5)
    1.0
    """
    return (sum(query_rewards) / len(query_rewards) if query_rewards else 0.0) + lam * seq_reward


def grpo_advantages(
    total_rewards: Sequence[float], eps: float = 1e-6, reward_clip: float = 10.0, adv_clip: float = 2.0
) -> list[float]:
    """Plain GRPO: each list's clipped total reward (``total_reward``) group-normalised and
    clipped, one scalar for every token of the list.

    >>> [round(a, 4) for a in grpo_advantages([3.0, 1.0, 50.0], eps=0.0)]  # 50 -> 10
    [-0.4319, -0.9503, 1.3822]
    """
    z = group_normalise([_clip(r, reward_clip) for r in total_rewards], eps)
    return [_clip(a, adv_clip) for a in z]


def trigger_advantages(
    trigger_rewards: Sequence[Sequence[float]], eps: float = 1e-6, reward_clip: float = 10.0, adv_clip: float = 2.0
) -> list[list[float]]:
    """Think trigger advantages of the G rollouts of one prompt: the trigger reward of interest
    point ``k``, clipped to ``±reward_clip``, group-normalised over the rollouts that have a point
    ``k`` (``positionwise_normalise``), clipped to ``±adv_clip``.

    >>> trigger_advantages([[1.0], [0.0, 1.0]], eps=0.0)
    [[1.0], [-1.0, 0.0]]
    """
    return [[_clip(z, adv_clip) for z in row]
            for row in positionwise_normalise([[_clip(x, reward_clip) for x in t] for t in trigger_rewards], eps)]


def token_advantages(
    slots: TokenSlots | Sequence[int],
    slot_adv_i: Sequence[float],
    seq_adv_i: float,
    trigger_adv_i: Sequence[float] | None = None,
    mode: str = "il",
) -> list[float]:
    """Per-token advantages of rollout i. ``il``: slot j tokens take ``slot_adv_i[j]`` (SEP and
    slots the rewards do not cover take ``seq_adv_i``), trigger tokens only their point's
    ``trigger_adv_i[k]`` (0 without one); ``sequence``: every token takes ``seq_adv_i`` (the
    plain GRPO scalar).

    >>> token_advantages([SEP, 0, 0, SEP, 1], [0.5, -0.3], 0.1)
    [0.1, 0.5, 0.5, 0.1, -0.3]
    """
    slot = slots.slot if isinstance(slots, TokenSlots) else list(slots)
    point = slots.point if isinstance(slots, TokenSlots) else [-1] * len(slot)
    if mode == "sequence":
        return [float(seq_adv_i)] * len(slot)
    if mode != "il":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = []
    for j, k in zip(slot, point, strict=True):
        if j == TRIGGER:
            out.append(float(trigger_adv_i[k]) if trigger_adv_i is not None and 0 <= k < len(trigger_adv_i) else 0.0)
        elif 0 <= j < len(slot_adv_i):
            out.append(float(slot_adv_i[j]))
        else:
            out.append(float(seq_adv_i))
    return out


def difficulty_filter(mean_rewards: Sequence[float], low: float = 0.1, high: float = 0.95) -> list[bool]:
    """Keep prompts whose mean reward lies in ``[low, high]``: too easy or hopeless groups carry
    little signal. The trainer applies it to ``difficulty_stat``: by default the group mean of
    the lists' mean *query* reward (ROUGE-L against the reference in [0, 1], plus the CTR term
    ``w_ctr * clip(gamma p, 0, beta)`` and the length penalty in [-1, 0]), which stays in about
    [0, 1] while ``w_rouge + w_ctr * beta`` is about 1, so the paper's [0.1, 0.95] keeps its
    meaning; ``total`` adds ``lam * R_seq`` (the format term, +-1), so retune the bounds then.

    >>> difficulty_filter([0.0, 0.5, 0.99])
    [False, True, False]
    """
    return [low <= r <= high for r in mean_rewards]


def entropy_coef(step: int, max_steps: int, start: float, end: float = 0.0) -> float:
    """Linear decay from ``start`` (step 0) to ``end`` (step ``max_steps``).

    >>> entropy_coef(0, 10, 0.01), entropy_coef(5, 10, 0.01), entropy_coef(12, 10, 0.01)
    (0.01, 0.005, 0.0)
    """
    frac = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return start + (end - start) * frac


# --- tensor pieces --------------------------------------------------------------------------
def entropy_adaptive_bounds(entropy, mask, eps_low: float, eps_high: float, percentile: float = 80):
    """Per-token clip range: ``eps_high`` where the entropy is at or above the ``percentile``-th
    percentile (linear interpolation) of the valid tokens' entropies, ``eps_low`` elsewhere.

    >>> import torch
    >>> entropy_adaptive_bounds(torch.arange(6.0), torch.ones(6), 0.25, 0.5).tolist()  # cut: 4.0
    [0.25, 0.25, 0.25, 0.25, 0.5, 0.5]
    """
    valid = mask.bool()
    out = torch.full_like(entropy, eps_low, dtype=torch.float32)
    if valid.any():
        cut = torch.quantile(entropy[valid].float(), percentile / 100.0)
        out[(entropy >= cut) & valid] = eps_high
    return out


def masked_mean(x, mask):
    """Mean of ``x`` over ``mask``; masked positions (pad after eos) may hold inf, never nan-ing it."""
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


def clipped_surrogate(logp, old_logp, adv, eps, mask):
    """Token-level PPO loss ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``, ``r = exp(logp - old)``,
    averaged over the valid tokens (``eps`` a float or a per-token tensor).

    >>> import torch
    >>> z = torch.zeros(1, 2)
    >>> loss = clipped_surrogate(z + 0.5, z, torch.tensor([[1.0, -1.0]]), 0.2, torch.ones(1, 2))
    >>> round(loss.item(), 4)  # -(1.2 - 1.65)/2
    0.2244
    """
    ratio = torch.exp(logp - old_logp)
    eps = torch.as_tensor(eps, dtype=ratio.dtype, device=ratio.device)
    clipped = torch.minimum(torch.maximum(ratio, 1 - eps), 1 + eps)
    return masked_mean(-torch.minimum(ratio * adv, clipped * adv), mask.to(ratio.dtype))


def kl_k3(logp, ref_logp):
    """Per-token k3 estimator of KL(pi || ref) on tokens sampled from pi:
    ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, >= 0).

    >>> import torch
    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item()
    0.0
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1
