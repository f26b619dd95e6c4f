"""Ranked lists by interest: merging decoded lists by position, grouping queries by interest, and
wording interests with the click log's query vocabulary (``Decoding.group_queries``,
``Decoding.wording`` ``log`` and ``Decoding.think_interests`` of :mod:`aigq_model.generate`).

Pure Python: ``merge_lists`` / ``group_by_category`` order queries, :class:`QueryVocabulary` is the
log's categories and search counts, ``log_worded`` / ``interest_worded`` turn the model's interest
masses into the log's queries, and ``behaviour_interests`` names the interest of every behaviour
of a prompt (the keys of ``decode.trigger_masses``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from aigq_model.parsing import normalize_query
from aigq_model.prompts import DEFAULT_MAX_HISTORY, history_window, sample_field

#: query -> category (a mapping or a function; ``None`` = unknown), for ``Decoding.group_queries``.
CategoryOf = Mapping[str, str] | Callable[[str], str | None]


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


def group_by_category(queries: Sequence[str], category_of: CategoryOf | None, per_round: int) -> list[str]:
    """``queries`` (best first) regrouped by category: categories in the order of their best query,
    ``per_round`` queries of each per round (``merge_lists``); a query of unknown category is a
    group of its own, so it keeps its rank among the groups. Without a map, or with
    ``per_round`` 0, the order is unchanged.

    >>> group_by_category(["a1", "b1", "x", "a2", "b2", "a3"], {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}, 10)
    ['a1', 'a2', 'a3', 'b1', 'b2', 'x']
    """
    if not per_round or category_of is None:
        return list(queries)
    lookup = category_of.get if isinstance(category_of, Mapping) else category_of
    groups: dict[object, list[str]] = {}
    for i, q in enumerate(queries):
        cat = lookup(q)
        groups.setdefault(("?", i) if cat is None else cat, []).append(q)
    return merge_lists(list(groups.values()), per_round)


class QueryVocabulary:
    """The click log's query vocabulary: each query's category (``evaluate.build_query_category_map``)
    and how often it was searched, built from the log before the samples it serves. Called with a
    query it gives the query's category (a ``CategoryOf``); ``members(category)`` are the
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


def log_worded(candidates: Sequence[tuple[str, float]], vocabulary: QueryVocabulary) -> list[str]:
    """Interest-marginal ranking (``Decoding.wording`` ``log``, ours) of the model's candidate
    queries with their log-probabilities: an interest's mass is the model's probability summed over
    its candidates of one category, and every query of that category in the log scores mass x its
    share of the category's searches (``QueryVocabulary.members``); a candidate the log does not
    know keeps its own probability. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> log_worded([("b1", math.log(0.5)), ("a1", math.log(0.3)), ("a2", math.log(0.2)), ("new", math.log(0.1))], v)
    ['b1', 'a2', 'a1', 'new']
    """
    mass: dict[object, float] = {}
    for text, logp in candidates:
        q = normalize_query(text)
        if not q:
            continue
        cat = vocabulary(q)
        key = ("?", q) if cat is None else cat
        mass[key] = mass.get(key, 0.0) + math.exp(logp)
    return interest_worded(mass, vocabulary)


def interest_worded(mass: Mapping[object, float], vocabulary: QueryVocabulary) -> list[str]:
    """Queries ranked by interest mass x share: ``mass`` maps a category to its weight (every
    query of the category in the log scores weight x ``QueryVocabulary.members`` share) or
    ``("?", query)`` to the weight of a query the log does not know. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> interest_worded({"A": 0.5, "B": 0.2, ("?", "new"): 0.1}, v)  # a2: 0.5 x 6/8, b1: 0.2, a1: 0.5 x 2/8
    ['a2', 'b1', 'a1', 'new']
    """
    scored: dict[str, float] = {}
    for key, m in mass.items():
        members = [(key[1], 1.0)] if isinstance(key, tuple) else vocabulary.members(key)
        for q, share in members:
            scored[q] = max(scored.get(q, 0.0), m * share)
    return sorted(scored, key=lambda q: (-scored[q], q))


def behaviour_interests(sample, vocabulary: QueryVocabulary, max_history: int = DEFAULT_MAX_HISTORY) -> list:
    """The interest of every behaviour of the prompt's window, in the prompt's numbering (index
    i is element i - 1): a search's query category in the log (``("?", query)`` when the log does
    not know the query), an item behaviour's leaf ``category``; ``None`` when neither is known.

    >>> v = QueryVocabulary({"red shoe": "shoes"}, {"red shoe": 4})
    >>> behaviour_interests({"history": [{"event_type": "search", "text": "Red  Shoe"},
    ...     {"event_type": "click", "text": "Nike", "category": "shoes"},
    ...     {"event_type": "search", "text": "tent"}, {"event_type": "buy", "text": "x"}]}, v)
    ['shoes', 'shoes', ('?', 'tent'), None]
    """
    shown, _ = history_window(sample_field(sample, "history"), max_history)
    out: list = []
    for b in shown:
        if b.get("event_type") == "search":
            q = normalize_query(b.get("text"))
            out.append((vocabulary(q) or ("?", q)) if q else None)
        else:
            out.append(b.get("category") or None)
    return out
