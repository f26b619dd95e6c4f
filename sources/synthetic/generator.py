"""Synthetic Taobao-like logs that follow the raw contract (``common.schemas``).

Writes the raw partitions (``items`` and ``users`` once, then per day ``behavior_events``,
``hintq_exposures``, ``query_impressions``, ``item_impressions`` and ``true_interests``) through
``common.publish.atomic_partition``, shard by shard; the generative model is described in the
``sources.synthetic`` package docstring.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from common import schemas
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import check_ds, ds_range, partition_path
from common.publish import atomic_partition
from sources.synthetic.day import generate_shard_day
from sources.synthetic.sampling import PURPOSE_BAD_ROWS, seeded_rng
from sources.synthetic.users import drift_interests, make_user_shard
from sources.synthetic.world import build_catalog
from sources.synthetic.writer import PartitionWriter

logger = logging.getLogger(__name__)

GENERATOR = "sources.synthetic"
GENERATOR_VERSION = 1
SHARD_TARGET_EVENTS = 200_000

#: Defects ``inject_bad_rows`` cycles through, named after the quarantine reason they trigger.
BAD_ROW_KINDS = (
    "null_user_id", "search_without_query", "unknown_event_type", "event_time_outside_partition", "duplicate",
)


def inject_bad_rows(events: pa.Table, rate: float, rng: np.random.Generator) -> pa.Table:
    """Corrupt about ``rate`` of the rows (for demos and quarantine drills; off by default).

    Chosen rows get one defect each, cycling through ``BAD_ROW_KINDS``; a ``duplicate`` keeps the
    original and adds an exact copy, the other kinds replace the original row.
    """
    n = events.num_rows
    k = int(rng.binomial(n, rate)) if n and rate > 0 else 0
    if k == 0:
        return events
    picked = np.sort(rng.choice(n, size=k, replace=False))
    rows = events.take(picked).to_pylist()
    replaced = np.zeros(n, dtype=bool)
    for j, row in enumerate(rows):
        kind = BAD_ROW_KINDS[j % len(BAD_ROW_KINDS)]
        if kind == "null_user_id":
            row["user_id"] = None
        elif kind == "search_without_query":
            row.update(event_type="search", query=None, item_id=None)
        elif kind == "unknown_event_type":
            row["event_type"] = "teleport"
        elif kind == "event_time_outside_partition":
            row["event_time"] = row["event_time"] + dt.timedelta(days=1)
        if kind != "duplicate":
            replaced[picked[j]] = True
    return pa.concat_tables([events.filter(pa.array(~replaced)), pa.Table.from_pylist(rows, schema=events.schema)])

DAY_TABLES = ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "true_interests")


def _shard_users(events_per_user_day: float) -> int:
    return int(np.clip(SHARD_TARGET_EVENTS // max(events_per_user_day, 1.0), 256, 8192))


def generate(
    data_root: str | Path,
    start_ds: str,
    days: int,
    n_users: int,
    n_items: int,
    events_per_user_day: float,
    seed: int,
    image_dim: int = 16,
    chunk_rows: int = 500_000,
    *,
    only_ds: list[str] | None = None,
    bad_row_rate: float = 0.0,
) -> dict[str, dict[str, int]]:
    """Write the raw partitions for ``days`` days from ``start_ds``; return rows per table per ds.

    ``only_ds`` writes just those dates (and the snapshots), replaying interest drift for the
    others, so a single day can be regenerated exactly. ``bad_row_rate`` > 0 corrupts that share
    of behaviour events (``inject_bad_rows``) so the ETL's quarantine has something to catch.
    """
    check_ds(start_ds)
    if days < 1 or n_users < 1 or n_items < 1 or events_per_user_day < 0 or image_dim < 1:
        raise ValueError("days, n_users, n_items and image_dim must be >= 1; events_per_user_day >= 0")
    all_days = ds_range(start_ds, days)
    wanted = set(all_days if only_ds is None else only_ds)
    if not wanted <= set(all_days):
        raise ValueError(f"only_ds {sorted(wanted - set(all_days))} outside {start_ds} + {days} days")
    params = {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "start_ds": start_ds, "days": days,
        "n_users": n_users, "n_items": n_items, "events_per_user_day": events_per_user_day,
        "image_dim": image_dim, "bad_row_rate": bad_row_rate,
    }
    counts: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    catalog = build_catalog(n_items, seed, image_dim)
    per_shard = _shard_users(events_per_user_day)
    shards = [
        make_user_shard(catalog, seed, i, first, min(per_shard, n_users - first), n_users)
        for i, first in enumerate(range(0, n_users, per_shard))
    ]
    for table, rows in (("items", [catalog.items_table]), ("users", [s.table for s in shards])):
        _write_partition(data_root, table, start_ds, rows, chunk_rows, params, counts)
    for shard in shards:
        shard.table = None

    for day_index, ds in enumerate(all_days):
        ordinal = dt.date.fromisoformat(ds).toordinal()
        if day_index > 0:
            for shard in shards:
                drift_interests(shard, catalog, seed, ordinal)
        if ds not in wanted:
            continue
        t_day = time.perf_counter()
        manifests = {t: {"table": t, "ds": ds, "params": params} for t in DAY_TABLES}
        with contextlib.ExitStack() as stack:
            writers = {}
            for t in DAY_TABLES:
                tmp = stack.enter_context(atomic_partition(partition_path(data_root, "raw", t, ds), manifests[t]))
                writers[t] = PartitionWriter(tmp, schemas.arrow_schema(t), chunk_rows)
            for shard in shards:
                tables = generate_shard_day(catalog, shard, ds, seed, events_per_user_day)
                if bad_row_rate > 0:
                    rng = seeded_rng(seed, PURPOSE_BAD_ROWS, ordinal, shard.index)
                    tables["behavior_events"] = inject_bad_rows(tables["behavior_events"], bad_row_rate, rng)
                for t, tbl in tables.items():
                    writers[t].write(tbl)
                logger.debug("%s shard %d: %d events", ds, shard.index, tables["behavior_events"].num_rows)
            for t, writer in writers.items():
                writer.close()
                manifests[t].update(rows=writer.rows, files=writer.files)
                counts.setdefault(t, {})[ds] = writer.rows
        logger.info(
            "%s: %d events, %d exposures, %d query impressions, %d item impressions in %.1fs", ds,
            counts["behavior_events"][ds], counts["hintq_exposures"][ds], counts["query_impressions"][ds],
            counts["item_impressions"][ds], time.perf_counter() - t_day,
        )
    total = sum(counts.get("behavior_events", {}).values())
    logger.info("generated %d events for %d users over %d day(s) in %.1fs", total, n_users, len(wanted),
                time.perf_counter() - t0)
    return counts


def _write_partition(data_root, table: str, ds: str, tables: list[pa.Table], chunk_rows: int, params: dict,
                     counts: dict) -> None:
    manifest = {"table": table, "ds": ds, "params": params}
    with atomic_partition(partition_path(data_root, "raw", table, ds), manifest) as tmp:
        writer = PartitionWriter(tmp, schemas.arrow_schema(table), chunk_rows)
        for t in tables:
            writer.write(t)
        writer.close()
        manifest.update(rows=writer.rows, files=writer.files)
    counts.setdefault(table, {})[ds] = writer.rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(prog="python -m sources.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline YAML (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--start-ds", default=None)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--events-per-user-day", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--image-dim", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=None)
    parser.add_argument("--only-ds", action="append", default=None, help="regenerate only this date (repeatable)")
    parser.add_argument("--bad-row-rate", type=float, default=0.0,
                        help="share of behaviour events to corrupt for quarantine drills (default 0)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.profile)
    syn = cfg["synthetic"]

    def pick(value, key):
        return syn[key] if value is None else value

    counts = generate(
        data_root=args.data_root or cfg["data_root"],
        start_ds=str(pick(args.start_ds, "start_ds")),
        days=int(pick(args.days, "days")),
        n_users=int(pick(args.users, "n_users")),
        n_items=int(pick(args.items, "n_items")),
        events_per_user_day=float(pick(args.events_per_user_day, "events_per_user_day")),
        seed=int(pick(args.seed, "seed")),
        image_dim=int(pick(args.image_dim, "image_dim")),
        chunk_rows=int(pick(args.chunk_rows, "chunk_rows")),
        only_ds=args.only_ds,
        bad_row_rate=args.bad_row_rate,
    )
    logger.info("rows per table: %s", {t: sum(v.values()) for t, v in counts.items()})
    return counts

