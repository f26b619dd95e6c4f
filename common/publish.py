"""Atomic partition publish on a local (or mounted) filesystem.

Writers never touch the final folder directly::

    with atomic_partition(final_dir, manifest={"rows": n}) as tmp:
        write files into tmp            # a crash here leaves only a hidden .tmp-* sibling

On success the temporary sibling is renamed into place (an existing partition is first moved
to a hidden ``.old-*`` sibling, so a re-run replaces the partition whole), then ``_manifest.json``
and ``_SUCCESS`` are written and the old copy is deleted. On failure the temporary folder is
removed and the previous partition, if any, is untouched. Readers accept a partition only when
``_SUCCESS`` is present, and skip folders starting with ``.`` or ``_``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from common.paths import MANIFEST, SUCCESS

logger = logging.getLogger(__name__)


def _sibling(final: Path, kind: str) -> Path:
    return final.parent / f".{kind}-{final.name}-{uuid.uuid4().hex[:12]}"


def clean_stale_siblings(final: str | Path) -> int:
    """Remove temporaries left by killed writers of this partition; returns how many."""
    final = Path(final)
    if not final.parent.is_dir():
        return 0
    removed = 0
    for child in final.parent.iterdir():
        if child.name.startswith((f".tmp-{final.name}-", f".old-{final.name}-")):
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    return removed


def commit_partition(tmp: str | Path, final: str | Path, manifest: dict | None = None) -> Path:
    """Move a fully written temporary folder into place and mark it published."""
    tmp, final = Path(tmp), Path(final)
    # Spark's own marker would make the partition look published before our manifest exists.
    with contextlib.suppress(FileNotFoundError):
        (tmp / SUCCESS).unlink()
    (tmp / MANIFEST).write_text(json.dumps(manifest or {}, indent=2, sort_keys=True, default=str))
    old = None
    if final.exists():
        old = _sibling(final, "old")
        os.rename(final, old)
    os.rename(tmp, final)
    (final / SUCCESS).touch()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("published %s", final)
    return final


@contextlib.contextmanager
def atomic_partition(final: str | Path, manifest: dict | None = None) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``final``; publish it on success, drop it on error.

    ``manifest`` may be mutated inside the block (e.g. to add row counts).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(final)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    manifest = {} if manifest is None else manifest
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_partition(tmp, final, manifest)


def read_manifest(partition: str | Path) -> dict:
    path = Path(partition) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


class PartitionBatch:
    """Stage several partitions and publish them together only if all were written.

    Used by jobs that write more than one table for a ds, so a failure in the last table
    publishes nothing at all for that date.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, dict]] = []
        self._lock = threading.Lock()  # tables may be staged from several threads of one job

    def stage(self, final: str | Path, manifest: dict | None = None) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_siblings(final)
        tmp = _sibling(final, "tmp")
        tmp.mkdir()
        with self._lock:
            self._staged.append((tmp, final, {} if manifest is None else manifest))
        return tmp

    def manifest(self, final: str | Path) -> dict:
        with self._lock:
            for _tmp, staged_final, manifest in self._staged:
                if staged_final == Path(final):
                    return manifest
        raise KeyError(final)

    def commit(self) -> list[Path]:
        published = [commit_partition(tmp, final, manifest) for tmp, final, manifest in self._staged]
        self._staged.clear()
        return published

    def abort(self) -> None:
        for tmp, _final, _manifest in self._staged:
            shutil.rmtree(tmp, ignore_errors=True)
        self._staged.clear()


@contextlib.contextmanager
def staged_partitions() -> Iterator[PartitionBatch]:
    batch = PartitionBatch()
    try:
        yield batch
    except BaseException:
        batch.abort()
        raise
    batch.commit()
