"""Ranked lists from several decoded lists (``merge_lists``), and the click log's query
vocabulary by category (:class:`QueryVocabulary`, built by ``evaluate.build_query_vocabulary``).

Pure Python. The interest-grouped and log-worded list assembly that used to live here lost on
Best Buy and left the library; its analysis driver is ``scripts/experiments/aigq_interest_ceiling.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def merge_lists(lists: Sequence[Sequence[str]], per_round: int = 1) -> list[str]:
    """Interleave ranked lists by position (rank 1 of every list in list order, then rank 2, ...),
    keeping the first occurrence of each query: the head of every decoded list outranks any
    list's tail, so the strongest interests of all sequences come first. ``per_round`` > 1 takes
    that many queries of each list per round.

    >>> merge_lists([["a", "b", "c"], ["a", "d"], ["e"]])
    ['a', 'e', 'b', 'd', 'c']
    >>> merge_lists([["a", "b", "c"], ["d", "e"]], per_round=2)
    ['a', 'b', 'd', 'e', 'c']
    """
    if per_round < 1:
        raise ValueError("per_round must be >= 1")
    out: dict[str, None] = {}
    for pos in range(0, max((len(x) for x in lists), default=0), per_round):
        for lst in lists:
            for q in lst[pos : pos + per_round]:
                out.setdefault(q, None)
    return list(out)


class QueryVocabulary:
    """The click log's query vocabulary: each query's category (``evaluate.build_query_category_map``)
    and how often it was searched, built from the log before the samples it serves. Called with a
    query it gives the query's category; ``members(category)`` are the
    category's queries with their share of its searches (add-one smoothed), most searched first.

    >>> v = QueryVocabulary({"a": "A", "b": "A", "c": "C"}, {"a": 3, "b": 1})
    >>> v("b"), [(q, round(p, 3)) for q, p in v.members("A")], v.members("?")
    ('A', [('a', 0.667), ('b', 0.333)], [])
    """

    def __init__(self, category: Mapping[str, str], counts: Mapping[str, int]):
        self.category = dict(category)
        self.counts = {q: int(counts.get(q, 0)) for q in self.category}
        by_cat: dict[str, list[str]] = {}
        for q, cat in self.category.items():
            by_cat.setdefault(cat, []).append(q)
        self._members = {}
        for cat, qs in by_cat.items():
            total = sum(self.counts[q] for q in qs) + len(qs)
            ranked = sorted(qs, key=lambda q: (-self.counts[q], q))
            self._members[cat] = [(q, (self.counts[q] + 1) / total) for q in ranked]

    def __call__(self, query: str) -> str | None:
        return self.category.get(query)

    def __len__(self) -> int:
        return len(self.category)

    def members(self, category: str) -> list[tuple[str, float]]:
        return list(self._members.get(category, ()))
