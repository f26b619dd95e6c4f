"""The model calls behind AIGQ generation, one batch at a time over left-padded prompts: token-level
``model.generate`` (``generate_texts``: greedy, sampling or beam search, KV cache on), the
query-level beam of ``query_beam`` decoding (``next_queries``: the most probable next queries
after a prefix) and the teacher-forced masses of Think's first trigger (``trigger_masses``).
:func:`aigq_model.generate.generate_lists` turns their outputs into ranked lists.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList

from aigq_model.parsing import Q_MARK, TARGET_MARKERS, THINK_OPEN

if TYPE_CHECKING:  # generate imports this module; the settings are only annotated here
    from aigq_model.generate import Decoding


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """``(input_ids, attention_mask)`` tensors, padded on the left to the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


class NoRepeatQueryProcessor:
    """A ``LogitsProcessor``: where the query being generated (the tokens since the last ``<q>``)
    already equals an earlier complete query of the same sequence, the tokens that would close it
    (``<q>``, eos) are forbidden, so a list never repeats a query exactly; the model must extend
    or change it. Rows are the generated part only (``prompt_width`` tokens are skipped)."""

    def __init__(self, q_id: int, close_ids: Sequence[int], prompt_width: int):
        self.q_id, self.close_ids, self.prompt_width = q_id, list(close_ids), prompt_width

    def banned(self, generated: Sequence[int]) -> bool:
        """Whether closing now would repeat an earlier query of ``generated``.

        >>> p = NoRepeatQueryProcessor(q_id=1, close_ids=[1, 0], prompt_width=0)
        >>> p.banned([1, 5, 6, 1, 5, 6]), p.banned([1, 5, 6, 1, 5]), p.banned([1, 5, 6])
        (True, False, False)
        """
        marks = [i for i, t in enumerate(generated) if t == self.q_id]
        if len(marks) < 2:
            return False
        current = tuple(generated[marks[-1] + 1 :])
        if not current:
            return False
        bounds = [*marks, len(generated)]
        return any(tuple(generated[a + 1 : b]) == current for a, b in zip(bounds[:-2], bounds[1:-1], strict=True))

    def __call__(self, input_ids, scores):
        rows = input_ids[:, self.prompt_width :].tolist()
        for b, row in enumerate(rows):
            if self.banned(row):
                scores[b, self.close_ids] = float("-inf")
        return scores


def generate_texts(
    model, tokenizer, prompt_ids: Sequence[Sequence[int]], decoding: Decoding
) -> list[list[tuple[str, bool]]]:
    """One batch: per prompt, ``num_return_sequences`` pairs ``(decoded continuation, reached
    eos)`` (beams best first), from one KV-cached ``generate`` call."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    ids, mask = left_pad(prompt_ids, pad)
    device = next(model.parameters()).device
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    extra = {}
    if decoding.no_repeat_query:
        q_id = tokenizer.convert_tokens_to_ids(Q_MARK)
        if q_id is not None and q_id != tokenizer.unk_token_id:
            extra["logits_processor"] = LogitsProcessorList(
                [NoRepeatQueryProcessor(q_id, sorted({q_id, eos}), ids.shape[1])]
            )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=decoding.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            use_cache=True,
            num_return_sequences=decoding.num_return_sequences,
            **decoding.generate_kwargs(),
            **extra,
        )  # (batch * n, width + new), the n sequences of a prompt adjacent
    new = out[:, ids.shape[1] :].tolist()
    texts = []
    for row in new:
        done = eos in row
        row = row[: row.index(eos)] if done else row
        texts.append((tokenizer.decode(row, skip_special_tokens=False), done))
    n = decoding.num_return_sequences
    return [texts[i : i + n] for i in range(0, len(texts), n)]


def token_id(tokenizer, token: str) -> int | None:
    """The id of ``token``, ``None`` when the tokenizer does not know it."""
    i = tokenizer.convert_tokens_to_ids(token)
    return None if i is None or i == tokenizer.unk_token_id else int(i)


def next_queries(
    model, tokenizer, prefixes: Sequence[Sequence[int]], decoding: Decoding
) -> list[list[tuple[str, float]]]:
    """For each prefix (token ids ending in ``<q>``), the ``num_beams`` most probable next queries
    with their joint log-probabilities (no length normalisation), best first: one beam search per
    prefix over a single query, ended by ``<q>``, ``<think>`` or eos. Queries cut at
    ``query_max_tokens`` or holding a marker are dropped."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    stops = sorted({t for t in (eos, token_id(tokenizer, Q_MARK), token_id(tokenizer, THINK_OPEN)) if t is not None})
    n = decoding.num_beams
    ids, mask = left_pad(prefixes, pad)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=decoding.query_max_tokens,
            eos_token_id=stops, pad_token_id=pad, use_cache=True, num_beams=n, num_return_sequences=n,
            do_sample=False, length_penalty=0.0, early_stopping=True, temperature=None, top_k=None, top_p=None,
            return_dict_in_generate=True, output_scores=True,
        )  # sequences (len(prefixes) * n, width + new), beams of a prefix adjacent, best first
    seqs, scores = out.sequences, out.sequences_scores.tolist()
    lists = []
    for start in range(0, seqs.shape[0], n):
        queries = []
        for row, score in zip(seqs[start : start + n, ids.shape[1] :].tolist(), scores[start : start + n], strict=True):
            end = next((j for j, t in enumerate(row) if t in stops), None)
            if end is None:
                continue  # cut at query_max_tokens
            text = tokenizer.decode(row[:end], skip_special_tokens=False)
            if not any(m in text for m in TARGET_MARKERS):
                queries.append((text, float(score)))
        lists.append(queries)
    return lists


def trigger_masses(
    model, tokenizer, prompts: Sequence[Sequence[int]], interests: Sequence[Sequence], batch_rows: int = 64
) -> list[dict]:
    """For each prompt, ``{interest: mass}``: the policy's probability that its Think output opens
    with an interest point whose trigger list starts at a behaviour of that interest, i.e. the sum
    over the window's behaviour indices i of P(``<think>[i,``) + P(``<think>[i]``) (teacher-forced,
    exact; the point's later triggers and the ``[]`` new-interest point are not counted).
    ``interests[b][i - 1]`` is behaviour i's interest (``behaviour_interests``); ``None`` skips it.
    Rows are scored ``batch_rows`` at a time, left-padded, with explicit position ids."""
    if len(interests) != len(prompts):
        raise ValueError(f"{len(interests)} interest lists for {len(prompts)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[tuple[int, object, list[int]]] = []  # (prompt index, interest, continuation ids)
    for b, keys in enumerate(interests):
        for i, key in enumerate(keys, start=1):
            if key is None:
                continue
            for end in (",", "]"):
                cont = tokenizer(f"{THINK_OPEN}[{i}{end}", add_special_tokens=False)["input_ids"]
                rows.append((b, key, list(cont)))
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = next(model.parameters()).device
    out: list[dict] = [{} for _ in prompts]
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        ids, mask = left_pad([[*prompts[b], *c] for b, _k, c in chunk], pad)
        keep = max(len(c) for *_, c in chunk) + 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            kw = {"logits_to_keep": keep} if keep_arg else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), use_cache=False, **kw).logits
        logp = torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()  # (rows, keep, vocab)
        for r, (b, key, cont) in enumerate(chunk):
            # the continuation fills the row's last len(cont) positions; logits at t predict t + 1
            first = keep - 1 - len(cont)
            lp = sum(float(logp[r, first + j, t]) for j, t in enumerate(cont))
            out[b][key] = out[b].get(key, 0.0) + math.exp(lp)
    return out
