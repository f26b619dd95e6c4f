"""x2q (AIGQ-Think): trigger behaviour -> ranked queries, ``S = alpha * S_rel + (1 - alpha) * S_eff``.

The registered Think policy (``aigq_think_grpo``, else ``aigq_think``) writes, for every active
user (prompts as in :mod:`export.u2q`), interest points ``<think>[i,j] ...</think><q> a<q> b``.
Each trigger index names a behaviour of the prompt window; its key is ``item:<item_id>`` for
item events and ``query:<normalised query>`` for searches. Every (trigger, query) link of a
user adds ``w / log2(2 + rank)`` (``rank`` = the query's 0-based position in the user's cleaned
list) to the pair's strength, with ``w = 1`` when the model named the trigger and
``w = export.x2q_overlap_weight`` when the query came without a usable trigger (a ``[]`` new
interest point, a malformed output, a popularity top-up) and is attributed to the window's
behaviours sharing a word (two or more characters) with it — the rule that labelled the Think
training targets (``jobs/build_samples.with_triggers``).

- ``S_rel(x, q)`` = the pair's strength / the strongest pair of trigger ``x`` (in [0, 1]);
- ``S_eff(q)`` = ``(1 - w) * popularity + w * ctr`` with popularity = ``log1p(searches of q in
  the lookback window) / log1p(max)`` and ctr = the mean CTR the registered ``aigq_ctr`` model
  predicts for q over the users it was generated for (``w = export.x2q_ctr_weight``; ``w = 0``
  and ``ctr`` null when no CTR model is registered);
- ``S = export.x2q_alpha * S_rel + (1 - alpha) * S_eff``; per trigger the top ``export.x2q_k``
  queries by S (ties by query), pairs with fewer than ``export.x2q_min_support`` users dropped.

No registered Think policy: nothing is written, the result says ``skipped`` (the DAG task is
then skipped). Gates: at least one row, null rates (``ctr``/``ctr_model_version`` may be null),
duplicate (trigger, rank) and (trigger, query), scores in [0, 1], zero block-listed queries,
list lengths in [``min_list_len``, ``x2q_k``].

Usage::

    python -m export.x2q --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--run-id ID]
        [--batch-users N] [--max-new-tokens N]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

import pyarrow.compute as pc

from aigq_model.ctr_model import context_from_sample, load_ctr
from aigq_model.generate import generate_lists
from aigq_model.parsing import normalize_query, parse_think
from aigq_model.prompts import history_window
from common.publish import staged_partitions
from common.schemas import UNIQUE_KEYS
from export import gates, models
from export.data import ExportConfig, ExportInputError, anchor_time, build_samples, chunks, load_inputs
from export.publish import apply_retention, arg_parser, content_hash, fault_hook, run_main, settings
from export.staging import StagedTable

logger = logging.getLogger(__name__)

TABLE = "x2q"
POLICIES = ("aigq_think_grpo", "aigq_think")
KEYS = list(UNIQUE_KEYS[TABLE])  # trigger_key, rank
_WORD_RE = re.compile(r"[\s\W_]+", re.UNICODE)


def words(text: object) -> set[str]:
    """Lower-case words of two or more characters (``jobs.build_samples.TOKENS_SQL``).

    >>> sorted(words("Red running-shoe, a"))
    ['red', 'running', 'shoe']
    """
    if not isinstance(text, str):
        return set()
    return {w for w in _WORD_RE.split(text.lower()) if len(w) >= 2}


def trigger_of(behaviour: Mapping) -> tuple[str, str, str] | None:
    """``(key, type, value)`` of a history behaviour: its item id, or its normalised query.

    >>> trigger_of({"event_type": "search", "text": " Red  Shoe"})
    ('query:red shoe', 'query', 'red shoe')
    >>> trigger_of({"event_type": "click", "item_id": "i7", "text": "x"})
    ('item:i7', 'item', 'i7')
    """
    if behaviour.get("event_type") == "search":
        q = normalize_query(behaviour.get("text"))
        return (f"query:{q}", "query", q) if q else None
    item = behaviour.get("item_id")
    return (f"item:{item}", "item", str(item)) if item else None


def links(gen, sample: Mapping, max_history: int, overlap_weight: float) -> list[tuple[tuple, str, float, str]]:
    """``[(trigger, query, contribution, attribution)]`` of one user's Think output."""
    shown, _ = history_window(sample.get("history"), max_history)
    if not shown or not gen.queries:
        return []
    rank = {q: r for r, q in enumerate(gen.queries)}
    model_queries = set(gen.queries[: gen.n_model])
    named: dict[str, set[int]] = defaultdict(set)
    if gen.n_model and gen.raw_text:
        for point in parse_think(gen.raw_text).points:
            for q in point.queries:
                q = normalize_query(q)
                if q in model_queries:
                    named[q].update(i for i in point.triggers if 1 <= i <= len(shown))
    shown_words = [words(b.get("text")) for b in shown]
    out = []
    for q, r in rank.items():
        discount = 1.0 / math.log2(2 + r)
        if named.get(q):
            idx, weight, how = sorted(named[q]), 1.0, "model"
        else:
            qw = words(q)
            idx = [i + 1 for i, w in enumerate(shown_words) if w & qw]
            weight, how = overlap_weight, "overlap"
        seen = set()
        for i in idx:
            trig = trigger_of(shown[i - 1])
            if trig is None or trig[0] in seen:
                continue
            seen.add(trig[0])
            out.append((trig, q, weight * discount, how))
    return out


class X2QAccumulator:
    """Pair strengths, supports and CTR sums across batches (memory ~ distinct pairs)."""

    def __init__(self):
        self.strength: dict[tuple[str, str], float] = defaultdict(float)
        self.users: dict[tuple[str, str], int] = defaultdict(int)
        self.by_model: dict[tuple[str, str], bool] = defaultdict(bool)
        self.triggers: dict[str, tuple[str, str]] = {}
        self.ctr_sum: dict[str, float] = defaultdict(float)
        self.ctr_n: dict[str, int] = defaultdict(int)

    def add(self, user_links: Sequence[tuple[tuple, str, float, str]]) -> None:
        per_user: dict[tuple[str, str], tuple[float, bool]] = {}
        for (key, ttype, value), q, c, how in user_links:
            self.triggers[key] = (ttype, value)
            s, m = per_user.get((key, q), (0.0, False))
            per_user[(key, q)] = (max(s, c), m or how == "model")
        for pair, (c, m) in per_user.items():
            self.strength[pair] += c
            self.users[pair] += 1
            self.by_model[pair] |= m

    def add_ctr(self, queries: Sequence[str], probs: Sequence[float]) -> None:
        for q, p in zip(queries, probs, strict=True):
            self.ctr_sum[q] += float(p)
            self.ctr_n[q] += 1


def score_pairs(acc: X2QAccumulator, popularity: Mapping[str, int], alpha: float, ctr_weight: float, k: int,
                min_support: int = 1, with_ctr: bool = False) -> list[dict]:
    """Ranked rows (without run metadata) from the accumulated pairs.

    >>> acc = X2QAccumulator()
    >>> acc.add([(("item:i1", "item", "i1"), "shoe", 1.0, "model"), (("item:i1", "item", "i1"), "hat", 0.5, "overlap")])
    >>> [(r["query"], r["rank"], round(r["score"], 3)) for r in score_pairs(acc, {"shoe": 1, "hat": 1}, 0.5, 0.0, 10)]
    [('shoe', 1, 1.0), ('hat', 2, 0.75)]
    """
    max_pop = max(popularity.values(), default=0)
    log_max = math.log1p(max_pop) if max_pop > 0 else 1.0
    by_trigger: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (key, q), s in acc.strength.items():
        if acc.users[(key, q)] >= min_support:
            by_trigger[key].append((q, s))
    rows = []
    for key in sorted(by_trigger):
        pairs = by_trigger[key]
        top = max(s for _, s in pairs)
        scored = []
        for q, s in pairs:
            pop = math.log1p(popularity.get(q, 0)) / log_max
            ctr = acc.ctr_sum[q] / acc.ctr_n[q] if with_ctr and acc.ctr_n.get(q) else None
            w = ctr_weight if ctr is not None else 0.0
            eff = (1 - w) * pop + w * (ctr or 0.0)
            rel = s / top if top > 0 else 0.0
            scored.append((alpha * rel + (1 - alpha) * eff, q, rel, eff, pop, ctr))
        scored.sort(key=lambda x: (-round(x[0], 12), x[1]))
        ttype, value = acc.triggers[key]
        for r, (score, q, rel, eff, pop, ctr) in enumerate(scored[:k]):
            rows.append({"trigger_key": key, "trigger_type": ttype, "trigger_value": value, "rank": r + 1,
                         "query": q, "score": min(max(score, 0.0), 1.0), "s_rel": rel, "s_eff": eff,
                         "popularity": pop, "ctr": ctr, "support": acc.users[(key, q)],
                         "attribution": "model" if acc.by_model[(key, q)] else "overlap"})
    return rows


def search_counts(events) -> dict[str, int]:
    """Searches per normalised query in the events."""
    if events is None or events.num_rows == 0:
        return {}
    searches = events.filter(pc.equal(events["event_type"], "search"))["query"].to_pylist()
    out: dict[str, int] = defaultdict(int)
    for q in searches:
        n = normalize_query(q)
        if n:
            out[n] += 1
    return dict(out)


def gate_x2q(table, ex, blocked) -> dict:
    return gates.run_gates({
        "min_rows": gates.check_min_rows(table, 1),
        "null_rates": gates.check_null_rates(table, {"*": ex.max_null_rate, "ctr": 1.0, "ctr_model_version": 1.0}),
        "duplicate_keys": gates.check_duplicates(table, KEYS) + gates.check_duplicates(table, ["trigger_key", "query"]),
        "score_range": sum((gates.check_range(table, c, 0.0, 1.0) for c in ("score", "s_rel", "s_eff")), []),
        "blocklist": gates.check_blocklist(table, blocked),
        "list_lengths": gates.check_list_lengths(table, ["trigger_key"], ex.min_list_len, ex.x2q_k),
    })


def load_ctr_model(root: str, ds: str | None = None):
    """``(scorer, version)`` of the registered ``aigq_ctr``, ``(None, None)`` when none is
    registered; a registered but unreadable model raises :class:`ExportInputError`."""
    reg = models.resolve_registered(root, ("aigq_ctr",), ds)
    if reg is None:
        logger.info("no registered aigq_ctr: S_eff = popularity only")
        return None, None

    try:
        return load_ctr(reg.path), reg.version
    except Exception as exc:
        raise ExportInputError(f"cannot load CTR model aigq_ctr/{reg.version} at {reg.path}: {exc}") from exc


def export_x2q(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               max_new_tokens: int | None = None) -> dict:
    """Generate Think outputs, score the trigger -> query pairs, gate and publish ``exports/x2q``."""
    ex = ExportConfig.from_config(cfg, batch_users=batch_users)
    reg = models.resolve_registered(root, POLICIES, ds)
    if reg is None:
        reason = f"no registered AIGQ-Think policy ({' / '.join(POLICIES)}): x2q not written for {ds}"
        logger.warning("%s", reason)
        return {"table": TABLE, "skipped": True, "reason": reason}
    style, max_history = models.policy_settings(reg)
    model, tok = models.load_policy(reg)
    ctr, ctr_version = load_ctr_model(root, ds)
    decoding, gen_batch = models.decoding(cfg, ex.generate, max_new_tokens)
    blocked = models.blocklist(cfg, ex.blocklist)
    inputs = load_inputs(root, ds, ex)
    known = models.known_queries(decoding, inputs, ds, root)  # constrained decoding's vocabulary
    popular = models.popular_queries(inputs.events, ds, ex.u2q_k, blocked)
    acc = X2QAccumulator()
    counts = {"active_users": len(inputs.active), "users_with_links": 0, "model_links": 0, "overlap_links": 0,
              "malformed": 0}
    n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
    t0 = time.perf_counter()
    for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
        samples = build_samples(inputs.log, users, inputs.profile, ds, ex.max_history)
        gens = generate_lists(model, tok, samples, kind="think", k=ex.u2q_k, batch_size=gen_batch,
                              decoding=decoding, fallback=popular, blocklist=blocked, style=style,
                              max_history=max_history, known_queries=known)
        for sample, gen in zip(samples, gens, strict=True):
            user_links = links(gen, sample, max_history, ex.x2q_overlap_weight)
            acc.add(user_links)
            counts["users_with_links"] += bool(user_links)
            counts["model_links"] += sum(h == "model" for *_, h in user_links)
            counts["overlap_links"] += sum(h == "overlap" for *_, h in user_links)
            counts["malformed"] += bool(gen.model_called and gen.malformed)
            if ctr is not None and user_links:
                queries = sorted({q for _, q, _, _ in user_links})
                context = context_from_sample(sample, ctr.config.max_recent)
                acc.add_ctr(queries, ctr.predict([context] * len(queries), queries))
        done = min((i + 1) * ex.batch_users, len(inputs.active))
        logger.info("x2q batch %d/%d: %d users (%d/%d, %.1f users/s), %d pairs so far", i + 1, n_batches,
                    len(users), done, len(inputs.active), done / max(time.perf_counter() - t0, 1e-9),
                    len(acc.strength))
        fault_hook(i)
    rows = score_pairs(acc, search_counts(inputs.events), ex.x2q_alpha, ex.x2q_ctr_weight, ex.x2q_k,
                       ex.x2q_min_support, with_ctr=ctr is not None)
    meta = {"run_id": run_id, "model_name": reg.name, "model_version": reg.version,
            "ctr_model_version": ctr_version, "generated_at": anchor_time(ds)}
    manifest = {"run_id": run_id, "model": {"name": reg.name, "version": reg.version, "path": str(reg.path),
                                            "preferred": reg.preferred, "fallback_used": reg.fallback_used},
                "ctr_model": {"name": "aigq_ctr", "version": ctr_version} if ctr_version else None,
                "decoding": dataclasses.asdict(decoding), "alpha": ex.x2q_alpha, "ctr_weight": ex.x2q_ctr_weight,
                "overlap_weight": ex.x2q_overlap_weight, "event_days": inputs.event_days}
    with staged_partitions() as batch:
        staged = StagedTable(batch, root, TABLE, ds, manifest)
        for part in chunks(rows, 50_000):
            staged.write([{**r, **meta} for r in part])
        table = staged.read()
        results = gate_x2q(table, ex, blocked)
        manifest.update(counts=counts, rows=table.num_rows, triggers=len({r["trigger_key"] for r in rows}),
                        gates=results, content_hash=content_hash(table, KEYS),
                        generation_seconds=round(time.perf_counter() - t0, 2))
        gates.enforce(TABLE, results)
    deleted = apply_retention(root, TABLE, ex.keep_partitions, protect=ds)
    return {"table": TABLE, "path": str(staged.final), "rows": table.num_rows, "triggers": manifest["triggers"],
            "model": f"{reg.name}/{reg.version}", "fallback_policy": reg.fallback_used,
            "ctr_model": ctr_version, "counts": counts, "retention_deleted": deleted,
            "content_hash": manifest["content_hash"]}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__.splitlines()[0], coverage=False)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the decoding budget")

    def body(args):
        cfg, root, ds, run_id = settings(args)
        return export_x2q(cfg, root, ds, run_id, args.batch_users, args.max_new_tokens)

    return run_main("x2q", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
