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

Why a hand-written loop: TRL is not in the pinned environment, and its GRPO trainer takes one
scalar reward per completion, while IL-GRPO needs a different advantage per token. The loop
reuses generation's prompt encoding (``generate._encode``), parsers and
``train_sft.save_aigq``; under torchrun gradients are averaged across ranks by hand (each rank
rolls out its own prompts) and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aigq_model.parsing import ParsedList, ParsedThink, parse_direct, parse_think

logger = logging.getLogger(__name__)

SEP = -1  # format token: sequence advantage only
TRIGGER = -2  # Think trigger-bracket token: its interest point's trigger advantage only
MODES = ("il", "sequence")
KINDS = ("direct", "think", "plain")

#: ``reward_fn(sample, parsed_rollouts) -> (query_rewards, seq_rewards, trigger_rewards | None)``.
RewardFn = Callable[[Mapping, Sequence], tuple]


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
    import torch

    valid = mask.bool()
    out = torch.full_like(entropy, eps_low, dtype=torch.float32)
    if valid.any():
        cut = torch.quantile(entropy[valid].float(), percentile / 100.0)
        out[(entropy >= cut) & valid] = eps_high
    return out


def _masked_mean(x, mask):
    """Mean of ``x`` over ``mask``; masked positions (pad after eos) may hold inf, never nan-ing it."""
    import torch

    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


def clipped_surrogate(logp, old_logp, adv, eps, mask):
    """Token-level PPO loss ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``, ``r = exp(logp - old)``,
    averaged over the valid tokens (``eps`` a float or a per-token tensor).

    >>> import torch
    >>> z = torch.zeros(1, 2)
    >>> clipped_surrogate(z + 0.5, z, torch.tensor([[1.0, -1.0]]), 0.2, torch.ones(1, 2)).item()  # -(1.2 - 1.65)/2
    0.2243...
    """
    import torch

    ratio = torch.exp(logp - old_logp)
    eps = torch.as_tensor(eps, dtype=ratio.dtype, device=ratio.device)
    clipped = torch.minimum(torch.maximum(ratio, 1 - eps), 1 + eps)
    return _masked_mean(-torch.minimum(ratio * adv, clipped * adv), mask.to(ratio.dtype))


def kl_k3(logp, ref_logp):
    """Per-token k3 estimator of KL(pi || ref) on tokens sampled from pi:
    ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, >= 0).

    >>> import torch
    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item()
    0.0
    """
    import torch

    d = ref_logp - logp
    return torch.exp(d) - d - 1


def sequence_logprobs(model, ids, mask, n_prompt: int, temperature: float = 1.0):
    """``(logp, entropy)`` of tokens ``ids[:, n_prompt:]`` under ``model`` (logits / temperature,
    the sampling distribution without top-k), each ``(batch, T)``. Position ids follow the
    attention mask as in ``generate``, so left padding changes nothing."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (batch, width, vocab)
    logits = logits[:, n_prompt - 1 : -1].float() / temperature  # (batch, T, vocab)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, ids[:, n_prompt:, None]).squeeze(-1)  # (batch, T)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


# --- the trainer ----------------------------------------------------------------------------
@dataclass
class GRPOConfig:
    """IL-GRPO settings (``aigq.grpo`` in conf/pipeline.yaml)."""

    mode: str = "il"
    kind: str = "direct"
    style: str = "compressed"
    max_history: int = 20
    max_prompt_tokens: int = 384
    group_size: int = 8
    prompts_per_step: int = 4
    temperature: float = 1.0
    top_k: int = 100
    max_new_tokens: int = 64
    lam: float = 0.5
    eps_low: float = 0.2
    eps_high: float = 0.28
    entropy_percentile: float = 80.0
    entropy_start: float = 0.01
    kl_coef: float = 0.0
    reward_clip: float = 10.0
    adv_clip: float = 2.0
    adv_eps: float = 1e-6
    difficulty_filter: bool = True
    difficulty_stat: str = "query"  # query: group mean of the lists' mean query reward | total
    difficulty_low: float = 0.1
    difficulty_high: float = 0.95
    learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    max_steps: int = 50
    inner_epochs: int = 1
    minibatch_size: int = 32  # rollouts per optimiser update
    save_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES or self.kind not in KINDS:
            raise ValueError(f"mode must be in {MODES} and kind in {KINDS}, got {self.mode!r}, {self.kind!r}")
        if min(self.group_size, self.prompts_per_step, self.max_new_tokens, self.max_steps) < 1:
            raise ValueError("group_size, prompts_per_step, max_new_tokens and max_steps must be >= 1")
        if min(self.inner_epochs, self.minibatch_size) < 1 or self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError("inner_epochs and minibatch_size must be >= 1, temperature and learning_rate > 0")
        if not 0 <= self.eps_low <= self.eps_high or not 0 < self.entropy_percentile <= 100:
            raise ValueError("need 0 <= eps_low <= eps_high and 0 < entropy_percentile <= 100")
        if self.difficulty_stat not in ("query", "total"):
            raise ValueError(f"difficulty_stat must be 'query' or 'total', got {self.difficulty_stat!r}")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> GRPOConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown aigq.grpo settings: {sorted(unknown)}")
        return cls(**section)


def _rollouts(model, tokenizer, batch, config: GRPOConfig, device):
    """One sampled ``generate`` call: ``(ids (P*G, width), mask, n_prompt, n_valid per row, done)``;
    a row's valid tokens run up to and including its first eos."""
    import torch

    from aigq_model.generate import Decoding, _encode, left_pad

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    prompts = [_encode(tokenizer, s, config.style, config.max_history, config.max_prompt_tokens) for s in batch]
    ids, mask = left_pad(prompts, pad)
    dec = Decoding(strategy="sample", temperature=config.temperature, top_k=config.top_k)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=config.max_new_tokens,
            eos_token_id=eos, pad_token_id=pad, use_cache=True, num_return_sequences=config.group_size,
            **dec.generate_kwargs(),
        )  # (P * G, n_prompt + T), the G rollouts of a prompt adjacent
    n_prompt = ids.shape[1]
    gen = out[:, n_prompt:]
    is_eos = gen == eos
    done = is_eos.any(-1)
    n_valid = torch.where(done, is_eos.int().argmax(-1) + 1, torch.full_like(done, gen.shape[1], dtype=torch.long))
    gen_mask = torch.arange(gen.shape[1], device=gen.device)[None, :] < n_valid[:, None]
    full_mask = torch.cat([mask.to(device).repeat_interleave(config.group_size, 0), gen_mask.long()], 1)
    return out, full_mask, n_prompt, n_valid.tolist(), done.tolist()


def _all_reduce_grads(model, world: int) -> None:
    import torch
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


def train_grpo(
    model,
    tokenizer,
    samples: Sequence[Mapping],
    reward_fn: RewardFn,
    config: GRPOConfig,
    ref_model=None,
    out_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``config.max_steps`` rollout/update steps; returns the history
    (one dict per step). ``reward_fn(sample, parsed_G)`` gives per-rollout query rewards, sequence
    rewards and (Think) trigger rewards per interest point. Final weights go to ``out_dir``,
    snapshots every ``save_steps`` to ``checkpoint_dir/step-<n>`` (rank 0 only)."""
    import torch
    import torch.distributed as dist

    from base_lm.trainer import setup_distributed

    if not samples:
        raise ValueError("no GRPO training samples")
    if config.kl_coef > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs a ref_model")
    rank, world, device = setup_distributed()
    rng = random.Random(config.seed + 7919 * rank)
    torch.manual_seed(config.seed + rank)
    model.to(device).eval()  # eval: no dropout, so rollout and update log-probs agree
    if ref_model is not None:
        ref_model.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    kind, G, history = ("think" if config.kind == "think" else "direct"), config.group_size, []
    for step in range(config.max_steps):
        t0 = time.perf_counter()
        P = config.prompts_per_step
        batch = [samples[i] for i in (rng.sample(range(len(samples)), P) if len(samples) >= P
                                      else rng.choices(range(len(samples)), k=P))]
        ids, mask, n_prompt, n_valid, done = _rollouts(model, tokenizer, batch, config, device)
        t1 = time.perf_counter()
        adv = torch.zeros(ids.shape[0], ids.shape[1] - n_prompt, device=device)  # (P * G, T)
        keep_rows, totals, q_all, s_all, kept = [], [], [], [], 0
        gen_rows = ids[:, n_prompt:].tolist()
        for p, sample in enumerate(batch):
            rows = range(p * G, (p + 1) * G)
            slots = []
            for r in rows:
                texts = token_texts(tokenizer, gen_rows[r][: n_valid[r] - done[r]]) + [""] * done[r]
                ts = token_slots(texts, kind, complete=done[r])  # as served: a cut-off query is dropped
                slots.append(ts)
            qr, sr, tr = reward_fn(sample, [ts.parsed for ts in slots])
            tot = [total_reward(q, s, config.lam) for q, s in zip(qr, sr, strict=True)]
            totals += tot
            q_all += [x for q in qr for x in q]
            s_all += list(sr)
            lam_stat = config.lam if config.difficulty_stat == "total" else 0.0
            stat = sum(total_reward(q, s, lam_stat) for q, s in zip(qr, sr, strict=True)) / G
            if config.difficulty_filter and not difficulty_filter(
                [stat], config.difficulty_low, config.difficulty_high
            )[0]:
                continue
            kept += 1
            if config.mode == "sequence":
                slot_adv, seq_adv = [[]] * G, grpo_advantages(tot, config.adv_eps, config.reward_clip, config.adv_clip)
            else:
                slot_adv, seq_adv = il_grpo_advantages(
                    qr, sr, config.lam, config.adv_eps, config.reward_clip, config.adv_clip
                )
            trig_adv = None
            if tr is not None and kind == "think":
                trig_adv = [[_clip(z, config.adv_clip) for z in row] for row in positionwise_normalise(
                    [[_clip(x, config.reward_clip) for x in t] for t in tr], config.adv_eps)]
            for g, r in enumerate(rows):
                a = token_advantages(slots[g], slot_adv[g], seq_adv[g], trig_adv and trig_adv[g], config.mode)
                adv[r, : len(a)] = torch.tensor(a, device=device)
                keep_rows.append(r)
        t2 = time.perf_counter()
        entry = _update(model, ref_model, optimizer, ids, mask, adv, n_prompt, keep_rows, config, step, world)
        t3 = time.perf_counter()
        entry = {
            "step": step + 1,
            "reward": sum(totals) / len(totals),
            "query_reward": sum(q_all) / len(q_all) if q_all else 0.0,
            "seq_reward": sum(s_all) / len(s_all),
            "queries_per_list": len(q_all) / len(totals),
            "filtered": 1 - kept / P,
            **entry,
            "gen_s": round(t1 - t0, 3),
            "reward_s": round(t2 - t1, 3),
            "update_s": round(t3 - t2, 3),
            "rollouts_per_s": round(len(totals) / max(t3 - t0, 1e-9), 2),
        }
        history.append(entry)
        if rank == 0:
            (log or (lambda e: logger.info("grpo %s", e)))(entry)
            if checkpoint_dir is not None and config.save_steps and (step + 1) % config.save_steps == 0:
                from aigq_model.train_sft import save_aigq

                save_aigq(model, tokenizer, Path(checkpoint_dir) / f"step-{step + 1}")
    if world > 1:
        dist.barrier()
    if out_dir is not None and rank == 0:
        from aigq_model.train_sft import save_aigq

        save_aigq(model, tokenizer, out_dir)
    return history


def _update(model, ref_model, optimizer, ids, mask, adv, n_prompt, keep_rows, config, step, world) -> dict:
    """The policy update of one step over the kept rollouts (``inner_epochs`` x minibatches)."""
    import torch
    import torch.distributed as dist

    n_mb = math.ceil(len(keep_rows) / config.minibatch_size)
    if world > 1:  # every rank must run as many all-reduces
        t = torch.tensor([n_mb], device=ids.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        n_mb = int(t)
    if n_mb == 0:
        return {"skipped": True, "loss": None, "entropy": None, "clip_frac": None, "kl": None}
    mbs = [keep_rows[i * config.minibatch_size : (i + 1) * config.minibatch_size] for i in range(n_mb)]
    T = int(mask[:, n_prompt:].sum(-1).max())  # longest valid rollout

    def inputs(rows):
        return ids[rows, : n_prompt + T], mask[rows, : n_prompt + T], adv[rows, :T]

    one_update = config.inner_epochs == 1 and n_mb == 1
    old, ref = {}, {}
    with torch.no_grad():
        for i, rows in enumerate(mbs):
            if not rows:
                continue
            x, m, _ = inputs(rows)
            if not one_update:  # one update: the first forward is the rollout policy itself
                old[i] = sequence_logprobs(model, x, m, n_prompt, config.temperature)[0]
            if config.kl_coef > 0:
                ref[i] = sequence_logprobs(ref_model, x, m, n_prompt, config.temperature)[0]
    coef = entropy_coef(step, config.max_steps, config.entropy_start)
    sums = {"loss": 0.0, "entropy": 0.0, "clip_frac": 0.0, "kl": 0.0}
    n = 0
    for _ in range(config.inner_epochs):
        for i, rows in enumerate(mbs):
            optimizer.zero_grad(set_to_none=True)
            if rows:
                x, m, a = inputs(rows)
                tok_mask = m[:, n_prompt:].float()  # (mb, T)
                logp, ent = sequence_logprobs(model, x, m, n_prompt, config.temperature)
                old_logp = logp.detach() if one_update else old[i]
                eps = entropy_adaptive_bounds(
                    ent.detach(), tok_mask, config.eps_low, config.eps_high, config.entropy_percentile
                )
                loss = clipped_surrogate(logp, old_logp, a, eps, tok_mask) - coef * _masked_mean(ent, tok_mask)
                kl = _masked_mean(kl_k3(logp, ref[i]), tok_mask) if config.kl_coef > 0 else torch.zeros(())
                loss = loss + config.kl_coef * kl
                loss.backward()
                ratio = torch.exp(logp.detach() - old_logp)
                sums["clip_frac"] += float(_masked_mean(((ratio - 1).abs() > eps).float(), tok_mask))
                sums["loss"] += float(loss.detach())
                sums["entropy"] += float(_masked_mean(ent.detach(), tok_mask))
                sums["kl"] += float(kl.detach())
                n += 1
            if world > 1:
                _all_reduce_grads(model, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"skipped": False, **{k: v / max(n, 1) for k, v in sums.items()}, "entropy_coef": coef}


# --- rewards from aigq_model.rewards ----------------------------------------------------------
def make_reward_fn(reward_cfg=None, ctr_scorer=None, kind: str = "direct", max_history: int = 20) -> RewardFn:
    """The IL-GRPO reward over ``aigq_model.rewards``: query rewards position-wise against the
    sample's reference list (Direct: ``target_queries``; Think: the queries of the Think target,
    ``targets.think_points``, in target order), CTR term from ``ctr_scorer.predict`` (none
    without a scorer), sequence reward from the list and ``malformed``. Think trigger reward of
    generated point k: ``trigger_rouge`` against the triggers (prompt display indices) of the
    reference point holding the point's first matching query, else reference point k, else ``[]``."""
    from aigq_model.prompts import sample_field
    from aigq_model.rewards import RewardConfig, query_rewards, sequence_reward, trigger_rouge
    from aigq_model.targets import clean_target_query, think_points

    cfg = reward_cfg if isinstance(reward_cfg, RewardConfig) else RewardConfig.from_dict(reward_cfg)

    def reward_fn(sample, parsed):
        if kind == "think":
            points = think_points(sample, max_history)
            reference = [q for p in points for q in p.queries]
        else:
            points, reference = [], [clean_target_query(q) for q in sample_field(sample, "target_queries") or []]
        flat = [q for p in parsed for q in p.queries]
        probs = None
        if ctr_scorer is not None and flat:
            from aigq_model.ctr import context_from_sample

            probs = [float(x) for x in ctr_scorer.predict([context_from_sample(sample)] * len(flat), flat)]
        qr, sr, tr, n = [], [], [], 0
        for p in parsed:
            qr.append(query_rewards(p.queries, reference, None if probs is None else probs[n : n + len(p.queries)], cfg))
            n += len(p.queries)
            sr.append(sequence_reward(p.queries, p.malformed, cfg))
            if kind == "think":
                row = []
                for k, pt in enumerate(p.points):
                    ref = next((r for r in points if set(pt.queries) & set(r.queries)), None)
                    ref = ref or (points[k] if k < len(points) else None)
                    row.append(trigger_rouge(list(pt.triggers), list(ref.triggers) if ref else []))
                tr.append(row)
        return qr, sr, tr if kind == "think" else None

    return reward_fn
