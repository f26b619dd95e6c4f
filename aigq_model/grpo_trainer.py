"""The IL-GRPO / plain GRPO trainer of AIGQ policies: sample ``G`` lists per prompt, reward them,
turn the rewards into per-token advantages and update the policy with the clipped surrogate
(the maths is :mod:`aigq_model.grpo`; the entry point is :mod:`aigq_model.train_grpo`).

Why a hand-written loop: TRL is not in the pinned environment, and its GRPO trainer takes one
scalar reward per completion, while IL-GRPO needs a different advantage per token. The loop
reuses generation's prompt encoding (``generate.encode_sample_prompt``), parsers and
``load.save_aigq``; under torchrun gradients are averaged across ranks by hand (each rank
rolls out its own prompts) and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from aigq_model.ctr_model import context_from_sample
from aigq_model.decode import left_pad
from aigq_model.generate import Decoding, encode_sample_prompt
from aigq_model.grpo import (
    KINDS,
    MODES,
    clipped_surrogate,
    difficulty_filter,
    entropy_adaptive_bounds,
    entropy_coef,
    grpo_advantages,
    il_grpo_advantages,
    kl_k3,
    masked_mean,
    token_advantages,
    token_slots,
    token_texts,
    total_reward,
    trigger_advantages,
)
from aigq_model.load import save_aigq
from aigq_model.parsing import normalize_query
from aigq_model.prompts import sample_field
from aigq_model.rewards import RewardConfig, query_rewards, sequence_reward, trigger_rouge
from aigq_model.targets import think_points
from common.ddp import setup_distributed
from common.text_encoder import encode_texts

logger = logging.getLogger(__name__)

#: ``reward_fn(sample, parsed_rollouts) -> (query_rewards, seq_rewards, trigger_rewards | None)``.
RewardFn = Callable[[Mapping, Sequence], tuple]


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
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    prompts = [encode_sample_prompt(tokenizer, s, config.style, config.max_history, config.max_prompt_tokens) for s in batch]
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
                trig_adv = trigger_advantages(tr, config.adv_eps, config.reward_clip, config.adv_clip)
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
                save_aigq(model, tokenizer, Path(checkpoint_dir) / f"step-{step + 1}")
    if world > 1:
        dist.barrier()
    if out_dir is not None and rank == 0:
        save_aigq(model, tokenizer, out_dir)
    return history


def _update(model, ref_model, optimizer, ids, mask, adv, n_prompt, keep_rows, config, step, world) -> dict:
    """The policy update of one step over the kept rollouts (``inner_epochs`` x minibatches)."""
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
                loss = clipped_surrogate(logp, old_logp, a, eps, tok_mask) - coef * masked_mean(ent, tok_mask)
                kl = masked_mean(kl_k3(logp, ref[i]), tok_mask) if config.kl_coef > 0 else torch.zeros(())
                loss = loss + config.kl_coef * kl
                loss.backward()
                ratio = torch.exp(logp.detach() - old_logp)
                sums["clip_frac"] += float(masked_mean(((ratio - 1).abs() > eps).float(), tok_mask))
                sums["loss"] += float(loss.detach())
                sums["entropy"] += float(masked_mean(ent.detach(), tok_mask))
                sums["kl"] += float(kl.detach())
                n += 1
            if world > 1:
                _all_reduce_grads(model, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"skipped": False, **{k: v / max(n, 1) for k, v in sums.items()}, "entropy_coef": coef}


# --- rewards from aigq_model.rewards ----------------------------------------------------------
#: The sample field holding the user's later searches of the training day (``train_grpo.with_later_searches``).
LATER = "later_queries"


def make_reward_fn(
    reward_cfg=None, ctr_scorer=None, kind: str = "direct", max_history: int = 20, encoder=None
) -> RewardFn:
    """The IL-GRPO reward over ``aigq_model.rewards``: query rewards in hindsight against the
    sample's later searches (``sample["later_queries"]``, attached by ``train_grpo``), CTR term
    from ``ctr_scorer.predict`` (none without a scorer), sequence reward from the list and
    ``malformed``; with ``w_sem`` the cosines come from ``encoder(texts) -> unit vectors``
    (MiniLM by default, each text encoded once). Think trigger reward of generated point k:
    ``trigger_rouge`` against the triggers (prompt display indices) of the Think target's point
    holding the point's first matching query, else target point k, else ``[]``."""
    cfg = reward_cfg if isinstance(reward_cfg, RewardConfig) else RewardConfig.from_dict(reward_cfg)
    cache: dict[str, object] = {}

    def embed(texts):
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            for t, v in zip(new, (encoder or encode_texts)(new), strict=True):
                cache[t] = v
        return [cache[t] for t in texts]

    def reward_fn(sample, parsed):
        if LATER not in sample:
            raise KeyError(f"sample {sample_field(sample, 'sample_id')} has no {LATER!r} (train_grpo attaches them)")
        issued = [normalize_query(q) for q in sample[LATER] or []]
        points = think_points(sample, max_history) if kind == "think" else []
        flat = [q for p in parsed for q in p.queries]
        probs = None
        if ctr_scorer is not None and flat:
            probs = [float(x) for x in ctr_scorer.predict([context_from_sample(sample)] * len(flat), flat)]
        cosines = None
        if cfg.w_sem and issued and flat:
            vq, vt = embed([normalize_query(q) for q in flat]), embed(issued)
            cosines = [[float(a @ b) for b in vt] for a in vq]
        qr, sr, tr, n = [], [], [], 0
        for p in parsed:
            m = len(p.queries)
            qr.append(query_rewards(p.queries, issued, None if probs is None else probs[n : n + m], cfg,
                                    None if cosines is None else cosines[n : n + m]))
            n += m
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
