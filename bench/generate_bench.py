"""Benchmark the synthetic generator: wall time, events/s and peak RSS for target event counts.

Each size runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own; prints one
JSON object per size. Usage::

    python bench/generate_bench.py --events 1000000 10000000 [--events-per-user-day 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sources.synthetic import generate  # noqa: E402


def run_one(events: int, events_per_user_day: float, n_items: int, seed: int, chunk_rows: int) -> dict:
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_users = max(1, round(events / events_per_user_day))
    root = Path(tempfile.mkdtemp(prefix="synthetic-bench-"))
    try:
        t0 = time.perf_counter()
        counts = generate(root, "2026-11-01", 1, n_users, n_items, events_per_user_day, seed, chunk_rows=chunk_rows)
        seconds = time.perf_counter() - t0
        disk_mb = sum(p.stat().st_size for p in root.rglob("*.parquet")) / 2**20
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n_events = sum(counts["behavior_events"].values())
    return {
        "target_events": events,
        "events": n_events,
        "n_users": n_users,
        "n_items": n_items,
        "events_per_user_day": events_per_user_day,
        "chunk_rows": chunk_rows,
        "seconds": round(seconds, 2),
        "events_per_s": round(n_events / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(rss_before_mb, 1),
        "parquet_mb": round(disk_mb, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--events-per-user-day", type=float, default=200.0)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-rows", type=int, default=500_000)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        result = run_one(args.events[0], args.events_per_user_day, args.items, args.seed, args.chunk_rows)
        print(json.dumps(result))
        return
    for events in args.events:
        cmd = [sys.executable, __file__, "--single", "--events", str(events), "--events-per-user-day",
               str(args.events_per_user_day), "--items", str(args.items), "--seed", str(args.seed),
               "--chunk-rows", str(args.chunk_rows)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
