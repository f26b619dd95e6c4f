"""Inspect any output table: schema, row count, per-column nulls and sample rows of one partition.

``TABLE`` is a table name (looked up under ``--area``, else the first of exports, samples,
clean, sessions, quarantine, raw that has it) or a path: a partition folder
(``.../ds=2026-11-03``) or a table folder (its ``--ds`` partition, else the newest published
one). Without ``--ds`` the newest published partition is shown. A missing table or partition,
or one without ``_SUCCESS`` (unless ``--unpublished``), is an error naming the path (exit 2).
Nulls are counted batch by batch, so memory stays bounded on large partitions.

Usage::

    python -m export.inspect u2q [--ds 2026-11-03] [--area exports] [--data-root R] [--rows 5]
    python -m export.inspect /data/exports/x2q/ds=2026-11-03
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from common.arrow_io import data_files
from common.config import load_config
from common.paths import AREAS, SUCCESS, check_ds, is_published, table_path
from common.publish import read_manifest

SEARCH_AREAS = ("exports", "samples", "clean", "sessions", "quarantine", "raw")
EXIT_MISSING = 2
MAX_VALUE_CHARS = 120


class InspectError(RuntimeError):
    """The table or partition asked for is not there (the message names the path)."""


def _published_partitions(table_dir: Path) -> list[Path]:
    return sorted(p for p in table_dir.glob("ds=*") if p.is_dir() and is_published(p))


def resolve_partition(target: str, ds: str | None, area: str | None, root: str | Path | None,
                      unpublished: bool = False) -> Path:
    """The partition folder ``target`` (a table name or a path) and ``ds`` designate."""
    if ds is not None:
        check_ds(ds)
    path = Path(target)
    if "/" in target or path.is_dir():
        if not path.is_dir():
            raise InspectError(f"no such folder: {path}")
        if path.name.startswith("ds=") or not any(path.glob("ds=*")):
            folder = path
        else:
            folder = _pick(path, ds)
    else:
        if root is None:
            raise InspectError("no data root (pass --data-root)")
        areas = [area] if area else list(SEARCH_AREAS)
        tried = [table_path(root, a, target) for a in areas]
        table_dir = next((t for t in tried if t.is_dir()), None)
        if table_dir is None:
            raise InspectError(f"no table {target!r}: none of {', '.join(str(t) for t in tried)} exists")
        folder = _pick(table_dir, ds)
    if not folder.is_dir():
        raise InspectError(f"no such partition: {folder}")
    if not unpublished and not is_published(folder):
        raise InspectError(f"partition not published (no {SUCCESS}): {folder} (--unpublished reads it anyway)")
    return folder


def _pick(table_dir: Path, ds: str | None) -> Path:
    if ds is not None:
        folder = table_dir / f"ds={ds}"
        if not folder.is_dir():
            raise InspectError(f"no such partition: {folder}")
        return folder
    published = _published_partitions(table_dir)
    if not published:
        raise InspectError(f"no published partition under {table_dir}")
    return published[-1]


def short(value, limit: int = MAX_VALUE_CHARS) -> str:
    """A value on one line, long lists abbreviated and long text cut.

    >>> short(list(range(20)))
    '[0, 1, 2, 3, 4, 5, 6, 7, … (20 values)]'
    >>> print(short("x" * 200, 10))
    'xxxxxxxx…
    """
    if isinstance(value, list | tuple) and len(value) > 8:
        text = "[" + ", ".join(short(v, 24) for v in value[:8]) + f", … ({len(value)} values)]"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def inspect_partition(folder: Path, rows: int = 5, batch_size: int = 65_536) -> dict:
    """Schema, row count, per-column null counts and the first ``rows`` rows of ``folder``."""
    files = data_files(folder)
    if not files:
        return {"path": str(folder), "files": 0, "rows": 0, "schema": None, "nulls": {}, "sample": [],
                "manifest": read_manifest(folder)}
    schema = pq.ParquetFile(files[0]).schema_arrow
    nulls = {name: 0 for name in schema.names}
    total, sample, other_schemas = 0, [], 0
    for f in files:
        pf = pq.ParquetFile(f)
        other_schemas += not pf.schema_arrow.equals(schema)
        for batch in pf.iter_batches(batch_size=batch_size):
            total += batch.num_rows
            for name in batch.schema.names:
                nulls[name] = nulls.get(name, 0) + batch.column(name).null_count
            if len(sample) < rows:
                sample += batch.slice(0, rows - len(sample)).to_pylist()
    return {"path": str(folder), "files": len(files), "bytes": sum(f.stat().st_size for f in files), "rows": total,
            "schema": schema, "files_with_other_schema": other_schemas, "nulls": nulls, "sample": sample,
            "manifest": read_manifest(folder)}


def render(info: dict) -> str:
    lines = [f"partition: {info['path']}"]
    manifest = info.get("manifest") or {}
    if manifest:
        keep = {k: manifest[k] for k in ("table", "ds", "rows", "run_id", "source_ds") if k in manifest}
        if isinstance(manifest.get("model"), dict):
            keep["model"] = f"{manifest['model'].get('name')}/{manifest['model'].get('version')}"
        if isinstance(manifest.get("gates"), dict):
            gates = manifest["gates"]
            keep["gates_passed"] = f"{sum(bool(g.get('passed')) for g in gates.values())}/{len(gates)}"
        lines.append(f"manifest: {json.dumps(keep, sort_keys=True, default=str)}")
    lines.append(f"files: {info['files']} Parquet ({info.get('bytes', 0) / 1024:.1f} KiB)"
                 + (f", {info['files_with_other_schema']} with another schema" if info.get("files_with_other_schema")
                    else ""))
    lines.append(f"rows: {info['rows']}")
    if info["schema"] is None:
        lines.append("schema: (no data files)")
        return "\n".join(lines)
    lines.append("schema:")
    width = max(len(n) for n in info["schema"].names)
    lines += [f"  {f.name:<{width}}  {f.type}" for f in info["schema"]]
    lines.append("nulls per column:")
    lines.append(f"  {'column':<{width}}  {'nulls':>10}  {'share':>7}")
    for name, n in info["nulls"].items():
        share = n / info["rows"] if info["rows"] else 0.0
        lines.append(f"  {name:<{width}}  {n:>10}  {share:>7.2%}")
    lines.append(f"sample rows ({len(info['sample'])}):")
    for i, row in enumerate(info["sample"], 1):
        lines.append(f"  -- row {i}")
        lines += [f"    {k:<{width}}  {short(v)}" for k, v in row.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="table name, or a partition / table folder")
    parser.add_argument("--ds", default=None, help="partition date (default: the newest published)")
    parser.add_argument("--area", default=None, help=f"storage area (default: the first of {', '.join(SEARCH_AREAS)} "
                                                      "holding the table)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--rows", type=int, default=5, help="sample rows to print")
    parser.add_argument("--unpublished", action="store_true", help="read a partition without _SUCCESS too")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    if args.area is not None and args.area not in AREAS:
        parser.error(f"unknown --area {args.area!r} (known: {', '.join(AREAS)})")
    root = args.data_root
    if root is None and not ("/" in args.table or Path(args.table).is_dir()):
        root = load_config(args.config, args.profile)["data_root"]
    try:
        folder = resolve_partition(args.table, args.ds, args.area, root, args.unpublished)
    except (InspectError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISSING
    print(render(inspect_partition(folder, args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
