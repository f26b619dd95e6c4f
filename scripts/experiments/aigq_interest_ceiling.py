"""How far interest estimation can take log-worded lists on synthetic data (analysis, ours).

On the samples ``run_eval`` scores (Direct samples of ``--ds``, truth = the user's searches from
the sample's time to the end of its day), lists are built the way ``aigq.generate.wording: log``
builds them — an interest weight per category spread over the category's queries in the click
log before the samples by their share of its searches (``log_worded`` below; the library's ``aigq.generate.wording: log`` was removed,
see docs/experiments.md) — with the
interest weights taken from:

- ``true_interests``: the generator's own interest mixture of the user on ``--ds``
  (``raw/true_interests``, which the pipeline never reads): the ceiling of the decoding for a
  policy that knew the user's interests exactly;
- ``history_categories``: how often each category occurs in the prompt's behaviour window
  (searched queries by the log's category, clicked/carted/bought items by their leaf category) —
  a counting heuristic with the policy's own inputs and no model.

Prints one JSON line with Query HR@10/@30 of each. Usage::

    python scripts/experiments/aigq_interest_ceiling.py --data-root /tmp/aigq_12k --ds 2026-11-06 --max-samples 1000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aigq_model.evaluate import build_query_vocabulary, query_hits  # noqa: E402
from aigq_model.interests import QueryVocabulary  # noqa: E402
from aigq_model.parsing import normalize_query  # noqa: E402
from aigq_model.prompts import history_window, sample_field  # noqa: E402
from aigq_model.run_eval import eval_samples, events_before, read_events, read_items, sample_truth  # noqa: E402
from common.config import load_config  # noqa: E402
from common.paths import previous_ds  # noqa: E402


# --- the log wording of the former aigq.generate.wording: log (moved from aigq_model.interests) ---
def log_worded(candidates: Sequence[tuple[str, float]], vocabulary: QueryVocabulary) -> list[str]:
    """Interest-marginal ranking (``Decoding.wording`` ``log``, ours) of the model's candidate
    queries with their log-probabilities: an interest's mass is the model's probability summed over
    its candidates of one category, and every query of that category in the log scores mass x its
    share of the category's searches (``QueryVocabulary.members``); a candidate the log does not
    know keeps its own probability. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> log_worded([("b1", math.log(0.5)), ("a1", math.log(0.3)), ("a2", math.log(0.2)), ("new", math.log(0.1))], v)
    ['b1', 'a2', 'a1', 'new']
    """
    mass: dict[object, float] = {}
    for text, logp in candidates:
        q = normalize_query(text)
        if not q:
            continue
        cat = vocabulary(q)
        key = ("?", q) if cat is None else cat
        mass[key] = mass.get(key, 0.0) + math.exp(logp)
    return interest_worded(mass, vocabulary)


def interest_worded(mass: Mapping[object, float], vocabulary: QueryVocabulary) -> list[str]:
    """Queries ranked by interest mass x share: ``mass`` maps a category to its weight (every
    query of the category in the log scores weight x ``QueryVocabulary.members`` share) or
    ``("?", query)`` to the weight of a query the log does not know. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> interest_worded({"A": 0.5, "B": 0.2, ("?", "new"): 0.1}, v)  # a2: 0.5 x 6/8, b1: 0.2, a1: 0.5 x 2/8
    ['a2', 'b1', 'a1', 'new']
    """
    scored: dict[str, float] = {}
    for key, m in mass.items():
        members = [(key[1], 1.0)] if isinstance(key, tuple) else vocabulary.members(key)
        for q, share in members:
            scored[q] = max(scored.get(q, 0.0), m * share)
    return sorted(scored, key=lambda q: (-scored[q], q))


def behaviour_interests(sample, vocabulary: QueryVocabulary, max_history: int = 20) -> list:
    """The interest of every behaviour of the prompt's window, in the prompt's numbering (index
    i is element i - 1): a search's query category in the log (``("?", query)`` when the log does
    not know the query), an item behaviour's leaf ``category``; ``None`` when neither is known.

    >>> v = QueryVocabulary({"red shoe": "shoes"}, {"red shoe": 4})
    >>> behaviour_interests({"history": [{"event_type": "search", "text": "Red  Shoe"},
    ...     {"event_type": "click", "text": "Nike", "category": "shoes"},
    ...     {"event_type": "search", "text": "tent"}, {"event_type": "buy", "text": "x"}]}, v)
    ['shoes', 'shoes', ('?', 'tent'), None]
    """
    shown, _ = history_window(sample_field(sample, "history"), max_history)
    out: list = []
    for b in shown:
        if b.get("event_type") == "search":
            q = normalize_query(b.get("text"))
            out.append((vocabulary(q) or ("?", q)) if q else None)
        else:
            out.append(b.get("category") or None)
    return out


def history_weights(sample, vocabulary, max_history: int = 20) -> Counter:
    """Category -> count of the behaviours in the prompt's window that point to it
    (``behaviour_interests``; searches the log does not know are not counted)."""
    return Counter(k for k in behaviour_interests(sample, vocabulary, max_history) if isinstance(k, str))


def worded(weights, vocabulary, k: int) -> list[str]:
    """``log_worded`` with given category weights (as candidates: one per category, its best query).

    >>> from aigq_model.interests import QueryVocabulary
    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 3, "a2": 1, "b1": 0})
    >>> worded({"A": 1.0, "B": 0.9, "C": 5.0}, v, 3)  # A: 1.0 x 4/6, 1.0 x 2/6; B: 0.9 x 1/1
    ['b1', 'a1', 'a2']
    """
    cands = []
    for cat, w in weights.items():
        members = vocabulary.members(cat)
        if members and w > 0:
            cands.append((members[0][0], math.log(w)))
    return log_worded(cands, vocabulary)[:k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--max-samples", type=int, default=1000)
    args = parser.parse_args(argv)
    root = args.data_root
    days = int(((load_config().get("aigq") or {}).get("eval") or {}).get("days", 7))
    samples = eval_samples(root, args.ds, "direct", "all", args.max_samples, 0, 1)
    if not samples:
        raise SystemExit(f"no Direct samples of {args.ds} under {root}")
    events = read_events(root, [*previous_ds(args.ds, days - 1), args.ds])
    truth = sample_truth(samples, events, "issued")
    vocab = build_query_vocabulary(events_before(events, min(s["event_time"] for s in samples)), read_items(root, args.ds))
    interests_path = Path(root) / "raw" / "true_interests" / f"ds={args.ds}"
    if not interests_path.exists():
        raise SystemExit(f"{interests_path} not found: the ceiling needs the synthetic generator's true interests")
    mixture: dict[str, Counter] = {}
    for r in pq.read_table(interests_path).to_pylist():
        mixture.setdefault(r["user_id"], Counter())[r["category"]] = r["weight"]
    lists = {
        "true_interests": [worded(mixture.get(s["user_id"], Counter()), vocab, 30) for s in samples],
        "history_categories": [worded(history_weights(s, vocab), vocab, 30) for s in samples],
    }
    out = {"ds": args.ds, "n_samples": len(samples), "vocabulary": len(vocab)}
    for name, ls in lists.items():
        out[name] = {f"query_hr@{k}": round(float(np.nanmean(query_hits(ls, truth, k))), 4) for k in (10, 30)}
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
