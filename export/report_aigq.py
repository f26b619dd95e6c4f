"""The analyst report's AIGQ policy table and u2q serving block.

Per version of every AIGQ policy (``metrics.json`` of :mod:`aigq_model.run_eval`): the policy's
Query HR@10, the exported (``hybrid``) list's, the best heuristic's on the same samples, the
exported list minus the best heuristic (paired, 95 % user bootstrap), the cold-start group
(exported vs popularity), serendipity and unique categories; intervals in brackets. Then which list
u2q served on the report's date (``serving`` of the u2q manifest: ``hybrid`` or ``heuristic``, and
why). Missing inputs are named.
"""

from __future__ import annotations

from pathlib import Path

from common.paths import MANIFEST, partition_path
from export.report_html import esc, html_table, img_tag, line_plot_png, missing
from export.report_inputs import current, read_json, versions

EXPORTED = "hybrid"
METRIC = "query_hr@10"
HEADERS = ("model", "version", "current", "eval ds", "split", "samples", "policy Q HR@10", "exported Q HR@10",
           "best heuristic", "exported − best heuristic", "cold start: exported / popularity", "serendipity@10",
           "unique cates@10", "malformed")


def with_interval(res: dict, metric: str = METRIC) -> str:
    """``value [lo, hi]`` of a metric with its bootstrap interval, ``–`` when missing.

    >>> with_interval({"query_hr@10": 0.5, "query_hr@10_lo": 0.4, "query_hr@10_hi": 0.6})
    '0.5000 [0.400, 0.600]'
    """
    v = res.get(metric)
    if v is None:
        return "–"
    lo, hi = res.get(f"{metric}_lo"), res.get(f"{metric}_hi")
    return f"{v:.4f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def policy_row(name: str, folder: Path, cur: str | None, metrics: dict) -> list:
    results = metrics.get("results") or {}
    group = lambda method, g="all": (results.get(method) or {}).get(g) or {}  # noqa: E731
    policy, exported = group(metrics.get("model")), group(EXPORTED)
    info = (metrics.get("info") or {}).get("exported") or {}
    best = (info.get("best_heuristic") or {}).get(METRIC)
    diff = ((info.get("vs_best_heuristic") or {}).get(EXPORTED) or {}).get(METRIC)
    n = policy.get("n_users")
    cold, cold_pop = group(EXPORTED, "cold_start"), group("popularity", "cold_start")
    return [name, folder.name, folder.name == cur, metrics.get("ds"), metrics.get("split"),
            int(n) if isinstance(n, float) and n.is_integer() else n, with_interval(policy),
            with_interval(exported) if exported else "–",
            f"{best} {with_interval(group(best))}" if best else "–",
            f"{diff['delta']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}]" if diff else "–",
            f"{with_interval(cold)} / {with_interval(cold_pop)} (n={int(cold.get('n_users') or 0)})" if cold else "–",
            (exported or policy).get("novel_share@10"), (exported or policy).get("unique_cates@10"),
            policy.get("malformed_rate")]


def policies_html(root: Path, names: list[str]) -> str:
    """The policy table (every version of ``names``) and a plot of Query HR@10 per version."""
    rows, plot = [], {}
    for name in names:
        cur = current(root, name)
        for folder in versions(root, name):
            metrics = read_json(folder / "metrics.json")
            if metrics is None:
                rows.append([name, folder.name, folder.name == cur, "no metrics.json", *([None] * (len(HEADERS) - 4))])
                continue
            rows.append(policy_row(name, folder, cur, metrics))
            results = metrics.get("results") or {}
            best = (((metrics.get("info") or {}).get("exported") or {}).get("best_heuristic") or {}).get(METRIC)
            for label, method in ((name, metrics.get("model")), (f"{name} exported", EXPORTED),
                                  (f"{name} best heuristic", best)):
                value = ((results.get(method) or {}).get("all") or {}).get(METRIC) if method else None
                plot.setdefault(label, []).append((folder.name, value))
    parts = ['<p class="meta">Offline metrics of <code>aigq_model.run_eval</code> per version (group '
             "<code>all</code> unless named): the policy's list, the exported list (the policy merged with the "
             "user's own searches by the merge fitted on valid) and the best heuristic on the same samples; "
             "[95 % user-bootstrap intervals]. Cold start: no search in the history. Serendipity@10: share of "
             "hits not among the user's own earlier searches.</p>", html_table(HEADERS, rows)]
    if any(y is not None for pts in plot.values() for _, y in pts):
        parts.append(img_tag(line_plot_png(plot, "AIGQ Query HR@10 per model version", "Query HR@10",
                                        dashed=[k for k in plot if k.endswith("best heuristic")]),
                             "AIGQ Query HR@10 per version"))
    return "".join(parts)


def u2q_serving_html(root: Path, ds: str) -> str:
    """Which list u2q served on ``ds`` and why, from its manifest."""
    path = partition_path(root, "exports", "u2q", ds)
    manifest = read_json(path / MANIFEST)
    if manifest is None:
        return missing(f"u2q not published for {ds}: {path}")
    serving = manifest.get("lists")
    if not serving:
        return missing(f"the u2q manifest of {ds} records no ``lists`` mode (written before the hybrid list)")
    counts = manifest.get("counts") or {}
    slots = ", ".join(f"{k.removesuffix('_rows')} {counts[k]:,}" for k in
                      ("model_rows", "history_rows", "heuristic_rows", "fallback_rows") if counts.get(k) is not None)
    return (f"<p><b>u2q on {esc(ds)} serves the {esc(serving.get('mode'))} list</b>"
            + (f" (heuristic <code>{esc(serving.get('heuristic'))}</code>)" if serving.get("heuristic") else "")
            + f": {esc(serving.get('reason'))}. Merge: {esc(serving.get('merge'))}. Slots: {esc(slots)}.</p>")
