"""Partition paths under the data root: ``<root>/<area>/<table>/ds=YYYY-MM-DD/``.

A partition counts only once its ``_SUCCESS`` marker exists (see ``common.publish``); folders
whose names start with ``.`` are in-flight temporaries and are never read.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

AREAS = ("raw", "quarantine", "clean", "sessions", "samples", "models", "indexes", "exports", "reports")
SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
_DS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_ds(ds: str) -> str:
    if not isinstance(ds, str) or not _DS_RE.match(ds):
        raise ValueError(f"ds must look like YYYY-MM-DD, got {ds!r}")
    dt.date.fromisoformat(ds)  # raises on 2026-02-30
    return ds


def table_path(root: str | Path, area: str, table: str) -> Path:
    if area not in AREAS:
        raise ValueError(f"unknown storage area '{area}' (known: {AREAS})")
    return Path(root) / area / table


def partition_path(root: str | Path, area: str, table: str, ds: str) -> Path:
    return table_path(root, area, table) / f"ds={check_ds(ds)}"


def is_published(path: str | Path) -> bool:
    return (Path(path) / SUCCESS).is_file()


def published_ds(root: str | Path, area: str, table: str) -> list[str]:
    """All published partitions of a table, oldest first."""
    base = table_path(root, area, table)
    if not base.is_dir():
        return []
    out = []
    for child in base.iterdir():
        if child.name.startswith("ds=") and is_published(child):
            out.append(child.name[3:])
    return sorted(out)


def latest_published_ds(root: str | Path, area: str, table: str, ds: str) -> str | None:
    """The newest published partition at or before ``ds`` (for snapshot tables)."""
    candidates = [d for d in published_ds(root, area, table) if d <= ds]
    return candidates[-1] if candidates else None


def ds_range(start_ds: str, days: int) -> list[str]:
    start = dt.date.fromisoformat(check_ds(start_ds))
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(days)]


def previous_ds(ds: str, days: int) -> list[str]:
    """The ``days`` dates before ``ds`` (oldest first), not including ``ds``."""
    end = dt.date.fromisoformat(check_ds(ds))
    return [(end - dt.timedelta(days=i)).isoformat() for i in range(days, 0, -1)]
