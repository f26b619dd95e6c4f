"""Offline evaluation of an AIGQ model next to the non-LLM baselines, and the registration gate.

For the ``--split`` (default ``test``) samples of ``ds`` (``aigq_direct_sft`` for direct/plain
models, ``aigq_think_sft`` for think), the model generates a list of ``max(ks)`` queries
(``generate.generate_lists``, topped up with popularity before the sample's time; cold-start
users get the popularity list). The baselines (popularity, co-occurrence, EBR, own history) index
the clean behaviour log of the ``eval.days`` days ending at ``ds`` and use only events strictly
before each sample's time. Truth = the queries the user searched from the sample's time to the
end of its day (``--truth``); metrics as in ``aigq_model.evaluate`` (Query/Category HR@K with
95 % user-bootstrap intervals, semantic similarity, unique categories, serendipity, malformed
share), per group ``all`` / ``active`` (a search in the history) / ``cold_start`` (none).

The exported list (method ``hybrid``, what u2q serves): the model's list merged with the user's
own searches and the best heuristic by the merge policy (``aigq_model.hybrid``) fitted on valid
rows the scoring does not see and training did not use (the window's valid rows with ``--split
test``, else the valid and test rows of the ``--sample-days`` days before the window). ``heuristic_merge`` is the same merge fitted without
the policy (own searches and heuristic lists only): a heuristic, so the policy must add to what
the merge alone gives. ``info.exported`` holds both merges, the best heuristic per Query HR@K
(of the baselines and ``heuristic_merge``) and the model's and the hybrid's paired difference to
it (the gate's input).

Writes ``metrics.json`` into the model folder and ``<root>/reports/aigq/<ds>/<name>.md`` with a
hit-rate plot beside it; prints one JSON line.

Usage::

    python -m aigq_model.run_eval --ds 2026-11-03 --model-dir DIR [--data-root R] [--split test]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from aigq_model.baselines import BASELINES, PopularityBaseline, own_queries
from aigq_model.evaluate import (
    EvalRecord,
    build_query_category_map,
    caching_encoder,
    markdown_table,
    paired_difference,
    per_record,
    plot_hit_rates,
    summarise,
    truth_queries,
    window_truth,
)
from aigq_model.generate import Decoding, blocklist_from_config, generate_lists
from aigq_model.hybrid import fit_and_merge
from aigq_model.load import load_aigq
from aigq_model.train_sft import read_sft_rows
from aigq_model.trie import searched_queries
from common.arrow_io import read_partition
from common.config import load_config
from common.hf_offline import quiet_offline_hf
from common.logging_setup import setup_logging
from common.paths import check_ds, is_published, latest_published_ds, partition_path, previous_ds
from common.registry import read_manifest
from common.steps import emit_result, write_json_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SPLITS = ("test", "valid", "train", "all")
HYBRID = "hybrid"  # the exported u2q list (aigq_model.hybrid)
HEURISTIC_MERGE = "heuristic_merge"  # the user's own searches merged with the heuristics, no policy
DEFAULT_BASELINES = ("popularity", "cooccurrence", "ebr", "own_history+popularity")


def read_events(data_root: str | Path, ds_list: Sequence[str]):
    """The clean ``behavior_events`` of the published days in ``ds_list`` as one pyarrow Table."""
    parts = [
        read_partition(data_root, "clean", "behavior_events", ds)
        for ds in ds_list
        if is_published(partition_path(data_root, "clean", "behavior_events", ds))
    ]
    if not parts:
        raise FileNotFoundError(f"no clean behavior_events for {ds_list[0]}..{ds_list[-1]} under {data_root}")
    return pa.concat_tables(parts, promote_options="default")


def read_items(data_root: str | Path, ds: str):
    items_ds = latest_published_ds(data_root, "clean", "items", ds)
    return None if items_ds is None else read_partition(data_root, "clean", "items", items_ds)


def history_queries(sample: Mapping) -> int:
    """How many searches the sample's history holds."""
    return sum(1 for h in sample.get("history") or [] if h.get("event_type") == "search")


def eval_samples(
    data_root: str | Path,
    ds: str,
    kind: str,
    split: str,
    max_samples: int | None = None,
    min_history_queries: int = 0,
    days: int = 1,
) -> list[dict]:
    """The ``split`` rows of the ``days`` days ending at ``ds`` from the ``kind``'s sample table
    (``direct`` or ``think``; ``plain`` reads the Direct rows unexploded), keeping those whose
    history holds at least ``min_history_queries`` searches (1 = "users with at least 2 queries":
    one before, one after)."""
    ds_list = [*previous_ds(ds, days - 1), ds] if days > 1 else [ds]
    rows = read_sft_rows(
        data_root, ds_list, "direct" if kind == "plain" else kind, None if split == "all" else split
    )
    if min_history_queries:
        rows = [r for r in rows if history_queries(r) >= min_history_queries]
    return rows[:max_samples] if max_samples else rows


def _records(
    samples: Sequence[Mapping],
    lists: Sequence[Sequence[str]],
    truth: Sequence[Sequence[str]],
    malformed: Sequence[bool] | None = None,
):
    malformed = malformed or [False] * len(samples)
    return [
        EvalRecord(list(g), list(t), own_queries(s.get("history"), s["event_time"]), bool(m), s.get("user_id"))
        for s, g, t, m in zip(samples, lists, truth, malformed, strict=True)
    ]


TRUTHS = ("issued", "target")


def sample_truth(samples: Sequence[Mapping], events, truth: str = "issued") -> list[list[str]]:
    """``issued``: the queries each user searched from the sample's time to the end of its day
    (``evaluate.window_truth``); ``target``: the sample's training target list."""
    if truth == "issued":
        return window_truth(samples, events)
    if truth == "target":
        return [truth_queries(s) for s in samples]
    raise ValueError(f"truth must be one of {TRUTHS}, got {truth!r}")


def evaluate_model(
    model,
    tokenizer,
    samples: Sequence[Mapping],
    events,
    items=None,
    kind: str = "direct",
    name: str = "aigq",
    ks: Sequence[int] = (10, 30),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    semantic: bool = True,
    encoder=None,
    gen_config: Mapping | None = None,
    style: str = "compressed",
    max_history: int = 20,
    truth: str = "issued",
    fit_samples: Sequence[Mapping] = (),
) -> tuple[dict, dict]:
    """``(results, info)``: ``{method: {group: {metric: value}}}`` for the model, each baseline and
    ``hybrid`` (the list u2q exports: the model's merged with the user's own searches and a
    heuristic by the merge policy fitted on ``fit_samples``, the valid split), and facts
    (generation seconds, malformed share, share of slots filled by the model, the merge policy,
    the best heuristic and the exported list's paired difference to it)."""
    gen_config = dict(gen_config or {})
    k = max(ks)
    n_scored = len(samples)
    samples = [*samples, *fit_samples]  # one generation pass; the fit samples only fit the merge
    popularity = PopularityBaseline().fit(events)
    category_of = build_query_category_map(events, items) if items is not None else None
    decoding = Decoding.from_dict(gen_config)
    known = None
    if decoding.known_queries and samples:
        # decoding may only use the log before the samples (the scored day's searches are the truth)
        known = searched_queries(events_before(events, min(s["event_time"] for s in samples)))
    t0 = time.perf_counter()
    gens = generate_lists(
        model,
        tokenizer,
        samples,
        kind=kind,
        k=k,
        batch_size=int(gen_config.get("batch_size", 16)),
        decoding=decoding,
        fallback=lambda s: popularity.ranked(s["event_time"], k),
        blocklist=blocklist_from_config(gen_config),
        style=style,
        max_history=max_history,
        known_queries=known,
    )
    gen_seconds = time.perf_counter() - t0
    lists = {name: [g.queries for g in gens]}
    malformed = {name: [g.malformed for g in gens]}
    for b in baselines:
        rec = popularity if b == "popularity" else BASELINES[b]()
        if rec is not popularity:
            rec.fit(events)
        lists[b] = rec.recommend_many(samples, k=k)
    own = [own_queries(s.get("history"), s["event_time"]) for s in samples]
    heuristic_lists, fit_truth = {b: lists[b] for b in baselines}, sample_truth(samples[n_scored:], events, truth)
    merge_policy, fit, lists[HYBRID], sources = fit_and_merge(lists[name], own, heuristic_lists, fit_truth,
                                                              n_scored, k, min(ks))
    heuristics = list(baselines)
    if baselines:  # the same merge without the policy: a heuristic too, which the policy must beat
        h_plan, h_fit, lists[HEURISTIC_MERGE], _ = fit_and_merge([[] for _ in samples], own, heuristic_lists,
                                                                 fit_truth, n_scored, k, min(ks))
        heuristics.append(HEURISTIC_MERGE)
    samples, gens = samples[:n_scored], gens[:n_scored]
    lists = {m: ls[:n_scored] for m, ls in lists.items()}
    truths = sample_truth(samples, events, truth)
    encoder = caching_encoder(encoder) if semantic else encoder  # each distinct query encoded once
    per = {m: per_record(_records(samples, ls, truths, malformed.get(m, [])[:n_scored] or None), ks, category_of,
                         encoder, semantic) for m, ls in lists.items()}
    records = _records(samples, lists[name], truths)
    results = {m: summarise(p, records, ks) for m, p in per.items()}
    modelled = [g for g in gens if g.model_called]
    info = {
        "n_samples": len(samples),
        "exported": {"method": HYBRID, "merge": merge_policy.to_dict(), "fit": fit,
                     "slot_sources": dict(Counter(
                         "fallback" if s == "model" and q in g.queries[g.n_model:] else s
                         for g, qs, src in zip(gens, lists[HYBRID], sources, strict=True)
                         for q, s in zip(qs[:min(ks)], src[:min(ks)], strict=True))),
                     "heuristic_merge": h_plan.to_dict() if baselines else None,
                     "heuristic_merge_fit": h_fit if baselines else None,
                     # the same against the best single baseline (heuristic_merge left out)
                     "vs_best_baseline": versus_best_heuristic(per, results, [name, HYBRID, *heuristics[len(baselines):]],
                                                               baselines, records, ks) if baselines else None,
                     **versus_best_heuristic(per, results, [name, HYBRID], heuristics, records, ks)},
        "generation_seconds": round(gen_seconds, 2),
        "known_queries": decoding.known_queries,
        "known_query_count": None if known is None else len(known),
        "malformed_share": sum(g.malformed for g in modelled) / len(modelled) if modelled else None,
        "model_queries_mean": sum(g.n_model for g in modelled) / len(modelled) if modelled else None,
        "cold_start_share": sum(not r.own_queries for r in records) / len(records) if records else None,
        "truth": truth,
        "samples_with_truth": sum(bool(t) for t in truths),
    }
    return results, info


def versus_best_heuristic(per: Mapping[str, Mapping], results: Mapping, methods: Sequence[str],
                          baselines: Sequence[str], records: Sequence[EvalRecord], ks: Sequence[int]) -> dict:
    """``best_heuristic``: per Query HR@K, the baseline with the highest figure on these samples
    (group ``all``); ``vs_best_heuristic``: each of ``methods`` minus it, paired, with its user
    bootstrap interval (``evaluate.paired_difference``)."""
    users = [r.user_id for r in records]
    best, diffs = {}, {m: {} for m in methods}
    for k in ks:
        metric = f"query_hr@{k}"
        scored = [b for b in baselines if not math.isnan(results[b]["all"].get(metric, math.nan))]
        if not scored:
            continue
        best[metric] = max(scored, key=lambda b: (results[b]["all"][metric], b != HEURISTIC_MERGE, b))
        for m in methods:
            diffs[m][metric] = paired_difference(per[m][metric], per[best[metric]][metric], users)
    return {"best_heuristic": best, "vs_best_heuristic": diffs}


def events_before(events, t):
    """The rows of ``events`` (a pyarrow Table) strictly before the timestamp ``t``."""
    return events.filter(pc.less(events["event_time"], pa.scalar(t, events.schema.field("event_time").type)))


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_report(
    report_dir: Path, name: str, ds: str, split: str, results: dict, info: dict, manifest: dict
) -> Path:
    """``<name>.md`` (tables per group) and ``<name>_hit_rates.png`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_hit_rates(results, report_dir / f"{name}_hit_rates.png")
    metrics = [m for m in next(iter(results.values()))["all"] if m != "n_users"]
    cfg = manifest.get("config", {})
    lines = [
        f"# AIGQ evaluation: {name} ({ds}, split {split})",
        "",
        f"Model: `{manifest.get('name')}/{manifest.get('version')}`, kind {manifest.get('kind')}, style "
        f"{manifest.get('style')}, {manifest.get('metrics', {}).get('steps')} SFT steps on "
        f"{manifest.get('ds_range')}; base `{manifest.get('base_model', {}).get('path')}`; "
        f"lr {cfg.get('learning_rate')}, "
        f"batch {cfg.get('batch_size')}.",
        f"Samples: {info['n_samples']} (cold-start share {info.get('cold_start_share')}); generation "
        f"{info['generation_seconds']} s; malformed share {info.get('malformed_share')}; "
        "model queries per list "
        f"{info.get('model_queries_mean')} (the rest: popularity before the sample's time).",
        "",
    ]
    lines += exported_lines(info)
    for group in ("all", "active", "cold_start"):
        sub = {m: {group: r[group]} for m, r in results.items() if group in r}
        lines += [f"## {group}", "", markdown_table(sub, ["n_users", *metrics]), ""]
    lines += [f"![hit rates]({plot.name})", ""]
    path = report_dir / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def exported_lines(info: Mapping) -> list[str]:
    """The report's lines on the exported (hybrid) list: its merge policy and its paired
    difference to the best heuristic, with intervals."""
    ex = info.get("exported") or {}
    if not ex:
        return []
    fits = []
    for group, fit in (ex.get("fit") or {}).items():
        fits.append(f"{group}: fitted on {fit.get('n')} valid samples (Query HR@{fit.get('k')} "
                    f"{fit.get('query_hr'):.4f}, policy alone {fit.get('policy_only'):.4f})" if fit.get("fitted")
                    else f"{group}: not fitted (no valid samples), default merge")
    lines = [f"Exported list `{ex['method']}`: merge {ex.get('merge')}; " + "; ".join(fits)
             + f"; slot sources {ex.get('slot_sources')}.", ""]
    for metric, best in (ex.get("best_heuristic") or {}).items():
        for method, diffs in (ex.get("vs_best_heuristic") or {}).items():
            d = diffs.get(metric)
            if d:
                lines.append(f"- {method} - {best} (best heuristic), {metric}: {d['delta']:+.4f} "
                             f"[{d['lo']:+.4f}, {d['hi']:+.4f}] (95 % user bootstrap, {d['n']} samples)")
    return [*lines, ""]


def _write_empty(args, ds: str, sample_kind: str, name: str, manifest: Mapping, model_dir: Path) -> int:
    """``--empty-ok`` with no samples: a metrics.json that says so (``n_samples`` 0, no results)."""
    payload = {"model": name, "version": manifest.get("version"), "ds": ds, "split": args.split,
               "samples": sample_kind, "min_history_queries": args.min_history_queries,
               "sample_days": args.sample_days, "max_samples": args.max_samples, "n_samples": 0, "results": {}}
    metrics_file = Path(args.metrics_out).resolve() if args.metrics_out else model_dir / METRICS_FILE
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    path = write_json_atomic(metrics_file, payload)
    logger.warning("no %s %s samples of %s (%d days): wrote %s with no results", args.split, sample_kind, ds,
                   args.sample_days, path)
    emit_result({"metrics": str(path), "n_samples": 0})
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_offline_hf()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date whose samples are evaluated")
    parser.add_argument("--model-dir", required=True, help="a version folder written by aigq_model.train_sft")
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None, help="override the profile's data_root")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--baselines", default=None, help="comma-separated (default: aigq.eval.baselines)")
    parser.add_argument("--no-semantic", action="store_true", help="skip the MiniLM similarity metric")
    parser.add_argument("--strategy", default=None, help="greedy | sample | beam (default: aigq.generate)")
    parser.add_argument("--num-return-sequences", type=int, default=None,
                        help="lists decoded per prompt and merged (default: aigq.generate)")
    parser.add_argument("--samples", choices=("direct", "think"), default=None,
                        help="sample table to evaluate on (default: the model's kind; plain -> direct), "
                        "so every model and baseline can be scored on the same samples")
    parser.add_argument("--sample-days", type=int, default=1,
                        help="score the samples of this many days ending at --ds (sparse logs); the "
                        "baselines' log window (aigq.eval.days) must cover them")
    parser.add_argument("--min-history-queries", type=int, default=0,
                        help="keep samples whose history holds at least this many searches")
    parser.add_argument("--truth", choices=TRUTHS, default=None,
                        help="issued: queries searched from the sample's time to the end of its day "
                        "(default: aigq.eval.truth); target: the training target list")
    parser.add_argument("--no-fit-merge", dest="fit_merge", action="store_false",
                        help="skip fitting the exported list's merge on the valid rows (default merge policy)")
    parser.add_argument("--report-name", default=None, help="report file name (default: the model's name)")
    parser.add_argument("--empty-ok", action="store_true",
                        help="no samples: write metrics.json with n_samples 0 and no results (a gate then "
                        "refuses) instead of failing")
    parser.add_argument("--metrics-out", default=None,
                        help="write metrics.json here instead of into the model folder (to score a "
                        "registered model again without touching its own metrics)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.profile)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    aigq = dict(cfg.get("aigq") or {})
    ev = dict(aigq.get("eval") or {})
    gen = dict(aigq.get("generate") or {})
    if args.strategy:
        gen["strategy"] = args.strategy
    if args.num_return_sequences:
        gen["num_return_sequences"] = args.num_return_sequences
    ds = check_ds(args.ds)
    model_dir = Path(args.model_dir).resolve()
    manifest = read_manifest(model_dir)
    kind, name = manifest.get("kind", "direct"), manifest.get("name", "aigq")
    ks = tuple(int(k) for k in ev.get("ks", (10, 30)))
    baselines = (
        args.baselines.split(",")
        if args.baselines is not None
        else list(ev.get("baselines", DEFAULT_BASELINES))
    )
    baselines = [b for b in baselines if b]
    semantic = bool(ev.get("semantic", True)) and not args.no_semantic

    sample_kind = args.samples or kind
    samples = eval_samples(
        data_root, ds, sample_kind, args.split, args.max_samples, args.min_history_queries, args.sample_days
    )
    if not samples and args.empty_ok:
        return _write_empty(args, ds, sample_kind, name, manifest, model_dir)
    if not samples:
        raise FileNotFoundError(f"no {args.split} {sample_kind} samples of {ds} under {data_root}")
    # the exported list's merge is fitted on rows the scoring does not see and training did not use:
    # the window's valid rows with --split test / train, else the valid and test rows of the
    # --sample-days days before the window
    in_window = args.split in ("test", "train")
    fit_ds = ds if in_window else previous_ds(ds, args.sample_days)[0]
    fit_splits = ("valid",) if in_window else ("valid", "test")
    fit_samples = [r for split in fit_splits for r in eval_samples(
        data_root, fit_ds, sample_kind, split, args.max_samples, args.min_history_queries, args.sample_days)
    ] if args.fit_merge else []
    log_days = max(int(ev.get("days", 7)), 2 * args.sample_days + 1)
    events = read_events(data_root, [*previous_ds(ds, log_days - 1), ds])
    model, tokenizer = load_aigq(model_dir)
    mcfg = manifest.get("config", {})
    results, info = evaluate_model(
        model,
        tokenizer,
        samples,
        events,
        read_items(data_root, ds),
        kind=kind,
        name=name,
        ks=ks,
        baselines=baselines,
        semantic=semantic,
        gen_config=gen,
        style=manifest.get("style", "compressed"),
        max_history=int(mcfg.get("max_history", 20)),
        truth=args.truth or str(ev.get("truth", "issued")),
        fit_samples=fit_samples,
    )
    payload = {
        "model": name,
        "version": manifest.get("version"),
        "ds": ds,
        "split": args.split,
        "samples": sample_kind,
        "min_history_queries": args.min_history_queries,
        "sample_days": args.sample_days,
        "merge_fit": {"ds": fit_ds, "splits": list(fit_splits), "days": args.sample_days, "samples": len(fit_samples)},
        "max_samples": args.max_samples,
        "ks": list(ks),
        "decoding": gen,
        "info": info,
        "results": results,
    }
    metrics_file = Path(args.metrics_out).resolve() if args.metrics_out else model_dir / METRICS_FILE
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_path = write_json_atomic(metrics_file, _nan_to_none(payload))
    report = write_report(
        Path(data_root) / "reports" / "aigq" / ds,
        args.report_name or name,
        ds,
        args.split,
        results,
        info,
        manifest,
    )
    summary = {m: {k: v for k, v in r["all"].items() if k.startswith("query_hr")} for m, r in results.items()}
    emit_result(_nan_to_none(
        {"metrics": str(metrics_path), "report": str(report), "query_hr": summary, "info": info}
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
