"""Adapter: Best Buy mobile search log (Kaggle ACM SF hackathon, Xbox 360 games) -> raw contract.

Input (``--src``, default ``../shared/datasets/bestbuy_search``): ``clicks.csv``
(``user,sku,category,query,click_time,query_time``), ``queries_without_click.csv`` (same without
``sku``) and ``products.csv``. Read as UTF-8 text; every cell is stripped.

Mapping rules
-------------
* **Times** are ``YYYY-MM-DD HH:MM:SS.fff`` in UTC; the fraction is optional (61 cells of the
  real data have none). Anything else is *unparseable*: counted and logged per file and column,
  never dropped; the event keeps a null ``event_time`` so ``jobs.validate`` quarantines it
  (``null_event_time``), and is written to the partition of its partner time (a search: the
  click_time of its first row; a click: its query_time), else to the first event date.
* **Searches**: one ``event_type='search'`` row per distinct search key ``(user, query_time,
  stripped query)`` over both files (a search that led to several clicks is several rows, even
  across the two files); the key uses the parsed time (the raw string when unparseable).
  ``event_time`` = query_time, ``query`` = the raw query text stripped (no other normalisation:
  typos and casing are the signal), ``scene='search'``, ``item_id`` null.
* **Clicks**: one ``event_type='click'`` row per ``clicks.csv`` row (exact duplicate rows
  included), ``item_id`` = sku, ``event_time`` = click_time, ``scene='search'``, ``query`` null.
  ``queries_without_click.csv`` rows give only their search (the clicked sku was withheld).
* **request_id**: ``"bb-"`` + 20 hex of sha1 over the search key, shared by the search and all
  its clicks (so a click can be joined to the query that led to it).
* **Items** (snapshot at the first event date): ``products.csv`` deduplicated on sku (each sku is
  listed twice; first copy kept): ``item_id`` = sku, ``title`` = name (lower-cased, token-sorted
  by the source, kept as is), ``brand`` = manufacturer, ``leaf_category`` = genre (whitespace runs
  collapsed; the ``category`` column of the logs is one id, ``abcat0701002``, for every row, so it
  is not used), ``category_path`` = ``"Xbox 360 > <genre>"``. Products without a genre get
  ``category_path`` = ``leaf_category`` = ``"Xbox 360"``. Skus clicked but absent from
  ``products.csv`` are added with ``title``/``brand`` null and the ``"Xbox 360"`` category (all
  logged rows are that category). ``tags``, ``price`` (not in the data), ``image_embedding`` null.
* **Users** (snapshot at the first event date): every user of either log; profile columns null.
* No hintq exposures, no query impressions (not written).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import pandas as pd

from common.logging_setup import setup_logging
from sources import public_common as pcm

logger = logging.getLogger(__name__)

DATASET = "bestbuy_search"
CLICKS = "clicks.csv"
NO_CLICK = "queries_without_click.csv"
PRODUCTS = "products.csv"
ROOT_CATEGORY = "Xbox 360"
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    return df.apply(lambda col: col.str.strip())


def parse_times(values: pd.Series) -> pd.Series:
    """UTC timestamps (NaT where no accepted format matches)."""
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    for fmt in TIME_FORMATS:
        todo = out.isna()
        if not todo.any():
            break
        parsed = pd.to_datetime(values[todo], format=fmt, errors="coerce", utc=True)
        out[todo] = parsed.astype("datetime64[us, UTC]")
    return out


def _ts(value) -> dt.datetime | None:
    return None if pd.isna(value) else value.to_pydatetime()


def _parse_columns(df: pd.DataFrame, name: str) -> None:
    """Add parsed ``*_ts`` columns; log the unparseable cells."""
    for col in ("query_time", "click_time"):
        df[f"{col}_ts"] = parse_times(df[col])
        bad = df[f"{col}_ts"].isna()
        if bad.any():
            logger.warning(
                "%s: %d unparseable %s values (e.g. %s)",
                name,
                int(bad.sum()),
                col,
                df.loc[bad, col].head(3).tolist(),
            )


def build_events(clicks: pd.DataFrame, no_click: pd.DataFrame) -> tuple[list[dict], int]:
    """Behavior-event rows (with ``__ds``) and how many of them have a null event_time."""
    _parse_columns(clicks, CLICKS)
    _parse_columns(no_click, NO_CLICK)
    frames = []
    for df in (clicks, no_click):
        key_time = df["query_time_ts"].map(lambda t: None if pd.isna(t) else t.isoformat())
        df["key_time"] = key_time.where(key_time.notna(), df["query_time"])
        df["request_id"] = [
            pcm.stable_id("bb-", u, t, q)
            for u, t, q in zip(df["user"], df["key_time"], df["query"], strict=True)
        ]
        frames.append(df[["user", "query", "query_time_ts", "click_time_ts", "request_id"]])
    searches = pd.concat(frames, ignore_index=True).drop_duplicates("request_id", keep="first")
    known = pd.concat([clicks["query_time_ts"], clicks["click_time_ts"], no_click["query_time_ts"]]).dropna()
    first_ds = pcm.ds_of(known.min().to_pydatetime()) if len(known) else None

    def ds_for(primary, partner) -> str:
        for t in (primary, partner):
            if not pd.isna(t):
                return pcm.ds_of(t.to_pydatetime())
        if first_ds is None:
            raise ValueError("no parseable time in the whole log: cannot place events")
        return first_ds

    rows = []
    for s in searches.itertuples(index=False):
        rows.append(
            {
                "user_id": s.user or None,
                "event_time": _ts(s.query_time_ts),
                "event_type": "search",
                "query": s.query or None,
                "item_id": None,
                "scene": "search",
                "request_id": s.request_id,
                pcm.DS_COLUMN: ds_for(s.query_time_ts, s.click_time_ts),
            }
        )
    for c in clicks.itertuples(index=False):
        rows.append(
            {
                "user_id": c.user or None,
                "event_time": _ts(c.click_time_ts),
                "event_type": "click",
                "query": None,
                "item_id": c.sku or None,
                "scene": "search",
                "request_id": c.request_id,
                pcm.DS_COLUMN: ds_for(c.click_time_ts, c.query_time_ts),
            }
        )
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    rows.sort(
        key=lambda r: (
            r[pcm.DS_COLUMN],
            r["user_id"] or "",
            r["event_time"] or far,
            r["event_type"] != "search",
            r["request_id"],
        )
    )
    logger.info("%d searches, %d clicks", len(searches), len(clicks))
    null_time = sum(r["event_time"] is None for r in rows)
    if null_time:
        logger.warning("%d events written with a null event_time (jobs.validate quarantines them)", null_time)
    return rows, null_time


def build_items(products: pd.DataFrame, clicked_skus: set[str]) -> list[dict]:
    products = products[products["sku"] != ""].drop_duplicates("sku", keep="first")
    rows = []
    for p in products.itertuples(index=False):
        genre = " ".join(p.genre.split()) or None
        rows.append(
            {
                "item_id": p.sku,
                "title": p.name or None,
                "category_path": f"{ROOT_CATEGORY} > {genre}" if genre else ROOT_CATEGORY,
                "leaf_category": genre or ROOT_CATEGORY,
                "brand": p.manufacturer or None,
            }
        )
    missing = sorted(clicked_skus - set(products["sku"]))
    if missing:
        logger.info("%d clicked skus are not in %s: added with null title", len(missing), PRODUCTS)
    rows += [
        {"item_id": sku, "category_path": ROOT_CATEGORY, "leaf_category": ROOT_CATEGORY} for sku in missing
    ]
    return rows


def convert(src_dir: str | Path, data_root: str | Path) -> dict[str, dict[str, int]]:
    """Write raw behavior_events, items and users; returns ``{table: {ds: rows}}``."""
    src = Path(src_dir)
    clicks = read_csv(src / CLICKS)
    no_click = read_csv(src / NO_CLICK)
    logger.info("%s: %d rows, %s: %d rows", CLICKS, len(clicks), NO_CLICK, len(no_click))
    rows, null_time = build_events(clicks, no_click)
    manifest = {"source": DATASET, "src": str(src), "events_with_null_time": null_time}
    events = pcm.event_table("behavior_events", rows)
    counts = {"behavior_events": pcm.write_event_table(data_root, "behavior_events", events, manifest)}
    if not counts["behavior_events"]:
        return counts
    first_ds = min(counts["behavior_events"])
    products_path = src / PRODUCTS
    products = (
        read_csv(products_path)
        if products_path.is_file()
        else pd.DataFrame(columns=["sku", "name", "manufacturer", "genre"])
    )
    items = build_items(products, {s for s in clicks["sku"] if s})
    users = sorted({u for u in pd.concat([clicks["user"], no_click["user"]]) if u})
    counts["items"] = pcm.write_snapshot_table(data_root, "items", first_ds, items, manifest)
    counts["users"] = pcm.write_snapshot_table(
        data_root, "users", first_ds, [{"user_id": u} for u in users], manifest
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = pcm.arg_parser(__doc__.splitlines()[0], DATASET).parse_args(argv)
    src, data_root = pcm.resolve_paths(args, DATASET)
    counts = convert(src, data_root)
    logger.info("done: %s", {t: sum(c.values()) for t, c in counts.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
