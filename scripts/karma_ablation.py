"""KARMA ablation: every variant x seed trained and evaluated on one data root, one Markdown table.

For each variant (``act``, ``act+gen``, ``act+rec``, ``act+gen+rec``; ``--images`` for the image
versions) and seed, ``python -m karma_model.train`` then ``python -m karma_model.evaluate`` run as
subprocesses (``OMP_NUM_THREADS`` from ``--omp-threads``). The baselines (popularity,
co-occurrence, MiniLM text mean; tuned on valid) are evaluated once, with the first run. The table
gives test HR@10/50/200, NDCG@10, sink ratio, information abundance and reconstruction token
accuracy as mean ± std over seeds, beside the baselines; plus an HR@K plot of every method.

Output (``--out``, default ``<root>/reports/karma_ablation/ds=<ds>/``): ``ablation.md``,
``ablation.json``, ``hr_at_k.png``, one evaluation report per run under ``runs/``. Models go to
``<root>/models/karma_ablation/<ds>/<slug>-seed<s>/`` (``--reuse`` skips runs already trained).

Levers (``--set KEY=VALUE ...``: any ``karma`` setting, e.g. ``text_features=true``) become rows of
their own; ``--append`` adds them to the table already in ``--out``, so one table holds every lever.

Usage::

    .venv/bin/python scripts/karma_ablation.py --data-root /tmp/karma_dev --ds 2026-11-03 \\
        [--seeds 0 1] [--max-steps 200] [--base-model PATH] [--variants act act+gen+rec] \\
        [--set text_features=true --append]
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

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.logging_setup import setup_logging  # noqa: E402

logger = logging.getLogger("scripts.karma_ablation")

VARIANTS = ("act", "act+gen", "act+rec", "act+gen+rec")
COLUMNS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "fused_hr@200", "fused_without_hr@200", "sink_ratio",
           "information_abundance", "reconstruction_token_accuracy", "train_s", "histories_per_s")
HEADERS = ("HR@10", "HR@50", "HR@200", "NDCG@10", "fused HR@200", "fused w/o KARMA HR@200", "sink ratio",
           "info. abundance", "rec. token acc", "train s", "inference histories/s")
BASELINES = ("popularity", "cooccurrence", "text")


def run_module(module: str, args: list[str], threads: int, env_extra: dict | None = None) -> dict:
    """``python -m module args``; returns its last JSON stdout line (raises on failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {' '.join(args)} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and v == v], dtype=np.float64)
    if not arr.size:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt(mean: float, std: float | None = None) -> str:
    if mean != mean:
        return "–"
    if abs(mean) >= 10:  # seconds, rates
        return f"{mean:.0f}" if std is None else f"{mean:.0f} ± {std:.0f}"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def render_table(runs: dict[str, list[dict]], baselines: dict[str, dict], meta: dict) -> str:
    """Markdown table: variants (mean ± std over seeds) then baselines (one value, tuned on valid)."""
    lines = [f"# KARMA ablation on {meta['data_root']} ({meta['ds']})", "",
             f"Test split of {meta['ds']}; {meta['n_items']} items; history filtered; exact search; "
             f"seeds {meta['seeds']}; max_steps {meta['max_steps'] or 'config'}; base model `{meta['base_model']}`. "
             "Mean ± sample std over seeds. Fused: the u2i list of the KARMA, co-occurrence, text and "
             "popularity channels fitted on valid (w/o KARMA: the other three). Train s: wall seconds of "
             "`karma_model.train` on this machine; histories/s: test histories encoded per second.", "",
             "| method | " + " | ".join(HEADERS) + " | seeds |", "|---" * (len(HEADERS) + 2) + "|"]
    for variant, summaries in runs.items():
        cells = [fmt(*mean_std([s.get(c) for s in summaries])) for c in COLUMNS]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {len(summaries)} |")
    for name, metrics in baselines.items():
        cells = [fmt(metrics[c]) if c in metrics else "–" for c in COLUMNS]
        lines.append(f"| {name} (baseline) | " + " | ".join(cells) + " | – |")
    index_loss = {v: mean_std([s.get("hr@200", np.nan) - s.get("index_hr@200", np.nan) for s in ss])[0]
                  for v, ss in runs.items()}
    for path, ratio in (meta.get("base_lm_sink_ratio") or {}).items():
        lines.append(f"| base LM `{path}` (no KARMA training) | " + " | ".join(
            fmt(ratio) if c == "sink_ratio" else "–" for c in COLUMNS) + " | – |")
    lines += ["", "Index recall loss on HR@200 (exact − HNSW): "
              + ", ".join(f"{v} {x:+.4f}" for v, x in index_loss.items()), ""]
    lines += ["![HR@K](hr_at_k.png)", ""]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], baselines: dict[str, dict], ks: list[int], path: Path) -> None:
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, summaries in runs.items():
        means = [mean_std([s.get(f"hr@{k}") for s in summaries]) for k in ks]
        ax.errorbar(ks, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3, label=name)
    for name, metrics in baselines.items():
        ax.plot(ks, [metrics.get(f"hr@{k}", np.nan) for k in ks], linestyle="--", marker="x", label=name)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K")
    ax.set_ylabel("test HR@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True, help="last training date; its valid/test splits are evaluated")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--images", action="store_true", help="the image version of every variant")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    parser.add_argument("--n-attention", type=int, default=64)
    parser.add_argument("--omp-threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--reuse", action="store_true", help="skip training runs whose model is published")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="karma settings of this row (e.g. text_features=true max_steps=2000), passed as "
                             "PIPELINE__KARMA__KEY environment overrides")
    parser.add_argument("--label", default=None, help="row label suffix (default: the --set pairs)")
    parser.add_argument("--append", action="store_true",
                        help="add this invocation's rows to the table already in --out (one table for every lever)")
    args = parser.parse_args(argv)
    overrides = dict(pair.split("=", 1) for pair in args.set)
    env_extra = {f"PIPELINE__KARMA__{k.upper()}": v for k, v in overrides.items()}
    suffix = args.label if args.label is not None else " ".join(args.set)

    root = Path(args.data_root).resolve()
    out = Path(args.out) if args.out else root / "reports" / "karma_ablation" / f"ds={args.ds}"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    baselines: dict[str, dict] = {}
    meta = {"data_root": str(root), "ds": args.ds, "seeds": args.seeds, "max_steps": args.max_steps,
            "base_model": args.base_model or "newest base_lm", "timing": {}, "commands": {}}
    first = True
    previous = out / "ablation.json"
    if args.append and previous.is_file():
        old = json.loads(previous.read_text())
        runs, baselines = old["runs"], old["baselines"]
        meta = {**old["meta"], "timing": old["meta"].get("timing", {}), "commands": old["meta"].get("commands", {})}
        first = not baselines
    model_dirs: dict[tuple[str, int], Path] = {}
    for variant in args.variants:
        label = variant + ("+img" if args.images else "") + (f" {suffix}" if suffix else "")
        meta["commands"][label] = "scripts/karma_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        runs.pop(label, None)
        for seed in args.seeds:
            slug = label.replace("+", "_").replace(" ", "_").replace("=", "-")
            model_dir = root / "models" / "karma_ablation" / args.ds / f"{slug}-seed{seed}"
            t0 = time.perf_counter()
            if not (args.reuse and (model_dir / "_SUCCESS").is_file()):
                train_args = ["--ds", args.ds, "--data-root", str(root), "--variant", variant, "--seed", str(seed),
                              "--out", str(model_dir), "--images" if args.images else "--no-images"]
                if args.max_steps:
                    train_args += ["--max-steps", str(args.max_steps)]
                if args.base_model:
                    train_args += ["--base-model", args.base_model]
                run_module("karma_model.train", train_args, args.omp_threads, env_extra)
            t1 = time.perf_counter()
            eval_args = ["--model-dir", str(model_dir), "--data-root", str(root), "--ds", args.ds,
                         "--n-attention", str(args.n_attention), "--report-dir", str(out / "runs" / model_dir.name),
                         "--baselines", *args.baselines]  # every run: the fused list needs them
            act_dir = model_dirs.get(("act", seed))
            if variant == "act+gen+rec" and act_dir is not None:
                # KARMA's report shows base LM / act-only / KARMA attention heatmaps side by side.
                eval_args += ["--compare", str(act_dir)]
            elif not first:
                eval_args.append("--no-base")
            result = run_module("karma_model.evaluate", eval_args, args.omp_threads, env_extra)
            model_dirs[(variant, seed)] = model_dir
            metrics = json.loads(Path(result["metrics_path"]).read_text())
            for name, entry in (metrics.get("compare") or {}).items():
                if name.startswith("base LM") and "sink_ratio" in entry.get("diagnostics", {}):
                    meta.setdefault("base_lm_sink_ratio", {})[entry["path"]] = entry["diagnostics"]["sink_ratio"]
            if first:
                baselines = {name: b["metrics"].get("test", {}) for name, b in metrics["baselines"].items()}
                meta["n_items"] = metrics["n_items"]
                meta["ks"] = metrics["ks"]
                first = False
            timing = metrics["model"].get("timing", {})
            n_test = (metrics["model"].get("exact", {}).get("test") or {}).get("n") or 0
            train_s = (read_json(model_dir / "manifest.json").get("metrics") or {}).get("train_seconds")
            runs.setdefault(label, []).append({**metrics["summary"], "train_s": train_s,
                                               "histories_per_s": n_test / timing["embed_test_s"]
                                               if timing.get("embed_test_s") else None})
            meta["timing"][f"{slug}-seed{seed}"] = {"train_s": round(t1 - t0, 1),
                                                    "eval_s": round(time.perf_counter() - t1, 1)}
            logger.info("%s seed %d: test hr@200 %.4f", label, seed, metrics["summary"].get("hr@200", float("nan")))
    (out / "ablation.md").write_text(render_table(runs, baselines, meta))
    plot(runs, baselines, meta.get("ks", [10, 50, 200, 1000]), out / "hr_at_k.png")
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "runs": runs, "baselines": baselines}, indent=2,
                                                  sort_keys=True))
    print(json.dumps({"table": str(out / "ablation.md"), "runs": sum(len(v) for v in runs.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
