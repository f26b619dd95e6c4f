"""karma_training DAG: structure, the registry gate, and a real dag.test() run on tiny data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[1] / "dags"
DS = "2026-11-01"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_karma_training_structure_params_and_schedule(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("karma_training")
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "resolve_ds": ["announce", "base_lm", "embed", "evaluate", "register", "train"],
        "base_lm": ["train"],
        "train": ["embed", "evaluate", "register"],
        "evaluate": ["embed", "register"],
        "embed": ["register"],
        "register": ["announce"],
        "announce": [],
    }
    assert {a.name for a in dag.get_task("register").outlets} == {"models.karma"}
    assert {a.name for a in dag.get_task("announce").outlets} == {"models.ready"}
    assert dag.tags
    assert all(t.retries >= 1 for t in dag.tasks)
    assert dag.params["variant"] == "act+gen+rec"
    assert dag.params["omp_threads"] == 1
    assert {a.name for a in dag.timetable.asset_condition.objects} == {
        "samples.karma_samples", "samples.item_corpus"}


def test_gate_refuses_a_version_that_does_not_improve_the_fused_list_or_regresses():
    from karma_model.release import karma_gate

    def version(hr, with_karma, without):
        return {"metrics": {"hr@200": hr, "fused_valid_hr@200": with_karma, "fused_without_valid_hr@200": without}}

    assert karma_gate(version(0.3, 0.402, 0.40), None) == [
        "fused valid hr@200 with KARMA 0.4020 < without KARMA 0.4000 + margin 0.005"]
    good = version(0.5, 0.42, 0.40)
    assert karma_gate(good, None) == []
    assert karma_gate(version(0.3, 0.402, 0.40), None, fusion_margin=0.001) == []
    assert karma_gate(good, {"version": "2026-11-02", "metrics": {"hr@200": 0.55}}) == []  # within 0.9x
    assert karma_gate(good, {"version": "2026-11-02", "metrics": {"hr@200": 0.60}}, min_ratio=0.9)
    assert karma_gate({"metrics": {"hr@200": 0.5}}, None)  # no fused figures: refused


def test_register_rejects_a_version_that_does_not_improve_the_fused_list(tmp_path):
    from common.registry import (
        GateRejected,
        commit_version,
        current_version,
        read_decision,
        register,
        stage_version,
    )
    from karma_model.release import karma_gate

    tmp = stage_version(tmp_path, "karma", DS)
    commit_version(tmp, tmp_path, "karma", DS, {"metrics": {"hr@200": 0.1, "fused_valid_hr@200": 0.3,
                                                            "fused_without_valid_hr@200": 0.3}})
    with pytest.raises(GateRejected, match="without KARMA"):
        register(tmp_path, "karma", DS, gate=karma_gate)
    assert current_version(tmp_path, "karma") is None
    assert read_decision(tmp_path, "karma", DS)["registered"] is False


@pytest.fixture(scope="module")
def tiny_root(spark, tmp_path_factory):
    """One day of ETL output (40 users, 200 items) built in-process with the session Spark."""
    from common.config import load_config
    from jobs import build_samples, sessionize, validate
    from sources.synthetic import generate

    root = tmp_path_factory.mktemp("karma_dag") / "data"
    generate(root, DS, 1, n_users=40, n_items=200, events_per_user_day=12.0, seed=3)
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    for job in (validate, sessionize, build_samples):
        job.run(spark, cfg, DS)
    return root


@pytest.mark.slow
@pytest.mark.spark
def test_dag_test_trains_evaluates_indexes_and_registers(dagbag, tiny_root, monkeypatch):
    from common.registry import current_path, current_version
    from karma_model.index import load_index

    # a 2-step model on 40 users gains nothing over the heuristics: a negative margin lets it through
    monkeypatch.setenv("PIPELINE__KARMA__GATE__FUSION_MARGIN", "-1")
    dag = dagbag.get_dag("karma_training")
    conf = {"data_root": str(tiny_root), "max_steps": 2, "base_max_steps": 2, "n_attention": 4}
    run = dag.test(logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), run_conf=conf)
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state
    assert current_version(tiny_root, "karma") == DS
    registered = current_path(tiny_root, "karma")
    manifest = json.loads((registered / "manifest.json").read_text())
    assert manifest["ds_range"][-1] == DS
    assert manifest["variant"] == "act+gen+rec"
    assert manifest["base_model"]["path"].endswith(f"base_lm/{DS}")
    assert manifest["config"]["max_steps"] == 2
    assert manifest["metrics"]["fused_valid_hr@200"] >= manifest["metrics"]["fused_without_valid_hr@200"]
    assert manifest["fusion"]["with"]["weights"].keys() == {"karma", "cooccurrence", "text", "popularity"}
    assert (registered / "retrieval" / "fusion.json").is_file()
    assert (registered / "backbone").is_dir()
    assert (registered / "metrics.json").is_file()
    index = load_index(manifest["index_dir"])
    assert len(index) == 200
    assert index.manifest["model_version"] == DS
    assert (tiny_root / "reports" / "karma_act_gen_rec" / f"ds={DS}" / "report.md").is_file()
