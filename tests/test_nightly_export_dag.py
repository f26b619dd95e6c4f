"""nightly_export DAG: structure (mapped u2q / u2i shards), no-retry failures, and a dag.test() on tiny
trained models (shards from the config: 1)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "nightly_export.py"
D1, D2 = "2026-11-01", "2026-11-02"
TABLES = ("u2q", "x2q", "u2i", "user_interest_embedding")


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("nightly_export")


def test_nightly_export_structure(dag):
    assert {t.task_id: sorted(set(t.downstream_task_ids) - {"watcher"}) for t in dag.tasks} == {
        "resolve_ds": ["publish_u2i", "publish_u2q", "report", "u2i", "u2q", "x2q"],
        "export_shards": ["publish_u2i", "publish_u2q", "u2i", "u2q"],
        "u2q": ["publish_u2q"], "u2i": ["publish_u2i"], "publish_u2q": ["report"], "publish_u2i": ["report"],
        "x2q": ["report"], "report": [], "watcher": []}
    assert dag.get_task("watcher").upstream_task_ids == set(dag.task_ids) - {"watcher"}
    assert dag.get_task("watcher").trigger_rule == "one_failed"  # a failed export fails the run
    assert dag.get_task("report").trigger_rule == "all_done"
    assert dag.get_task("u2q").is_mapped
    assert dag.get_task("u2i").is_mapped  # .expand over the shard list
    assert not dag.get_task("publish_u2q").is_mapped
    assert dag.get_task("publish_u2q").trigger_rule == "all_success"
    assert dag.tags
    assert all(t.retries >= 1 for t in dag.tasks if t.task_id != "watcher")
    assert {"config", "profile", "data_root", "ds", "batch_users", "min_coverage", "max_new_tokens", "omp_threads",
            "shards"} == set(dag.params.keys())
    outlets = {t.task_id: sorted(a.name for a in t.outlets) for t in dag.tasks if t.outlets}
    assert outlets == {"publish_u2q": ["exports.u2q"], "x2q": ["exports.x2q"],
                       "publish_u2i": ["exports.u2i", "exports.user_interest_embedding"], "report": ["reports.report"]}
    assert dag.params.get_param("batch_users").schema["minimum"] == 0
    assert dag.params.get_param("shards").schema["minimum"] == 0
    assert dag.max_active_runs == 1
    assert dag.timetable.asset_condition.name == "models.ready"


def test_a_missing_model_fails_without_retry_and_no_think_policy_skips(airflow_db, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from dags.nightly_export import run_export

    params = {"data_root": str(tmp_path / "empty"), "omp_threads": 1}
    with pytest.raises(AirflowFailException, match="model, index or input is missing or corrupt"):
        run_export("u2q", params, D2, "manual__test")
    with pytest.raises(AirflowFailException, match="exit 4"):
        run_export("u2i", params, D2, "manual__test")
    skipped = run_export("x2q", params, D2, "manual__test")  # the x2q task raises AirflowSkipException
    assert skipped["skipped"]
    assert "aigq_think" in skipped["reason"]


def _train_tiny_models(root: Path, ds: str) -> None:
    """The training entry points with a handful of steps; versions registered without the gates
    (they are tested with their DAGs): base LM, Direct and Think IL-SFT, CTR, KARMA (evaluated: its
    fitted channels) + index."""
    from aigq_model import ctr, train_sft
    from base_lm import pretrain
    from common.registry import current_version, set_current
    from karma_model import embed
    from karma_model import evaluate as karma_evaluate
    from karma_model import train as karma_train
    from tests.export_fixtures import register_folder

    common = ["--ds", ds, "--data-root", str(root)]
    assert pretrain.main([*common, "--max-steps", "4"]) == 0
    for kind in ("direct", "think"):
        assert train_sft.main([*common, "--kind", kind, "--max-steps", "4"]) == 0
        set_current(root, f"aigq_{kind}", ds)
    assert ctr.main(common) == 0
    assert current_version(root, "aigq_ctr") == ds
    assert karma_train.main([*common, "--max-steps", "2"]) == 0
    model_dir = root / "models" / "karma_act_gen_rec" / ds
    # evaluate fits the heuristic channels and the fusion u2i serves (model_dir/retrieval/)
    assert karma_evaluate.main(["--model-dir", str(model_dir), "--data-root", str(root), "--ds", ds, "--no-base",
                                "--n-attention", "2", "--n-decode", "0"]) == 0
    assert embed.main(["--ds", ds, "--model-dir", str(model_dir), "--data-root", str(root), "--version", ds]) == 0
    register_folder(root, "karma", ds, model_dir, {"ds": ds, "index_dir": str(root / "indexes" / "karma" / ds)})


@pytest.mark.slow
@pytest.mark.spark
def test_dag_test_writes_all_four_exports(dag, etl_two_days, tmp_path):
    import shutil

    import torch

    from common.paths import partition_path
    from common.publish import read_manifest

    root = shutil.copytree(etl_two_days, tmp_path / "data")  # D1 and D2 through the Spark jobs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_tiny_models(root, D2)
    finally:
        torch.set_num_threads(threads)

    conf = {"data_root": str(root), "batch_users": 16, "max_new_tokens": 32}
    run = dag.test(logical_date=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), run_conf=conf)
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state
    manifests = {}
    for table in TABLES:
        path = partition_path(root, "exports", table, D2)
        assert (path / "_SUCCESS").is_file(), table
        manifests[table] = read_manifest(path)
        assert manifests[table]["rows"] > 0
        assert all(g["passed"] for g in manifests[table]["gates"].values())
        assert manifests[table]["run_id"] == run.run_id, table
    assert manifests["u2q"]["model"]["name"] == "aigq_direct"
    assert manifests["u2q"]["model"]["fallback_used"]
    assert manifests["x2q"]["model"]["name"] == "aigq_think"
    assert manifests["x2q"]["ctr_model"]["version"] == D2
    assert manifests["u2i"]["model"]["version"] == D2
    assert manifests["u2i"]["index"]["version"] == D2
    page = (root / "reports" / f"ds={D2}" / "index.html").read_text()
    assert "<html" in page.lower()
    assert "u2q" in page
    active = manifests["u2q"]["counts"]["active_users"]
    assert manifests["user_interest_embedding"]["rows"] == active
    print(json.dumps({t: {"rows": m["rows"], "counts": m.get("counts")} for t, m in manifests.items()}))
