"""`make demo`: generate a few days of synthetic logs and run all four DAGs through Airflow for
every day, the way the scheduler chains them.

Steps: migrate Airflow's SQLite DB under ``.airflow/`` → ``python -m sources.synthetic`` for
``synthetic.days`` days → per logical date, ``airflow dags test`` of ``behavior_etl`` →
``karma_training`` and ``aigq_training`` (base LM and IL-SFT on the first date, plus an
AIGQ-Think IL-SFT run for x2q; every date a new KARMA version, the daily CTR model and an IL-GRPO
update of the previous date's policy) → ``nightly_export`` (u2q, x2q, u2i + embeddings, the
analyst report). Each DAG runs its dates in order
(``max_active_runs=1``), and a date's run starts as soon as what it reads is published — as the
asset-triggered schedule would start it — so the ETL of the next date overlaps the training of
this one (four lanes, one per DAG; the SQLite DB waits on locks instead of failing). Training runs
are short, sized for a 2-core machine (``DEMO_STEPS`` steps). At the end: rows per table, quarantine
counts, registered model versions and metrics, the export partitions and the report path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
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


class StepFailed(RuntimeError):
    pass


_print_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(msg, flush=True)


def run(cmd: list[str], log: Path, lane: str = "") -> float:
    """Run one step, its output into ``log``; raises :class:`StepFailed` (log tail printed)."""
    started = time.monotonic()
    tag = f"[{lane}] " if lane else ""
    say(f"{tag}$ {' '.join(cmd)}")
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    seconds = time.monotonic() - started
    say(f"{tag}  ... exit {proc.returncode} in {seconds:.0f}s (log: {log})")
    if proc.returncode != 0:
        with _print_lock:
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
        if name == "base_lm":  # published, not registered: training takes the newest version <= ds
            return f"published versions: {versions}" if versions else "(none)"
        return f"versions on disk: {versions} (none registered)" if versions else "(none)"
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return f"{current_version(root, name)} at {path}\n      {json.dumps(key_metrics(name, metrics))}"


def base_lm_published(root: str, ds: str) -> bool:
    """A published ``models/base_lm/<v>`` with v <= ds (what both training DAGs start from)."""
    base = Path(root) / "models" / "base_lm"
    return any(p.name <= ds and (p / "manifest.json").is_file() for p in base.glob("20*")) if base.is_dir() else False


def run_lanes(days: list[str], root: str, airflow: str, logs: Path, training: dict,
              first_day: dict | None = None) -> dict[str, dict[str, float]]:
    """One lane per DAG, each running its dates in order; a date starts when its inputs are
    published: karma/aigq after that date's ETL (aigq also after the base LM exists, so the two
    never pre-train it twice), the export after both trainings. ``first_day`` adds runs of a DAG
    on the first date only, after its usual one. Returns seconds per DAG and date."""
    first_day = first_day or {}
    done = {dag: {ds: threading.Event() for ds in days} for dag in ("behavior_etl", *training, "nightly_export")}
    failed = threading.Event()
    errors: list[BaseException] = []
    times: dict[str, dict[str, float]] = {dag: {} for dag in done}

    def wait(events) -> bool:
        while not failed.is_set():
            if all(e.wait(0.5) for e in events):
                return True
        return False

    def lane(dag_id: str, inputs, extra_wait=None) -> None:
        try:
            for ds in days:
                if not wait(inputs(ds)):
                    return
                while extra_wait and not extra_wait(ds):
                    if failed.wait(2.0):
                        return
                seconds = 0.0
                confs = [training.get(dag_id)] + (first_day.get(dag_id, []) if ds == days[0] else [])
                for i, conf in enumerate(confs):
                    cmd = [airflow, "dags", "test", dag_id, ds] + (["--conf", json.dumps(conf)] if conf else [])
                    log = logs / f"{dag_id}-{ds}{'' if i == 0 else f'-{i}'}.log"
                    seconds += run(cmd, log, dag_id)
                times[dag_id][ds] = round(seconds)
                done[dag_id][ds].set()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            failed.set()

    lanes = [
        threading.Thread(target=lane, args=("behavior_etl", lambda ds: [])),
        threading.Thread(target=lane, args=("karma_training", lambda ds: [done["behavior_etl"][ds]])),
        threading.Thread(target=lane, args=("aigq_training", lambda ds: [done["behavior_etl"][ds]],
                                            lambda ds: base_lm_published(root, ds))),
        threading.Thread(target=lane, args=("nightly_export", lambda ds: [done["karma_training"][ds],
                                                                           done["aigq_training"][ds]])),
    ]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    if errors:
        raise SystemExit(str(errors[0]))
    return times


def main() -> int:
    cfg = load_config()
    root = cfg["data_root"]
    syn = cfg["synthetic"]
    days = ds_range(str(syn["start_ds"]), int(syn["days"]))
    logs = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow")) / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Four `airflow dags test` processes share the SQLite DB: wait on its locks instead of failing.
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "common.airflow_db.SQLITE_CONNECT_ARGS")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC",
                          "common.airflow_db.SQLITE_CONNECT_ARGS_ASYNC")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    airflow = str(Path(sys.executable).parent / "airflow")
    try:
        run([airflow, "db", "migrate"], logs / "airflow-db.log")
        # A few corrupted rows (0.2%) so the quarantine has something to show.
        run([sys.executable, "-m", "sources.synthetic", "--days", str(len(days)), "--bad-row-rate", "0.002"],
            logs / "generate.log")
    except StepFailed as exc:
        raise SystemExit(str(exc)) from exc
    last = days[-1]
    steps = int(os.environ.get("DEMO_STEPS", "150"))
    training = {
        "karma_training": {"max_steps": steps, "base_max_steps": 2 * steps},
        # IL-SFT once (first date), then every date: CTR model + IL-GRPO update of the previous policy.
        "aigq_training": {"max_steps": 2 * steps, "base_max_steps": 2 * steps, "eval_split": "all",
                          "grpo_max_steps": max(steps // 5, 1), "sft": "if_missing"},
    }
    # The first date also trains an AIGQ-Think policy (IL-SFT only), so that nightly_export writes
    # x2q too. Demo-sized, it is registered through a gate opened wide (popularity tolerance 1.0);
    # its metrics are printed below next to the baselines.
    first_day = {"aigq_training": [{"kind": "think", "max_steps": 2 * steps, "eval_split": "all", "grpo": False,
                                    "sft": "if_missing", "gate_popularity_tolerance": 1.0}]}
    times = run_lanes(days, root, airflow, logs, training, first_day)
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
    print("analyst reports:")
    for ds in days:
        print(f"  {Path(root) / 'reports' / f'ds={ds}' / 'index.html'}")
    print("\nseconds per DAG run:")
    for dag_id, per_ds in times.items():
        print(f"  {dag_id:16s} {json.dumps(per_ds)}")
    print(f"\noutputs under {root}:")
    for area in ("raw", "clean", "quarantine", "sessions", "samples", "models", "indexes", "exports", "reports"):
        print(f"  {Path(root) / area}")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
