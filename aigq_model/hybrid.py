"""The hybrid u2q list: the policy's queries merged with the user's own recent searches and a
heuristic list, by a merge policy fitted on the valid split.

Why: on short logs the strongest single signal is re-query (a user searches again what they
searched before: "own history, newest first" beats popularity on Best Buy), while the policy
proposes queries the user has not issued yet. The merge is a weighted reciprocal-rank fusion
(RRF, Cormack et al. 2009) of three ranked lists::

    score(q) = sum over sources s of  w_s / (c + rank_s(q))        (rank from 1; w_policy = 1)

best first; ties keep the order policy, own, heuristic. ``own`` and ``heuristic`` weights and
the offset ``c`` are chosen on a small grid (:data:`GRID`) by Query HR@K on the valid samples
(:func:`fit_merge`); large ``own`` puts the user's own searches first, 0 drops them, values
between interleave. Each slot's ``source`` names the list that gave it the most score.

Users with and without a search in their history get a merge policy each (:class:`MergePlan`,
fitted on the valid samples of their group): a cold-start user has no own searches to merge, and
whether the policy or a heuristic should lead is a different question for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from aigq_model.baselines import own_queries
from aigq_model.parsing import normalize_query

__all__ = ["GRID", "SOURCES", "MergePlan", "MergePolicy", "fit_and_merge", "fit_merge", "merge", "own_queries"]

SOURCES = ("model", "history", "heuristic")
#: (own weight, heuristic weight, offset c), in order of preference when the valid figure ties
GRID = tuple(itertools.product((0.0, 0.5, 1.0, 2.0, 4.0), (0.0, 0.5, 1.0, 4.0), (1.0, 5.0)))


@dataclass(frozen=True)
class MergePolicy:
    """Weights of the user's own searches and of the heuristic list beside the policy's (1)."""

    own: float = 1.0
    heuristic: float = 0.0
    c: float = 1.0
    heuristic_name: str | None = None  # which heuristic list (``aigq_model.baselines.BASELINES``)

    def __post_init__(self):
        if self.own < 0 or self.heuristic < 0 or self.c <= 0:
            raise ValueError(f"merge weights must be >= 0 and c > 0, got {self}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> MergePolicy:
        d = dict(d or {})
        return cls(float(d.get("own", 1.0)), float(d.get("heuristic", 0.0)), float(d.get("c", 1.0)),
                   d.get("heuristic_name"))

    def to_dict(self) -> dict:
        return asdict(self)


def merge(policy: Sequence[str], own: Sequence[str], heuristic: Sequence[str], k: int,
          merge_policy: MergePolicy) -> tuple[list[str], list[str]]:
    """``(queries, sources)``: the top ``k`` of the fused lists (see the module docstring).

    >>> merge(["p1", "p2"], ["o1"], ["h1", "p2"], 3, MergePolicy(own=4.0, heuristic=0.5, c=1.0))
    (['o1', 'p1', 'p2'], ['history', 'model', 'model'])
    >>> merge(["p1", "p2"], ["o1"], [], 3, MergePolicy(own=0.0))
    (['p1', 'p2'], ['model', 'model'])
    """
    weights = (1.0, merge_policy.own, merge_policy.heuristic)
    score: dict[str, float] = {}
    best: dict[str, tuple[float, int]] = {}
    order: dict[str, int] = {}
    for s, (lst, w) in enumerate(zip((policy, own, heuristic), weights, strict=True)):
        if w <= 0:
            continue
        seen: set[str] = set()
        for r, q in enumerate(lst):
            q = normalize_query(q)
            if not q or q in seen:
                continue
            seen.add(q)
            part = w / (merge_policy.c + r + 1)
            score[q] = score.get(q, 0.0) + part
            order.setdefault(q, len(order))
            if part > best.get(q, (-1.0, 0))[0]:
                best[q] = (part, s)
    ranked = sorted(score, key=lambda q: (-round(score[q], 12), order[q]))[:k]
    return ranked, [SOURCES[best[q][1]] for q in ranked]


def _hit_rate(lists: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    hits = [any(q in set(t) for q in lst[:k]) for lst, t in zip(lists, truth, strict=True) if t]
    return float(np.mean(hits)) if hits else float("nan")


def fit_merge(policy_lists: Sequence[Sequence[str]], own_lists: Sequence[Sequence[str]],
              heuristic_lists: Mapping[str, Sequence[Sequence[str]]], truth: Sequence[Sequence[str]],
              k: int = 10, grid: Sequence[tuple[float, float, float]] = GRID) -> tuple[MergePolicy, dict]:
    """The merge policy with the best Query HR@k on these (valid) samples, and the fit's facts:
    ``{"query_hr": best, "policy_only": …, "n": samples with truth, "heuristic": name}``. The
    heuristic list is the best of ``heuristic_lists`` alone on the same samples.

    >>> truth = [["o"], ["o2"], ["p"]]
    >>> pol, fit = fit_merge([["p"], ["x"], ["p"]], [["o"], ["o2"], []], {}, truth, k=1)
    >>> pol.own > 0, fit["query_hr"], fit["policy_only"]
    (True, 1.0, 0.3333333333333333)
    """
    truth = [[normalize_query(q) for q in t] for t in truth]
    scored = {name: _hit_rate(lists, truth, k) for name, lists in heuristic_lists.items()}
    heuristic = max(scored, key=lambda n: (np.nan_to_num(scored[n], nan=-1.0), n)) if scored else None
    h_lists = heuristic_lists[heuristic] if heuristic else [[] for _ in policy_lists]
    best, best_hr = None, -1.0
    for own_w, h_w, c in grid:
        if h_w > 0 and heuristic is None:
            continue
        mp = MergePolicy(own_w, h_w, c, heuristic if h_w > 0 else None)
        lists = [merge(p, o, h, k, mp)[0] for p, o, h in zip(policy_lists, own_lists, h_lists, strict=True)]
        hr = float(np.nan_to_num(_hit_rate(lists, truth, k), nan=0.0))
        if hr > best_hr + 1e-12:
            best, best_hr = mp, hr
    fit = {"query_hr": best_hr, "policy_only": _hit_rate(policy_lists, truth, k), "k": k,
           "n": sum(bool(t) for t in truth), "heuristic": heuristic, "heuristic_query_hr": scored.get(heuristic),
           "grid": len(grid)}
    return best, fit


@dataclass(frozen=True)
class MergePlan:
    """One merge policy for users with a search in their history, one for those without."""

    active: MergePolicy = MergePolicy()
    cold_start: MergePolicy = MergePolicy()

    def for_user(self, own: Sequence[str]) -> MergePolicy:
        return self.active if own else self.cold_start

    def heuristics(self) -> list[str]:
        """The heuristic lists the plan merges (each needed at serving time)."""
        return sorted({p.heuristic_name for p in (self.active, self.cold_start) if p.heuristic_name})

    def to_dict(self) -> dict:
        return {"active": self.active.to_dict(), "cold_start": self.cold_start.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> MergePlan:
        """A plan from :meth:`to_dict` (a single policy's dict serves both groups)."""
        d = dict(d or {})
        if "active" not in d:
            return cls(MergePolicy.from_dict(d), MergePolicy.from_dict(d))
        return cls(MergePolicy.from_dict(d["active"]), MergePolicy.from_dict(d.get("cold_start")))


def merge_all(policy_lists, own_lists, heuristic_lists: Mapping[str, Sequence[Sequence[str]]], k: int,
              plan: MergePlan) -> tuple[list[list[str]], list[list[str]]]:
    """``(queries, sources)`` per user: :func:`merge` with the user's group's policy."""
    out_q, out_s = [], []
    for i, (p, o) in enumerate(zip(policy_lists, own_lists, strict=True)):
        mp = plan.for_user(o)
        h = heuristic_lists[mp.heuristic_name][i] if mp.heuristic_name else []
        q, src = merge(p, o, h, k, mp)
        out_q.append(q)
        out_s.append(src)
    return out_q, out_s


def fit_and_merge(model_lists: Sequence[Sequence[str]], own: Sequence[Sequence[str]],
                  heuristic_lists: Mapping[str, Sequence[Sequence[str]]], fit_truth: Sequence[Sequence[str]],
                  n_scored: int, k: int, k_fit: int = 10) -> tuple[MergePlan, dict, list[list[str]], list[list[str]]]:
    """Lists over ``n_scored`` scored samples followed by the fit (valid) samples: the
    :class:`MergePlan` fitted on the fit samples (:func:`fit_merge` at ``k_fit`` per group; the
    default :class:`MergePolicy` for a group without fit samples), the fit's facts per group, and
    the merged ``(queries, sources)`` of the scored samples, ``k`` each."""
    fit_idx = range(n_scored, len(model_lists))
    policies, facts = {}, {}
    for group, wanted in (("active", True), ("cold_start", False)):
        idx = [i for i in fit_idx if bool(own[i]) == wanted]
        if idx:
            policies[group], facts[group] = fit_merge(
                [model_lists[i] for i in idx], [own[i] for i in idx],
                {n: [ls[i] for i in idx] for n, ls in heuristic_lists.items()}, [fit_truth[i - n_scored] for i in idx],
                k_fit)
            facts[group]["fitted"] = True
        else:
            policies[group], facts[group] = MergePolicy(), {"fitted": False, "n": 0}
    plan = MergePlan(policies["active"], policies["cold_start"])
    queries, sources = merge_all(model_lists[:n_scored], own[:n_scored],
                                 {n: ls[:n_scored] for n, ls in heuristic_lists.items()}, k, plan)
    return plan, facts, queries, sources
