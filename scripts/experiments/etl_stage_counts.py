"""Spark SQL executions, jobs, stages and tasks of the three ETL jobs of one day, for two source
trees (say, a `git worktree` of an earlier commit and this one), from each application's event log.

    git worktree add /tmp/before <commit>
    .venv/bin/python scripts/experiments/etl_stage_counts.py /tmp/before . --data-root R --ds 2026-11-03

``R`` must hold the day's raw partitions and the days before it built (e.g. the demo's data root);
each side runs on its own copy of it. Prints one JSON object ``{side: {job: counts}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

JOBS = ("validate", "sessionize", "build_samples")


def counts(event_dir: Path) -> dict:
    """Counts of the one application whose event log is under ``event_dir``."""
    out = {"sql_executions": 0, "jobs": 0, "stages": 0, "tasks": 0}
    for f in sorted(event_dir.glob("*/events_*")) or sorted(event_dir.glob("*")):
        for line in f.read_text().splitlines():
            event = json.loads(line)["Event"]
            if event == "SparkListenerJobStart":
                out["jobs"] += 1
            elif event == "SparkListenerStageCompleted":
                out["stages"] += 1
                out["tasks"] += json.loads(line)["Stage Info"]["Number of Tasks"]
            elif event.endswith("SparkListenerSQLExecutionStart"):
                out["sql_executions"] += 1
    return out


def run_side(tree: Path, root: Path, ds: str, work: Path) -> dict:
    data = work / "data"
    shutil.copytree(root, data)
    env = {**os.environ, "PYTHONPATH": str(tree), "SPARK_SUBMITTED": "1", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_REMOTE", None)
    result = {}
    for job in JOBS:
        events = work / f"events_{job}"
        events.mkdir()
        cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--driver-memory", "2g",
               "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
               "--conf", "spark.eventLog.compress=false", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.sql.adaptive.enabled=true", "--conf", "spark.sql.shuffle.partitions=8",
               "--conf", "spark.sql.session.timeZone=UTC",
               "--conf", "spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS",
               str(tree / "common" / "steps.py"), f"jobs.{job}", "--ds", ds, "--data-root", str(data)]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{tree}: jobs.{job} failed:\n{proc.stderr[-2000:]}")
        result[job] = counts(events)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="source tree of the first side")
    parser.add_argument("after", help="source tree of the second side")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True)
    args = parser.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory(prefix="etl_stages_") as tmp:
        for side, tree in (("before", args.before), ("after", args.after)):
            (Path(tmp) / side).mkdir()
            out[side] = run_side(Path(tree).resolve(), Path(args.data_root), args.ds, Path(tmp) / side)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
