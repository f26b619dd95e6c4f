"""Where export tables wait before they are published: staged tables and the shard parts area.

A :class:`StagedTable` is a hidden ``.tmp-ds=<ds>-*`` sibling of the final partition, staged
through a :class:`common.publish.PartitionBatch`; batches are appended as
``part-<n>.parquet`` files (memory stays bounded by one batch). The batch's ``commit`` renames
every staged table into place and writes ``_manifest.json`` and ``_SUCCESS``; an exception
(a failed gate included) inside ``common.publish.staged_partitions`` removes the staging
folders, and a killed process leaves only hidden folders that the next run's ``stage`` deletes.

Shards (the DAG's mapped u2q / u2i tasks; ``--shard I --num-shards N --stage-only``): each shard
writes its part under the staging area of the data root,
``<root>/exports/_staging/<table>/ds=<ds>/<run>/part-<I>-of-<N>/`` (``<run>`` = the run id, made
path-safe by :func:`run_folder_name`), through ``common.publish.atomic_partition``: a hidden
temporary sibling renamed into place, then ``_manifest.json`` (the part manifest: counts, model,
inputs, the users' digest) and ``_SUCCESS``, so a killed shard leaves no visible part and a
rerun replaces its part whole. The publish step (``--publish-parts --num-shards N``) reads
exactly the N complete parts (:func:`read_parts`), checks that they agree (same model, same
inputs, the expected users), merges them into one :class:`StagedTable`, runs the table's gates
and publishes as an unsharded run does, then removes the run's staging folder
(:func:`remove_staging`; run folders of other runs untouched for :data:`STALE_STAGING_S` go too).
By hand: ``python -m export.publish clean-staging [--data-root R] [--older-than-hours H]``
(:func:`clean_staging`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.paths import check_ds, is_published, partition_path, table_path
from common.publish import atomic_partition, read_manifest
from common.registry import serving_status
from common.schemas import arrow_schema
from export.data import ExportConfig, ExportInputError, check_shard, load_active, shard_users, users_digest

logger = logging.getLogger(__name__)

#: The storage area of the export tables (published partitions and their staging).
AREA = "exports"
#: The shard parts' area: ``<root>/exports/_staging/<table>/ds=<ds>/<run>/part-<i>-of-<n>/``.
STAGING = "_staging"
#: Staging run folders not modified for this long are removed by a table's next successful publish.
STALE_STAGING_S = 2 * 86400
_PART_RE = re.compile(r"^part-(\d+)-of-(\d+)$")
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")


def as_table(data: pa.Table | list[dict], schema: pa.Schema) -> pa.Table:
    """Rows or a Table in ``schema`` (columns selected in order, types cast)."""
    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    return pa.Table.from_pylist(list(data), schema=schema)


class StagedTable:
    """One export table being written for one ds."""

    def __init__(self, batch, root: str | Path, table: str, ds: str, manifest: dict | None = None):
        self.table = table
        self.schema = arrow_schema(table)
        self.final = partition_path(root, AREA, table, ds)
        self.manifest = {} if manifest is None else manifest  # the caller may keep updating it
        self.manifest.update(table=table, ds=ds)
        if "model" in self.manifest and "serving" not in self.manifest:
            self.manifest["serving"] = serving_note(root, ds, self.manifest["model"])
        self.tmp = batch.stage(self.final, self.manifest)
        self.rows = 0
        self._parts = 0

    def write(self, data: pa.Table | list[dict]) -> int:
        """Append one batch (cast to the table's schema) as its own Parquet file."""
        tbl = as_table(data, self.schema)
        if tbl.num_rows == 0:
            return 0
        pq.write_table(tbl, self.tmp / f"part-{self._parts:05d}.parquet")
        self._parts += 1
        self.rows += tbl.num_rows
        return tbl.num_rows

    def read(self) -> pa.Table:
        """Everything staged so far (for the gates)."""
        files = sorted(self.tmp.glob("part-*.parquet"))
        if not files:
            return self.schema.empty_table()
        return pa.concat_tables([pq.ParquetFile(f).read().cast(self.schema) for f in files])


def serving_note(root: str | Path, ds: str, model: dict) -> dict:
    """Which versions serve this export on ``ds`` and why, per registry name the export looked at
    (``model["preferred"]``, then ``model["name"]``): ``{name: {"version", "reason"}}`` from the
    gate decisions (:func:`common.registry.serving_status`). A refused gate shows here as
    ``gate refused <ds>: ...; serving <previous version>``."""
    names = [n for n in (model.get("preferred"), model.get("name")) if n]
    out = {}
    for name in dict.fromkeys(names):
        status = serving_status(root, name, ds)
        out[name] = {"version": status["version"], "reason": status["reason"]}
    return out


# --- shard parts -------------------------------------------------------------------------------
def run_folder_name(run_id: str) -> str:
    """A path-safe folder name for a run id: the id itself when it is made of ``[A-Za-z0-9._-]``,
    else the id with other characters replaced by ``_`` plus 8 hex digits of its sha1 (unique).

    >>> run_folder_name("run-1"), run_folder_name("manual__2026-11-02T00:00:00+00:00")
    ('run-1', 'manual__2026-11-02T00_00_00_00_00-3c6eb2ae')
    """
    if run_id and not _SAFE_RE.search(run_id) and not run_id.startswith("."):
        return run_id
    return f"{_SAFE_RE.sub('_', run_id).lstrip('.')}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"


def staging_dir(root: str | Path, table: str, ds: str | None = None, run_id: str | None = None) -> Path:
    """``<root>/exports/_staging/<table>[/ds=<ds>[/<run>]]``."""
    path = table_path(root, AREA, STAGING) / table
    if ds is not None:
        path = path / f"ds={check_ds(ds)}"
        if run_id is not None:
            path = path / run_folder_name(run_id)
    return path


def part_name(shard: int, num_shards: int) -> str:
    return f"part-{int(shard)}-of-{int(num_shards)}"


class StagedPart:
    """One shard's output being written: a folder per table of ``part-<n>.parquet`` files in a
    hidden sibling of the part (see :func:`staged_part`)."""

    def __init__(self, tmp: Path, final: Path, manifest: dict):
        self.tmp, self.final, self.manifest = tmp, final, manifest
        self._schema = arrow_schema
        self.rows: dict[str, int] = {}
        self._files: dict[str, int] = {}

    def write(self, table: str, data: pa.Table | list[dict]) -> int:
        tbl = as_table(data, self._schema(table))
        self.rows.setdefault(table, 0)
        if tbl.num_rows == 0:
            return 0
        folder = self.tmp / table
        folder.mkdir(exist_ok=True)
        n = self._files.get(table, 0)
        pq.write_table(tbl, folder / f"part-{n:05d}.parquet")
        self._files[table] = n + 1
        self.rows[table] += tbl.num_rows
        return tbl.num_rows


@contextlib.contextmanager
def staged_part(root: str | Path, table: str, ds: str, run_id: str, shard: int, num_shards: int,
                manifest: dict | None = None) -> Iterator[StagedPart]:
    """Write shard ``shard`` of ``num_shards`` of ``table`` for (ds, run id): on success the part
    replaces any earlier one of the same shard, complete with ``_manifest.json`` and ``_SUCCESS``;
    on an exception (or a kill) nothing visible is left."""
    shard, num_shards = check_shard(shard, num_shards)
    final = staging_dir(root, table, ds, run_id) / part_name(shard, num_shards)
    manifest = {} if manifest is None else manifest
    manifest.update(table=table, ds=ds, run_id=run_id, shard=shard, num_shards=num_shards)
    with atomic_partition(final, manifest) as tmp:
        part = StagedPart(tmp, final, manifest)
        yield part
        manifest["rows"] = dict(part.rows)
    logger.info("staged %s part %d of %d: %s (%s rows)", table, shard + 1, num_shards, final, part.rows)


@dataclass
class Part:
    """A complete shard part read back by the publish step."""

    shard: int
    num_shards: int
    path: Path
    manifest: dict

    def read(self, table: str) -> pa.Table:
        schema = arrow_schema(table)
        files = sorted((self.path / table).glob("part-*.parquet"))
        if not files:
            return schema.empty_table()
        return pa.concat_tables([pq.ParquetFile(f).read().cast(schema) for f in files])


def read_parts(root: str | Path, table: str, ds: str, run_id: str, num_shards: int) -> list[Part]:
    """The ``num_shards`` complete parts of (table, ds, run id), shard order; :class:`ExportInputError`
    (nothing is published) unless every shard ``0 .. num_shards-1`` has a complete part written
    for this run. Parts of another shard count in the same folder are ignored."""
    if int(num_shards) < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    run = staging_dir(root, table, ds, run_id)
    found, other = {}, []
    for child in sorted(run.iterdir()) if run.is_dir() else []:
        m = _PART_RE.match(child.name)
        if m is None or not is_published(child):
            continue
        if int(m[2]) == int(num_shards):
            found[int(m[1])] = child
        else:
            other.append(child.name)
    if other:
        logger.warning("ignoring parts of another shard count in %s: %s", run, other)
    missing = [i for i in range(num_shards) if i not in found]
    if missing:
        raise ExportInputError(f"{table} {ds}: {len(found)} of {num_shards} shard parts complete under {run} "
                               f"(missing shards {missing}); nothing published")
    parts = []
    for i in range(num_shards):
        manifest = read_manifest(found[i])
        if (manifest.get("run_id"), manifest.get("shard"), manifest.get("num_shards")) != (run_id, i, num_shards):
            raise ExportInputError(f"{found[i]}: part manifest names run {manifest.get('run_id')!r} shard "
                                   f"{manifest.get('shard')} of {manifest.get('num_shards')}, expected {run_id!r} "
                                   f"shard {i} of {num_shards}")
        parts.append(Part(i, num_shards, found[i], manifest))
    return parts


def check_parts(parts: Sequence[Part], active: Sequence[str], same: Sequence[str]) -> dict:
    """Check that the parts belong together and cover ``active`` (the day's active users): every
    key of ``same`` (model, inputs ...) equal across parts, each part generated for exactly its
    shard of ``active``. Returns the first part's manifest; :class:`ExportInputError` otherwise."""
    first = parts[0].manifest
    for part in parts:
        differ = [k for k in same if part.manifest.get(k) != first.get(k)]
        if differ:
            raise ExportInputError(f"shard parts disagree on {differ}: {parts[0].path} vs {part.path} "
                                   f"(a model or input changed between shards; rerun the shards)")
        mine = shard_users(active, part.shard, part.num_shards)
        if part.manifest.get("users") != len(mine) or part.manifest.get("users_sha256") != users_digest(mine):
            raise ExportInputError(f"{part.path} was generated for {part.manifest.get('users')} users, but shard "
                                   f"{part.shard} of {part.num_shards} of today's {len(active)} active users has "
                                   f"{len(mine)} (other users or inputs; rerun the shards)")
    return first



def merged_parts(cfg: dict, root: str | Path, table: str, ds: str, run_id: str, num_shards: int,
                 same: Sequence[str], min_coverage: float | None = None):
    """The publish step's inputs: ``(export config, parts, active users, first part's manifest)``
    — the run's ``num_shards`` complete parts (:func:`read_parts`), checked to belong together
    and to cover the day's active users (:func:`check_parts`)."""
    ex = ExportConfig.from_config(cfg, min_coverage=min_coverage)
    parts = read_parts(root, table, ds, run_id, num_shards)
    active = load_active(root, ds, ex)
    return ex, parts, active, check_parts(parts, active, same)

def sum_counts(parts: Sequence[Part]) -> dict:
    """The parts' ``counts`` added up key by key."""
    out: dict = {}
    for part in parts:
        for key, value in (part.manifest.get("counts") or {}).items():
            out[key] = out.get(key, 0) + value
    return out


def shard_summary(parts: Sequence[Part]) -> dict:
    """What the published manifest records of its parts."""
    return {"count": len(parts), "parts": [
        {"shard": p.shard, "users": p.manifest.get("users"), "rows": p.manifest.get("rows"),
         "seconds": p.manifest.get("generation_seconds")} for p in parts]}


def _remove_tree(path: Path) -> None:
    hidden = path.parent / f".del-{path.name}-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to (not including) ``stop`` while they are empty."""
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _newest_mtime(path: Path) -> float:
    times = [path.stat().st_mtime]
    for child in path.iterdir():
        try:
            times.append(child.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def clean_staging(root: str | Path, table: str | None = None, older_than_s: float = STALE_STAGING_S,
                  keep: Path | None = None) -> list[Path]:
    """Remove staging run folders (``_staging/<table>/ds=*/<run>``, every table when ``table`` is
    None) whose newest entry is older than ``older_than_s`` seconds (0: all), except ``keep``.
    Returns the removed folders."""
    base = table_path(root, AREA, STAGING)
    tables = [base / table] if table else (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    now, removed = time.time(), []
    for tdir in tables:
        for ds_dir in sorted(tdir.glob("ds=*")) if tdir.is_dir() else []:
            for run in sorted(p for p in ds_dir.iterdir() if p.is_dir() and not p.name.startswith(".del-")):
                if keep is not None and run == keep:
                    continue
                try:
                    if older_than_s > 0 and now - _newest_mtime(run) < older_than_s:
                        continue
                except FileNotFoundError:
                    continue
                _remove_tree(run)
                removed.append(run)
            _prune_empty(ds_dir, base.parent)
    if removed:
        logger.info("removed %d staging run folders: %s", len(removed), [str(p) for p in removed])
    return removed


def remove_staging(root: str | Path, table: str, ds: str, run_id: str) -> list[Path]:
    """After a publish: remove the run's staging folder (and empty parents), and the table's
    staging run folders of other runs untouched for :data:`STALE_STAGING_S`."""
    run = staging_dir(root, table, ds, run_id)
    removed = []
    if run.exists():
        _remove_tree(run)
        removed.append(run)
    removed += clean_staging(root, table, STALE_STAGING_S)
    _prune_empty(run.parent, table_path(root, AREA, STAGING).parent)
    return removed
