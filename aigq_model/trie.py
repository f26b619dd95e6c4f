"""Constrained decoding over known queries: a prefix trie of the tokenised query vocabulary and the
``LogitsProcessor`` that keeps every generated query on it (``aigq.generate.known_queries``).

Generative retrieval decodes this way (GENRE's entity names, TIGER's semantic IDs): inside a query
(the tokens after a ``<q>``) only the trie's children of the prefix written so far may follow, and
a query may close (``<q>``, ``<think>`` or eos) only where the prefix is a whole known query. Text
outside a query (Think's trigger lists and rationales, anything before the first ``<q>``) is left
free. A query is tokenised as it appears in a target (``"<q> " + query``, see
``targets.direct_target``), so the trie holds the same ids the policy was trained to write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from aigq_model.parsing import Q_MARK, THINK_CLOSE, THINK_OPEN, normalize_query

_END = -1  # key of a node that completes a known query


class QueryTrie:
    """Token-id prefix trie of normalised queries (``build``), read by ``TrieConstraint``.

    >>> t = QueryTrie()
    >>> t.add([5, 6]); t.add([5]); t.add([7, 8, 9])
    >>> len(t), t.children([5]), t.is_query([5]), t.is_query([7, 8]), t.children([4])
    (3, [6], True, False, None)
    """

    def __init__(self):
        self.root: dict = {}
        self.size = 0

    def add(self, ids: Sequence[int]) -> None:
        node = self.root
        for t in ids:
            node = node.setdefault(int(t), {})
        if _END not in node:
            node[_END] = True
            self.size += 1

    def node(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return None
        return node

    def children(self, prefix: Sequence[int]) -> list[int] | None:
        """The token ids that extend ``prefix`` towards a known query; ``None`` off the trie."""
        node = self.node(prefix)
        return None if node is None else [t for t in node if t != _END]

    def is_query(self, prefix: Sequence[int]) -> bool:
        node = self.node(prefix)
        return node is not None and _END in node

    def __len__(self) -> int:
        return self.size

    @classmethod
    def build(cls, tokenizer, queries: Iterable[str]) -> QueryTrie:
        """The trie of the distinct normalised non-empty ``queries``, each tokenised as in a target
        (``"<q> " + query``, the leading ``<q>`` id dropped)."""
        q_id = tokenizer.convert_tokens_to_ids(Q_MARK)
        trie = cls()
        for q in dict.fromkeys(normalize_query(x) for x in queries):
            if not q:
                continue
            ids = tokenizer(f"{Q_MARK} {q}", add_special_tokens=False)["input_ids"]
            if ids and ids[0] == q_id:
                ids = ids[1:]
            if ids:
                trie.add(ids)
        return trie


class TrieConstraint:
    """A ``LogitsProcessor`` keeping every query of the generated rows on ``trie``.

    Per row, the generated part (after ``prompt_width`` tokens) is scanned back to its last marker
    (``<q>``, ``<think>``, ``</think>``). After a ``<q>`` (or from the first generated token when
    ``in_query`` says the prompt ends in ``<q>``, as ``decode.next_queries`` prefixes do) the
    allowed tokens are the trie's children of the query prefix, plus the closing ids where the
    prefix is a known query; elsewhere nothing is masked. A prefix off the trie (it cannot arise
    under this processor) may only close, so beam search never picks a zero-probability token.
    """

    def __init__(self, trie: QueryTrie, tokenizer, prompt_width: int, in_query: bool = False):
        ids = {tokenizer.convert_tokens_to_ids(m) for m in (Q_MARK, THINK_OPEN, THINK_CLOSE)}
        self.markers = {int(i) for i in ids if i is not None and i != tokenizer.unk_token_id}
        self.q_id = int(tokenizer.convert_tokens_to_ids(Q_MARK))
        closing = {self.q_id, tokenizer.convert_tokens_to_ids(THINK_OPEN), tokenizer.eos_token_id}
        self.close_ids = sorted(int(i) for i in closing if i is not None and i != tokenizer.unk_token_id)
        self.trie, self.prompt_width, self.in_query = trie, prompt_width, in_query

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """Token ids allowed next after ``generated``; ``None`` = all.

        >>> class Tok:
        ...     unk_token_id, eos_token_id = 0, 2
        ...     def convert_tokens_to_ids(self, t): return {"<q>": 1, "<think>": 3, "</think>": 4}[t]
        >>> t = QueryTrie(); t.add([5, 6]); t.add([5])
        >>> c = TrieConstraint(t, Tok(), prompt_width=0)
        >>> c.allowed([9]), c.allowed([1]), sorted(c.allowed([1, 5])), sorted(c.allowed([1, 5, 6]))
        (None, [5], [1, 2, 3, 6], [1, 2, 3])
        """
        last = next((i for i in range(len(generated) - 1, -1, -1) if generated[i] in self.markers), None)
        if last is None:
            if not self.in_query:
                return None
            prefix = generated
        elif generated[last] != self.q_id:
            return None
        else:
            prefix = generated[last + 1 :]
        node = self.trie.node(prefix)
        if node is None:
            return list(self.close_ids)
        out = [t for t in node if t != _END]
        return out + self.close_ids if _END in node else out

    def __call__(self, input_ids, scores):
        rows, cols = [], []
        constrained = torch.zeros(scores.shape[0], dtype=torch.bool)
        for b, row in enumerate(input_ids[:, self.prompt_width :].tolist()):
            allow = self.allowed(row)
            if allow is not None:
                constrained[b] = True
                rows += [b] * len(allow)
                cols += allow
        if not constrained.any():
            return scores
        keep = ~constrained[:, None].expand(scores.shape).clone()  # unconstrained rows keep everything
        keep[rows, cols] = True
        return scores.masked_fill(~keep.to(scores.device), float("-inf"))


def searched_queries(events) -> list[str]:
    """The distinct normalised queries searched in ``events`` (a pyarrow Table of
    ``behavior_events``), most searched first: the vocabulary of ``aigq.generate.known_queries``.
    Pass only the log before the samples a list is decoded for."""
    counts: dict[str, int] = {}
    types, queries = events.column("event_type").to_pylist(), events.column("query").to_pylist()
    for t, q in zip(types, queries, strict=True):
        if t == "search" and q:
            q = normalize_query(q)
            if q:
                counts[q] = counts.get(q, 0) + 1
    return sorted(counts, key=lambda q: (-counts[q], q))
