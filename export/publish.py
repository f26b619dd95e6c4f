"""Publishing export partitions: content hashes, retention, the fault hooks of the tests, and the
entry points' frame (arguments, shard modes, exit statuses).

Tables are written through :mod:`export.staging` (:class:`export.staging.StagedTable`, or the
shard parts of the DAG's mapped tasks, merged by the publish step) and published by the batch's
``commit`` (:mod:`common.publish`); :func:`apply_retention` then deletes the oldest partitions.
``python -m export.publish clean-staging [--data-root R] [--older-than-hours H]`` removes stale
shard staging folders by hand (:func:`export.staging.clean_staging`).
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

from common.config import load_config
from common.device import configure as configure_device
from common.hf_offline import quiet_offline_hf
from common.logging_setup import setup_logging
from common.paths import check_ds, partition_path, published_ds
from common.registry import RegistryError
from common.steps import emit_result
from export.data import ExportInputError
from export.gates import GateFailed
from export.staging import AREA, STALE_STAGING_S, clean_staging

logger = logging.getLogger(__name__)

#: Exit statuses of the entry points (the DAG fails these without retrying).
EXIT_GATE = 3
EXIT_INPUT = 4
#: Test hook: after writing batch N (0-based) of any export, sleep (``EXPORT_FAULT_ACTION=sleep``,
#: ``EXPORT_FAULT_SLEEP_S`` seconds, default 600) or SIGKILL the process (``kill``, the default).
FAULT_ENV = "EXPORT_FAULT_AFTER_BATCH"
#: Test hook of the sharded path: ``EXPORT_FAIL_SHARD=u2q:1`` (comma-separated ``<table>:<shard>``
#: pairs) makes that shard raise after writing its first batch (exit 1: Airflow retries that
#: mapped task instance, which fails again while the variable is set). Nothing else reads it.
FAIL_SHARD_ENV = "EXPORT_FAIL_SHARD"


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


def shard_fault_hook(table: str, shard: int) -> None:
    """The test hook of :data:`FAIL_SHARD_ENV` (does nothing unless it names ``table:shard``)."""
    wanted = {x.strip() for x in os.environ.get(FAIL_SHARD_ENV, "").split(",") if x.strip()}
    if f"{table}:{shard}" in wanted:
        logger.warning("fault injection: %s=%s fails %s shard %d", FAIL_SHARD_ENV, os.environ[FAIL_SHARD_ENV],
                       table, shard)
        raise RuntimeError(f"injected failure of {table} shard {shard} ({FAIL_SHARD_ENV})")


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


def add_shard_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sharded path: ``--shard I --num-shards N --stage-only`` writes shard I's part,
    ``--publish-parts --num-shards N`` merges the N parts, gates and publishes."""
    group = parser.add_argument_group("shards (nightly_export's mapped tasks)")
    group.add_argument("--shard", type=int, default=None, help="this shard (0-based; with --num-shards, --stage-only)")
    group.add_argument("--num-shards", type=int, default=None, help="users split by crc32(user_id) mod N")
    group.add_argument("--stage-only", action="store_true",
                       help="write this shard's part under exports/_staging/ (no gates, no publish)")
    group.add_argument("--publish-parts", action="store_true",
                       help="merge the run's N complete parts, run the gates on the whole table, publish")
    return parser


def shard_mode(args, parser: argparse.ArgumentParser) -> str:
    """``"all"`` (no shard arguments: the single-process path), ``"stage"`` or ``"publish"``;
    inconsistent arguments exit 2 through ``parser.error``."""
    if args.shard is None and args.num_shards is None and not args.stage_only and not args.publish_parts:
        return "all"
    if args.num_shards is None or args.num_shards < 1:
        parser.error("--num-shards N (>= 1) is required with --shard, --stage-only or --publish-parts")
    if args.stage_only == args.publish_parts:
        parser.error("give exactly one of --stage-only (with --shard) and --publish-parts")
    if args.stage_only and (args.shard is None or not 0 <= args.shard < args.num_shards):
        parser.error(f"--stage-only needs --shard in [0, {args.num_shards})")
    if args.publish_parts and args.shard is not None:
        parser.error("--publish-parts merges every shard: no --shard")
    return "stage" if args.stage_only else "publish"


def settings(args) -> tuple[dict, str, str, str]:
    """``(config, data root, ds, run id)`` from parsed arguments."""
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
    setup_logging()
    quiet_offline_hf()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = body(args)
    except GateFailed as exc:
        logger.error("%s: %s (nothing published)", name, exc)
        emit_result({"error": "gate", "table": exc.table, "failures": exc.failures})
        return EXIT_GATE
    except (ExportInputError, RegistryError) as exc:
        logger.error("%s: %s (nothing published)", name, exc)
        emit_result({"error": "input", "message": str(exc)})
        return EXIT_INPUT
    result["seconds"] = round(time.perf_counter() - t0, 2)
    emit_result(result)
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m export.publish clean-staging [--data-root R] [--older-than-hours H] [--table T]``."""
    parser = argparse.ArgumentParser(description="export staging maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("clean-staging", help="remove shard staging run folders (exports/_staging/)")
    clean.add_argument("--config", default=None)
    clean.add_argument("--profile", default=None)
    clean.add_argument("--data-root", default=None)
    clean.add_argument("--table", default=None, help="only this table (default: all)")
    clean.add_argument("--older-than-hours", type=float, default=STALE_STAGING_S / 3600,
                       help="only run folders untouched this long (0: all; default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    root = str(Path(args.data_root).resolve()) if args.data_root else load_config(args.config, args.profile)["data_root"]
    removed = clean_staging(root, args.table, args.older_than_hours * 3600)
    emit_result({"removed": [str(p) for p in removed]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
