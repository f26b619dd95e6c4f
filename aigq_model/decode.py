"""The model calls behind AIGQ generation, one batch at a time over left-padded prompts: token-level
``model.generate`` (``generate_texts``: greedy, sampling or beam search, KV cache on) and the
query-level beam of ``query_beam`` decoding (``next_queries``: the most probable next queries
after a prefix). Both take an optional ``QueryTrie`` that keeps every query on the known ones
(:mod:`aigq_model.trie`). :func:`aigq_model.generate.generate_lists` turns their outputs into
ranked lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList

from aigq_model.parsing import Q_MARK, TARGET_MARKERS, THINK_OPEN
from aigq_model.trie import QueryTrie, TrieConstraint

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
    model, tokenizer, prompt_ids: Sequence[Sequence[int]], decoding: Decoding, trie: QueryTrie | None = None
) -> list[list[tuple[str, bool]]]:
    """One batch: per prompt, ``num_return_sequences`` pairs ``(decoded continuation, reached
    eos)`` (beams best first), from one KV-cached ``generate`` call; with ``trie`` every query
    is a known one (``TrieConstraint``)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    ids, mask = left_pad(prompt_ids, pad)
    device = next(model.parameters()).device
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    processors = []
    if decoding.no_repeat_query:
        q_id = tokenizer.convert_tokens_to_ids(Q_MARK)
        if q_id is not None and q_id != tokenizer.unk_token_id:
            processors.append(NoRepeatQueryProcessor(q_id, sorted({q_id, eos}), ids.shape[1]))
    if trie is not None:
        processors.append(TrieConstraint(trie, tokenizer, ids.shape[1]))
    extra = {"logits_processor": LogitsProcessorList(processors)} if processors else {}
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
    model, tokenizer, prefixes: Sequence[Sequence[int]], decoding: Decoding, trie: QueryTrie | None = None
) -> list[list[tuple[str, float]]]:
    """For each prefix (token ids ending in ``<q>``), the ``num_beams`` most probable next queries
    with their joint log-probabilities (no length normalisation), best first: one beam search per
    prefix over a single query, ended by ``<q>``, ``<think>`` or eos. Queries cut at
    ``query_max_tokens`` or holding a marker are dropped. With ``trie`` the beams only walk known
    queries (the ``num_beams`` most probable of them)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    stops = sorted({t for t in (eos, token_id(tokenizer, Q_MARK), token_id(tokenizer, THINK_OPEN)) if t is not None})
    n = decoding.num_beams
    ids, mask = left_pad(prefixes, pad)
    device = next(model.parameters()).device
    extra = {}
    if trie is not None:
        extra["logits_processor"] = LogitsProcessorList([TrieConstraint(trie, tokenizer, ids.shape[1], in_query=True)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=decoding.query_max_tokens,
            eos_token_id=stops, pad_token_id=pad, use_cache=True, num_beams=n, num_return_sequences=n,
            do_sample=False, length_penalty=0.0, early_stopping=True, temperature=None, top_k=None, top_p=None,
            return_dict_in_generate=True, output_scores=True, **extra,
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
