"""The four DAGs under a real Airflow 3 scheduler (``airflow standalone`` on loopback).

Day 1: ``behavior_etl`` is triggered by hand; everything after it must be started by the
scheduler from Asset events, and every export must publish. Day 2: the KARMA gate is made to
refuse (``karma.gate.min_ratio`` 100 in the run's config file); the day's export must still run,
with the previous KARMA version, and say so in its manifest. At the end every process of the
deployment is stopped, and none may survive.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from common.airflow_local import DAG_IDS, TERMINAL, LocalAirflow
from common.config import DEFAULT_CONFIG
from common.paths import partition_path
from common.publish import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

D1, D2 = "2026-11-01", "2026-11-02"
EXPORTS = ("u2q", "x2q", "u2i", "user_interest_embedding")
RUN_TIMEOUT_S = 1500


def _config(root: Path, karma_min_ratio: float) -> dict:
    """conf/pipeline.yaml with the tiny sizes of a test and gates that let tiny models through."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    local = doc["profiles"]["local"]
    local["data_root"] = str(root)
    local["ops"]["etl_schedule"] = None  # the test triggers its dates; no run for "yesterday"
    local["base_lm"]["max_steps"] = 4
    local["karma"]["max_steps"] = 2
    local["karma"]["gate"] = {"fusion_margin": -1.0, "min_ratio": karma_min_ratio}
    aigq = local["aigq"]
    aigq["train_policies"] = ["direct", "think"]
    aigq["sft"]["max_steps"] = 4
    aigq["grpo"]["max_steps"] = 1
    aigq["ctr"]["epochs"] = 2
    aigq["eval"].update(semantic=False, baselines=["popularity", "cooccurrence"], split="all")
    aigq["gate"].update(heuristic_margin=-1.0, regression_tolerance=1.0, grpo_margin=-1.0)
    aigq["generate"]["max_new_tokens"] = 24
    aigq["generate"]["max_new_tokens_think"] = 32
    return doc


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


def _settled(airflow: LocalAirflow, n_exports: int) -> bool:
    """True once ``n_exports`` nightly_export runs exist and no run of any DAG is still going."""
    runs = airflow.runs()
    exports = [r for r in runs if r["dag_id"] == "nightly_export"]
    failed = [r for r in runs if r["state"] == "failed"]
    if failed:
        raise AssertionError(f"failed runs {[(r['dag_id'], r['run_id']) for r in failed]}:\n"
                             + airflow.failed_task_logs())
    return len(exports) >= n_exports and all(r["state"] in TERMINAL for r in runs)


def test_the_four_dags_chain_by_assets_under_the_scheduler(tmp_path):
    from sources.synthetic import generate

    root = tmp_path / "data"
    generate(root, D1, 2, n_users=40, n_items=200, events_per_user_day=12.0, seed=3)
    config = tmp_path / "pipeline.yaml"
    _write(config, _config(root, karma_min_ratio=0.0))
    airflow = LocalAirflow(tmp_path / "airflow", env={"PIPELINE_CONFIG": str(config), "PIPELINE_PROFILE": "local"})
    started = time.monotonic()
    try:
        airflow.start()
        airflow.unpause(DAG_IDS)
        airflow.trigger("behavior_etl", {"ds": D1})
        airflow.wait(lambda: _settled(airflow, 1), RUN_TIMEOUT_S, "day 1 through nightly_export")
        day1_s = time.monotonic() - started

        runs = airflow.runs()
        types = {(r["dag_id"], r["run_type"]) for r in runs}
        assert types == {("behavior_etl", "manual"), ("karma_training", "asset_triggered"),
                         ("aigq_training", "asset_triggered"), ("nightly_export", "asset_triggered")}, types
        assert all(r["state"] == "success" for r in runs), [(r["dag_id"], r["state"]) for r in runs]
        export_run = next(r for r in runs if r["dag_id"] == "nightly_export")
        assert airflow.xcom("nightly_export", export_run["run_id"], "resolve_ds") == D1
        for table in EXPORTS:
            path = partition_path(root, "exports", table, D1)
            assert (path / "_SUCCESS").is_file(), f"{table} not published for {D1}"
            assert read_manifest(path)["rows"] > 0, table
        assert (root / "reports" / f"ds={D1}" / "index.html").is_file()
        events = airflow.asset_events()
        by_asset = {}
        for event in events:
            by_asset.setdefault(event["asset"], []).append(json.loads(event["extra"] or "{}"))
        for name in ("samples.karma_samples", "models.karma", "models.aigq_policy", "models.ready", "exports.u2q",
                     "exports.u2i", "exports.x2q", "exports.user_interest_embedding", "reports.report"):
            assert [e.get("ds") for e in by_asset.get(name, [])] == [D1], (name, by_asset.get(name))
        assert all(e.get("path") for events_ in by_asset.values() for e in events_)
        u2i_day1 = read_manifest(partition_path(root, "exports", "u2i", D1))
        assert u2i_day1["serving"]["karma"] == {"version": D1, "reason": f"registered {D1}"}
        assert u2i_day1["retrieval"]["serving"] == "fused_with_karma"

        # Day 2: the KARMA gate refuses the day's version; the export still runs with day 1's.
        _write(config, _config(root, karma_min_ratio=100.0))
        airflow.trigger("behavior_etl", {"ds": D2})
        airflow.wait(lambda: _settled(airflow, 2), RUN_TIMEOUT_S, "day 2 through nightly_export")
        runs = airflow.runs()
        assert all(r["state"] == "success" for r in runs), [(r["dag_id"], r["state"]) for r in runs]
        assert [r["run_type"] for r in runs if r["dag_id"] == "nightly_export"] == ["asset_triggered"] * 2
        decision = json.loads((root / "models" / "karma" / "decisions" / f"{D2}.json").read_text())
        assert decision["registered"] is False
        assert decision["serving"] == D1
        u2i = read_manifest(partition_path(root, "exports", "u2i", D2))
        assert (partition_path(root, "exports", "u2i", D2) / "_SUCCESS").is_file()
        assert u2i["model"]["version"] == D1
        assert u2i["serving"]["karma"]["version"] == D1
        assert u2i["serving"]["karma"]["reason"].startswith(f"gate refused {D2}: "), u2i["serving"]
        # ... and the u2i list is the day's fusion of the other channels (day 1's KARMA still embeds)
        assert u2i["retrieval"]["serving"] == "fused_without_karma"
        assert u2i["retrieval"]["channels_version"] == D2
        alerts = [json.loads(line) for line in (root / "alerts" / "alerts.jsonl").read_text().splitlines()]
        kinds = [(a["kind"], a["dag_id"], a["ds"]) for a in alerts]
        # the forced KARMA refusal of D2, and no failure; the AIGQ update gate may refuse a one-step
        # update of a 40-user world (it registers only an improvement on held-out samples): an outcome
        assert [k for k in kinds if k[1] != "aigq_training"] == [("gate_refused", "karma_training", D2)]
        assert all(k[0] == "gate_refused" for k in kinds if k[1] == "aigq_training"), kinds
        page = (root / "reports" / f"ds={D2}" / "index.html").read_text()
        assert f"gate refused {D2}" in page
        print(json.dumps({"day1_s": round(day1_s), "total_s": round(time.monotonic() - started),
                          "run_types": sorted({f"{d}:{t}" for d, t in types})}))
    finally:
        survivors = airflow.stop()
    assert survivors == [], survivors
