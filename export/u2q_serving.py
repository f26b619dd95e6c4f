"""What u2q serves: the hybrid list of a registered policy, or the best heuristic list.

- ``hybrid``: a policy is registered (``aigq_direct_grpo``, else ``aigq_direct``), so its exported
  list passed the gate of :mod:`aigq_model.release` (>= the best heuristic + margin on the same
  samples). Each user's list is the policy's queries merged with the user's own recent searches
  (and a heuristic list when the merge uses one) by the merge plan fitted on valid and stored
  in the version's ``metrics.json`` (``info.exported.merge``, one policy for users with a search
  in their history, one for cold-start users; the default :class:`aigq_model.hybrid.MergePlan`
  when absent).
- ``heuristic``: no policy is registered (refused, or never trained): every user gets the best
  heuristic list — the one with the highest gate metric in the newest evaluated candidate's
  ``metrics.json`` at or before ``ds`` (popularity when nothing was evaluated): one baseline, or
  ``heuristic_merge`` (the user's own searches merged with the baselines by the merge fitted
  without the policy, ``info.exported.heuristic_merge``). u2q never ships a list that measured
  worse than its heuristic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aigq_model.baselines import BASELINES, QueryRecommender, own_queries
from aigq_model.hybrid import MergePlan, merge
from aigq_model.release import best_heuristic, gate_settings
from common.registry import model_dir

logger = logging.getLogger(__name__)

DEFAULT_HEURISTIC = "popularity"
HEURISTIC_MERGE = "heuristic_merge"  # aigq_model.run_eval's merge of own searches and baselines


@dataclass
class ServingPlan:
    """The u2q mode of one run and why (the u2q manifest's ``lists``)."""

    mode: str  # hybrid | heuristic
    reason: str
    heuristic: str | None = None  # the heuristic list served (mode heuristic)
    merge: MergePlan | None = None  # mode hybrid
    evidence: dict = field(default_factory=dict)  # the metrics the decision read

    def to_dict(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "heuristic": self.heuristic,
                "merge": self.merge.to_dict() if self.merge else None, "evidence": self.evidence}


def _read(path: Path) -> dict:
    """The JSON of ``path``; an unreadable file is logged by name and read as empty (skipped)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable evaluation, skipped: %s", path, exc)
        return {}


def newest_evaluation(root: str | Path, names: Sequence[str], ds: str) -> tuple[Path, dict] | None:
    """The ``metrics.json`` of the newest version (<= ``ds``) of any of ``names``, registered
    or refused, that holds heuristic baselines."""
    found = []
    for name in names:
        base = model_dir(root, name)
        if not base.is_dir():
            continue
        for version in base.iterdir():
            metrics = version / "metrics.json"
            if version.name <= ds and metrics.is_file():
                found.append((version.name, name, metrics))
    for _v, _n, path in sorted(found, reverse=True):
        m = _read(path)
        if len(m.get("results") or {}) > 1:
            return path, m
    return None


def plan_serving(cfg: Mapping, root: str | Path, registered, names: Sequence[str], ds: str) -> ServingPlan:
    """The :class:`ServingPlan` of a run: ``registered`` is the policy found in the registry
    (``export.models.Registered`` or None); ``names`` the policy names whose evaluations count."""
    metric = gate_settings(cfg)["metric"]
    if registered is not None:
        metrics = _read(registered.path / "metrics.json")
        exported = (metrics.get("info") or {}).get("exported") or {}
        plan = MergePlan.from_dict(exported.get("merge")) if exported.get("merge") else MergePlan()
        evidence = {"metrics": str(registered.path / "metrics.json"), "metric": metric,
                    "best_heuristic": exported.get("best_heuristic"), "vs_best_heuristic": {
                        m: (exported.get("vs_best_heuristic") or {}).get("hybrid", {}).get(m)
                        for m in (exported.get("best_heuristic") or {})}}
        how = "fitted on valid" if exported.get("merge") else "default (no fitted merge in metrics.json)"
        return ServingPlan("hybrid", f"{registered.name}/{registered.version} is registered (its exported list "
                           f"passed the heuristic gate); merge {how}", None, plan, evidence)
    found = newest_evaluation(root, names, ds)
    if found is None:
        return ServingPlan("heuristic", f"no registered policy ({' / '.join(names)}) and no evaluation at or before "
                           f"{ds}: serving {DEFAULT_HEURISTIC}", DEFAULT_HEURISTIC)
    path, metrics = found
    best = best_heuristic(metrics, metric)
    exported = (metrics.get("info") or {}).get("exported") or {}
    name = best[0] if best and (best[0] in BASELINES or best[0] == HEURISTIC_MERGE) else DEFAULT_HEURISTIC
    merge_plan = MergePlan.from_dict(exported.get("heuristic_merge")) if name == HEURISTIC_MERGE else None
    if name == HEURISTIC_MERGE and not exported.get("heuristic_merge"):
        name, merge_plan = DEFAULT_HEURISTIC, None
    return ServingPlan("heuristic", f"no registered policy ({' / '.join(names)}): the newest candidate "
                       f"({path.parent.parent.name}/{path.parent.name}) lost to the heuristics or was not "
                       f"registered; serving the best heuristic on its samples, {name} ({metric} "
                       f"{best[1] if best else float('nan'):.4f})", name, merge_plan,
                       {"metrics": str(path), "metric": metric, "best_heuristic": name})


def needed_heuristics(plan: ServingPlan) -> list[str]:
    """The baseline recommenders a run must fit to build the plan's lists."""
    if plan.merge is not None:
        return plan.merge.heuristics()
    return [plan.heuristic] if plan.heuristic else []


def heuristic_lists(plan: ServingPlan, samples: Sequence[Mapping], lists: Mapping[str, Sequence[Sequence[str]]],
                    k: int, popular: Sequence[str], blocked=None) -> list[list[str]]:
    """Mode ``heuristic``: each user's served list (a baseline's, or ``heuristic_merge``'s own
    searches fused with the baselines), topped up with the popularity list to ``k``."""
    if plan.heuristic != HEURISTIC_MERGE:
        return [list(x) for x in lists[plan.heuristic]]
    out = []
    for i, s in enumerate(samples):
        own = [q for q in own_queries(s.get("history"), s["event_time"]) if not (blocked and blocked.blocks(q))]
        mp = plan.merge.for_user(own)
        merged = merge([], own, lists[mp.heuristic_name][i] if mp.heuristic_name else [], k, mp)[0]
        out.append(list(dict.fromkeys([*merged, *popular]))[:k])
    return out


class HeuristicLists:
    """One heuristic recommender fitted on the export's window, block-listed, topped up with the
    popularity list to ``k``."""

    def __init__(self, name: str, events, k: int, popular: Sequence[str], blocked=None):
        self.name, self.k, self.popular, self.blocked = name, k, list(popular), blocked
        self.rec: QueryRecommender = BASELINES[name]().fit(events)

    def lists(self, samples: Sequence[Mapping]) -> list[list[str]]:
        out = []
        for lst in self.rec.recommend_many(samples, k=3 * self.k):
            kept = [q for q in lst if not (self.blocked and self.blocked.blocks(q))]
            out.append(list(dict.fromkeys([*kept, *self.popular]))[: self.k])
        return out


def hybrid_lists(gens, samples: Sequence[Mapping], heuristic: Mapping[str, Sequence[Sequence[str]]], k: int,
                 plan: MergePlan, blocked=None) -> tuple[list[list[str]], list[list[str]]]:
    """``(queries, sources)`` per user: the policy's list (``generate_lists`` output: model
    queries, then the popularity top-up) merged with the user's own searches before the anchor
    and the heuristic list, by the user's group's policy of ``plan``. Sources: ``model``,
    ``history``, ``heuristic``, ``fallback`` (the policy's popularity top-up)."""
    queries, sources = [], []
    for i, (g, s) in enumerate(zip(gens, samples, strict=True)):
        own = [q for q in own_queries(s.get("history"), s["event_time"])
               if not (blocked and blocked.blocks(q))]
        mp = plan.for_user(own)
        h = heuristic[mp.heuristic_name][i] if mp.heuristic_name else []
        qs, src = merge(g.queries, own, h, k, mp)
        topped = set(g.queries[g.n_model:]) - set(g.queries[: g.n_model])
        queries.append(qs)
        sources.append(["fallback" if s_ == "model" and q in topped else s_ for q, s_ in zip(qs, src, strict=True)])
    return queries, sources
