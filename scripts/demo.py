"""`make demo`: generate a few days of synthetic logs and run the four DAGs under a real Airflow 3
scheduler, the way production runs them.

Steps: ``python -m sources.synthetic`` for ``synthetic.days`` days → ``airflow standalone`` on
127.0.0.1 (``common/airflow_local.py``; metadata DB and logs under ``$AIRFLOW_HOME``, default
``.airflow/``) → unpause the four DAGs → trigger ``behavior_etl`` once per date (``{"ds": …}``),
each when the previous date's night is over (:func:`may_trigger_next`). Everything else is started by the
scheduler from Asset events: ``karma_training`` and ``aigq_training`` when the day's samples are
published (base LM and the IL-SFT policies — Direct, and Think for x2q — on the first date; every
date a new KARMA version, the daily CTR model and an IL-GRPO update of the previous policy),
``nightly_export`` when both trainings have settled the day (u2q, x2q, u2i + embeddings, report).
Training runs are short, sized for a 2-core machine (``DEMO_STEPS``), set through ``PIPELINE__…``
config overrides in the scheduler's environment. The cron schedule is off
(``PIPELINE__OPS__ETL_SCHEDULE=null``) so that the scheduler does not also build "yesterday".

At the end: rows per table, quarantine counts, registered model versions and metrics, the export
partitions and the report paths, and the seconds of every DAG run; Airflow is stopped (process
group) whatever happened, and the UI is reachable while it runs (port printed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.airflow_local import DAG_IDS, TERMINAL, LocalAirflow  # noqa: E402
from common.config import load_config  # noqa: E402
from common.paths import ds_range, partition_path  # noqa: E402
from common.publish import read_manifest  # noqa: E402
from common.registry import RegistryError, current_path, current_version  # noqa: E402

ETL_AREAS = {
    "raw": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions"),
    "clean": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "items", "users"),
    "quarantine": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "items", "users"),
    "sessions": ("behavior_sessions", "hintq_sessions", "day_sessions"),
    "samples": ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples", "item_corpus"),
}


class StepFailed(RuntimeError):
    pass


def run(cmd: list[str], log: Path) -> float:
    """Run one set-up step, its output into ``log``; raises :class:`StepFailed` (log tail printed)."""
    started = time.monotonic()
    print(f"$ {' '.join(cmd)}", flush=True)
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    seconds = time.monotonic() - started
    print(f"  ... exit {proc.returncode} in {seconds:.0f}s (log: {log})", flush=True)
    if proc.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr, flush=True)
        raise StepFailed(f"demo step failed: {' '.join(cmd)}")
    return seconds


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
              "fused_hr@200", "fused_without_hr@200", "sink_ratio")
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
    try:
        path = current_path(root, name)
    except RegistryError:
        versions = sorted(p.name for p in (Path(root) / "models" / name).glob("20*"))
        if name == "base_lm":  # published, not registered: training takes the newest version <= ds
            return f"published versions: {versions}" if versions else "(none)"
        return f"versions on disk: {versions} (none registered)" if versions else "(none)"
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return f"{current_version(root, name)} at {path}\n      {json.dumps(key_metrics(name, metrics))}"


def demo_overrides(steps: int) -> dict[str, str]:
    """Config overrides (``PIPELINE__…``) of the demo: short training, both IL-SFT policies on the
    first date (Think for x2q), the cron schedule off. Policies and updates are scored on held-out
    samples only (the ``test`` part, ``aigq.eval.split`` / ``update_split`` as configured), of every
    demo day so far (``sample_days`` 3: a demo day holds 5-10 test samples), never on the rows they
    trained on: an update registers only when it beat its start policy there.

    The gates stay as configured: a demo-sized policy whose exported list does not beat the best
    heuristic is refused, and u2q then serves that heuristic list (its manifest's ``lists`` says
    so, printed below); x2q is skipped without a registered Think policy. That is the pipeline
    working, not a failure."""
    return {
        "PIPELINE__OPS__ETL_SCHEDULE": "null",
        "PIPELINE__BASE_LM__MAX_STEPS": str(2 * steps),
        "PIPELINE__KARMA__MAX_STEPS": str(steps),
        "PIPELINE__AIGQ__SFT__MAX_STEPS": str(2 * steps),
        "PIPELINE__AIGQ__GRPO__MAX_STEPS": str(max(steps // 5, 1)),
        "PIPELINE__AIGQ__EVAL__SAMPLE_DAYS": "3",
        "PIPELINE__AIGQ__TRAIN_POLICIES": "[direct, think]",
    }


def run_seconds(run: dict) -> int | None:
    if not run.get("start_date") or not run.get("end_date"):
        return None
    start, end = (dt.datetime.fromisoformat(str(run[k])) for k in ("start_date", "end_date"))
    return round((end - start).total_seconds())


#: DAGs the scheduler starts from Asset events (each with ``max_active_runs=1``; one run per date):
#: a date's night ends with them.
ASSET_TRIGGERED = ("karma_training", "aigq_training", "nightly_export")


def may_trigger_next(runs: list[dict], triggered: int) -> bool:
    """Start the next date's ``behavior_etl`` only when the previous date's night is over: its
    ``behavior_etl``, both trainings and its ``nightly_export`` finished. A demo night follows the
    last one as production nights do, so its ETL does not share the two cores with the day
    before's trainings or export (it could not speed them up: each DAG runs one date at a time).
    It also keeps Airflow 3 from dropping Asset events that reach a DAG at ``max_active_runs`` with
    a run already queued (apache/airflow#56050: no run is ever made for them).

    >>> may_trigger_next([], 0)
    True
    >>> may_trigger_next([{"dag_id": "behavior_etl", "state": "success"}], 1)  # training not started yet
    False
    >>> night = [{"dag_id": d, "state": "running"} for d in ("behavior_etl", *ASSET_TRIGGERED)]
    >>> may_trigger_next([{**night[0], "state": "success"}, *night[1:]], 1)  # trainings, export running
    False
    >>> may_trigger_next([{**r, "state": "success"} for r in night], 1)
    True
    >>> may_trigger_next([{**r, "state": "success"} for r in night[:-1]], 1)  # export not run yet
    False
    """
    if any(r["state"] not in TERMINAL for r in runs):
        return False
    return all(sum(r["dag_id"] == dag for r in runs) >= triggered for dag in ASSET_TRIGGERED)


def drive(airflow, days: list[str], timeout_s: float) -> dict[str, list]:
    """Unpause, trigger behavior_etl per date (each when :func:`may_trigger_next`), wait for one
    nightly_export run per date; returns ``{dag_id: [(ds, run type, state, seconds), …]}``. Raises
    when a run fails."""
    airflow.unpause(DAG_IDS)
    pending = list(days)
    reported: set[str] = set()

    def settled() -> bool:
        runs = airflow.runs()
        for r in runs:
            if r["state"] in TERMINAL and r["run_id"] not in reported:
                reported.add(r["run_id"])
                print(f"  {r['dag_id']:16s} {r['run_type']:16s} {r['state']:8s} {run_seconds(r)}s  {r['run_id']}",
                      flush=True)
        failed = [r for r in runs if r["state"] == "failed"]
        if failed:
            raise StepFailed(f"failed runs: {[(r['dag_id'], r['run_id']) for r in failed]}\n"
                             + airflow.failed_task_logs())
        if pending and may_trigger_next(runs, len(days) - len(pending)):
            ds = pending.pop(0)
            airflow.trigger("behavior_etl", {"ds": ds}, run_id=f"demo__{ds}")
            return False
        exports = [r for r in runs if r["dag_id"] == "nightly_export"]
        return not pending and len(exports) >= len(days) and all(r["state"] in TERMINAL for r in runs)

    airflow.wait(settled, timeout_s, f"{len(days)} nightly_export runs", every=5.0)
    out: dict[str, list] = {dag: [] for dag in DAG_IDS}
    for r in airflow.runs():
        ds = airflow.xcom(r["dag_id"], r["run_id"], "resolve_ds")
        out[r["dag_id"]].append((ds, r["run_type"], r["state"], run_seconds(r)))
    return out


def main() -> int:
    cfg = load_config()
    root = cfg["data_root"]
    syn = cfg["synthetic"]
    days = ds_range(str(syn["start_ds"]), int(syn["days"]))
    home = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow"))
    logs = home / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        # A few corrupted rows (0.2%) so the quarantine has something to show.
        run([sys.executable, "-m", "sources.synthetic", "--days", str(len(days)), "--bad-row-rate", "0.002"],
            logs / "generate.log")
    except StepFailed as exc:
        raise SystemExit(str(exc)) from exc
    last = days[-1]
    steps = int(os.environ.get("DEMO_STEPS", "150"))
    for stale in ("airflow.db", "airflow.db-shm", "airflow.db-wal"):  # each demo starts a fresh metadata DB
        (home / stale).unlink(missing_ok=True)
    # SIGTERM (a killed make, a CI timeout) unwinds like Ctrl-C, so Airflow is stopped below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
    airflow = LocalAirflow(home, port=int(os.environ.get("DEMO_AIRFLOW_PORT", "0")) or None, env=demo_overrides(steps))
    try:
        print(f"starting airflow standalone (UI http://127.0.0.1:{airflow.port}, log {airflow.log_path})", flush=True)
        airflow.start()
        print(f"triggering behavior_etl for {', '.join(days)} in turn; the scheduler starts the rest from asset "
              "events", flush=True)
        times = drive(airflow, days, float(os.environ.get("DEMO_TIMEOUT_S", "3600")))
    except BaseException as exc:  # an error, Ctrl-C or SIGTERM: the deployment is stopped, the cause reported
        survivors = airflow.stop()
        raise SystemExit(f"demo failed: {exc!r}" + (f" (survivors: {survivors})" if survivors else "")) from exc
    survivors = airflow.stop()
    if survivors:
        raise SystemExit(f"processes survived the demo's Airflow: {survivors}")
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
    for name in ("base_lm", "karma", "aigq_direct", "aigq_think", "aigq_ctr", "aigq_direct_grpo"):
        print(f"  {name:12s} {registered(root, name)}")
    print("\nexports (rows per ds " + ", ".join(days) + "):")
    for table in ("u2q", "x2q", "u2i", "user_interest_embedding"):
        rows = []
        for ds in days:
            path = partition_path(root, "exports", table, ds)
            rows.append(read_manifest(path).get("rows") if (path / "_SUCCESS").is_file() else None)
        print(f"  {table:24s} {partition_path(root, 'exports', table, last)} {rows}")
    for ds in days:
        serving = read_manifest(partition_path(root, "exports", "u2q", ds)).get("lists") or {}
        if serving:
            print(f"  u2q {ds} serves {serving.get('mode')}: {serving.get('reason')}")
    print("analyst reports:")
    for ds in days:
        print(f"  {Path(root) / 'reports' / f'ds={ds}' / 'index.html'}")
    print("\nseconds per DAG run (ds, how the run was created, state, seconds):")
    for dag_id, per_run in times.items():
        print(f"  {dag_id:16s} {json.dumps(per_run)}")
    print(f"\noutputs under {root}:")
    for area in ("raw", "clean", "quarantine", "sessions", "samples", "models", "indexes", "exports", "reports"):
        print(f"  {Path(root) / area}")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
