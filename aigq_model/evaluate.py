"""AIGQ offline metrics over generated query lists (model, baselines), per user group.

Definitions (one record = one sample/user: its generated list, best first, and its truth):

- **Truth**: the queries the user really issued in the test window (``window_truth``: every
  search from the sample's time to the end of its day, which includes the clicked HintQ queries,
  since a click on a hint logs a search). ``truth_queries`` gives the training target instead
  (``target_queries`` of a Direct row, ``targets[].query`` of a Think row), which also holds the
  ranker's shown-but-unclicked queries. Records with an empty truth are left out of the
  hit-rate and similarity denominators.
- **Query HR@K**: share of records where one of the first K generated queries equals a truth
  query after ``normalize_query`` (lists are not re-deduplicated: a duplicate wastes a slot).
- **Category HR@K**: queries map to a leaf category (``build_query_category_map``: the most
  frequent leaf category of items clicked in the same request as the query, ties
  alphabetical; unmapped = unknown). Hit when a known category of the first K generated queries
  is among the truth's known categories; records whose truth has no known category are left out.
- **Semantic similarity@K**: per record, the mean over the first K generated queries of the
  highest MiniLM cosine to any truth query ("mean of best matches"); averaged over records with
  both lists non-empty.
- **Unique categories@K**: distinct known categories among the first K generated queries.
- **Malformed rate**: share of records whose generation the parser flagged as malformed.
- **Serendipity@K** (``novel_share@K``): of the truth queries hit by the first K generated
  queries, summed over the group's records, the share that are not among the user's own
  searches in the history; ``novel_hr@K`` is Query HR@K counting only such hits.
- **Intervals**: every Query HR@K has a 95 % percentile bootstrap interval
  (``query_hr@K_lo`` / ``_hi``): :data:`BOOTSTRAP` resamples of the group's *users* with
  replacement (all samples of a drawn user come along), seed :data:`BOOTSTRAP_SEED`. The draws
  depend only on the users, so two methods scored on the same records get the same draws and
  :func:`paired_difference` gives the interval of their difference.
- Groups: ``all``; ``active`` (the history holds at least one search: the user's query before
  and after the sample); ``cold_start`` (no search in the history, whatever else it holds).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from aigq_model.baselines import events_frame, to_micros
from aigq_model.interests import QueryVocabulary
from aigq_model.parsing import normalize_query
from common.text_encoder import encode_texts

logger = logging.getLogger(__name__)

DEFAULT_KS = (10, 30)
GROUPS = ("all", "active", "cold_start")
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0

CategoryOf = Mapping[str, str] | Callable[[str], str | None]
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class EvalRecord:
    generated: list[str]
    truth: list[str]
    own_queries: list[str] = field(default_factory=list)  # the user's searches in the history
    malformed: bool = False
    user_id: str | None = None
    extra: dict = field(default_factory=dict)


def truth_queries(sample: Mapping) -> list[str]:
    """Normalised, de-duplicated truth queries of a Direct or Think sample row."""
    if sample.get("target_queries") is not None:
        raw = list(sample["target_queries"])
    else:
        raw = [t.get("query") for t in sample.get("targets") or []]
    return list(dict.fromkeys(q for q in (normalize_query(x) for x in raw) if q))


def issued_queries(events, start_time, end_time) -> dict[str, list[str]]:
    """Per user, the normalised queries searched in ``[start_time, end_time)``, in time order."""
    df = events_frame(events)
    lo, hi = to_micros(start_time), to_micros(end_time)
    s = df[(df["event_type"] == "search") & (df["query"] != "") & (df["t"] >= lo) & (df["t"] < hi)]
    out: dict[str, list[str]] = {}
    for user, g in s.groupby("user_id", sort=True):
        out[str(user)] = list(dict.fromkeys(g["query"]))
    return out


def window_truth(samples: Sequence[Mapping], events) -> list[list[str]]:
    """Per sample, the normalised distinct queries its user searched in ``[event_time, end of
    the event_time's UTC day)``, in time order (typed searches and clicked hints alike).

    >>> import datetime as dt
    >>> t = lambda h: dt.datetime(2026, 11, 3, h, tzinfo=dt.UTC)
    >>> log = [{"user_id": "u", "event_type": "search", "query": q, "event_time": t(h)}
    ...        for q, h in [("a", 1), ("B", 5), ("c", 9), ("b", 10)]]
    >>> window_truth([{"user_id": "u", "event_time": t(5)}, {"user_id": "v", "event_time": t(1)}], log)
    [['b', 'c'], []]
    """
    df = events_frame(events)
    s = df[(df["event_type"] == "search") & (df["query"] != "")]
    by_user = {str(u): (g["t"].to_numpy(), g["query"].tolist()) for u, g in s.groupby("user_id", sort=False)}
    day = 86_400_000_000
    out = []
    for sample in samples:
        times, queries = by_user.get(str(sample.get("user_id")), (np.empty(0, np.int64), []))
        t = to_micros(sample["event_time"])
        lo, hi = np.searchsorted(times, t, "left"), np.searchsorted(times, (t // day + 1) * day, "left")
        out.append(list(dict.fromkeys(queries[lo:hi])))
    return out


def build_query_category_map(events, items) -> dict[str, str]:
    """query -> most frequent leaf category of the items clicked in the query's request."""
    return _category_map(events_frame(events), items)


def _category_map(df, items) -> dict[str, str]:
    """``build_query_category_map`` of a log already read by ``baselines.events_frame``."""
    if "request_id" not in df.columns:
        return {}
    if hasattr(items, "to_pandas"):
        items = items.to_pandas()
    elif not isinstance(items, pd.DataFrame):
        items = pd.DataFrame(list(items))
    leaf = dict(zip(items["item_id"], items["leaf_category"], strict=True))
    req = df[df["request_id"].notna()]
    searches = req[(req["event_type"] == "search") & (req["query"] != "")][["user_id", "request_id", "query"]]
    clicks = req[req["event_type"] == "click"][["user_id", "request_id", "item_id"]]
    joined = searches.drop_duplicates().merge(clicks, on=["user_id", "request_id"])
    counts: dict[str, Counter] = defaultdict(Counter)
    for q, item in zip(joined["query"], joined["item_id"], strict=True):
        cat = leaf.get(item)
        if cat:
            counts[q][cat] += 1
    return {q: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for q, c in counts.items()}


def build_query_vocabulary(events, items):
    """The log's ``interests.QueryVocabulary``: ``build_query_category_map`` plus how often each
    (normalised) query was searched (the interest-ceiling driver of ``scripts/experiments``)."""
    df = events_frame(events)
    searched = Counter(df.loc[(df["event_type"] == "search") & (df["query"] != ""), "query"])
    return QueryVocabulary(_category_map(df, items), searched)


def _category_fn(category_of: CategoryOf | None) -> Callable[[str], str | None] | None:
    if category_of is None:
        return None
    if isinstance(category_of, Mapping):
        return lambda q: category_of.get(q)
    return category_of


def _norm(queries: Iterable[str] | None) -> list[str]:
    return [normalize_query(q) for q in queries or []]


def query_hits(generated: Sequence[Sequence[str]], truth: Sequence[Iterable[str]], k: int) -> np.ndarray:
    """Per record: 1.0 hit, 0.0 miss, nan when the truth is empty.

    >>> query_hits([["a", "B"], ["c"], ["x"]], [["b"], ["d"], []], k=2).tolist()
    [1.0, 0.0, nan]
    """
    out = np.full(len(generated), np.nan)
    for i, (gen, tru) in enumerate(zip(generated, truth, strict=True)):
        t = set(_norm(tru)) - {""}
        if t:
            out[i] = float(any(q in t for q in _norm(gen[:k])))
    return out


def category_hits(generated, truth, k: int, category_of: CategoryOf) -> np.ndarray:
    """Per record: 1.0 / 0.0, nan when no truth query has a known category."""
    cat = _category_fn(category_of)
    out = np.full(len(generated), np.nan)
    for i, (gen, tru) in enumerate(zip(generated, truth, strict=True)):
        t = {c for c in (cat(q) for q in _norm(tru)) if c}
        if t:
            out[i] = float(any(cat(q) in t for q in _norm(gen[:k])))
    return out


def unique_categories(generated, k: int, category_of: CategoryOf) -> np.ndarray:
    cat = _category_fn(category_of)
    return np.array([len({c for c in (cat(q) for q in _norm(g[:k])) if c}) for g in generated], dtype=np.float64)


def semantic_similarity(generated, truth, k: int, encoder: Encoder | None = None) -> np.ndarray:
    """Per record: mean over the first k generated queries of the max cosine to a truth query
    (nan when either list is empty). All distinct strings are encoded once."""
    gens = [[q for q in _norm(g[:k]) if q] for g in generated]
    trus = [[q for q in _norm(t) if q] for t in truth]
    vocab = sorted({q for lst in gens + trus for q in lst})
    out = np.full(len(generated), np.nan)
    if not vocab:
        return out
    if encoder is None:
        encoder = encode_texts
    emb = np.asarray(encoder(vocab), dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    row = {q: i for i, q in enumerate(vocab)}
    for i, (g, t) in enumerate(zip(gens, trus, strict=True)):
        if g and t:
            sims = emb[[row[q] for q in g]] @ emb[[row[q] for q in t]].T  # (n_gen, n_truth)
            out[i] = float(sims.max(axis=1).mean())
    return out


def novel_hits(generated, truth, own, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per record: ``(hits, novel)``: how many distinct truth queries the first k generated
    queries hit, and how many of those are not in ``own`` (the user's own earlier searches).

    >>> novel_hits([["a", "b", "c"]], [["a", "c", "d"]], [["a"]], k=3)
    (array([2.]), array([1.]))
    """
    hits, novel = np.zeros(len(generated)), np.zeros(len(generated))
    for i, (gen, tru, mine) in enumerate(zip(generated, truth, own, strict=True)):
        matched = set(_norm(gen[:k])) & (set(_norm(tru)) - {""})
        hits[i], novel[i] = len(matched), len(matched - set(_norm(mine)))
    return hits, novel


def caching_encoder(encoder: Encoder | None = None) -> Encoder:
    """``encoder`` (MiniLM by default) remembering every string's vector, so that scoring several
    methods' lists on the same samples encodes each distinct query once.

    >>> calls = []
    >>> enc = caching_encoder(lambda xs: (calls.append(list(xs)), np.ones((len(xs), 2)))[1])
    >>> enc(["a", "b"]).shape, enc(["b", "c"]).shape, calls
    ((2, 2), (2, 2), [['a', 'b'], ['c']])
    """
    base = encoder or encode_texts
    cache: dict[str, np.ndarray] = {}

    def encode(texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, v in zip(missing, np.asarray(base(missing), dtype=np.float32), strict=True):
                cache[t] = v
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)

    return encode


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _user_index(users: Sequence) -> np.ndarray:
    """Per record, the number of its user (records without a user id are users of their own)."""
    ids = [("user", u) if u is not None else ("record", i) for i, u in enumerate(users)]
    return np.unique(np.array([f"{a}\x00{b}" for a, b in ids], dtype=object), return_inverse=True)[1]


def bootstrap_draws(users: Sequence, n: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(n, n_users)`` multiplicities of a user bootstrap of ``users`` (one entry per record).
    The same user list and seed give the same draws, so methods scored on the same records pair."""
    n_users = int(_user_index(users).max()) + 1 if len(users) else 0
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n) if n_users else np.zeros((n, 0))


def bootstrap_interval(values: np.ndarray, users: Sequence, level: float = 0.95, n: int = BOOTSTRAP,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (nan = not counted) under a user bootstrap.

    >>> bootstrap_interval(np.array([1.0, 1.0, 1.0]), ["a", "b", "c"])
    (1.0, 1.0)
    """
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan"), float("nan")
    idx = _user_index(list(users))
    draws = bootstrap_draws(list(users), n, seed)  # (n, n_users)
    n_users = draws.shape[1]
    sums = np.bincount(idx[keep], weights=values[keep], minlength=n_users)
    counts = np.bincount(idx[keep], minlength=n_users).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws @ sums) / (draws @ counts)
    means = means[~np.isnan(means)]
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_difference(a: np.ndarray, b: np.ndarray, users: Sequence, level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` (per-record hits of two methods on the same records; records where
    either is nan left out) with its user-bootstrap interval.

    >>> paired_difference(np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0]), list("abcd"))["delta"]
    0.5
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_interval(d, users, level)
    return {"delta": _mean(d), "lo": lo, "hi": hi, "n": int((~np.isnan(d)).sum())}


def per_record(
    records: Sequence[EvalRecord],
    ks: Sequence[int] = DEFAULT_KS,
    category_of: CategoryOf | None = None,
    encoder: Encoder | None = None,
    semantic: bool = True,
) -> dict[str, np.ndarray]:
    """Every metric of :func:`evaluate_records` per record (nan = not counted), plus the
    ``hits@K`` / ``novel@K`` counts behind serendipity."""
    gen = [list(r.generated) for r in records]
    tru = [list(r.truth) for r in records]
    own = [list(r.own_queries) for r in records]
    per: dict[str, np.ndarray] = {}
    for k in ks:
        per[f"query_hr@{k}"] = query_hits(gen, tru, k)
        hits, novel = novel_hits(gen, tru, own, k)
        per[f"hits@{k}"], per[f"novel@{k}"] = hits, novel
        per[f"novel_hr@{k}"] = np.where(np.isnan(per[f"query_hr@{k}"]), np.nan, (novel > 0).astype(np.float64))
        if category_of is not None:
            per[f"cate_hr@{k}"] = category_hits(gen, tru, k, category_of)
            per[f"unique_cates@{k}"] = unique_categories(gen, k, category_of)
        if semantic:
            per[f"semantic_sim@{k}"] = semantic_similarity(gen, tru, k, encoder)
    per["malformed_rate"] = np.array([float(r.malformed) for r in records])
    return per


def group_masks(records: Sequence[EvalRecord]) -> dict[str, np.ndarray]:
    """``all`` / ``active`` (a search in the history) / ``cold_start`` (none) record masks."""
    active = np.array([bool(r.own_queries) for r in records], dtype=bool)
    return {"all": np.ones(len(records), dtype=bool), "active": active, "cold_start": ~active}


def summarise(per: Mapping[str, np.ndarray], records: Sequence[EvalRecord], ks: Sequence[int],
              intervals: bool = True) -> dict[str, dict[str, float]]:
    """``{group: {metric: value}}`` of per-record metrics (:func:`per_record`)."""
    users = [r.user_id for r in records]
    results: dict[str, dict[str, float]] = {}
    for group, mask in group_masks(records).items():
        res = {"n_users": float(mask.sum())}
        group_users = [u for u, m in zip(users, mask, strict=True) if m]
        for name, values in per.items():
            if name.startswith(("hits@", "novel@")):
                continue
            res[name] = _mean(values[mask])
            if intervals and name.startswith("query_hr@"):
                res[f"{name}_lo"], res[f"{name}_hi"] = bootstrap_interval(values[mask], group_users)
        for k in ks:
            hits = per[f"hits@{k}"][mask].sum()
            res[f"novel_share@{k}"] = float(per[f"novel@{k}"][mask].sum() / hits) if hits else float("nan")
        results[group] = res
    return results


def evaluate_records(
    records: Sequence[EvalRecord],
    ks: Sequence[int] = DEFAULT_KS,
    category_of: CategoryOf | None = None,
    encoder: Encoder | None = None,
    semantic: bool = True,
    intervals: bool = True,
) -> dict[str, dict[str, float]]:
    """``{group: {metric: value}}`` for ``all`` / ``active`` / ``cold_start``; category metrics
    only with ``category_of``, similarity only with ``semantic`` (``encoder`` defaults to MiniLM),
    bootstrap intervals of Query HR@K with ``intervals``.
    """
    return summarise(per_record(records, ks, category_of, encoder, semantic), records, ks, intervals)


def _cell(values: Mapping[str, float], m: str) -> str:
    v = values.get(m)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if m.startswith("n_"):
        return str(int(v))
    lo, hi = values.get(f"{m}_lo"), values.get(f"{m}_hi")
    if lo is not None and hi is not None and not (np.isnan(lo) or np.isnan(hi)):
        return f"{float(v):.4f} [{float(lo):.3f}, {float(hi):.3f}]"
    return f"{float(v):.4f}"


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per (method, group), from ``{method: {group: {metric: v}}}``; a
    metric with ``<metric>_lo`` / ``_hi`` beside it shows its interval.

    >>> print(markdown_table({"pop": {"all": {"n_users": 2.0, "query_hr@10": 0.5, "query_hr@10_lo": 0.0,
    ...                                       "query_hr@10_hi": 1.0}}}))
    | method | group | n_users | query_hr@10 |
    |---|---|---|---|
    | pop | all | 2 | 0.5000 [0.000, 1.000] |
    """
    if metrics is None:
        metrics = list(dict.fromkeys(m for groups in results.values() for g in groups.values() for m in g))
    metrics = [m for m in metrics if not m.endswith(("_lo", "_hi"))]
    lines = ["| method | group | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for method, groups in results.items():
        for group, values in groups.items():
            lines.append(f"| {method} | {group} | " + " | ".join(_cell(values, m) for m in metrics) + " |")
    return "\n".join(lines)


def plot_hit_rates(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | Path,
    group: str = "all",
    ks: Sequence[int] = DEFAULT_KS,
) -> Path:
    """Bar charts of Query HR@K and Category HR@K per method (one panel each) to a PNG."""
    matplotlib.use("Agg")
    methods = list(results)
    panels = [("query_hr", "Query HR@K"), ("cate_hr", "Category HR@K")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 1.2 * len(methods), 4), squeeze=False)
    width = 0.8 / max(len(ks), 1)
    x = np.arange(len(methods))
    for ax, (prefix, title) in zip(axes[0], panels, strict=True):
        for j, k in enumerate(ks):
            vals = [results[m].get(group, {}).get(f"{prefix}@{k}", np.nan) for m in methods]
            bars = ax.bar(x + (j - (len(ks) - 1) / 2) * width, np.nan_to_num(vals), width, label=f"K={k}")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_title(f"{title} ({group})")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
