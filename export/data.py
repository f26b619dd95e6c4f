"""Export inputs: settings, active users, profiles, and per-user histories built in pandas.

Histories follow ``jobs/build_samples.py`` exactly, so prompts and KARMA inputs look like the
training samples: behaviours are the clean ``search | click | cart | buy`` events of ``ds`` and
the ``samples.lookback_days`` days before it; a behaviour's text is the query (search) or the
item title, else its id (item events); its category the item's leaf category; a user's events
are ordered by time, then event type (``search, view, click, cart, buy, exit``), query, item
id and request id; the history of an anchor is the last ``history_len`` behaviours strictly
before the anchor time, oldest first, each with its ``time_bucket`` relative to the anchor.
The export's anchor is the end of ``ds`` (midnight UTC of the next day).

Shards (``runtime.export_shards``, the DAG's mapped u2q / u2i tasks): user ``u`` belongs to shard
``zlib.crc32(utf-8 u) mod N`` (:func:`shard_of`), a pure function of the id, so the split does not
depend on row order, the day's other users or the machine; :func:`shard_users` keeps the order of
its input (the sorted active users), and a shard builds histories from its own users' events only
(a history depends on its user's events alone, so the rows are those of an unsharded run).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from common.arrow_io import read_partition
from common.paths import is_published, latest_published_ds, partition_path, previous_ds
from common.schemas import arrow_schema

logger = logging.getLogger(__name__)

BEHAVIOUR_TYPES = ("search", "click", "cart", "buy")
EVENT_ORDER = {name: i for i, name in enumerate(("search", "view", "click", "cart", "buy", "exit"))}
PROFILE_FIELDS = ("gender", "age_bucket", "city", "purchase_level")
_DAY_S = 86400


class ExportInputError(RuntimeError):
    """A model, index or input partition the export needs is missing or unreadable."""


@dataclass
class ExportConfig:
    """``export:`` in conf/pipeline.yaml."""

    window_days: int = 1
    max_history: int = 20
    batch_users: int = 256
    u2q_k: int = 10
    u2q_keep_runs: int = 3
    keep_partitions: int = 7
    x2q_k: int = 10
    x2q_alpha: float = 0.7
    x2q_ctr_weight: float = 0.5
    x2q_overlap_weight: float = 0.5
    x2q_min_support: int = 1
    u2i_k: int = 50
    min_coverage: float = 0.99
    max_null_rate: float = 0.0
    min_list_len: int = 1
    blocklist: list[str] = field(default_factory=list)
    generate: dict = field(default_factory=dict)
    lookback_days: int = 7  # from samples.lookback_days

    def __post_init__(self):
        ints = ("window_days", "max_history", "batch_users", "u2q_k", "u2q_keep_runs", "x2q_k", "u2i_k")
        bad = [n for n in ints if int(getattr(self, n)) < 1]
        if bad:
            raise ValueError(f"export settings must be >= 1: {bad}")
        for name in ("x2q_alpha", "x2q_ctr_weight", "x2q_overlap_weight", "min_coverage", "max_null_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"export.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.keep_partitions < 0 or self.min_list_len < 0 or self.lookback_days < 0:
            raise ValueError("keep_partitions, min_list_len and lookback_days must be >= 0")

    @classmethod
    def from_config(cls, cfg: Mapping, **overrides) -> ExportConfig:
        section = dict(cfg.get("export") or {})
        section.setdefault("lookback_days", int((cfg.get("samples") or {}).get("lookback_days", 7)))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(section) - names
        if unknown:
            raise ValueError(f"unknown export settings: {sorted(unknown)}")
        section.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**section)


def anchor_time(ds: str) -> dt.datetime:
    """The end of ``ds`` (midnight UTC of the next day): histories are taken before it, and it is
    the export rows' ``generated_at`` (the data cut-off, not the wall clock, so reruns repeat)."""
    return dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


# --- shards ---------------------------------------------------------------------------------------
def check_shard(shard: int, num_shards: int) -> tuple[int, int]:
    """``(shard, num_shards)`` validated: ``num_shards >= 1`` and ``0 <= shard < num_shards``."""
    if int(num_shards) < 1 or not 0 <= int(shard) < int(num_shards):
        raise ValueError(f"shard must be in [0, num_shards) with num_shards >= 1, got {shard} of {num_shards}")
    return int(shard), int(num_shards)


def shard_of(user_id: str, num_shards: int) -> int:
    """The shard of a user: ``crc32(utf-8 id) mod num_shards`` (stable across processes and
    machines, unlike ``hash()``).

    >>> [shard_of("alice", n) for n in (1, 2, 3, 4)]
    [0, 1, 2, 3]
    """
    return zlib.crc32(str(user_id).encode("utf-8")) % int(num_shards)


def shard_users(users: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """The users of ``shard`` in their input order.

    >>> users = [f"u{i}" for i in range(10)]
    >>> parts = [shard_users(users, i, 3) for i in range(3)]
    >>> sorted(u for p in parts for u in p) == sorted(users), shard_users(users, 0, 1) == users
    (True, True)
    """
    shard, num_shards = check_shard(shard, num_shards)
    if num_shards == 1:
        return list(users)
    return [u for u in users if shard_of(u, num_shards) == shard]


def users_digest(users: Sequence[str]) -> str:
    """sha256 of the sorted user ids: a part manifest records the users it was generated for, and
    the publish step checks them against its own split of the day's active users."""
    digest = hashlib.sha256()
    for u in sorted(users):
        digest.update(str(u).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# --- reading --------------------------------------------------------------------------------------
def read_days(root: str | Path, area: str, table: str, ds_list: Sequence[str]):
    """The published partitions of ``ds_list`` as one pyarrow Table (None when none is published)."""
    schema = arrow_schema(table)
    parts = [
        read_partition(root, area, table, d, schema=schema)
        for d in ds_list
        if is_published(partition_path(root, area, table, d))
    ]
    return pa.concat_tables(parts) if parts else None


def read_snapshot(root: str | Path, table: str, ds: str):
    """``(newest clean snapshot at or before ds, its ds)``; ``(None, None)`` when there is none."""
    snap = latest_published_ds(root, "clean", table, ds)
    if snap is None:
        return None, None
    return read_partition(root, "clean", table, snap, schema=arrow_schema(table)), snap


def window_days(ds: str, days: int) -> list[str]:
    return [*previous_ds(ds, days - 1), ds] if days > 1 else [ds]


def active_users(events, ds: str, days: int) -> list[str]:
    """Sorted ids of the users with any clean behaviour event in the ``days`` days ending at ``ds``."""
    if events is None or events.num_rows == 0:
        return []
    start = anchor_time(ds) - dt.timedelta(days=days)
    t = events["event_time"]
    mask = pc.and_(pc.greater_equal(t, start), pc.less(t, anchor_time(ds)))
    users = pc.unique(pc.drop_null(events.filter(mask)["user_id"])).to_pylist()
    return sorted(users)


def profiles(users_table) -> dict[str, dict]:
    """``user_id -> {gender, age_bucket, city, purchase_level}`` (the last row of a duplicated id)."""
    if users_table is None:
        return {}
    cols = {f: users_table[f].to_pylist() for f in PROFILE_FIELDS if f in users_table.column_names}
    out = {}
    for i, uid in enumerate(users_table["user_id"].to_pylist()):
        if uid is not None:
            out[uid] = {f: cols[f][i] if f in cols else None for f in PROFILE_FIELDS}
    return out


# --- histories ------------------------------------------------------------------------------------
def time_bucket(seconds: float) -> str:
    """``jobs.build_samples.time_bucket`` for one age in seconds.

    >>> [time_bucket(s) for s in (0, 3600, 86399, 86400, 2 * 86400, 4 * 86400, 8 * 86400)]
    ['lt_1h', 'lt_1d', 'lt_1d', '1d_ago', '2_3d_ago', '4_7d_ago', 'gt_7d_ago']
    """
    if seconds < 3600:
        return "lt_1h"
    if seconds < _DAY_S:
        return "lt_1d"
    if seconds < 2 * _DAY_S:
        return "1d_ago"
    if seconds < 4 * _DAY_S:
        return "2_3d_ago"
    if seconds < 8 * _DAY_S:
        return "4_7d_ago"
    return "gt_7d_ago"


def _tie_key(event_type, query, item_id, request_id) -> str:
    """``jobs.build_samples._tie_key``: orders a user's same-instant behaviours deterministically."""
    rank = str(EVENT_ORDER.get(event_type, len(EVENT_ORDER)))
    return "\u0001".join((rank, query or "", item_id or "", request_id or ""))


class BehaviourLog:
    """A user's behaviours in time order, ready for :meth:`history` lookups.

    ``events``: clean ``behavior_events`` (pyarrow Table, pandas DataFrame or list of dicts);
    ``items``: the clean items snapshot (or None: texts fall back to item ids, no categories).
    """

    def __init__(self, events, items=None):
        df = _frame(events, ("user_id", "event_time", "event_type", "query", "item_id", "request_id"))
        df = df[df["event_type"].isin(BEHAVIOUR_TYPES) & df["user_id"].notna() & df["event_time"].notna()]
        cat = _frame(items, ("item_id", "title", "leaf_category")) if items is not None else None
        if cat is not None:
            cat = cat[cat["item_id"].notna()].drop_duplicates("item_id", keep="last").set_index("item_id")
            title = df["item_id"].map(cat["title"])
            category = df["item_id"].map(cat["leaf_category"])
        else:
            title = category = pd.Series([None] * len(df), index=df.index, dtype=object)
        is_search = df["event_type"] == "search"
        text = np.where(is_search, df["query"], title.where(title.notna(), df["item_id"]))
        ts = pd.to_datetime(df["event_time"], utc=True)
        frame = pd.DataFrame(
            {
                "user_id": df["user_id"].to_numpy(object),
                "t": ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64),
                "event_type": df["event_type"].to_numpy(object),
                "text": pd.Series(text, dtype=object).where(pd.notna(text), None).to_numpy(object),
                "item_id": df["item_id"].where(df["item_id"].notna(), None).to_numpy(object),
                "category": category.where(category.notna(), None).to_numpy(object),
                "_tie": [
                    _tie_key(e, q if isinstance(q, str) else None, i if isinstance(i, str) else None,
                             r if isinstance(r, str) else None)
                    for e, q, i, r in zip(df["event_type"], df["query"], df["item_id"], df["request_id"], strict=True)
                ],
            }
        )
        frame = frame.sort_values(["user_id", "t", "_tie"], kind="stable").reset_index(drop=True)
        self._t = frame["t"].to_numpy(np.int64)
        self._cols = {c: frame[c].to_numpy(object) for c in ("event_type", "text", "item_id", "category")}
        users = frame["user_id"].to_numpy(object)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([], int)
        ends = np.r_[starts[1:], len(users)] if len(users) else np.array([], int)
        self._slices = {users[a]: (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
        self.n_behaviours = len(frame)

    def history(self, user_id: str, anchor: dt.datetime, history_len: int) -> list[dict]:
        """The last ``history_len`` behaviours strictly before ``anchor``, oldest first, as
        ``HISTORY_ITEM`` dicts (``event_time``, ``event_type``, ``time_bucket``, ``text``,
        ``item_id``, ``category``)."""
        span = self._slices.get(user_id)
        if span is None or history_len <= 0:
            return []
        a, b = span
        anchor_us = _micros(anchor)
        stop = a + int(np.searchsorted(self._t[a:b], anchor_us, side="left"))
        start = max(a, stop - history_len)
        out = []
        for i in range(start, stop):
            t = int(self._t[i])
            out.append(
                {
                    "event_time": _EPOCH + dt.timedelta(microseconds=t),
                    "event_type": self._cols["event_type"][i],
                    "time_bucket": time_bucket((anchor_us - t) / 1_000_000),
                    "text": self._cols["text"][i],
                    "item_id": self._cols["item_id"][i],
                    "category": self._cols["category"][i],
                }
            )
        return out


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _frame(data, columns: Sequence[str]):
    if data is None:
        return pd.DataFrame({c: [] for c in columns})
    if hasattr(data, "select") and hasattr(data, "column_names"):  # pyarrow Table
        present = [c for c in columns if c in data.column_names]
        df = data.select(present).to_pandas()
    elif isinstance(data, pd.DataFrame):
        df = data.copy()
    else:
        df = pd.DataFrame(list(data))
    for c in columns:
        if c not in df.columns:
            df[c] = None
    return df


def build_samples(
    log: BehaviourLog, user_ids: Sequence[str], profile: Mapping[str, Mapping], ds: str, history_len: int
) -> list[dict]:
    """AIGQ prompt samples (the fields of an ``aigq_direct_sft`` row that prompts read) for the
    users at the end of ``ds``."""
    anchor = anchor_time(ds)
    out = []
    for uid in user_ids:
        p = profile.get(uid) or {}
        out.append(
            {
                "sample_id": uid,
                "user_id": uid,
                "event_time": anchor,
                **{f: p.get(f) for f in PROFILE_FIELDS},
                "history": log.history(uid, anchor, history_len),
            }
        )
    return out


@dataclass
class ExportInputs:
    """Everything the exporters read for one ds (events of the lookback window, once)."""

    ds: str
    events: object  # pyarrow Table of clean behavior_events over the lookback days
    log: BehaviourLog
    profile: dict
    active: list[str]
    items_ds: str | None
    users_ds: str | None
    event_days: list[str]
    active_total: int = -1  # active users of the whole day (``len(active)`` unless sharded)
    shard: tuple[int, int] | None = None  # (shard, num_shards) when the inputs are one shard's
    items: object = None  # the clean items snapshot (pyarrow Table) or None


def _require_events(root: str | Path, ds: str) -> None:
    if not is_published(partition_path(root, "clean", "behavior_events", ds)):
        raise ExportInputError(
            f"clean behavior_events not published for {ds}: {partition_path(root, 'clean', 'behavior_events', ds)}"
        )


def load_inputs(root: str | Path, ds: str, config: ExportConfig,
                shard: tuple[int, int] | None = None) -> ExportInputs:
    """Read the clean events of the lookback window (and the snapshots) for ``ds``.

    ``shard=(i, n)``: ``active`` holds shard ``i`` of ``n``'s active users only (in sorted order) and
    the behaviour log only their events; ``events`` stays the whole window (the popularity list
    is the day's, the same for every shard).
    Raises :class:`ExportInputError` when ``ds`` itself has no published clean events.
    """
    _require_events(root, ds)
    days = window_days(ds, max(config.lookback_days + 1, config.window_days))
    events = read_days(root, "clean", "behavior_events", days)
    items, items_ds = read_snapshot(root, "items", ds)
    users, users_ds = read_snapshot(root, "users", ds)
    active = active_users(events, ds, config.window_days)
    total = len(active)
    log_events = events
    if shard is not None:
        shard = check_shard(*shard)
        active = shard_users(active, *shard)
        if shard[1] > 1 and events is not None:
            log_events = events.filter(pc.is_in(events["user_id"], value_set=pa.array(active, pa.string())))
    log = BehaviourLog(log_events, items)
    logger.info("%d active users on %s (window %d days)%s, %d behaviours over %s..%s", len(active), ds,
                config.window_days, f", shard {shard[0]} of {shard[1]} ({total} in all)" if shard else "",
                log.n_behaviours, days[0], days[-1])
    return ExportInputs(ds, events, log, profiles(users), active, items_ds, users_ds, days, total, shard, items)


def load_active(root: str | Path, ds: str, config: ExportConfig) -> list[str]:
    """The sorted active users of ``ds`` (as :func:`load_inputs` finds them, without building the
    behaviour log): what the publish step of a sharded export gates coverage against."""
    _require_events(root, ds)
    days = window_days(ds, max(config.lookback_days + 1, config.window_days))  # as load_inputs
    events = read_days(root, "clean", "behavior_events", days)
    return active_users(events, ds, config.window_days)
