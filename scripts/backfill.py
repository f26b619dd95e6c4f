"""Run a DAG for a range of logical dates without a scheduler.

``python scripts/backfill.py behavior_etl 2026-11-01 2026-11-03 [--conf JSON]`` runs
``airflow dags test behavior_etl <end>`` once with ``{"ds": start, "through": end}``: every Spark
task builds the whole range in one pass and publishes every day together (or none). Any other
DAG runs ``airflow dags test <dag> <ds>`` per date in order and stops at the first failed date
(later dates depend on earlier ones). With a running scheduler, trigger ``behavior_etl`` with the
same range conf instead (see the README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

RANGE_DAGS = ("behavior_etl",)  # DAGs whose tasks build a range in one pass (the `through` Param)


def commands(airflow: str, dag_id: str, start: dt.date, end: dt.date, conf: dict) -> list[list[str]]:
    """The ``airflow dags test`` command lines of the backfill, in order."""
    if dag_id in RANGE_DAGS:
        run_conf = {**conf, "ds": start.isoformat(), "through": end.isoformat()}
        return [[airflow, "dags", "test", dag_id, end.isoformat(), "--conf", json.dumps(run_conf)]]
    out, day = [], start
    while day <= end:
        out.append([airflow, "dags", "test", dag_id, day.isoformat(), *(["--conf", json.dumps(conf)] if conf else [])])
        day += dt.timedelta(days=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("start", type=dt.date.fromisoformat)
    parser.add_argument("end", type=dt.date.fromisoformat)
    parser.add_argument("--conf", default=None, help="run conf JSON, e.g. '{\"data_root\": \"/tmp/x\"}'")
    args = parser.parse_args(argv)
    if args.end < args.start:
        parser.error("end is before start")
    airflow = str(Path(sys.executable).parent / "airflow")
    for cmd in commands(airflow, args.dag_id, args.start, args.end, json.loads(args.conf) if args.conf else {}):
        print(f"$ {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"backfill stopped: {' '.join(cmd[2:5])} failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
