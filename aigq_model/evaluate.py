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
- Groups: ``all``, ``active`` (non-empty history), ``cold_start`` (empty history).
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

CategoryOf = Mapping[str, str] | Callable[[str], str | None]
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class EvalRecord:
    generated: list[str]
    truth: list[str]
    history_len: int = 0
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
    (normalised) query was searched, for ``aigq.generate.wording: log``."""
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


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def evaluate_records(
    records: Sequence[EvalRecord],
    ks: Sequence[int] = DEFAULT_KS,
    category_of: CategoryOf | None = None,
    encoder: Encoder | None = None,
    semantic: bool = True,
) -> dict[str, dict[str, float]]:
    """``{group: {metric: value}}`` for ``all`` / ``active`` / ``cold_start``; category metrics
    only with ``category_of``, similarity only with ``semantic`` (``encoder`` defaults to MiniLM).
    """
    gen = [list(r.generated) for r in records]
    tru = [list(r.truth) for r in records]
    per: dict[str, np.ndarray] = {}
    for k in ks:
        per[f"query_hr@{k}"] = query_hits(gen, tru, k)
        if category_of is not None:
            per[f"cate_hr@{k}"] = category_hits(gen, tru, k, category_of)
            per[f"unique_cates@{k}"] = unique_categories(gen, k, category_of)
        if semantic:
            per[f"semantic_sim@{k}"] = semantic_similarity(gen, tru, k, encoder)
    per["malformed_rate"] = np.array([float(r.malformed) for r in records])
    active = np.array([r.history_len > 0 for r in records], dtype=bool)
    masks = {"all": np.ones(len(records), dtype=bool), "active": active, "cold_start": ~active}
    results: dict[str, dict[str, float]] = {}
    for group, mask in masks.items():
        res = {"n_users": float(mask.sum())}
        for name, values in per.items():
            res[name] = _mean(values[mask])
        results[group] = res
    return results


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per (method, group), from ``{method: {group: {metric: v}}}``.

    >>> print(markdown_table({"pop": {"all": {"n_users": 2.0, "query_hr@10": 0.5}}}))
    | method | group | n_users | query_hr@10 |
    |---|---|---|---|
    | pop | all | 2 | 0.5000 |
    """
    if metrics is None:
        metrics = list(dict.fromkeys(m for groups in results.values() for g in groups.values() for m in g))
    lines = ["| method | group | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for method, groups in results.items():
        for group, values in groups.items():
            cells = []
            for m in metrics:
                v = values.get(m)
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    cells.append("-")
                elif m.startswith("n_"):
                    cells.append(str(int(v)))
                else:
                    cells.append(f"{float(v):.4f}")
            lines.append(f"| {method} | {group} | " + " | ".join(cells) + " |")
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
