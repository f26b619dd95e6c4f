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
    assert downstream == {
        "base_lm": ["train_sft"],
        "train_sft": ["evaluate"],
        "evaluate": ["register"],
        "register": [],
    }
    assert dag.tags and all(t.retries >= 1 for t in dag.tasks)
    assert {"data_root", "kind", "max_steps", "omp_threads", "eval_split"} <= set(dag.params.keys())
    assert dag.params.get_param("kind").schema["enum"] == ["direct", "think", "plain"]
    assert dag.params.get_param("max_steps").schema["minimum"] == 0


@pytest.mark.slow
def test_dag_test_trains_evaluates_and_registers_a_policy(dag, spark, tmp_path):
    from common.config import load_config
    from jobs import build_samples, sessionize, validate
    from sources.synthetic import generate

    root = tmp_path / "data"
    ds = "2026-11-01"
    generate(root, ds, 1, n_users=40, n_items=200, events_per_user_day=12.0, seed=3)
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    for job in (validate, sessionize, build_samples):
        job.run(spark, cfg, ds)
    run = dag.test(
        logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        run_conf={
            "data_root": str(root),
            "max_steps": 4,
            "base_max_steps": 4,
            "eval_split": "all",
            "eval_baselines": "popularity,cooccurrence",
            "semantic": False,
            "gate_popularity_tolerance": 1.0,
            "gate_regression_tolerance": 1.0,
        },
    )
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state
    assert (root / "models" / "base_lm" / ds / "_SUCCESS").is_file()
    version = root / "models" / "aigq_direct" / ds
    assert current_version(root, "aigq_direct") == ds
    metrics = json.loads((version / "metrics.json").read_text())
    assert set(metrics["results"]) == {"aigq_direct", "popularity", "cooccurrence"}
    assert metrics["results"]["aigq_direct"]["all"]["n_users"] > 0
    assert (root / "reports" / "aigq" / ds / "aigq_direct.md").is_file()
    assert (root / "reports" / "aigq" / ds / "aigq_direct_hit_rates.png").is_file()
