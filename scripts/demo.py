"""`make demo`: generate a few days of synthetic logs and run the DAGs through Airflow.

Steps: migrate Airflow's SQLite DB under ``.airflow/`` → ``python -m sources.synthetic`` for
``synthetic.days`` days → ``airflow dags test behavior_etl <ds>`` for each day, in order →
``karma_training`` and ``aigq_training`` (IL-SFT, then the daily CTR model and IL-GRPO update)
for the last day (short training runs, sized for a 2-core machine: ``DEMO_STEPS`` steps each) →
``nightly_export`` for the last day (u2q, u2i + embeddings, the analyst report) → a summary of rows per table, quarantine counts,
registered model versions, metrics and output paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.config import load_config  # noqa: E402
from common.paths import ds_range, partition_path  # noqa: E402
from common.publish import read_manifest  # noqa: E402

ETL_AREAS = {
    "raw": ("behavior_events", "hintq_exposures", "query_impressions"),
    "clean": ("behavior_events", "hintq_exposures", "query_impressions", "items", "users"),
    "quarantine": ("behavior_events", "hintq_exposures", "query_impressions", "items", "users"),
    "sessions": ("behavior_sessions", "hintq_sessions", "day_sessions"),
    "samples": ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples", "item_corpus"),
}


def run(cmd: list[str], log: Path) -> None:
    started = time.monotonic()
    print(f"$ {' '.join(cmd)}", flush=True)
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    print(f"  ... exit {proc.returncode} in {time.monotonic() - started:.0f}s (log: {log})", flush=True)
    if proc.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"demo step failed: {' '.join(cmd)}")


def summary(root: str, days: list[str]) -> dict:
    out: dict = {}
    for area, tables in ETL_AREAS.items():
        for table in tables:
            rows = []
            for ds in days:
                manifest = read_manifest(partition_path(root, area, table, ds))
                rows.append(manifest.get("rows"))
            out[f"{area}/{table}"] = rows
    return out


KARMA_KEYS = ("hr@10", "hr@200", "index_hr@200", "popularity_hr@200", "cooccurrence_hr@200", "text_hr@200",
              "sink_ratio")
AIGQ_KEYS = ("query_hr@10", "query_hr@30", "cate_hr@30")


def key_metrics(name: str, metrics: dict) -> dict:
    """The few figures worth a glance, from a model's metrics.json."""
    if name == "karma":
        summary = metrics.get("summary", {})
        return {k: round(summary[k], 4) for k in KARMA_KEYS if isinstance(summary.get(k), int | float)}
    if name == "aigq_ctr":
        return {
            "eval_on": metrics.get("eval_on"),
            **{f"{key}_auc": (metrics.get(key) or {}).get("auc") for key in ("model", "baseline_query_ctr")},
        }
    out = {"split": metrics.get("split")}
    for method, groups in metrics.get("results", {}).items():
        overall = groups.get("all", {})
        out[method] = {k: round(overall[k], 4) for k in AIGQ_KEYS if isinstance(overall.get(k), int | float)}
    return out


def registered(root: str, name: str) -> str:
    """``version  key metrics`` of a registered model, or what is on disk."""
    from common.registry import RegistryError, current_path, current_version

    try:
        path = current_path(root, name)
    except RegistryError:
        versions = sorted(p.name for p in (Path(root) / "models" / name).glob("20*"))
        return f"versions on disk: {versions} (none registered)" if versions else "(none)"
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return f"{current_version(root, name)} at {path}\n      {json.dumps(key_metrics(name, metrics))}"


def main() -> int:
    cfg = load_config()
    root = cfg["data_root"]
    syn = cfg["synthetic"]
    days = ds_range(str(syn["start_ds"]), int(syn["days"]))
    logs = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow")) / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    airflow = str(Path(sys.executable).parent / "airflow")
    run([airflow, "db", "migrate"], logs / "airflow-db.log")
    # A few corrupted rows (0.2%) so the quarantine has something to show.
    run([sys.executable, "-m", "sources.synthetic", "--days", str(len(days)), "--bad-row-rate", "0.002"],
        logs / "generate.log")
    for ds in days:
        run([airflow, "dags", "test", "behavior_etl", ds], logs / f"behavior_etl-{ds}.log")
    last = days[-1]
    steps = int(os.environ.get("DEMO_STEPS", "150"))
    training = {
        "karma_training": {"max_steps": steps, "base_max_steps": 2 * steps},
        "aigq_training": {"max_steps": 2 * steps, "base_max_steps": 2 * steps, "eval_split": "all",
                          "grpo_max_steps": max(steps // 5, 1)},
    }
    for dag_id, conf in training.items():
        run([airflow, "dags", "test", dag_id, last, "--conf", json.dumps(conf)], logs / f"{dag_id}-{last}.log")
    # What serving reads: u2q / x2q (skipped: the demo trains no Think policy) / u2i + embeddings,
    # then the analyst report.
    run([airflow, "dags", "test", "nightly_export", last], logs / f"nightly_export-{last}.log")
    table = summary(root, days)
    print("\nrows per table and ds (" + ", ".join(days) + "):")
    for name, rows in table.items():
        print(f"  {name:32s} {rows}")
    reasons = {}
    for ds in days:
        for t in ETL_AREAS["quarantine"]:
            for reason, n in read_manifest(partition_path(root, "quarantine", t, ds)).get("reasons", {}).items():
                reasons[f"{t}:{reason}"] = reasons.get(f"{t}:{reason}", 0) + n
    print("quarantined rows by reason:", json.dumps(reasons, sort_keys=True) if reasons else "none")
    print("\nregistered models:")
    for name in ("base_lm", "karma", "aigq_direct", "aigq_ctr", "aigq_direct_grpo"):
        print(f"  {name:12s} {registered(root, name)}")
    print("\nexports:")
    for table in ("u2q", "x2q", "u2i", "user_interest_embedding"):
        path = partition_path(root, "exports", table, last)
        state = f"{read_manifest(path).get('rows')} rows" if (path / "_SUCCESS").is_file() else "not written"
        print(f"  {table:24s} {path} ({state})")
    print(f"analyst report: {Path(root) / 'reports' / f'ds={last}' / 'index.html'}")
    print(f"\noutputs under {root}:")
    for area in ("raw", "clean", "quarantine", "sessions", "samples", "models", "indexes", "exports", "reports"):
        print(f"  {Path(root) / area}")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
