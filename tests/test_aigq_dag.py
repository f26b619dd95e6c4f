"""aigq_training DAG: structure, and a dag.test() that pre-trains, trains, evaluates and registers."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from common.registry import current_version

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def dag(airflow_db):
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags" / "aigq_training.py"))
    assert bag.import_errors == {}
    return bag.get_dag("aigq_training")


def test_aigq_training_structure(dag):
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    day_tasks = ["announce", "base_lm", "evaluate", "evaluate_grpo", "grpo_update", "publish_policy", "register",
                 "register_grpo", "train_ctr", "train_sft"]
    assert downstream == {
        "resolve_ds": day_tasks,
        "base_lm": ["train_sft"],
        "train_sft": ["evaluate"],
        "evaluate": ["register"],
        "register": ["grpo_update", "publish_policy"],
        "train_ctr": ["grpo_update"],
        "grpo_update": ["evaluate_grpo"],
        "evaluate_grpo": ["register_grpo"],
        "register_grpo": ["publish_policy"],
        "publish_policy": ["announce"],
        "announce": [],
    }
    assert {a.name for a in dag.get_task("publish_policy").outlets} == {"models.aigq_policy"}
    assert {a.name for a in dag.get_task("announce").outlets} == {"models.ready"}
    assert dag.tags
    assert all(t.retries >= 1 for t in dag.tasks)
    assert {"data_root", "kind", "max_steps", "omp_threads", "eval_split", "sft", "grpo", "grpo_mode"} <= set(
        dag.params.keys()
    )
    assert dag.params.get_param("kind").schema["enum"] == ["", "direct", "think", "plain"]
    assert dag.params.get_param("max_steps").schema["minimum"] == 0
    assert dag.params.get_param("grpo_mode").schema["enum"] == ["il", "sequence"]


def _succeeded(run) -> bool:
    return str(run.state) in ("success", "DagRunState.SUCCESS")


@pytest.mark.slow
@pytest.mark.spark
def test_two_days_sft_then_daily_ctr_and_policy_update_chain(dag, etl_two_days, tmp_path):
    """Day 1: base LM, SFT registered, CTR model, IL-GRPO update from the SFT policy. Day 2: no new
    SFT (``sft=if_missing``), the CTR model retrained on day 2, and the policy update starts from
    day 1's updated policy."""
    import shutil

    from common.registry import model_dir, read_manifest

    root = shutil.copytree(etl_two_days, tmp_path / "data")  # both days through the Spark jobs
    d1, d2 = "2026-11-01", "2026-11-02"
    conf = {
        "data_root": str(root),
        "max_steps": 4,
        "base_max_steps": 4,
        "grpo_max_steps": 2,
        "eval_split": "all",
        "eval_baselines": "popularity,cooccurrence",
        "semantic": False,
        "gate_heuristic_margin": -1.0,
        "gate_regression_tolerance": 1.0,
        # the fixture's days hold no test rows and one valid row each: the update and its start are
        # scored on that held-out row; the margin is opened (a tie passes) so that the chain runs
        "update_split": "valid",
        "gate_grpo_margin": -1.0,
    }
    run = dag.test(logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), run_conf=conf)
    assert _succeeded(run), run.state
    assert (root / "models" / "base_lm" / d1 / "_SUCCESS").is_file()
    sft = root / "models" / "aigq_direct" / d1
    assert current_version(root, "aigq_direct") == d1
    metrics = json.loads((sft / "metrics.json").read_text())
    assert set(metrics["results"]) == {"aigq_direct", "hybrid", "heuristic_merge", "popularity", "cooccurrence"}
    assert metrics["results"]["aigq_direct"]["all"]["n_users"] > 0
    assert (root / "reports" / "aigq" / d1 / "aigq_direct.md").is_file()
    assert (root / "reports" / "aigq" / d1 / "aigq_direct_hit_rates.png").is_file()
    assert current_version(root, "aigq_ctr") == d1
    assert current_version(root, "aigq_direct_grpo") == d1
    grpo1 = model_dir(root, "aigq_direct_grpo", d1)
    man1 = read_manifest(grpo1)
    assert man1["base_policy"]["path"] == str(sft.resolve())
    assert man1["mode"] == "il"
    assert man1["ctr_model"]["path"] == str(model_dir(root, "aigq_ctr", d1).resolve())
    assert (grpo1 / "metrics.json").is_file()
    cand, ref = (json.loads((grpo1 / f).read_text()) for f in ("metrics.json", "start_reference_metrics.json"))
    assert (cand["split"], ref["split"]) == ("valid", "valid")  # held out: the update trained on train rows
    assert (cand["model"], ref["model"]) == ("aigq_direct_grpo", "aigq_direct")  # the update and its start
    assert cand["results"][cand["model"]]["all"]["n_users"] == ref["results"][ref["model"]]["all"]["n_users"] == 1

    run = dag.test(logical_date=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), run_conf=conf)
    assert _succeeded(run), run.state
    assert current_version(root, "aigq_direct") == d1
    assert not (root / "models" / "aigq_direct" / d2).exists()
    assert current_version(root, "aigq_ctr") == d2  # retrained on day 2's logs
    assert read_manifest(model_dir(root, "aigq_ctr", d2))["version"] == d2
    man2 = read_manifest(model_dir(root, "aigq_direct_grpo", d2))
    assert man2["base_policy"]["path"] == str(grpo1.resolve())  # day 2 starts from day 1's policy
    assert man2["ctr_model"]["path"] == str(model_dir(root, "aigq_ctr", d2).resolve())
    assert current_version(root, "aigq_direct_grpo") == d2
    assert json.loads((model_dir(root, "aigq_direct_grpo", d2) / "start_reference_metrics.json").read_text())[
        "version"] == d1  # day 2's update is judged against the policy it started from, day 1's update


@pytest.mark.spark
def test_an_update_without_held_out_samples_is_refused(etl_two_days, tmp_path):
    """The fixture's days hold no ``test`` row: run_eval ``--empty-ok`` writes metrics that say so
    and the update gate refuses (nothing shows an improvement), recording why; CURRENT stays unset."""
    import shutil

    from aigq_model.release import REFERENCE_METRICS_FILE, register_update
    from aigq_model.run_eval import main as run_eval
    from common.config import load_config
    from common.registry import GateRejected, commit_version, read_decision, stage_version

    root = shutil.copytree(etl_two_days, tmp_path / "data")
    d1 = "2026-11-01"
    for name in ("aigq_direct", "aigq_direct_grpo"):
        commit_version(stage_version(root, name, d1), root, name, d1,
                       {"kind": "direct", "mode": "il" if name.endswith("grpo") else "sft", "ds": d1,
                        "sample_days": [d1]})
    cand, start = root / "models" / "aigq_direct_grpo" / d1, root / "models" / "aigq_direct" / d1
    common = ["--ds", d1, "--data-root", str(root), "--split", "test", "--empty-ok", "--no-semantic"]
    assert run_eval([*common, "--model-dir", str(cand)]) == 0
    assert run_eval([*common, "--model-dir", str(start), "--metrics-out", str(cand / REFERENCE_METRICS_FILE)]) == 0
    metrics = json.loads((cand / "metrics.json").read_text())
    assert (metrics["n_samples"], metrics["results"], metrics["split"]) == (0, {}, "test")
    with pytest.raises(GateRejected, match="no held-out samples to score the update on"):
        register_update(cand / "metrics.json", load_config(environ={}))
    assert current_version(root, "aigq_direct_grpo") is None
    assert read_decision(root, "aigq_direct_grpo", d1)["registered"] is False
    with pytest.raises(FileNotFoundError, match="no test direct samples"):  # without --empty-ok: an error
        run_eval([c for c in common if c != "--empty-ok"] + ["--model-dir", str(cand)])
