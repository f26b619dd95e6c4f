"""Adapter: Amazon "Industrial & Scientific" (UniSRec/RecBole atomic files) -> raw contract.

Input (``--src``, default ``../shared/datasets/amazon_scientific``): ``Scientific.text``,
``Scientific.{train,valid,test}.inter``, ``Scientific.item2index``, ``Scientific.user2index``.
The data is order-only (no timestamps); every time below is constructed.

Mapping rules
-------------
* **Ids**: ``item_id`` is the raw ASIN (the ``.inter`` indices are mapped back through
  ``Scientific.item2index``), ``user_id`` the raw reviewer id (through ``Scientific.user2index``),
  so ids agree with ``Scientific.text`` and the original Amazon data.
* **Sequences**: a user's full sequence is rebuilt as the history of the user's first training
  row (one item), then the targets of the training rows (in sequence order, i.e. the train
  file's per-user order reversed), the valid target and the test target. The ``.inter``
  histories are truncated to the last 50 items (3 users have longer sequences), so the test
  row's ``item_id_list`` alone is *not* always the whole history; every train/valid/test row is
  checked to equal the last ``len(list)`` items before its target in the rebuilt sequence
  (``ValueError`` otherwise).
* **Times** (leave-one-out preserved under the ETL's time-of-day split: first 80% of a UTC day
  train, [80%, 90%) valid, [90%, 100%) test, i.e. boundaries 19:12 and 21:36): user ``u``
  (integer index) is put on day ``start_ds + (u mod days)``, with an offset
  ``o = (u * 37 s) mod 30 min``. Its training items (all but the last two) are clicks at
  ``00:00 + o + i * 5 min``; if a sequence would not fit before 19:00 the step shrinks evenly
  (never below 1 min; this dataset's longest sequence, 80 items, fits). The valid target is at
  ``21:00 + o``, the test target at ``23:00 + o``. So the training part is one session (gaps
  < 30 min) ending before 19:00, and the valid/test targets each fall alone in their split window.
* **Events**: every item is one ``behavior_events`` row ``event_type='click'``, ``scene='home'``
  (there is no query, so nothing was searched), ``query``/``request_id`` null. No searches, no
  hintq exposures, no query impressions (those tables are not written).
* **Items** (snapshot at ``start_ds``, all 4,385 items of ``Scientific.text``; an interacted
  item without text would be added with null columns): the text is ``"<title>. <category
  words>. <brand>. "``. ``title`` = the part before the category segment (the whole text without
  trailing dots when it does not have that shape), ``brand`` = the last segment (null when
  empty). The category segment is the category names joined by spaces, so levels are recovered
  heuristically: a category string is split after the longest *other* category string of the
  dataset (or the root ``Industrial & Scientific``) that is a word prefix of it, recursively;
  ``category_path`` joins the levels with ``" > "`` and ``leaf_category`` is the last level. An
  unknown intermediate level therefore stays glued to its child (such glued levels reach ~110
  chars). A level longer than 128 chars is description text leaked into the category field
  (1 item): the path stops before it. Items with an empty category segment (134) get null
  category columns. ``tags``, ``price``, ``image_embedding`` null.
* **Users** (snapshot at ``start_ds``): ids only, profile columns null.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import logging
import sys
from pathlib import Path

import pandas as pd

from common.logging_setup import setup_logging
from common.paths import ds_range
from sources import public_common as pcm

logger = logging.getLogger(__name__)

DATASET = "amazon_scientific"
PREFIX = "Scientific"
ROOT_CATEGORY = "Industrial & Scientific"
MAX_LEVEL_LEN = 128
DEFAULT_START_DS = "2026-11-01"
DEFAULT_DAYS = 3
STEP = dt.timedelta(minutes=5)
MIN_STEP = dt.timedelta(minutes=1)
TRAIN_END = dt.timedelta(hours=19)
VALID_AT = dt.timedelta(hours=21)
TEST_AT = dt.timedelta(hours=23)
OFFSET_STRIDE_S = 37
OFFSET_RANGE_S = 30 * 60


def _read_tsv(path: Path, header: bool = True) -> pd.DataFrame:
    return pd.read_csv(
        path,
        sep="\t",
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        header=0 if header else None,
        encoding="utf-8",
    )


def _read_inter(path: Path) -> pd.DataFrame:
    df = _read_tsv(path)
    df.columns = ["user", "history", "target"]
    return df


def read_sequences(src_dir: str | Path) -> dict[int, list[int]]:
    """Full item-index sequence per user index, rebuilt and checked against all three splits."""
    src = Path(src_dir)
    train = _read_inter(src / f"{PREFIX}.train.inter")
    valid = _read_inter(src / f"{PREFIX}.valid.inter")
    test = _read_inter(src / f"{PREFIX}.test.inter")
    # Rows per user in sequence order: the train file lists each user's prefixes longest first.
    rows: dict[int, list[tuple[list[int], int]]] = {}
    for df in (train.iloc[::-1], valid, test):
        for user, hist, target in zip(df["user"], df["history"], df["target"], strict=True):
            rows.setdefault(int(user), []).append(([int(x) for x in hist.split()], int(target)))
    max_len = max(len(h) for user_rows in rows.values() for h, _ in user_rows)
    seqs: dict[int, list[int]] = {}
    for user, user_rows in rows.items():
        first = user_rows[0][0]  # one item for every user here (each has training rows)
        seq = first + [target for _, target in user_rows]
        for k, (hist, _target) in enumerate(user_rows, start=len(first)):
            if seq[k - len(hist) : k] != hist or (len(hist) != k and len(hist) != max_len):
                raise ValueError(f"user {user}: history {hist} disagrees with rebuilt sequence {seq}")
        seqs[user] = seq
    return seqs


def parse_text(text: str) -> tuple[str | None, str | None, str | None]:
    """Split ``"<title>. <categories>. <brand>. "`` into (title, category words, brand)."""
    s = text.strip()
    s = s[:-1] if s.endswith(".") else s
    marker = ". " + ROOT_CATEGORY
    if marker in s:
        i = s.index(marker)
        cats, _, brand = s[i + 2 :].partition(". ")
        return pcm.clean_text(s[:i]), pcm.clean_text(cats), pcm.clean_text(brand)
    if ". . " in s:
        title, brand = s.rsplit(". . ", 1)
        return pcm.clean_text(title), None, pcm.clean_text(brand)
    return pcm.clean_text(s.rstrip(" .")), None, None


def category_levels(category_strings: set[str]) -> dict[str, list[str]]:
    """Levels of each category string, split after the longest known word-prefix (recursively)."""
    known = set(category_strings) | {ROOT_CATEGORY}
    memo: dict[str, list[str]] = {}

    def levels(c: str) -> list[str]:
        if c in memo:
            return memo[c]
        best = max((p for p in known if p != c and c.startswith(p + " ")), key=len, default=None)
        out = [c] if best is None else levels(best) + [c[len(best) + 1 :]]
        memo[c] = out
        return out

    return {c: levels(c) for c in category_strings}


def build_items(src: Path) -> list[dict]:
    text = _read_tsv(src / f"{PREFIX}.text")
    text.columns = ["item_id", "text"]
    parsed = [parse_text(t) for t in text["text"]]
    tree = category_levels({c for _, c, _ in parsed if c})
    rows = []
    for item_id, (title, cats, brand) in zip(text["item_id"], parsed, strict=True):
        path = (
            list(itertools.takewhile(lambda level: len(level) <= MAX_LEVEL_LEN, tree[cats])) if cats else None
        )
        rows.append(
            {
                "item_id": item_id.strip(),
                "title": title,
                "category_path": " > ".join(path) if path else None,
                "leaf_category": path[-1] if path else None,
                "brand": brand,
            }
        )
    return rows


def user_times(user: int, n: int, day: dt.datetime) -> list[dt.datetime]:
    """Event times of a user's ``n``-item sequence on ``day`` (see the module docstring)."""
    if n < 3:
        raise ValueError(f"user {user}: sequence of {n} items, need >= 3 (train + valid + test)")
    offset = dt.timedelta(seconds=(user * OFFSET_STRIDE_S) % OFFSET_RANGE_S)
    n_train = n - 2
    step = STEP
    if n_train > 1 and offset + step * (n_train - 1) >= TRAIN_END:
        step = dt.timedelta(seconds=int((TRAIN_END - offset).total_seconds() - 1) // (n_train - 1))
        if step < MIN_STEP:
            raise ValueError(f"user {user}: {n_train} training items do not fit before 19:00 at 1-min steps")
    times = [day + offset + step * i for i in range(n_train)]
    return times + [day + VALID_AT + offset, day + TEST_AT + offset]


def convert(
    src_dir: str | Path,
    data_root: str | Path,
    start_ds: str = DEFAULT_START_DS,
    days: int = DEFAULT_DAYS,
) -> dict[str, dict[str, int]]:
    """Write raw behavior_events, items and users; returns ``{table: {ds: rows}}``."""
    src = Path(src_dir)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    dates = ds_range(start_ds, days)
    items_idx = _read_tsv(src / f"{PREFIX}.item2index", header=False)
    users_idx = _read_tsv(src / f"{PREFIX}.user2index", header=False)
    asin = dict(zip(items_idx[1].astype(int), items_idx[0].str.strip(), strict=True))
    raw_user = dict(zip(users_idx[1].astype(int), users_idx[0].str.strip(), strict=True))
    seqs = read_sequences(src)
    logger.info("%d users, %d interactions", len(seqs), sum(map(len, seqs.values())))

    rows = []
    for user in sorted(seqs):
        seq = seqs[user]
        ds = dates[user % days]
        for item, ts in zip(seq, user_times(user, len(seq), pcm.utc_midnight(ds)), strict=True):
            rows.append(
                {
                    "user_id": raw_user[user],
                    "event_time": ts,
                    "event_type": "click",
                    "query": None,
                    "item_id": asin[item],
                    "scene": "home",
                    "request_id": None,
                    pcm.DS_COLUMN: ds,
                }
            )
    manifest = {"source": DATASET, "src": str(src)}
    counts = {
        "behavior_events": pcm.write_event_table(
            data_root, "behavior_events", pcm.event_table("behavior_events", rows), manifest
        )
    }
    items = build_items(src)
    unknown = {asin[i] for s in seqs.values() for i in s} - {r["item_id"] for r in items}
    if unknown:
        logger.warning("%d interacted items have no text; adding them with null columns", len(unknown))
        items += [{"item_id": i} for i in sorted(unknown)]
    users = [{"user_id": raw_user[u]} for u in sorted(seqs)]
    first_ds = min(counts["behavior_events"]) if counts["behavior_events"] else start_ds
    counts["items"] = pcm.write_snapshot_table(data_root, "items", first_ds, items, manifest)
    counts["users"] = pcm.write_snapshot_table(data_root, "users", first_ds, users, manifest)
    return counts


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = pcm.arg_parser(__doc__.splitlines()[0], DATASET)
    parser.add_argument("--start-ds", default=DEFAULT_START_DS, help="first event date (default %(default)s)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="users spread over this many days")
    args = parser.parse_args(argv)
    src, data_root = pcm.resolve_paths(args, DATASET)
    counts = convert(src, data_root, start_ds=args.start_ds, days=args.days)
    logger.info("done: %s", {t: sum(c.values()) for t, c in counts.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
