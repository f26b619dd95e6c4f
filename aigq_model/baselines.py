"""Non-LLM query recommendation baselines, all leakage-free by construction.

Every baseline follows one API::

    rec = PopularityBaseline().fit(clean_behavior_events)      # the whole log may be passed
    rec.recommend(sample_history, cutoff_time, k=10, user_id=None) -> list[str]
    rec.recommend_many(samples, k=10) -> list[list[str]]        # rows with history/event_time/user_id

``fit`` only indexes the log; every ``recommend`` uses only events strictly before
``cutoff_time`` (the sample's anchor time), and history behaviours at or after it are ignored,
so a log that reaches into the test window cannot leak. Outputs are normalised queries
(``parsing.normalize_query``), best first, at most ``k``; ties break alphabetically, so results
are deterministic.

- ``PopularityBaseline``: most searched queries in the ``window_days`` before the cutoff.
- ``CooccurrenceBaseline``: queries that followed the user's recent searches, and queries
  searched in the same sessions as the user's recently clicked items, in *other* users'
  sessions before the cutoff; seeds are weighted ``seed_decay ** r`` (r = 0 for the newest
  behaviour), follow-ups ``1 / distance`` in the session.
- ``EmbeddingBaseline`` (EBR): MiniLM embedding of the recent history texts (recency-weighted
  mean) against MiniLM embeddings of every query searched before the cutoff (a pretrained, not
  a trained two-tower, encoder).
- ``OwnHistoryBaseline``: the user's own searches, newest first, then popularity.

Events: a pyarrow Table, pandas DataFrame or list of dicts with the clean ``behavior_events``
columns (``user_id, event_time, event_type, query, item_id``; ``session_id`` is used when
present, else sessions are ``gap_minutes`` gaps per user).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from aigq_model.parsing import normalize_query
from common.text_encoder import encode_texts

logger = logging.getLogger(__name__)

CLICK_TYPES = ("click", "cart", "buy")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US_PER_DAY = 86_400_000_000


def to_micros(value) -> int:
    """Microseconds since the epoch (UTC) of a datetime / pandas Timestamp / numpy datetime64 /
    ISO string / integer (already microseconds). Naive datetimes are taken as UTC."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    raise TypeError(f"cannot read a time from {type(value).__name__}")


def events_frame(events):
    """The log as a pandas DataFrame sorted by (user, time) with ``t`` (int µs), a normalised
    ``query`` and a per-user ``session`` number."""
    if hasattr(events, "to_pandas"):
        df = events.to_pandas()
    elif isinstance(events, pd.DataFrame):
        df = events.copy()
    else:
        df = pd.DataFrame(list(events))
    for col in ("user_id", "event_type", "query", "item_id", "event_time"):
        if col not in df.columns:
            df[col] = None
    ts = pd.to_datetime(df["event_time"], utc=True)
    df = df[ts.notna() & df["user_id"].notna()].copy()
    ts = ts[df.index]
    df["t"] = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).astype(np.int64)
    df["query"] = [normalize_query(q) for q in df["query"]]
    df = df.sort_values(["user_id", "t"], kind="stable").reset_index(drop=True)
    df.attrs["has_session_id"] = "session_id" in df.columns
    return df


def _with_sessions(df, gap_minutes: float):
    if df.attrs.get("has_session_id") and df["session_id"].notna().all():
        df["session"] = df.groupby(["user_id", "session_id"], sort=False).ngroup()
        return df
    gap = np.diff(df["t"].to_numpy(), prepend=np.int64(0)) > gap_minutes * 60_000_000
    new_user = df["user_id"].ne(df["user_id"].shift()).to_numpy()
    df["session"] = np.cumsum(gap | new_user)
    return df


def _history_before(history: Sequence[Mapping] | None, cutoff_us: int) -> list[Mapping]:
    """Behaviours strictly before the cutoff (those without a time are trusted)."""
    out = []
    for b in history or []:
        t = b.get("event_time") if isinstance(b, Mapping) else None
        if t is None or to_micros(t) < cutoff_us:
            out.append(b)
    return out


def own_queries(history: Sequence[Mapping] | None, cutoff_time) -> list[str]:
    """The user's own searches in ``history`` strictly before ``cutoff_time``, newest first,
    normalised and de-duplicated (the re-query signal of ``OwnHistoryBaseline`` and of the
    hybrid u2q list).

    >>> own_queries([{"event_type": "search", "text": "A"}, {"event_type": "click", "text": "x"},
    ...              {"event_type": "search", "text": "b"}, {"event_type": "search", "text": "a "}], 0)
    ['a', 'b']
    """
    out: list[str] = []
    for b in reversed(_history_before(history, to_micros(cutoff_time))):
        q = normalize_query(b.get("text")) if b.get("event_type") == "search" else ""
        if q and q not in out:
            out.append(q)
    return out


def _rank(qids: np.ndarray, scores: np.ndarray, k: int, decimals: int = 9) -> list[int]:
    """qids by score descending, ties by qid ascending (qids are alphabetical ranks)."""
    if qids.size == 0 or k <= 0:
        return []
    order = np.lexsort((qids, -np.round(scores, decimals)))
    return qids[order[:k]].tolist()


class QueryRecommender:
    """Base class: ``fit(events)`` then ``recommend(history, cutoff_time, k, user_id)``."""

    name = "base"

    def fit(self, events) -> QueryRecommender:
        raise NotImplementedError

    def recommend(self, history, cutoff_time, k: int = 10, user_id: str | None = None) -> list[str]:
        raise NotImplementedError

    def recommend_many(self, samples: Iterable[Mapping], k: int = 10, time_col: str = "event_time") -> list[list[str]]:
        return [self.recommend(s.get("history"), s[time_col], k, s.get("user_id")) for s in samples]


class PopularityBaseline(QueryRecommender):
    """Most searched queries in ``[cutoff - window_days, cutoff)``."""

    name = "popularity"

    def __init__(self, window_days: float = 7.0, cache_size: int = 4096):
        self.window_us = int(window_days * _US_PER_DAY)
        self.cache_size = cache_size

    def fit(self, events) -> PopularityBaseline:
        df = events_frame(events)
        s = df[(df["event_type"] == "search") & (df["query"] != "")].sort_values("t", kind="stable")
        self.vocab = np.array(sorted(set(s["query"])), dtype=object)
        index = {q: i for i, q in enumerate(self.vocab)}
        self._t = s["t"].to_numpy(np.int64)
        self._qid = np.fromiter((index[q] for q in s["query"]), dtype=np.int64, count=len(s))
        self._cache: dict[tuple[int, int], tuple[list[int], int]] = {}
        logger.info("popularity: %d searches, %d distinct queries", len(self._t), len(self.vocab))
        return self

    def ranked(self, cutoff_time, k: int = 10) -> list[str]:
        """The top-k queries of the window before ``cutoff_time``."""
        cutoff = to_micros(cutoff_time)
        lo = int(np.searchsorted(self._t, cutoff - self.window_us, side="left"))
        hi = int(np.searchsorted(self._t, cutoff, side="left"))
        cached = self._cache.get((lo, hi))
        # A cached list answers when it is long enough or already holds every candidate.
        if cached is None or (len(cached[0]) < k and len(cached[0]) == cached[1]):
            cap = max(k, 100)
            counts = np.bincount(self._qid[lo:hi], minlength=len(self.vocab))
            qids = np.flatnonzero(counts)
            cached = (_rank(qids, counts[qids].astype(np.float64), cap), cap)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[(lo, hi)] = cached
        return [self.vocab[i] for i in cached[0][:k]]

    def recommend(self, history, cutoff_time, k: int = 10, user_id: str | None = None) -> list[str]:
        return self.ranked(cutoff_time, k)


class OwnHistoryBaseline(QueryRecommender):
    """The user's own searches in the history, newest first, then popularity."""

    name = "own_history+popularity"

    def __init__(self, popularity: PopularityBaseline | None = None):
        self.popularity = popularity or PopularityBaseline()

    def fit(self, events) -> OwnHistoryBaseline:
        self.popularity.fit(events)
        return self

    def recommend(self, history, cutoff_time, k: int = 10, user_id: str | None = None) -> list[str]:
        cutoff = to_micros(cutoff_time)
        out = own_queries(history, cutoff)
        for q in self.popularity.ranked(cutoff, k + len(out)):
            if len(out) >= k:
                break
            if q not in out:
                out.append(q)
        return out[:k]


class CooccurrenceBaseline(QueryRecommender):
    """Queries co-occurring, in other users' sessions before the cutoff, with the user's recent
    searches (follow-ups within ``max_follow`` searches, weight ``1/distance``) and recent
    clicks (queries searched in a session where the item was clicked, weight 1)."""

    name = "cooccurrence"

    def __init__(self, n_seeds: int = 10, seed_decay: float = 0.8, max_follow: int = 5, gap_minutes: float = 30.0):
        self.n_seeds, self.seed_decay = n_seeds, seed_decay
        self.max_follow, self.gap_minutes = max_follow, gap_minutes

    def fit(self, events) -> CooccurrenceBaseline:
        df = _with_sessions(events_frame(events), self.gap_minutes)
        self._users = {u: i for i, u in enumerate(sorted(set(df["user_id"])))}
        df["user"] = df["user_id"].map(self._users).astype(np.int64)
        searches = df[(df["event_type"] == "search") & (df["query"] != "")].sort_values(["session", "t"], kind="stable")
        self.vocab = np.array(sorted(set(searches["query"])), dtype=object)
        searches = searches.assign(qid=searches["query"].map({q: i for i, q in enumerate(self.vocab)}).astype(np.int64))
        sess, qid = searches["session"].to_numpy(), searches["qid"].to_numpy()
        t, user = searches["t"].to_numpy(), searches["user"].to_numpy()
        frames = []
        # Follow-ups: the search d places later in the same session, weight 1/d, seen at its time.
        for d in range(1, self.max_follow + 1):
            i = np.flatnonzero((sess[:-d] == sess[d:]) & (qid[:-d] != qid[d:])) if len(sess) > d else np.array([], int)
            frames.append(pd.DataFrame({
                "key": "q:" + searches["query"].to_numpy()[i].astype(object),
                "dst": qid[i + d], "w": 1.0 / d, "t": t[i + d], "user": user[i],
            }))
        # Co-clicks: each item clicked in a session x each query searched in it, weight 1, seen
        # once both happened (the later of the item's first click and the query's first search).
        clicks = df[df["event_type"].isin(CLICK_TYPES) & df["item_id"].notna()]
        first_click = clicks.groupby(["session", "item_id"], as_index=False)["t"].min()
        first_search = searches.groupby(["session", "qid"], as_index=False).agg(t=("t", "min"), user=("user", "first"))
        co = first_click.merge(first_search, on="session", suffixes=("_item", "_q"))
        frames.append(pd.DataFrame({
            "key": "i:" + co["item_id"].astype(str).to_numpy().astype(object),
            "dst": co["qid"].to_numpy(np.int64), "w": 1.0,
            "t": np.maximum(co["t_item"].to_numpy(np.int64), co["t_q"].to_numpy(np.int64)),
            "user": co["user"].to_numpy(np.int64),
        }))
        pairs = pd.concat(frames, ignore_index=True).sort_values(["key", "t"], kind="stable")
        self._dst = pairs["dst"].to_numpy(np.int64)
        self._w = pairs["w"].to_numpy(np.float64)
        self._t = pairs["t"].to_numpy(np.int64)
        self._user = pairs["user"].to_numpy(np.int64)
        keys = pairs["key"].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.array([], int)
        ends = np.r_[starts[1:], len(keys)].astype(int) if len(keys) else np.array([], int)
        self._slices = {keys[a]: (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
        logger.info("co-occurrence: %d pairs, %d seed keys, %d queries", len(keys), len(self._slices), len(self.vocab))
        return self

    def _seeds(self, history, cutoff: int) -> list[tuple[str, float]]:
        recent = _history_before(history, cutoff)[-self.n_seeds :]
        seeds = []
        for r, b in enumerate(reversed(recent)):
            if b.get("event_type") == "search":
                key = "q:" + normalize_query(b.get("text"))
            elif b.get("event_type") in CLICK_TYPES and b.get("item_id"):
                key = "i:" + str(b.get("item_id"))
            else:
                continue
            seeds.append((key, self.seed_decay**r))
        return seeds

    def recommend(self, history, cutoff_time, k: int = 10, user_id: str | None = None) -> list[str]:
        cutoff = to_micros(cutoff_time)
        me = self._users.get(user_id, -1) if user_id is not None else -1
        dsts, weights = [], []
        for key, w in self._seeds(history, cutoff):
            if key not in self._slices:
                continue
            a, b = self._slices[key]
            hi = a + int(np.searchsorted(self._t[a:b], cutoff, side="left"))
            keep = self._user[a:hi] != me
            dsts.append(self._dst[a:hi][keep])
            weights.append(self._w[a:hi][keep] * w)
        if not dsts:
            return []
        dst = np.concatenate(dsts)
        if dst.size == 0:
            return []
        qids, inverse = np.unique(dst, return_inverse=True)
        scores = np.bincount(inverse, weights=np.concatenate(weights))
        return [self.vocab[i] for i in _rank(qids, scores, k)]


Encoder = Callable[[Sequence[str]], np.ndarray]


class EmbeddingBaseline(QueryRecommender):
    """EBR: cosine between the recency-weighted mean embedding of the last ``n_recent`` history
    texts (weights ``decay ** r``, r = 0 newest) and every query searched before the cutoff."""

    name = "ebr"

    def __init__(self, encoder: Encoder | None = None, n_recent: int = 10, decay: float = 0.8, batch_size: int = 256):
        self.encoder = encoder
        self.n_recent, self.decay, self.batch_size = n_recent, decay, batch_size
        self._text_cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.encoder is None:
            self.encoder = lambda xs: encode_texts(xs, batch_size=self.batch_size)
        return np.asarray(self.encoder(list(texts)), dtype=np.float32)

    def fit(self, events) -> EmbeddingBaseline:
        df = events_frame(events)
        s = df[(df["event_type"] == "search") & (df["query"] != "")]
        first_seen = s.groupby("query")["t"].min().sort_index()
        self.vocab = first_seen.index.to_numpy(dtype=object)
        self._first_seen = first_seen.to_numpy(np.int64)
        self._emb = self._encode(list(self.vocab)) if len(self.vocab) else np.zeros((0, 1), np.float32)
        logger.info("EBR: %d vocabulary queries encoded", len(self.vocab))
        return self

    def _texts(self, history, cutoff: int) -> list[str]:
        recent = _history_before(history, cutoff)[-self.n_recent :]
        return [" ".join(str(b.get("text") or "").split()) for b in recent]

    def _cache_texts(self, texts: Iterable[str]) -> None:
        missing = sorted({t for t in texts if t and t not in self._text_cache})
        if missing:
            for t, v in zip(missing, self._encode(missing), strict=True):
                self._text_cache[t] = v

    def recommend(self, history, cutoff_time, k: int = 10, user_id: str | None = None) -> list[str]:
        cutoff = to_micros(cutoff_time)
        texts = self._texts(history, cutoff)
        self._cache_texts(texts)
        weighted = [(self._text_cache[t], self.decay**r) for r, t in enumerate(reversed(texts)) if t]
        if not weighted or len(self.vocab) == 0:
            return []
        u = sum(w * v for v, w in weighted) / sum(w for _, w in weighted)
        u = u / max(float(np.linalg.norm(u)), 1e-12)
        qids = np.flatnonzero(self._first_seen < cutoff)
        scores = self._emb[qids] @ u
        return [self.vocab[i] for i in _rank(qids, scores.astype(np.float64), k, decimals=6)]

    def recommend_many(self, samples: Iterable[Mapping], k: int = 10, time_col: str = "event_time") -> list[list[str]]:
        samples = list(samples)
        self._cache_texts(
            t for s in samples for t in self._texts(s.get("history"), to_micros(s[time_col]))
        )
        return super().recommend_many(samples, k, time_col)


BASELINES: dict[str, Callable[[], QueryRecommender]] = {
    "popularity": PopularityBaseline,
    "cooccurrence": CooccurrenceBaseline,
    "ebr": EmbeddingBaseline,
    "own_history+popularity": OwnHistoryBaseline,
}
