"""Helpers shared by the public-dataset adapters (``sources.amazon_scientific``, ``bestbuy``, ``esci``).

Every adapter builds whole pyarrow tables in the raw contract (``common.schemas``) and hands
them to :func:`write_event_table` / :func:`write_snapshot_table`, which publish each
``raw/<table>/ds=…`` partition through ``common.arrow_io.write_partition`` (an atomic publish
with ``_manifest.json`` and ``_SUCCESS``). Event rows are partitioned by the UTC date of
``event_time``; a row whose time could not be parsed carries an explicit fallback ds chosen by
the adapter, keeps a null ``event_time`` and is quarantined later by ``jobs.validate``.
Empty tables are not written. Partitions of earlier runs for other dates are not removed: give
each source its own data root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from common import schemas
from common.arrow_io import write_partition
from common.config import REPO_ROOT, load_config
from common.paths import check_ds

logger = logging.getLogger(__name__)

DS_COLUMN = "__ds"


def shared_datasets_dir() -> Path:
    """``$SHARED_DATASETS`` or ``<repo>/../shared/datasets`` (never copied into the repo)."""
    return Path(os.environ.get("SHARED_DATASETS") or REPO_ROOT.parent / "shared" / "datasets")


def stable_id(prefix: str, *parts: object) -> str:
    """A deterministic short id: ``prefix`` + 20 hex chars of sha1 over the parts."""
    digest = hashlib.sha1("\x1f".join("" if p is None else str(p) for p in parts).encode("utf-8"))
    return f"{prefix}{digest.hexdigest()[:20]}"


def clean_text(value: object) -> str | None:
    """Strip a cell; empty (or missing) becomes None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def utc_midnight(ds: str) -> dt.datetime:
    return dt.datetime.fromisoformat(check_ds(ds)).replace(tzinfo=dt.UTC)


def ds_of(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).date().isoformat()


def event_table(table: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts with the contract columns plus ``__ds``) as a table with the contract schema."""
    schema = schemas.arrow_schema(table).append(pa.field(DS_COLUMN, pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def write_event_table(
    data_root: str | Path, table: str, data: pa.Table, manifest: dict | None = None
) -> dict[str, int]:
    """Publish ``data`` (contract columns + ``__ds``) as one partition per ``__ds``; returns counts."""
    if table not in schemas.EVENT_TABLES:
        raise ValueError(f"{table} is not an event table")
    if data.num_rows == 0:
        logger.info("%s: no rows, nothing written", table)
        return {}
    ds_col = data.column(DS_COLUMN)
    if ds_col.null_count:
        raise ValueError(f"{table}: {ds_col.null_count} rows have no partition date")
    counts: dict[str, int] = {}
    for ds in sorted(pc.unique(ds_col).to_pylist()):
        part = data.filter(pc.equal(ds_col, ds)).drop_columns([DS_COLUMN])
        _check_times(table, ds, part)
        write_partition(data_root, "raw", table, ds, part, manifest=dict(manifest or {}))
        counts[ds] = part.num_rows
    logger.info("%s: wrote %d rows in %d partitions", table, sum(counts.values()), len(counts))
    return counts


def _check_times(table: str, ds: str, part: pa.Table) -> None:
    """Every non-null event_time must fall on ``ds`` (a bug guard, not a data check)."""
    times = part.column("event_time").drop_null()
    if len(times) == 0:
        return
    start = utc_midnight(ds)
    lo, hi = pc.min(times).as_py(), pc.max(times).as_py()
    if lo < start or hi >= start + dt.timedelta(days=1):
        raise AssertionError(f"{table} ds={ds}: event_time range {lo}..{hi} leaves the partition")


def write_snapshot_table(
    data_root: str | Path, table: str, ds: str, data: pa.Table | list[dict], manifest: dict | None = None
) -> dict[str, int]:
    """Publish a snapshot table (items, users) once at ``ds``; nothing when empty."""
    if table not in schemas.SNAPSHOT_TABLES:
        raise ValueError(f"{table} is not a snapshot table")
    n = data.num_rows if isinstance(data, pa.Table) else len(data)
    if n == 0:
        logger.info("%s: no rows, nothing written", table)
        return {}
    write_partition(data_root, "raw", table, ds, data, manifest=dict(manifest or {}))
    logger.info("%s: wrote %d rows at ds=%s", table, n, ds)
    return {ds: n}


def arg_parser(description: str, dataset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--src",
        default=None,
        help=f"dataset folder (default: $SHARED_DATASETS/{dataset} or <repo>/../shared/datasets/{dataset})",
    )
    parser.add_argument(
        "--data-root", default=None, help="output data root (default: the profile's data_root)"
    )
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None, help="config profile (default: PIPELINE_PROFILE or local)")
    return parser


def resolve_paths(args: argparse.Namespace, dataset: str) -> tuple[Path, str]:
    """(source folder, data root) from the parsed CLI arguments and the config."""
    src = Path(args.src) if args.src else shared_datasets_dir() / dataset
    if args.data_root:
        data_root = str(Path(args.data_root).resolve())
    else:
        data_root = load_config(args.config, args.profile)["data_root"]
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    return src, data_root
