"""Run a DAG for every logical date of a range, in order, without a scheduler.

``python scripts/backfill.py behavior_etl 2026-11-01 2026-11-03 [--conf JSON]`` calls
``airflow dags test <dag> <ds>`` per date and stops at the first failed date (later dates
depend on earlier ones through the history lookback). With a running scheduler, use
``airflow backfill create`` instead (see the README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path


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
    day = args.start
    while day <= args.end:
        cmd = [airflow, "dags", "test", args.dag_id, day.isoformat()]
        if args.conf:
            cmd += ["--conf", args.conf]
        print(f"$ {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"backfill stopped: {args.dag_id} failed for {day}", file=sys.stderr)
            return 1
        day += dt.timedelta(days=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
