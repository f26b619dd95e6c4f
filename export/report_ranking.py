"""The analyst report's "KARMA in ranking" section: the daily item-CTR model with and without KARMA
features (:mod:`karma_model.ranking`), from ``reports/karma_ranking/ds=*/metrics.json``, plus the
newest table of the experiment driver ``scripts/experiments/karma_ranking.py``
(``reports/karma_ranking_ablation/ds=*/ablation.md``).

Each scored day up to the report's date (newest first, at most :data:`MAX_DAYS`) gives one row
per feature set (:data:`FEATURE_SETS`): AUC (scored at the top slot, position-blind) and log-loss
(logged positions) as mean ± sample std over the seeds, and for the KARMA sets the AUC difference
to the baseline with its bootstrap interval and whether it exceeds the seeds' spread. Missing
inputs are named, as in every section.
"""

from __future__ import annotations

from pathlib import Path

from export.report_html import esc, html_table, markdown_to_html, missing
from export.report_inputs import newest_ablation, read_json

NAME = "karma_ranking"
ABLATION = "karma_ranking_ablation"
MAX_DAYS = 7
#: ``(feature set of the metrics, label)``, in the table's order.
FEATURE_SETS = (("without_karma", "without KARMA"), ("with_karma", "+ KARMA cos, e_u"),
                ("with_karma_cos", "+ KARMA cos only"))


def _pm(stats: dict, key: str) -> str:
    mean, std = (stats.get("mean") or {}).get(key), (stats.get("std") or {}).get(key)
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def ranking_rows(root: Path, ds: str) -> list[list]:
    """One row per scored day at or before ``ds`` (newest first) and feature set."""
    base = root / "reports" / NAME
    files = sorted(p for p in base.glob("ds=*/metrics.json") if p.parent.name[3:] <= ds) if base.is_dir() else []
    rows = []
    for path in files[::-1][:MAX_DAYS]:
        m = read_json(path)
        if not m or m.get("skipped"):
            continue
        karma = m.get("karma_model") or {}
        rows_eval, clicks = (m.get("rows") or {}).get("eval"), (m.get("positives") or {}).get("eval")
        day = [f"{m.get('train_ds')} → {m.get('eval_ds')}", karma.get("version"),
               f"{rows_eval:,} ({clicks:,})" if rows_eval is not None and clicks is not None else "–",
               ", ".join(map(str, m.get("seeds") or []))]
        for fs, label in FEATURE_SETS:
            stats = (m.get("feature_sets") or {}).get(fs)
            if stats is None:
                continue
            diff = (m.get("auc_difference") or {}).get(fs) or {}
            boot = diff.get("bootstrap_95") or {}
            rows.append([*day, label, _pm(stats, "auc"), _pm(stats, "logloss"),
                         f"{diff['mean']:+.4f}" if diff.get("mean") is not None else "–",
                         f"[{boot['low']:+.4f}, {boot['high']:+.4f}]" if boot else "–",
                         diff.get("beyond_seed_spread")])
    return rows


def karma_ranking_section(root: Path, ds: str) -> tuple[str, str]:
    """``(html body, status)`` of the section for the report of ``ds``."""
    parts = ['<p class="meta">Daily item-CTR model trained on day T\'s result pages '
             "(<code>clean/item_impressions</code>) and scored on T+1's, with and without KARMA features "
             "(<code>cos(e_u, e_i)</code> and <code>e_u</code>); AUC scored at the top slot (position-blind), "
             "log-loss with the logged positions; mean ± sample std over seeds; ΔAUC: AUC minus the one "
             "without KARMA, its 95% interval from a bootstrap over requests, and whether it exceeds the sum of "
             "the two seed stds (<code>python -m karma_model.ranking</code>, DAG <code>karma_ranking</code>).</p>"]
    rows = ranking_rows(root, ds)
    found = bool(rows)
    if rows:
        parts.append(html_table(["T → T+1 (scored)", "KARMA", "impressions (clicks)", "seeds", "features", "AUC",
                                 "log-loss", "ΔAUC", "ΔAUC 95%", "> seed spread"], rows))
    else:
        parts.append(missing(f"no scored day at or before {ds} under {root / 'reports' / NAME} "
                             "(a day without item impressions is skipped)"))
    path = newest_ablation(root, ABLATION, ds)
    if path is not None:
        found = True
        parts.append(f'<h3>Experiment driver</h3><p class="meta">{esc(path)}</p>')
        parts.append(markdown_to_html(path.read_text(encoding="utf-8", errors="replace"), path.parent,
                                      heading_offset=3))
    return "".join(parts), "ok" if found else "missing"
