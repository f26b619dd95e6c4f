"""The hybrid u2q list (aigq_model.hybrid): the fusion, and the merge plan fitted per group."""

from __future__ import annotations

import pytest

from aigq_model.hybrid import MergePlan, MergePolicy, fit_and_merge, fit_merge, merge


def test_merge_fuses_by_weighted_reciprocal_rank_and_names_the_sources():
    policy, own, heur = ["p1", "p2", "p3"], ["o1", "p2"], ["h1"]
    # own first (4 / 2 beats 1 / 2), p2 gains from both lists
    q, src = merge(policy, own, heur, 4, MergePolicy(own=4.0, heuristic=0.0, c=1.0))
    assert q == ["o1", "p2", "p1", "p3"]
    assert src == ["history", "history", "model", "model"]
    # no own weight: the policy's list untouched; duplicates and empty strings dropped
    assert merge(["A", "a", "", "b"], own, heur, 3, MergePolicy(own=0.0)) == (["a", "b"], ["model", "model"])
    # a dominant heuristic leads
    assert merge(policy, [], heur, 2, MergePolicy(own=0.0, heuristic=4.0))[0] == ["h1", "p1"]
    with pytest.raises(ValueError, match="merge weights"):
        MergePolicy(own=-1.0)


def test_fit_prefers_own_searches_for_re_queries_and_a_heuristic_for_cold_start():
    # valid samples 0-3: users who search again what they searched (own history is the truth);
    # 4-7: cold-start users whose truth the heuristic lists first, never the policy
    policy = [["x"]] * 8
    own = [["a"], ["b"], ["c"], ["d"], [], [], [], []]
    heur = {"popularity": [["z"]] * 4 + [["t"], ["u"], ["v"], ["w"]]}
    truth = [["a"], ["b"], ["c"], ["d"], ["t"], ["u"], ["v"], ["w"]]
    mp, fit = fit_merge(policy[:4], own[:4], {"popularity": heur["popularity"][:4]}, truth[:4], k=1)
    assert mp.own > 1.0  # own must outrank the policy's first query at K=1
    assert fit["query_hr"] == 1.0
    assert fit["policy_only"] == 0.0
    scored = [["x"], ["y"]]
    plan, facts, lists, sources = fit_and_merge(
        scored + policy, [["e"], []] + own, {"popularity": [["z"], ["t"]] + heur["popularity"]},
        truth, n_scored=2, k=1, k_fit=1)
    assert facts["active"]["n"] == 4
    assert facts["cold_start"]["n"] == 4
    assert plan.cold_start.heuristic_name == "popularity"
    assert plan.cold_start.heuristic > 1.0
    assert plan.active.own > 1.0
    assert lists == [["e"], ["t"]]  # the scored active user gets their own search, the cold one the heuristic
    assert sources == [["history"], ["heuristic"]]
    assert MergePlan.from_dict(plan.to_dict()) == plan
    assert MergePlan.from_dict({"own": 2.0}).cold_start.own == 2.0  # one policy for both groups


def test_u2q_serving_plan_reads_the_fitted_merge_or_the_best_heuristic(tmp_path):
    import json
    from types import SimpleNamespace

    from common.config import load_config
    from export.u2q_serving import plan_serving

    cfg = load_config(environ={})
    plan = MergePlan(MergePolicy(own=4.0, heuristic=0.5, heuristic_name="cooccurrence"), MergePolicy(own=0.0))
    metrics = {"model": "aigq_direct", "results": {
        "aigq_direct": {"all": {"query_hr@10": 0.1}}, "hybrid": {"all": {"query_hr@10": 0.5}},
        "popularity": {"all": {"query_hr@10": 0.2}}, "cooccurrence": {"all": {"query_hr@10": 0.4}},
        "heuristic_merge": {"all": {"query_hr@10": 0.45}}},
        "info": {"exported": {"merge": plan.to_dict(), "heuristic_merge": MergePlan().to_dict()}}}
    version = tmp_path / "models" / "aigq_direct" / "2026-11-01"
    version.mkdir(parents=True)
    (version / "metrics.json").write_text(json.dumps(metrics))
    registered = SimpleNamespace(name="aigq_direct", version="2026-11-01", path=version)
    served = plan_serving(cfg, tmp_path, registered, ("aigq_direct",), "2026-11-02")
    assert served.mode == "hybrid"
    assert served.merge == plan
    # nothing registered: the best heuristic of the newest evaluation, the merge without the policy here
    served = plan_serving(cfg, tmp_path, None, ("aigq_direct",), "2026-11-02")
    assert (served.mode, served.heuristic) == ("heuristic", "heuristic_merge")
    assert served.merge == MergePlan()
    assert "0.4500" in served.reason
    # an evaluation newer than the day does not count: popularity, said so
    served = plan_serving(cfg, tmp_path, None, ("aigq_direct",), "2026-10-31")
    assert (served.mode, served.heuristic) == ("heuristic", "popularity")
    assert "no evaluation" in served.reason
