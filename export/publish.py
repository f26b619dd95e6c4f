"""Staged, atomic publishing of export partitions, retention, content hashes, and the CLI frame.

A :class:`StagedTable` is a hidden ``.tmp-ds=<ds>-*`` sibling of the final partition, staged
through a :class:`common.publish.PartitionBatch`; batches are appended as
``part-<n>.parquet`` files (memory stays bounded by one batch). The batch's ``commit`` renames
every staged table into place and writes ``_manifest.json`` and ``_SUCCESS``; an exception
(a failed gate included) inside ``common.publish.staged_partitions`` removes the staging
folders, and a killed process leaves only hidden folders that the next run's ``stage`` deletes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.paths import partition_path, published_ds

logger = logging.getLogger(__name__)

AREA = "exports"
#: Exit statuses of the entry points (the DAG fails these without retrying).
EXIT_GATE = 3
EXIT_INPUT = 4
#: Test hook: after writing batch N (0-based) of any export, sleep (``EXPORT_FAULT_ACTION=sleep``,
#: ``EXPORT_FAULT_SLEEP_S`` seconds, default 600) or SIGKILL the process (``kill``, the default).
FAULT_ENV = "EXPORT_FAULT_AFTER_BATCH"


class StagedTable:
    """One export table being written for one ds."""

    def __init__(self, batch, root: str | Path, table: str, ds: str, manifest: dict | None = None):
        from common.schemas import arrow_schema

        self.table = table
        self.schema = arrow_schema(table)
        self.final = partition_path(root, AREA, table, ds)
        self.manifest = {} if manifest is None else manifest  # the caller may keep updating it
        self.manifest.update(table=table, ds=ds)
        self.tmp = batch.stage(self.final, self.manifest)
        self.rows = 0
        self._parts = 0

    def write(self, data: pa.Table | list[dict]) -> int:
        """Append one batch (cast to the table's schema) as its own Parquet file."""
        tbl = data.select(self.schema.names).cast(self.schema) if isinstance(data, pa.Table) \
            else pa.Table.from_pylist(list(data), schema=self.schema)
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


def content_hash(table: pa.Table, sort_keys: Sequence[str], exclude: Sequence[str] = ("run_id",)) -> str:
    """sha256 of the rows sorted by ``sort_keys`` (``run_id`` excluded: it names the producing run,
    not the content), so two runs that wrote the same lists hash the same."""
    cols = [c for c in table.column_names if c not in exclude]
    rows = table.select(cols).sort_by([(k, "ascending") for k in sort_keys]).to_pylist() if table.num_rows else []
    digest = hashlib.sha256()
    digest.update(json.dumps(cols).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def apply_retention(root: str | Path, table: str, keep: int, protect: str | None = None) -> list[str]:
    """Delete published partitions older than the ``keep`` newest (0 keeps all); ``protect`` (the
    ds just written) is never deleted. Returns the deleted dates."""
    if keep <= 0:
        return []
    dates = published_ds(root, AREA, table)
    doomed = [d for d in dates[: max(len(dates) - keep, 0)] if d != protect]
    for d in doomed:
        path = partition_path(root, AREA, table, d)
        # Unpublish first (readers ignore it at once), hide it, then delete it.
        (path / "_SUCCESS").unlink(missing_ok=True)
        hidden = path.parent / f".del-{path.name}-{uuid.uuid4().hex[:12]}"
        os.rename(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    if doomed:
        logger.info("retention: deleted %s partitions %s (keeping the %d newest)", table, doomed, keep)
    return doomed


def fault_hook(batch_index: int) -> None:
    """The test hook of :data:`FAULT_ENV` (does nothing unless the variable is set)."""
    at = os.environ.get(FAULT_ENV)
    if at is None or int(at) != batch_index:
        return
    action = os.environ.get("EXPORT_FAULT_ACTION", "kill")
    logger.warning("fault injection after batch %d: %s", batch_index, action)
    if action == "sleep":
        time.sleep(float(os.environ.get("EXPORT_FAULT_SLEEP_S", "600")))
    else:
        os.kill(os.getpid(), signal.SIGKILL)


# --- entry-point frame -------------------------------------------------------------------------
def arg_parser(description: str, coverage: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", required=True, help="logical date (YYYY-MM-DD)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--run-id", default=None, help="run id written into the rows (default export-<ds>)")
    parser.add_argument("--batch-users", type=int, default=None, help="override export.batch_users")
    if coverage:
        parser.add_argument("--min-coverage", type=float, default=None, help="override export.min_coverage")
    return parser


def settings(args) -> tuple[dict, str, str, str]:
    """``(config, data root, ds, run id)`` from parsed arguments."""
    from common.config import load_config
    from common.device import configure as configure_device
    from common.paths import check_ds

    cfg = load_config(args.config, args.profile)
    configure_device(cfg)
    root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    ds = check_ds(args.ds)
    return cfg, root, ds, args.run_id or f"export-{ds}"


def run_main(name: str, body: Callable[[argparse.Namespace], dict], parser: argparse.ArgumentParser,
             argv: list[str] | None) -> int:
    """Parse, run ``body``, print its result as one JSON line; map failures to exit statuses:
    :data:`EXIT_GATE` (a gate failed), :data:`EXIT_INPUT` (model, index or input missing or
    corrupt), 2 (bad arguments, from argparse). Nothing is published on any of them."""
    from base_lm.pretrain import quiet_offline_hf
    from common.logging_setup import setup_logging
    from common.registry import RegistryError
    from export.data import ExportInputError
    from export.gates import GateFailed

    setup_logging()
    quiet_offline_hf()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = body(args)
    except GateFailed as exc:
        logger.error("%s: %s (nothing published)", name, exc)
        print(json.dumps({"error": "gate", "table": exc.table, "failures": exc.failures}, sort_keys=True))
        return EXIT_GATE
    except (ExportInputError, RegistryError) as exc:
        logger.error("%s: %s (nothing published)", name, exc)
        print(json.dumps({"error": "input", "message": str(exc)}, sort_keys=True))
        return EXIT_INPUT
    result["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result, sort_keys=True, default=str))
    sys.stdout.flush()
    return 0
