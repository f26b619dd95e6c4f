"""KARMA in ranking, the experiment: the daily item-CTR model with and without KARMA features, per seed.

For each seed ``s`` of ``--seeds``, :func:`karma_model.ranking.run_ranking` trains the ranking model
on ``--train-ds`` (default: the day before ``--ds``) with seed ``s`` and scores ``--ds``, on the
baseline features, with ``cos(e_u, e_i)`` and ``e_u`` added, and with the cosine only, using the
KARMA model of that seed: ``--model-dirs`` gives one folder per seed (or one for all), or ``--train-karma-steps N``
trains one per seed (``python -m karma_model.train --ds <day before train-ds> --seed s --max-steps
N``, a subprocess; reused when already there), so the KARMA model never saw the training or the
scored day and the seeds cover both trainings. AUC (position-blind) and log-loss (logged
positions) are reported as mean ± sample std over seeds, with each KARMA set's per-seed AUC
difference to the baseline, the bootstrap interval of each seed's difference over requests, the smoothed item-CTR prior alone
and, on synthetic data (``raw/true_interests``), the ceiling: the day's true interest mixture
(item leaf in it or not, position-blind).

Output (``--out``, default ``<root>/reports/karma_ranking_ablation/ds=<ds>/``): ``ablation.md``
(shown by the analyst report's "KARMA in ranking" section) and ``ablation.json``; the Markdown
table and the JSON are also printed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/experiments/karma_ranking.py --data-root /tmp/kr/data \\
        --ds 2026-11-04 [--train-ds 2026-11-03] [--seeds 0 1] \\
        (--model-dirs DIR [DIR ...] | --train-karma-steps 500 [--base-model PATH])
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from common.logging_setup import setup_logging  # noqa: E402

logger = logging.getLogger("scripts.experiments.karma_ranking")

ROWS = (("without_karma", "without KARMA"), ("with_karma", "with KARMA: cos(e_u, e_i) + e_u"),
        ("with_karma_cos", "with KARMA: cos(e_u, e_i) only"))


def train_karma(root: Path, ds: str, seed: int, steps: int, base_model: str | None) -> Path:
    """``models/karma_ranking_ablation/<ds>/seed<s>``: KARMA trained on the days ending at ``ds``."""
    out = root / "models" / "karma_ranking_ablation" / ds / f"seed{seed}"
    if (out / "_SUCCESS").is_file():
        logger.info("reusing %s", out)
        return out
    args = [sys.executable, "-m", "karma_model.train", "--ds", ds, "--data-root", str(root), "--seed", str(seed),
            "--max-steps", str(steps), "--out", str(out)] + (["--base-model", base_model] if base_model else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    logger.info("training KARMA: %s", " ".join(args[1:]))
    subprocess.run(args, cwd=REPO, env=env, check=True)
    return out


def true_interest_ceiling(root: Path, ds: str) -> dict | None:
    """AUC of "the item's leaf is in the user's true mixture of ``ds``" (synthetic data only)."""
    from aigq_model.ctr_eval import score_metrics
    from common.arrow_io import read_partition
    from common.paths import is_published, partition_path
    from karma_model import ranking_features as rf

    if not is_published(partition_path(root, "raw", "true_interests", ds)):
        return None
    truth = read_partition(root, "raw", "true_interests", ds)
    mixture = set(zip(truth["user_id"].to_pylist(), truth["category"].to_pylist(), strict=True))
    frame = rf.read_impressions(root, ds)
    ctx_items = rf.ItemInfo.from_items(rf.read_snapshot(root, "items", ds)[0])
    match = np.array([(u, ctx_items.leaf.get(i)) in mixture for u, i in zip(frame["user_id"], frame["item_id"],
                                                                              strict=True)], dtype=np.float64)
    metrics = score_metrics(frame["clicked"].to_numpy(), match)
    return {**metrics, "logloss": None, "share_in_mixture": round(float(match.mean()), 4)}  # a 0/1 score: AUC only


def aggregate(runs: dict[int, dict]) -> dict:
    """Per feature set: per-seed metrics and mean ± std; per KARMA set, the AUC difference to the
    baseline per seed and overall."""
    from karma_model.ranking import FEATURE_SETS, KARMA_SETS, METRIC_KEYS, mean_std

    out = {}
    for fs in FEATURE_SETS:
        per_seed = {s: r["feature_sets"][fs]["seeds"][str(s)] for s, r in runs.items()}
        out[fs] = {"seeds": per_seed, **{k: mean_std([m[k] for m in per_seed.values()]) for k in METRIC_KEYS},
                   "train_seconds": round(sum(m["seconds"] for m in per_seed.values()), 2)}
    out["auc_difference"] = {}
    for fs in KARMA_SETS:
        mean = out[fs]["auc"][0] - out["without_karma"]["auc"][0]
        spread = out[fs]["auc"][1] + out["without_karma"]["auc"][1]
        out["auc_difference"][fs] = {
            "mean": round(mean, 6),
            "per_seed": {str(s): r["auc_difference"][fs]["per_seed"][0] for s, r in runs.items()},
            "seed_spread": round(spread, 6), "beyond_seed_spread": bool(mean > spread),
            "min_with_gt_max_without": bool(min(r["auc"] for r in out[fs]["seeds"].values())
                                            > max(r["auc"] for r in out["without_karma"]["seeds"].values())),
            "bootstrap_95_per_seed": {str(s): r["auc_difference"][fs]["bootstrap_95"] for s, r in runs.items()},
        }
    return out


def render(summary: dict, meta: dict) -> str:
    def pm(stat) -> str:
        return "–" if stat[0] is None else f"{stat[0]:.4f} ± {stat[1]:.4f}"

    lines = [f"# KARMA in ranking on {meta['data_root']} (train {meta['train_ds']}, score {meta['ds']})", "",
             f"Item-CTR model (MLP, hidden {meta['hidden']}) on the result pages of {meta['train_ds']}, scored on "
             f"{meta['ds']} ({meta['rows_eval']} impressions, {meta['positives_eval']} clicks, "
             f"{meta['requests_eval']} requests); seeds {meta['seeds']} (KARMA model and ranker); AUC scored at the "
             "top slot (position-blind), log-loss with the logged positions; mean ± sample std over seeds. "
             f"Machine: {meta['machine']}.", "",
             "| features | AUC | log-loss | AUC (logged position) | log-loss (top slot) | train s (all seeds) |",
             "|---|---|---|---|---|---|"]
    for fs, label in ROWS:
        s = summary[fs]
        lines.append(f"| {label} | {pm(s['auc'])} | {pm(s['logloss'])} | {pm(s['auc_logged_position'])} | "
                     f"{pm(s['logloss_top_slot'])} | {s['train_seconds']:.1f} |")
    for label, ref in meta["references"].items():
        if ref:
            loss = "–" if ref.get("logloss") is None else f"{ref['logloss']:.4f}"
            lines.append(f"| {label} | {ref['auc']:.4f} | {loss} | – | – | – |")
    lines.append("")
    for fs, label in ROWS[1:]:
        diff = summary["auc_difference"][fs]
        per_seed = ", ".join(f"seed {s}: {d:+.4f}" for s, d in diff["per_seed"].items())
        boots = ", ".join(f"seed {s}: [{b['low']:+.4f}, {b['high']:+.4f}]"
                          for s, b in diff["bootstrap_95_per_seed"].items() if b)
        verdict = "holds" if diff["beyond_seed_spread"] else "does NOT hold"
        every = " (every seed with KARMA above every seed without)" if diff["min_with_gt_max_without"] else ""
        lines.append(f"- {label}: ΔAUC = {diff['mean']:+.4f} ({per_seed}); seed spread (sum of the two stds) "
                     f"{diff['seed_spread']:.4f}: a gain beyond the seed spread {verdict}{every}; 95% bootstrap "
                     f"interval over requests: {boots or '–'}.")
    lines += ["", f"KARMA models: {', '.join(f'`{p}`' for p in meta['model_dirs'])}; seconds: {meta['seconds']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True, help="the day scored (T+1)")
    parser.add_argument("--train-ds", default=None, help="the day trained on (default: the day before --ds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model-dirs", nargs="+", default=None, help="KARMA folder per seed (or one for all)")
    parser.add_argument("--train-karma-steps", type=int, default=0, help="train one KARMA per seed (max steps)")
    parser.add_argument("--base-model", default=None, help="base LM of --train-karma-steps (default: newest)")
    parser.add_argument("--hidden", type=int, default=None, help="override karma_ranking.hidden")
    parser.add_argument("--out", default=None)
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores, torch threads 1")
    args = parser.parse_args(argv)
    setup_logging()

    import dataclasses

    import torch

    from common.config import load_config
    from common.paths import check_ds, previous_ds
    from karma_model.ranking import RankingConfig, run_ranking

    torch.set_num_threads(1)
    root = Path(args.data_root).resolve()
    ds = check_ds(args.ds)
    train_ds = check_ds(args.train_ds) if args.train_ds else previous_ds(ds, 1)[0]
    cfg = load_config()
    config = RankingConfig.from_dict(cfg.get("karma_ranking"))
    if args.hidden is not None:
        config = dataclasses.replace(config, hidden=args.hidden)
    lookback = int((cfg.get("samples") or {}).get("lookback_days", 7))
    t0 = time.perf_counter()
    if args.train_karma_steps:
        karma_ds = previous_ds(train_ds, 1)[0]
        dirs = [train_karma(root, karma_ds, s, args.train_karma_steps, args.base_model) for s in args.seeds]
    elif args.model_dirs:
        dirs = [Path(d) for d in args.model_dirs]
        if len(dirs) not in (1, len(args.seeds)):
            parser.error("--model-dirs: give one folder, or one per seed")
        dirs = dirs * len(args.seeds) if len(dirs) == 1 else dirs
    else:
        parser.error("give --model-dirs or --train-karma-steps")
    karma_seconds = time.perf_counter() - t0
    runs = {}
    for seed, model_dir in zip(args.seeds, dirs, strict=True):
        run = run_ranking(root, ds, dataclasses.replace(config, seeds=[seed]), train_ds, model_dir, lookback)
        if run["skipped"]:
            raise SystemExit(f"skipped: {run['reason']}")
        runs[seed] = run
        logger.info("seed %d: %s", seed, {fs: run["feature_sets"][fs]["mean"]["auc"] for fs, _ in ROWS})
    summary = aggregate(runs)
    first = next(iter(runs.values()))
    meta = {"data_root": str(root), "ds": ds, "train_ds": train_ds, "seeds": args.seeds, "hidden": config.hidden,
            "rows_eval": first["rows"]["eval"], "positives_eval": first["positives"]["eval"],
            "requests_eval": first["requests"]["eval"], "machine": args.machine,
            "model_dirs": [str(d) for d in dirs],
            "references": {"item CTR prior alone": first["reference"]["item_ctr_prior"],
                           "ceiling: true interest mixture": true_interest_ceiling(root, ds)},
            "seconds": {"karma_training": round(karma_seconds, 1),
                        "ranking_runs": [r["seconds"] for r in runs.values()],
                        "total": round(time.perf_counter() - t0, 1)},
            "config": dataclasses.asdict(config)}
    table = render(summary, meta)
    out = Path(args.out) if args.out else root / "reports" / "karma_ranking_ablation" / f"ds={ds}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table)
    payload = {"meta": meta, "summary": summary, "runs": runs}
    (out / "ablation.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    print(table)
    print(json.dumps({"meta": {k: meta[k] for k in ("ds", "train_ds", "seeds", "seconds")},
                      "summary": {k: v for k, v in summary.items() if k != "auc_difference"} | {
                          "auc_difference": summary["auc_difference"]}}, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
