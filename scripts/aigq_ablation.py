"""AIGQ IL-SFT ablation: Direct / Think IL-SFT and plain SFT x seeds, next to the baselines, one table.

For each kind (``direct``, ``think``, ``plain``) and seed, ``python -m aigq_model.train_sft`` trains
on the days ending at ``--train-ds`` (train split), then ``python -m aigq_model.run_eval`` scores
the model on the samples of ``--eval-ds`` (a later day, all splits by default). Every model is
scored on the *same* samples (``--samples``, default the Direct table) against the same truth (the
queries the user searched from the sample's time to the end of its day), so the rows compare.
The baselines (popularity, co-occurrence, EBR, own history + popularity) are scored with every
run (the table shows the first run's; each run's exported hybrid list is compared with the best of
them on the same samples, paired, with a bootstrap interval). The tables give, per group (all,
active = a search in the history, cold start = none), Query HR@10 with each seed's 95 % user
bootstrap interval, Query HR@30, Category HR@10/30, semantic similarity@10, unique
categories@10, serendipity@10 (share of hits not among the user's own searches) and the
malformed share, mean ± sample std over seeds; each run's exported (hybrid) list is a row of its
own, and a first table gives every run's paired difference to the best heuristic.

Output (``--out``, default ``<root>/reports/aigq_ablation/ds=<eval-ds>/``): ``ablation.md``,
``ablation.json``, ``hit_rates.png``, the per-run reports. Models go to
``<root>/models/aigq_ablation/<train-ds>/<kind>-seed<s>/`` (``--reuse`` skips trained runs).

Usage::

    .venv/bin/python scripts/aigq_ablation.py --data-root /tmp/aigq_big --train-ds 2026-11-04 \\
        --eval-ds 2026-11-05 [--kinds direct think plain] [--seeds 0 1] [--max-steps 1500] \\
        [--strategy beam --num-return-sequences 4] [--min-history-queries 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.logging_setup import setup_logging  # noqa: E402
from scripts.karma_ablation import fmt, mean_std, run_module  # noqa: E402

logger = logging.getLogger("scripts.aigq_ablation")

KINDS = ("direct", "think", "plain")
LABELS = {"direct": "AIGQ-Direct IL-SFT", "think": "AIGQ-Think IL-SFT", "plain": "plain SFT"}
GRPO_LABELS = {"sequence": "IL-SFT + GRPO", "il": "IL-SFT + IL-GRPO"}
COLUMNS = ("query_hr@10", "query_hr@30", "cate_hr@10", "cate_hr@30", "semantic_sim@10", "unique_cates@10",
           "novel_share@10", "malformed_rate")
HEADERS = ("Query HR@10 [95 % CI per seed]", "Query HR@30", "Cate HR@10", "Cate HR@30", "sem. sim@10",
           "unique cates@10", "serendipity@10", "malformed")
EXPORTED = "hybrid"  # run_eval's method name of the exported (merged) list


def interval(res: dict, metric: str) -> str:
    """``[lo, hi]`` of a metric's bootstrap interval, or "" when it has none."""
    lo, hi = res.get(f"{metric}_lo"), res.get(f"{metric}_hi")
    return f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""


def _cell(results: list[dict], group: str, c: str) -> str:
    cell = fmt(*mean_std([r[group].get(c) for r in results]))
    if c == "query_hr@10":
        cell += " " + " / ".join(interval(r[group], c).strip() for r in results if interval(r[group], c))
    return cell


def render_table(runs: dict[str, list[dict]], baselines: dict[str, dict], meta: dict, group: str) -> list[str]:
    lines = [f"## {group} users", "", "| method | " + " | ".join(HEADERS) + " | seeds |",
             "|---" * (len(HEADERS) + 2) + "|"]
    for label, results in runs.items():
        cells = [_cell(results, group, c) for c in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(results)} |")
    for name, res in baselines.items():
        cells = [fmt(res[group][c]) + (interval(res[group], c) if c == "query_hr@10" else "")
                 if res[group].get(c) is not None else "–" for c in COLUMNS]
        lines.append(f"| {name} (baseline) | " + " | ".join(cells) + " | – |")
    first = next(iter(baselines.values()), None) or next(iter(runs.values()), [{}])[0]
    users = first.get(group, {}).get("n_users")
    lines += ["", f"{int(users) if users is not None else '?'} samples in this group.", ""]
    return lines


def render_versus(versus: dict[str, list[dict]]) -> list[str]:
    """Each run minus the best heuristic on the same samples (paired, 95 % user bootstrap), per seed."""
    if not versus:
        return []
    lines = ["## Against the best heuristic (all users)", "",
             "'best heuristic': the best of the baselines and heuristic_merge (own searches merged with the "
             "baselines, no policy); 'best single baseline': the best of the baselines alone. Paired differences "
             "on the same samples, 95 % user-bootstrap intervals.", "",
             "| comparison | Query HR@10 difference [95 % CI], per seed | best |", "|---|---|---|"]
    for label, diffs in versus.items():
        cells = " / ".join(f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for d in diffs if d)
        best = ", ".join(sorted({d.get("best", "?") for d in diffs if d}))
        lines.append(f"| {label} | {cells} | {best} |")
    return [*lines, ""]


def plot(runs: dict[str, list[dict]], baselines: dict[str, dict], path: Path) -> None:
    matplotlib.use("Agg")
    names = [*runs, *baselines]
    metrics = ("query_hr@10", "query_hr@30", "cate_hr@30")
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 3, 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(names))
    for j, m in enumerate(metrics):
        vals, errs = [], []
        for name in names:
            if name in runs:
                mu, sd = mean_std([r["all"].get(m) for r in runs[name]])
            else:
                mu, sd = baselines[name]["all"].get(m, np.nan), 0.0
            vals.append(np.nan_to_num(mu if mu is not None else np.nan))
            errs.append(np.nan_to_num(sd))
        ax.bar(x + (j - 1) * width, vals, width, yerr=errs, capsize=2, label=m)
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("all users")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, runs: dict, baselines: dict, meta: dict, args, versus: dict | None = None) -> None:
    """The table, plot and JSON so far (rewritten after every run, so a cut-short ablation keeps
    what it measured)."""
    text = (
        f"Trained on the days ending {args.train_ds} (train split"
        + (f"; {args.samples_note}" if args.samples_note else "")
        + f"); scored on the {args.split} "
        f"{args.samples} samples of {args.eval_ds}"
        + (f" and the {args.sample_days - 1} days before" if args.sample_days > 1 else "")
        + (f" whose history holds >= {args.min_history_queries} searches" if args.min_history_queries else "")
        + (f" (the first {args.max_samples})" if args.max_samples else "")
        + "; truth = the queries the user searched from the sample's time to the end of its day"
        + f". Decoding: {args.strategy or 'config'}"
        + (f" (width {args.num_beams})" if args.num_beams else "")
        + (", constrained to the log's known queries" if args.known_queries == "true" else "")
        + f", {args.num_return_sequences or 1} list(s) per prompt merged; "
        f"max_steps {args.max_steps or 'config'}, SFT lr {args.sft_lr or 'config'}; seeds {args.seeds}. Mean ± sample std over seeds; "
        "baselines are deterministic. Query HR intervals: 95 % percentile bootstrap over users "
        "(1,000 draws, seed 0). Groups: active = a search in the history, cold_start = none. "
        f"'{EXPORTED} (exported)': the policy's list merged with the user's own searches (and a heuristic) by "
        "the merge policy fitted on the valid rows (aigq_model.hybrid). Serendipity@10: share of the hits "
        "that are not among the user's own earlier searches."
    )
    if args.grpo_modes:
        ctr = meta.get("ctr", {})
        text += (f" Policy optimisation: {args.grpo_steps or 'config'} steps, lr {args.grpo_lr or 'config'}, "
                 f"against a CTR model trained on {args.train_ds} (AUC on {ctr.get('eval_ds')} "
                 f"{ctr.get('model', {}).get('auc')}, query-CTR baseline "
                 f"{ctr.get('baseline_query_ctr', {}).get('auc')}).")
    lines = [f"# AIGQ ablation on {meta['data_root']}", "", text, ""]
    lines += render_versus(versus or {})
    for group in ("all", "active", "cold_start"):
        lines += render_table(runs, baselines, meta, group)
    lines += ["![hit rates](hit_rates.png)", ""]
    (out / "ablation.md").write_text("\n".join(lines))
    plot(runs, baselines, out / "hit_rates.png")
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "runs": runs, "baselines": baselines,
                                                   "versus_best_heuristic": versus or {}}, indent=2,
                                                  sort_keys=True, default=str))


def _scored_alike(path: Path, args, baselines_needed: bool, kind: str = "direct") -> bool:
    """Whether ``path`` (a run's metrics.json) was scored on the same samples with the same
    decoding as this invocation asks for (and holds the baselines when this run must give them)."""
    if not path.is_file():
        return False
    m = json.loads(path.read_text())
    dec = m.get("decoding") or {}
    same = (
        m.get("ds") == args.eval_ds and m.get("split") == args.split and m.get("samples") == args.samples
        and m.get("min_history_queries") == args.min_history_queries and m.get("sample_days") == args.sample_days
        and m.get("max_samples") == args.max_samples
        and (args.strategy is None or dec.get("strategy") == args.strategy)
        and (args.num_return_sequences is None or dec.get("num_return_sequences") == args.num_return_sequences)
        and (args.num_beams is None or dec.get("num_beams") == args.num_beams)
        and (args.known_queries is None or bool(dec.get("known_queries", False)) == (args.known_queries == "true"))
    )
    results = m.get("results") or {}
    exported = EXPORTED in results and (not baselines_needed or "heuristic_merge" in results)
    return same and exported and (not baselines_needed or len(results) > 1)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-ds", required=True, help="last training date")
    parser.add_argument("--eval-ds", required=True, help="the (later) date whose samples are scored")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--samples", choices=("direct", "think"), default="direct")
    parser.add_argument("--split", default="all")
    parser.add_argument("--min-history-queries", type=int, default=0)
    parser.add_argument("--sample-days", type=int, default=1, help="score the samples of this many days ending "
                        "at --eval-ds (set aigq.eval.days to cover them)")
    parser.add_argument("--strategy", default=None, help="greedy | sample | beam (default: config)")
    parser.add_argument("--num-return-sequences", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=None, help="beam width (default: aigq.generate.num_beams)")
    parser.add_argument("--known-queries", choices=("true", "false"), default=None,
                        help="constrain decoding to the log's known queries (aigq.generate.known_queries; "
                        "default: config)")
    parser.add_argument("--max-samples", type=int, default=None, help="score the first N samples only")
    parser.add_argument("--sft-lr", type=float, default=None, help="IL-SFT learning rate (default: aigq.sft)")
    parser.add_argument("--grpo-modes", nargs="*", choices=("il", "sequence"), default=[],
                        help="policy optimisation of each seed's SFT policy (Direct and Think kinds): "
                        "a CTR model is trained on --train-ds, then train_grpo per mode")
    parser.add_argument("--grpo-kinds", nargs="*", choices=("direct", "think"), default=["direct"])
    parser.add_argument("--grpo-steps", type=int, default=None)
    parser.add_argument("--grpo-lr", type=float, default=None)
    parser.add_argument("--omp-threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--samples-note", default="", help="how the training samples were built, for the report")
    parser.add_argument("--reuse", action="store_true", help="skip training runs whose model is published, and "
                        "evaluations whose metrics.json was scored with the same settings")
    args = parser.parse_args(argv)

    root = Path(args.data_root).resolve()
    out = Path(args.out) if args.out else root / "reports" / "aigq_ablation" / f"ds={args.eval_ds}"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    versus: dict[str, list[dict]] = {}
    baselines: dict[str, dict] = {}
    meta = {"data_root": str(root), "train_ds": args.train_ds, "eval_ds": args.eval_ds, "seeds": args.seeds,
            "max_steps": args.max_steps, "samples": args.samples, "split": args.split,
            "min_history_queries": args.min_history_queries, "strategy": args.strategy,
            "num_return_sequences": args.num_return_sequences, "timing": {}}
    first = True
    models = root / "models" / "aigq_ablation" / args.train_ds
    ctr_dir = models / "ctr"
    if args.grpo_modes:
        if not (args.reuse and (ctr_dir / "_SUCCESS").is_file()):
            run_module("aigq_model.ctr", ["--ds", args.train_ds, "--data-root", str(root), "--out", str(ctr_dir)],
                       args.omp_threads)
        ctr_metrics = json.loads((ctr_dir / "metrics.json").read_text())
        meta["ctr"] = ctr_metrics
    jobs = []  # (label, kind, seed, model_dir, train command or None)
    for kind in args.kinds:
        for seed in args.seeds:
            sft_dir = models / f"{kind}-seed{seed}"
            train_args = ["--ds", args.train_ds, "--data-root", str(root), "--kind", kind, "--seed", str(seed),
                          "--out", str(sft_dir)]
            if args.max_steps:
                train_args += ["--max-steps", str(args.max_steps)]
            if args.base_model:
                train_args += ["--base-model", args.base_model]
            jobs.append((LABELS[kind], f"{kind}-seed{seed}", seed, sft_dir, ("aigq_model.train_sft", train_args)))
            if kind not in args.grpo_kinds:
                continue
            for mode in args.grpo_modes:
                out_dir = models / f"{kind}-{mode}grpo-seed{seed}"
                grpo_args = ["--ds", args.train_ds, "--data-root", str(root), "--policy", str(sft_dir),
                             "--ctr", str(ctr_dir), "--mode", mode, "--seed", str(seed), "--out", str(out_dir)]
                if args.grpo_steps:
                    grpo_args += ["--max-steps", str(args.grpo_steps)]
                label = GRPO_LABELS[mode] + ("" if kind == "direct" else f" ({kind})")
                jobs.append((label, f"{kind}-{mode}grpo-seed{seed}", seed, out_dir, ("aigq_model.train_grpo", grpo_args)))
    env_extra = {"PIPELINE__AIGQ__GRPO__LEARNING_RATE": f"{args.grpo_lr:.10f}"} if args.grpo_lr else {}
    if args.sft_lr:
        env_extra["PIPELINE__AIGQ__SFT__LEARNING_RATE"] = f"{args.sft_lr:.10f}"
    eval_env = {"PIPELINE__AIGQ__GENERATE__NUM_BEAMS": str(args.num_beams)} if args.num_beams else {}
    if args.known_queries is not None:
        eval_env["PIPELINE__AIGQ__GENERATE__KNOWN_QUERIES"] = args.known_queries
    for label, slug, _seed, model_dir, (module, train_args) in jobs:
        t0 = time.perf_counter()
        if not (args.reuse and (model_dir / "_SUCCESS").is_file()):
            run_module(module, train_args, args.omp_threads, env_extra)
        t1 = time.perf_counter()
        eval_args = ["--ds", args.eval_ds, "--model-dir", str(model_dir), "--data-root", str(root),
                     "--split", args.split, "--samples", args.samples,
                     "--min-history-queries", str(args.min_history_queries), "--sample-days", str(args.sample_days),
                     "--report-name", f"ablation_{slug}"]
        if args.strategy:
            eval_args += ["--strategy", args.strategy]
        if args.num_return_sequences:
            eval_args += ["--num-return-sequences", str(args.num_return_sequences)]
        if args.max_samples:
            eval_args += ["--max-samples", str(args.max_samples)]
        # every run is scored with the baselines: its exported list is merged with the best of them
        # and compared with it on the same samples
        if not (args.reuse and _scored_alike(model_dir / "metrics.json", args, baselines_needed=True,
                                                 kind=slug.split("-")[0])):
            run_module("aigq_model.run_eval", eval_args, args.omp_threads, eval_env)
        metrics = json.loads((model_dir / "metrics.json").read_text())
        results = metrics["results"]
        model_name = metrics["model"]
        if first:
            baselines = {k: v for k, v in results.items() if k not in (model_name, EXPORTED)}
            meta["info"] = metrics["info"]
            first = False
        runs.setdefault(label, []).append(results[model_name])
        exported = metrics["info"].get("exported") or {}
        if EXPORTED in results:
            runs.setdefault(f"{label} {EXPORTED} (exported)", []).append(results[EXPORTED])
        for against, block in (("best heuristic", exported), ("best single baseline", exported.get("vs_best_baseline"))):
            block = block or {}
            best = (block.get("best_heuristic") or {}).get("query_hr@10")
            for method, diffs in (block.get("vs_best_heuristic") or {}).items():
                row = label if method == model_name else f"{label} {method}" if method == EXPORTED else method
                diff = (diffs or {}).get("query_hr@10")
                if diff:
                    versus.setdefault(f"{row} − {against}", []).append({**diff, "best": best})
        meta["timing"][slug] = {"train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}
        logger.info("%s: query_hr@10 %.4f", slug, results[model_name]["all"]["query_hr@10"])
        write_outputs(out, runs, baselines, meta, args, versus)
    print(json.dumps({"table": str(out / "ablation.md"), "runs": sum(len(v) for v in runs.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
