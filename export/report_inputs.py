"""What the analyst report reads from a data root: partition row counts and manifests, model
version folders and the registry's CURRENT, ablation reports and export partitions. Missing
inputs give ``None`` (or an empty result) so that a section can say what is missing; an unreadable
JSON file is logged and read as missing."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from common.arrow_io import partition_rows, read_partition
from common.paths import is_published, partition_path
from common.registry import DECISIONS_DIR, current_version, serving_status

logger = logging.getLogger(__name__)


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``; ``None`` when it is missing or unreadable (logged)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("unreadable %s: %s", path, exc)
        return None


def rebase(path_text: str | None, root: Path, area: str) -> Path | None:
    """A recorded absolute path, or the same path under this root's ``area`` folder when the data
    root was moved since it was recorded."""
    if not path_text:
        return None
    path = Path(path_text)
    if path.exists():
        return path
    parts = path.parts
    if area in parts:
        moved = root.joinpath(area, *parts[len(parts) - parts[::-1].index(area):])
        if moved.exists():
            return moved
    return path


def versions(root: Path, name: str) -> list[Path]:
    """Version folders of ``models/<name>`` (hidden temporaries and the registry's ``decisions/``
    skipped), oldest first."""
    base = root / "models" / name
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")) and p.name != DECISIONS_DIR)


def current(root: Path, name: str) -> str | None:
    """The registry's CURRENT version of ``name``; ``None`` when there is none or it is unreadable."""
    try:
        return current_version(root, name)
    except (OSError, ValueError, KeyError):
        return None


def newest_ablation(root: Path, name: str, ds: str) -> Path | None:
    """``reports/<name>/ds=*/ablation.md`` of the newest date at or before ``ds`` (else the newest)."""
    base = root / "reports" / name
    if not base.is_dir():
        return None
    found = sorted(p for p in base.glob("ds=*/ablation.md"))
    if not found:
        return None
    before = [p for p in found if p.parent.name[3:] <= ds]
    return (before or found)[-1]


def read_export(root: Path, ds: str, table: str, columns: Sequence[str]):
    """The published export partition ``table`` of ``ds`` (only the ``columns`` it has); ``None``
    when it is not published."""
    if not is_published(partition_path(root, "exports", table, ds)):
        return None
    t = read_partition(root, "exports", table, ds)
    return t.select([c for c in columns if c in t.column_names])


#: The export tables whose manifests name the models that served.
EXPORT_TABLES = ("u2q", "x2q", "u2i", "user_interest_embedding")


def serving_rows(root: Path, ds: str) -> list[list]:
    """``[name, serving version, reason]`` for every model an export of ``ds`` names in its
    manifest's ``serving`` (KARMA, the AIGQ policies), else from the registry."""
    seen: dict[str, dict] = {}
    for table in EXPORT_TABLES:
        _n, manifest = partition_rows(root, "exports", table, ds)
        for name, status in (manifest.get("serving") or {}).items():
            seen.setdefault(name, status)
    for name in ("karma", "aigq_direct", "aigq_direct_grpo", "aigq_think"):
        if name not in seen and (root / "models" / name).is_dir():
            status = serving_status(root, name, ds)
            seen[name] = {"version": status["version"], "reason": status["reason"]}
    return [[name, s.get("version"), s.get("reason")] for name, s in sorted(seen.items())]
