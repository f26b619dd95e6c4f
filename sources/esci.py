"""Adapter: Amazon Shopping Queries (ESCI) sample -> raw contract. Events are CONSTRUCTED.

Input (``--src``, default ``../shared/datasets/esci_sample``): ``esci_sample_50queries_485exact.csv``
(with ``query_id``) and ``esci_exact_matches_sample100.csv`` (no ``query_id``); both list
(query, exact-match product) pairs with product text. ESCI has no users, sessions or times:
the behaviour written here is constructed from relevance judgements, not observed.

Mapping rules
-------------
* **Pseudo-users**: one user per query. Queries of the first file are keyed by ``query_id``
  (``user_id = "esci-q<query_id>"``); the second file has no ids, so its queries are keyed by
  the stripped query text (``user_id = "esci-x"`` + 20 hex of its sha1). Pseudo-users are
  numbered ``k = 0, 1, …`` in order of first appearance (first file, then second).
* **Events**, all ``scene='search'`` on one date (``--ds``, default 2026-11-01), each pseudo-user
  one session: a ``search`` (``query`` = the query text stripped) at ``00:00 + (k * 17 min mod
  20 h)``, then one ``click`` per exact-match product (``item_id`` = product_id, in file order,
  duplicates dropped) one minute apart after it. Search and clicks share ``request_id =
  "esci-r"`` + 20 hex of sha1 over the user id. A query with more than ~240 products would run
  past midnight; its later clicks would land in the next date's partition.
* **Items** (snapshot at ``--ds``): the products of both files deduplicated on product_id
  (first copy wins): ``item_id`` = product_id, ``title`` = product_title, ``brand`` =
  product_brand, ``tags`` = ``[product_color]`` when present (else null). ESCI has no category
  or price: ``category_path``, ``leaf_category``, ``price``, ``image_embedding`` null.
* **Users** (snapshot at ``--ds``): the pseudo-users, profile columns null.
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

DATASET = "esci_sample"
WITH_IDS = "esci_sample_50queries_485exact.csv"
WITHOUT_IDS = "esci_exact_matches_sample100.csv"
DEFAULT_DS = "2026-11-01"
USER_STRIDE = dt.timedelta(minutes=17)
START_RANGE = dt.timedelta(hours=20)
CLICK_STEP = dt.timedelta(minutes=1)


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    for col in ("query", "query_id", "product_id", "product_title", "product_brand", "product_color"):
        if col in df.columns:
            df[col] = df[col].str.strip()
    return df


def read_pairs(src: Path) -> pd.DataFrame:
    """(user_id, query, product columns) rows of both files, in file order; missing files skipped."""
    frames = []
    for name in (WITH_IDS, WITHOUT_IDS):
        path = src / name
        if not path.is_file():
            logger.warning("%s not found, skipped", path)
            continue
        df = read_csv(path)
        if "query_id" in df.columns:
            df["user_id"] = "esci-q" + df["query_id"]
        else:
            df["user_id"] = [pcm.stable_id("esci-x", q) for q in df["query"]]
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no ESCI file ({WITH_IDS}, {WITHOUT_IDS}) in {src}")
    cols = ["user_id", "query", "product_id", "product_title", "product_brand", "product_color"]
    return pd.concat([f.reindex(columns=cols, fill_value="") for f in frames], ignore_index=True)


def build_events(pairs: pd.DataFrame, ds: str) -> list[dict]:
    day = pcm.utc_midnight(ds)
    rows = []
    for k, (user, group) in enumerate(pairs.groupby("user_id", sort=False)):
        start = day + (USER_STRIDE * k) % START_RANGE
        request_id = pcm.stable_id("esci-r", user)
        base = {"user_id": user, "scene": "search", "request_id": request_id}
        query = group["query"].iloc[0] or None
        rows.append({**base, "event_time": start, "event_type": "search", "query": query, "item_id": None})
        products = [p for p in dict.fromkeys(group["product_id"]) if p]
        for j, product in enumerate(products, start=1):
            rows.append(
                {
                    **base,
                    "event_time": start + CLICK_STEP * j,
                    "event_type": "click",
                    "query": None,
                    "item_id": product,
                }
            )
    for r in rows:
        r[pcm.DS_COLUMN] = pcm.ds_of(r["event_time"])
    return rows


def build_items(pairs: pd.DataFrame) -> list[dict]:
    products = pairs[pairs["product_id"] != ""].drop_duplicates("product_id", keep="first")
    return [
        {
            "item_id": p.product_id,
            "title": p.product_title or None,
            "brand": p.product_brand or None,
            "tags": [p.product_color] if p.product_color else None,
        }
        for p in products.itertuples(index=False)
    ]


def convert(src_dir: str | Path, data_root: str | Path, ds: str = DEFAULT_DS) -> dict[str, dict[str, int]]:
    """Write raw behavior_events, items and users; returns ``{table: {ds: rows}}``."""
    src = Path(src_dir)
    pairs = read_pairs(src)
    rows = build_events(pairs, ds)
    users = [{"user_id": u} for u in dict.fromkeys(pairs["user_id"])]
    logger.info("%d pairs -> %d pseudo-users, %d events", len(pairs), len(users), len(rows))
    manifest = {"source": DATASET, "src": str(src), "constructed_events": True}
    events = pcm.event_table("behavior_events", rows)
    counts = {"behavior_events": pcm.write_event_table(data_root, "behavior_events", events, manifest)}
    counts["items"] = pcm.write_snapshot_table(data_root, "items", ds, build_items(pairs), manifest)
    counts["users"] = pcm.write_snapshot_table(data_root, "users", ds, users, manifest)
    return counts


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = pcm.arg_parser(__doc__.splitlines()[0], DATASET)
    parser.add_argument(
        "--ds", default=DEFAULT_DS, help="date of the constructed events (default %(default)s)"
    )
    args = parser.parse_args(argv)
    src, data_root = pcm.resolve_paths(args, DATASET)
    counts = convert(src, data_root, ds=args.ds)
    logger.info("done: %s", {t: sum(c.values()) for t, c in counts.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
