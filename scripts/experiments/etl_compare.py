"""Compare two data roots built by the ETL (say, before and after a change of the jobs).

For every table of the ``clean``, ``quarantine``, ``sessions`` and ``samples`` areas: the same
published partitions, the same manifests (all keys), and per partition the same rows: DuckDB's
``EXCEPT ALL`` both ways empty, plus an order-free content hash (SHA-256 over the sorted rows).
Prints one JSON object; exit status 1 when anything differs.

    .venv/bin/python scripts/experiments/etl_compare.py BEFORE_ROOT AFTER_ROOT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import duckdb

from common.arrow_io import data_files
from common.paths import published_ds
from common.publish import read_manifest

AREAS = ("clean", "quarantine", "sessions", "samples")


def _files(root: Path, area: str, table: str, ds: str) -> list[str]:
    return [str(f) for f in data_files(root / area / table / f"ds={ds}")]


def _relation(con, files: list[str]) -> str:
    return f"read_parquet({files!r}, hive_partitioning = false, union_by_name = true)"


def content_hash(con, files: list[str]) -> tuple[int, str]:
    """(rows, SHA-256 of the sorted rows as text): equal for equal multisets of rows."""
    if not files:
        return 0, hashlib.sha256(b"").hexdigest()
    rows = con.execute(f"SELECT * FROM {_relation(con, files)}").fetchall()
    digest = hashlib.sha256()
    for line in sorted(repr(r) for r in rows):
        digest.update(line.encode())
        digest.update(b"\n")
    return len(rows), digest.hexdigest()


def except_all(con, a: list[str], b: list[str]) -> tuple[int, int]:
    """Rows of ``a`` not in ``b`` and of ``b`` not in ``a`` (multisets: EXCEPT ALL both ways)."""
    if not a or not b:
        return (0 if not a else -1), (0 if not b else -1)
    ra, rb = _relation(con, a), _relation(con, b)
    one = con.execute(f"SELECT count(*) FROM (SELECT * FROM {ra} EXCEPT ALL SELECT * FROM {rb})").fetchone()[0]
    two = con.execute(f"SELECT count(*) FROM (SELECT * FROM {rb} EXCEPT ALL SELECT * FROM {ra})").fetchone()[0]
    return one, two


def compare(before: Path, after: Path) -> dict:
    con = duckdb.connect()
    tables, problems = {}, []
    for area in AREAS:
        names = sorted({p.name for root in (before, after) if (root / area).is_dir() for p in (root / area).iterdir()
                        if not p.name.startswith((".", "_"))})
        for table in names:
            days_b, days_a = published_ds(before, area, table), published_ds(after, area, table)
            key = f"{area}/{table}"
            if days_b != days_a:
                problems.append(f"{key}: partitions differ: {sorted(set(days_b) ^ set(days_a))}")
            rows = 0
            digest = hashlib.sha256()
            for ds in sorted(set(days_b) & set(days_a)):
                mb = read_manifest(before / area / table / f"ds={ds}")
                ma = read_manifest(after / area / table / f"ds={ds}")
                if mb != ma:
                    problems.append(f"{key} ds={ds}: manifests differ: {mb} != {ma}")
                fb, fa = _files(before, area, table, ds), _files(after, area, table, ds)
                (nb, hb), (na, ha) = content_hash(con, fb), content_hash(con, fa)
                if (nb, hb) != (na, ha):
                    problems.append(f"{key} ds={ds}: content differs ({nb} rows vs {na})")
                extra = except_all(con, fb, fa) if nb and na else (nb, na)
                if extra != (0, 0):
                    problems.append(f"{key} ds={ds}: EXCEPT ALL both ways = {extra}")
                rows += na
                digest.update(f"{ds}:{ha}\n".encode())
            tables[key] = {"partitions": len(days_a), "rows": rows, "hash": digest.hexdigest()[:16]}
    return {"before": str(before), "after": str(after), "identical": not problems, "problems": problems[:50],
            "tables": tables}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    out = compare(args.before, args.after)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if out["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
