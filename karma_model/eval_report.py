"""The report of a KARMA evaluation (``karma_model.evaluate``): the per-split method table, the
HR@K and attention-sink plots (PNG), and ``report.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from karma_model.metrics import DEFAULT_KS


def method_table(metrics: Mapping, split: str) -> dict[str, dict]:
    """``{method label: retrieval metrics}`` of one split: the model (exact, index), compares, baselines."""
    rows: dict[str, dict] = {}
    label = f"karma[{metrics.get('variant', '?')}]"
    model = metrics["model"]
    if split in model["exact"]:
        rows[label] = model["exact"][split]
    if split in model.get("index", {}):
        rows[f"{label} index"] = model["index"][split]
    for name, comp in metrics.get("compare", {}).items():
        if split in comp.get("exact", {}):
            rows[name] = comp["exact"][split]
    for name, base in metrics.get("baselines", {}).items():
        if split in base["metrics"]:
            rows[name] = base["metrics"][split]
    return rows


def plot_hit_rates(metrics: Mapping, split: str, path: Path) -> Path | None:
    """Line plot of HR@K per method (log-scaled K)."""
    matplotlib.use("Agg")

    rows = method_table(metrics, split)
    if not rows:
        return None
    ks = metrics.get("ks", DEFAULT_KS)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, m in rows.items():
        ax.plot(ks, [m[f"hr@{k}"] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_title(f"HR@K on {split} ({metrics.get('eval_ds')}, {rows[next(iter(rows))]['n']} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(alphas: Mapping[str, np.ndarray], path: Path, eps: float = 0.3) -> Path | None:
    """Heatmaps of α(layer, head), one panel per model, shared colour scale [0, 1]."""
    matplotlib.use("Agg")

    if not alphas:
        return None
    n = len(alphas)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 3), squeeze=False)
    image = None
    for ax, (name, alpha) in zip(axes[0], alphas.items(), strict=True):
        alpha = np.asarray(alpha)
        image = ax.imshow(alpha, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(f"{name}\nsink ratio {(alpha > eps).mean():.2f}", fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(alpha.shape[1]))
        ax.set_yticks(range(alpha.shape[0]))
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="α = mean attention to first token")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(x) -> str:
    """A Markdown cell: ``–`` for None, floats with 4 decimals."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.4f}"
    return str(x)


def render_report(metrics: Mapping, plots: Mapping[str, str], tune_metric: str) -> str:
    """Markdown report: retrieval tables per split, index recall loss, diagnostics, plots
    (``plots``: title -> PNG file name beside the report; ``tune_metric``: what the baselines were
    tuned on)."""
    ks = metrics.get("ks", DEFAULT_KS)
    cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["n"]
    lines = [f"# KARMA evaluation: {metrics.get('variant')} @ {metrics.get('ds')}", "",
             f"Model `{metrics.get('model_dir')}`; evaluated on the {metrics.get('eval_ds')} splits; "
             f"{metrics.get('n_items')} catalogue items; history items filtered; baselines tuned on valid "
             f"({tune_metric}).", ""]
    for split in metrics.get("splits", []):
        rows = method_table(metrics, split)
        if not rows:
            continue
        lines += [f"## Retrieval, {split}", "", "| method | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |" for name, m in rows.items()]
        rl = metrics["model"].get("recall_loss", {}).get(split)
        if rl:
            lines += ["", "Index recall loss (exact − index): "
                      + ", ".join(f"{k} {v:+.4f}" for k, v in rl.items() if k.startswith("hr@"))]
        lines.append("")
    lines += ["## Diagnostics", "", "| model | sink ratio | per-layer mean α | information abundance | "
              "rec token acc | ROUGE-L |", "|---|---|---|---|---|---|"]
    diag_rows = {f"karma[{metrics.get('variant')}]": metrics["model"]["diagnostics"]}
    diag_rows.update({name: c.get("diagnostics", {}) for name, c in metrics.get("compare", {}).items()})
    for name, d in diag_rows.items():
        layer = d.get("sink", {}).get("layer_alpha_mean")
        lines.append(f"| {name} | {_fmt(d.get('sink_ratio'))} | "
                     f"{', '.join(f'{a:.2f}' for a in layer) if layer else '–'} | "
                     f"{_fmt(d.get('information_abundance'))} | {_fmt(d.get('reconstruction_token_accuracy'))} | "
                     f"{_fmt(d.get('rouge_l'))} |")
    if metrics.get("baselines"):
        lines += ["", "## Baseline parameters (tuned on valid)", ""]
        lines += [f"- {name}: `{json.dumps(b['params'])}`" for name, b in metrics["baselines"].items()]
    lines.append("")
    for title, file in plots.items():
        lines += [f"![{title}]({file})", ""]
    return "\n".join(lines)
