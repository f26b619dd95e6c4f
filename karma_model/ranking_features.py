"""Features of the daily item-CTR ranking model (:mod:`karma_model.ranking`): one row per impression.

The input is ``clean/item_impressions`` (a result page: request, user, time, item, position,
clicked); a day whose partition is absent or empty has no impressions (:func:`read_impressions`
returns ``None``). Every feature of a row is known when the page is served:

- **context**: the request's query (its ``search`` event in ``clean/behavior_events``; null when
  the request has none) and the user's behaviours strictly before the page's time plus one
  microsecond, i.e. up to and including the request's own search, built as the export and the
  samples build histories (:class:`export.data.BehaviourLog`: clean ``search | click | cart |
  buy`` events of the ``samples.lookback_days`` days before);
- **baseline** (:data:`BASE_FEATURES`): the item's and its leaf category's smoothed CTR and log
  impressions on the *previous* day's pages (for the training day T that is T-1; when T-1 has no
  impressions, day T itself with the row's own request left out), the user's history length, the
  share of the history's item behaviours in the item's leaf (all ``max_history`` behaviours and
  the last ``recent``), in its top category, whether the item itself is in the history, and the
  word coverage and Jaccard overlap of the query with the item's title and category path;
- **KARMA** (:data:`KARMA_COUNT` columns, :class:`KarmaFeaturizer`): ``cos(e_u, e_i)`` between the
  interest embedding of the user's last ``history_len`` behaviours (the model's own setting, same
  anchor) and the item's embedding, then ``e_u / |e_u|`` itself (``proj_dim`` columns).

The position is not a feature: the model takes it as a training-only bias (:mod:`karma_model.ranking`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from common.arrow_io import partition_rows, read_partition
from common.schemas import ITEM_IMPRESSIONS
from export.data import BehaviourLog, read_days, read_snapshot, window_days

logger = logging.getLogger(__name__)

BASE_FEATURES = ("item_ctr", "item_log_shows", "leaf_ctr", "leaf_log_shows", "hist_len", "leaf_share",
                 "leaf_share_recent", "top_share", "item_seen", "query_coverage", "query_jaccard")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str | None) -> frozenset[str]:
    """Lower-case alphanumeric words of ``text``.

    >>> sorted(words("Lumora Beige-wool MAXI dress"))
    ['beige', 'dress', 'lumora', 'maxi', 'wool']
    >>> words(None)
    frozenset()
    """
    return frozenset(_WORD.findall(text.lower())) if text else frozenset()


def overlap(query: frozenset[str], item: frozenset[str]) -> tuple[float, float]:
    """``(share of the query's words in the item's, Jaccard)``; zeros for an empty query.

    >>> overlap(frozenset({"wool", "dress"}), frozenset({"lumora", "wool", "maxi", "dress"}))
    (1.0, 0.5)
    """
    if not query:
        return 0.0, 0.0
    common = len(query & item)
    return common / len(query), common / len(query | item)


def smoothed_ctr(clicks, shows, mean: float, strength: float):
    """``(clicks + strength * mean) / (shows + strength)``: the empirical CTR shrunk to ``mean``.

    >>> float(smoothed_ctr(3, 10, 0.1, 10.0))
    0.2
    """
    return (np.asarray(clicks, dtype=np.float64) + strength * mean) / (np.asarray(shows, dtype=np.float64) + strength)


# --- inputs ------------------------------------------------------------------------------------
def read_impressions(root: str | Path, ds: str) -> pd.DataFrame | None:
    """The clean impressions of ``ds`` (``request_id, user_id, t`` (µs), ``item_id, position,
    clicked``), rows with a null field dropped; ``None`` when the partition is absent or empty."""
    rows, _manifest = partition_rows(root, "clean", "item_impressions", ds)
    if not rows:
        return None
    table = read_partition(root, "clean", "item_impressions", ds, schema=ITEM_IMPRESSIONS)
    df = table.to_pandas()
    df = df.dropna(subset=["request_id", "user_id", "event_time", "item_id", "position", "clicked"])
    if df.empty:
        return None
    ts = pd.to_datetime(df["event_time"], utc=True)
    return pd.DataFrame({
        "request_id": df["request_id"].astype(str).to_numpy(),
        "user_id": df["user_id"].astype(str).to_numpy(),
        "t": ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64),
        "item_id": df["item_id"].astype(str).to_numpy(),
        "position": df["position"].to_numpy(np.int64),
        "clicked": df["clicked"].to_numpy(bool).astype(np.float32),
    }).sort_values(["t", "request_id", "position"], kind="stable").reset_index(drop=True)


def request_queries(events) -> dict[str, str]:
    """``request_id -> query`` of the ``search`` events of clean ``behavior_events`` (the first)."""
    if events is None or events.num_rows == 0:
        return {}
    searches = events.filter(pc.equal(events["event_type"], "search"))
    out: dict[str, str] = {}
    for req, query in zip(searches["request_id"].to_pylist(), searches["query"].to_pylist(), strict=True):
        if req is not None and query and req not in out:
            out[req] = query
    return out


@dataclass
class ItemInfo:
    """Leaf, top category and words (title + category path) of every item of a snapshot."""

    leaf: dict[str, str]
    top: dict[str, str]
    words: dict[str, frozenset[str]]
    leaf_top: dict[str, str]

    @classmethod
    def from_items(cls, items) -> ItemInfo:
        leaf, top, wds, leaf_top = {}, {}, {}, {}
        if items is not None:
            cols = {c: items[c].to_pylist() for c in ("item_id", "title", "category_path", "leaf_category")}
            for item, title, path, lf in zip(*cols.values(), strict=True):
                if item is None:
                    continue
                head = (path or "").split(">")[0].strip() or None
                leaf[item], top[item] = lf, head
                wds[item] = words(title) | words(path)
                if lf is not None and head is not None:
                    leaf_top.setdefault(lf, head)
        return cls(leaf, top, wds, leaf_top)


@dataclass
class Context:
    """What the features of two days read once: the behaviour log, queries and item facts."""

    log: BehaviourLog
    queries: dict[str, str]
    items: ItemInfo
    items_ds: str | None


def load_context(root: str | Path, train_ds: str, eval_ds: str, lookback_days: int) -> Context:
    """The clean behaviours of the lookback window before ``train_ds`` through ``eval_ds`` and the
    newest clean items snapshot at or before ``eval_ds``."""
    days = sorted(set(window_days(train_ds, lookback_days + 1)) | {eval_ds})
    events = read_days(root, "clean", "behavior_events", days)
    items, items_ds = read_snapshot(root, "items", eval_ds)
    queries = request_queries(read_days(root, "clean", "behavior_events", [train_ds, eval_ds]))
    return Context(BehaviourLog(events, items), queries, ItemInfo.from_items(items), items_ds)


# --- priors ---------------------------------------------------------------------------------------
@dataclass
class Priors:
    """Item and leaf click counts of one day's pages, and that day's mean CTR."""

    item_shows: dict[str, float]
    item_clicks: dict[str, float]
    leaf_shows: dict[str, float]
    leaf_clicks: dict[str, float]
    mean: float

    @classmethod
    def from_frame(cls, frame: pd.DataFrame | None, items: ItemInfo) -> Priors | None:
        if frame is None or frame.empty:
            return None
        leaf = frame["item_id"].map(items.leaf)
        by_item = frame.groupby("item_id")["clicked"].agg(["size", "sum"])
        by_leaf = frame.assign(leaf=leaf).dropna(subset=["leaf"]).groupby("leaf")["clicked"].agg(["size", "sum"])
        return cls(by_item["size"].to_dict(), by_item["sum"].to_dict(), by_leaf["size"].to_dict(),
                   by_leaf["sum"].to_dict(), float(frame["clicked"].mean()))


def prior_features(frame: pd.DataFrame, priors: Priors, items: ItemInfo, strength: float,
                   leave_request_out: bool = False) -> np.ndarray:
    """``(n, 4)``: item CTR, log1p item impressions, leaf CTR, log1p leaf impressions. With
    ``leave_request_out`` the counts exclude the row's own request (priors from the same day)."""
    item, leaf = frame["item_id"], frame["item_id"].map(items.leaf)
    i_shows = item.map(priors.item_shows).fillna(0.0).to_numpy(np.float64)
    i_clicks = item.map(priors.item_clicks).fillna(0.0).to_numpy(np.float64)
    l_shows = leaf.map(priors.leaf_shows).fillna(0.0).to_numpy(np.float64)
    l_clicks = leaf.map(priors.leaf_clicks).fillna(0.0).to_numpy(np.float64)
    if leave_request_out:
        own = frame.groupby(["request_id", "item_id"])["clicked"].transform
        i_shows, i_clicks = i_shows - own("size").to_numpy(), i_clicks - own("sum").to_numpy()
        own_leaf = frame.assign(leaf=leaf.fillna("")).groupby(["request_id", "leaf"])["clicked"].transform
        has_leaf = leaf.notna().to_numpy()
        l_shows = l_shows - np.where(has_leaf, own_leaf("size").to_numpy(), 0)
        l_clicks = l_clicks - np.where(has_leaf, own_leaf("sum").to_numpy(), 0)
    return np.stack([
        smoothed_ctr(i_clicks, i_shows, priors.mean, strength), np.log1p(np.maximum(i_shows, 0)),
        smoothed_ctr(l_clicks, l_shows, priors.mean, strength), np.log1p(np.maximum(l_shows, 0)),
    ], axis=1)


# --- histories ----------------------------------------------------------------------------------
def anchor_of(t_us: int) -> dt.datetime:
    """The history anchor of a page served at ``t_us``: one microsecond later, so the request's own
    search (same instant) is the history's last behaviour and nothing after it is."""
    return _EPOCH + dt.timedelta(microseconds=int(t_us) + 1)


def request_histories(frame: pd.DataFrame, log: BehaviourLog, max_history: int) -> tuple[pd.DataFrame, list]:
    """``(requests, histories)``: one row per request (``request_id, user_id, t``, first seen order)
    and its user's last ``max_history`` behaviours before :func:`anchor_of` its time."""
    requests = frame.drop_duplicates("request_id")[["request_id", "user_id", "t"]].reset_index(drop=True)
    histories = [log.history(u, anchor_of(t), max_history)
                 for u, t in zip(requests["user_id"], requests["t"], strict=True)]
    return requests, histories


def history_features(frame: pd.DataFrame, requests: pd.DataFrame, histories: Sequence[list], ctx: Context,
                     recent: int) -> np.ndarray:
    """``(n, 7)``: hist_len, leaf_share, leaf_share_recent, top_share, item_seen, query_coverage,
    query_jaccard of every impression row (see the module docstring)."""
    row_of = {r: i for i, r in enumerate(requests["request_id"])}
    summary = []
    for hist in histories:
        cats = [b.get("category") for b in hist if b.get("item_id")]
        tops = [ctx.items.leaf_top.get(c) for c in cats]
        summary.append((len(hist), pd.Series(cats, dtype=object).value_counts().to_dict(),
                        pd.Series(cats[-recent:], dtype=object).value_counts().to_dict(),
                        pd.Series(tops, dtype=object).value_counts().to_dict(),
                        {b.get("item_id") for b in hist if b.get("item_id")}, len(cats), min(len(cats), recent)))
    out = np.zeros((len(frame), 7), dtype=np.float64)
    query_words: dict[str, frozenset[str]] = {}
    for k, (req, item) in enumerate(zip(frame["request_id"], frame["item_id"], strict=True)):
        n_hist, leaf_n, recent_n, top_n, seen, n_items, n_recent = summary[row_of[req]]
        leaf, top = ctx.items.leaf.get(item), ctx.items.top.get(item)
        if req not in query_words:
            query_words[req] = words(ctx.queries.get(req))
        coverage, jaccard = overlap(query_words[req], ctx.items.words.get(item, frozenset()))
        out[k] = (np.log1p(n_hist), leaf_n.get(leaf, 0) / max(n_items, 1), recent_n.get(leaf, 0) / max(n_recent, 1),
                  top_n.get(top, 0) / max(n_items, 1), float(item in seen), coverage, jaccard)
    return out


def base_features(frame: pd.DataFrame, requests: pd.DataFrame, histories: Sequence[list], ctx: Context,
                  priors: Priors, strength: float, recent: int, leave_request_out: bool = False) -> np.ndarray:
    """``(n, len(BASE_FEATURES))`` float32 in :data:`BASE_FEATURES` order."""
    x = np.concatenate([prior_features(frame, priors, ctx.items, strength, leave_request_out),
                        history_features(frame, requests, histories, ctx, recent)], axis=1)
    return x.astype(np.float32)


# --- KARMA ----------------------------------------------------------------------------------------
class KarmaFeaturizer:
    """``cos(e_u, e_i)`` and ``e_u / |e_u|`` of impression rows with one KARMA model folder.

    The item tower encodes the newest ``item_corpus`` at or before ``corpus_ds`` (items missing
    from it get ``cos = 0``); histories are the model's last ``history_len`` behaviours at the
    request's anchor, encoded in batches of ``batch_size``.
    """

    def __init__(self, model_dir: str | Path, root: str | Path, corpus_ds: str, batch_size: int = 64):
        from common.hf_offline import quiet_offline_hf
        from karma_model.data import ItemCatalog, KarmaEncoder, read_item_corpus
        from karma_model.load import load_karma

        quiet_offline_hf()
        self.model, tokenizer = load_karma(model_dir)
        self.catalog = ItemCatalog.from_table(read_item_corpus(root, corpus_ds))
        self.encoder = KarmaEncoder(tokenizer, self.model.config, self.catalog)
        self.history_len = int(self.model.config.history_len)
        self.dim = int(self.model.config.proj_dim)
        self.batch_size = batch_size
        self._items: dict[str, np.ndarray] = {}

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """Unit ``e_i`` of ``item_ids`` (zeros for items outside the catalogue), cached."""
        from karma_model.model import embed_items

        todo = sorted({i for i in item_ids if i not in self._items and i in self.catalog.row})
        if todo:
            vecs = embed_items(self.model, self.encoder, [self.catalog.row[i] for i in todo], self.batch_size)
            for item, v in zip(todo, _unit(vecs), strict=True):
                self._items[item] = v
        zero = np.zeros(self.dim, dtype=np.float32)
        return np.stack([self._items.get(i, zero) for i in item_ids]) if len(item_ids) else np.zeros((0, self.dim))

    def user_vectors(self, histories: Sequence[list]) -> np.ndarray:
        """Unit ``e_u`` of each history (its last ``history_len`` behaviours)."""
        from karma_model.model import embed_histories

        if not histories:
            return np.zeros((0, self.dim), dtype=np.float32)
        trimmed = [list(h)[-self.history_len:] for h in histories]
        return _unit(embed_histories(self.model, self.encoder, trimmed, self.batch_size))

    def features(self, frame: pd.DataFrame, requests: pd.DataFrame, histories: Sequence[list]) -> np.ndarray:
        """``(n, 1 + proj_dim)`` float32: ``cos(e_u, e_i)``, then ``e_u / |e_u|``."""
        users = self.user_vectors(histories)
        row_of = {r: i for i, r in enumerate(requests["request_id"])}
        e_u = users[[row_of[r] for r in frame["request_id"]]]
        e_i = self.item_vectors(list(frame["item_id"]))
        cos = (e_u * e_i).sum(axis=1, keepdims=True)
        return np.concatenate([cos, e_u], axis=1).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def karma_feature_names(dim: int) -> list[str]:
    """``["karma_cos", "karma_eu_00", ...]``.

    >>> karma_feature_names(2)
    ['karma_cos', 'karma_eu_00', 'karma_eu_01']
    """
    return ["karma_cos", *(f"karma_eu_{k:02d}" for k in range(dim))]
