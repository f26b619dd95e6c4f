"""Analyst report: one static, self-contained HTML page per ds.

``<root>/reports/ds=<ds>/index.html`` (inline CSS, every image a base64 PNG data URI, no
JavaScript, no external asset), with:

- **ETL**: rows per table (raw / clean / quarantine / sessions / samples) for the ``--days``
  days ending at ``ds`` and the quarantined rows by reason, from the partition manifests; plots
  of clean events and the quarantine share per day;
- **Exports** of ``ds``: rows, run id, model versions and gate results from their manifests;
- **KARMA**: the metrics of every ``models/karma/<version>`` (the manifest's test summary), a
  plot per version, and the attention-sink heatmaps ``karma_model.evaluate`` wrote into the
  version's ``report_dir`` (``attention_sinks.png``);
- **KARMA in ranking**: the daily item-CTR model with and without KARMA features
  (``reports/karma_ranking/ds=*/metrics.json``, :mod:`export.report_ranking`);
- **AIGQ**: which list u2q served on ``ds`` (``hybrid`` or the best ``heuristic``, and why), every
  version of the policies (``aigq_direct``, ``aigq_direct_grpo``, ``aigq_think*`` ...;
  ``metrics.json`` of ``aigq_model.run_eval``): policy, exported list and best heuristic with
  bootstrap intervals, cold start and serendipity (:mod:`export.report_aigq`), and the CTR model
  ``aigq_ctr`` (AUC / log-loss next to the query-CTR baseline);
- **Ablations**: the newest ``reports/karma_ablation/ds=*/ablation.md`` and
  ``reports/aigq_ablation/ds=*/ablation.md`` at or before ``ds`` (else the newest) plus any
  ``--ablation PATH`` (a file or its folder), Markdown tables rendered as HTML, their PNGs
  embedded;
- **Samples**: the first ``--rows`` users' u2q lists, x2q rows and u2i lists of ``ds``.

A section whose inputs are missing says so; a section that fails to build shows its error and
the rest of the page is still written. Every value read from the data is HTML-escaped. The page
is written to a hidden temporary file and renamed over ``index.html`` (``os.replace``), then
``_manifest.json`` and ``_SUCCESS`` are written beside it. The HTML / Markdown renderer is
:mod:`export.report_html`; what the sections read comes from :mod:`export.report_inputs`.

Usage::

    python -m export.report --ds 2026-11-03 [--data-root R] [--config F] [--profile P]
        [--days 7] [--rows 10] [--ablation PATH ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.arrow_io import partition_rows
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import MANIFEST, SUCCESS, check_ds, partition_path, previous_ds
from common.steps import emit_result
from export.report_aigq import policies_html, u2q_serving_html
from export.report_html import (
    CSS,
    esc,
    figure_png,
    html_table,
    img_tag,
    line_plot_png,
    markdown_to_html,
    missing,
    png_file_tag,
    pyplot,
)
from export.report_inputs import (
    EXPORT_TABLES,
    current,
    newest_ablation,
    read_export,
    read_json,
    rebase,
    serving_rows,
    versions,
)
from export.report_ranking import karma_ranking_section

logger = logging.getLogger(__name__)

ETL_TABLES: dict[str, tuple[str, ...]] = {
    "raw": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "items", "users"),
    "clean": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "items", "users"),
    "quarantine": ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "items", "users"),
    "sessions": ("behavior_sessions", "hintq_sessions", "day_sessions"),
    "samples": ("karma_samples", "aigq_direct_sft", "aigq_think_sft", "ctr_samples", "item_corpus"),
}
KARMA_COLUMNS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "index_hr@200", "popularity_hr@200",
                 "cooccurrence_hr@200", "text_hr@200", "fused_hr@200", "fused_without_hr@200", "sink_ratio",
                 "information_abundance")
AIGQ_POLICY_PREFIXES = ("aigq_direct", "aigq_think", "aigq_plain")
ABLATIONS = ("karma_ablation", "aigq_ablation")
MAX_HEATMAPS = 3


# --- sections ----------------------------------------------------------------------------------------
@dataclass
class Context:
    root: Path
    ds: str
    days: list[str]
    rows: int
    ablations: list[Path] = field(default_factory=list)


@dataclass
class Section:
    key: str
    title: str
    body: str
    status: str = "ok"  # ok | missing | error


def section_etl(ctx: Context) -> Section:
    counts: dict[str, list[int | None]] = {}
    reasons: dict[str, dict[str, int]] = {}
    for area, tables in ETL_TABLES.items():
        for table in tables:
            row = []
            for ds in ctx.days:
                n, manifest = partition_rows(ctx.root, area, table, ds)
                row.append(n)
                if area == "quarantine":
                    for reason, k in (manifest.get("reasons") or {}).items():
                        reasons.setdefault(f"{table}: {reason}", {})[ds] = int(k)
            counts[f"{area}/{table}"] = row
    if not any(n is not None for row in counts.values() for n in row):
        return Section("etl", "ETL", missing(f"no published ETL partitions for {ctx.days[0]} .. {ctx.days[-1]} "
                                             f"under {ctx.root}"), "missing")
    first = min(i for i in range(len(ctx.days)) if any(row[i] is not None for row in counts.values()))
    days = ctx.days[first:]  # leading days with nothing published are left out
    counts = {name: row[first:] for name, row in counts.items()}
    parts = [f'<p class="meta">Rows per published partition (from <code>_manifest.json</code>), '
             f"{esc(days[0])} .. {esc(days[-1])}; – = not published.</p>",
             html_table(["table", *days], ([name, *row] for name, row in counts.items()))]
    parts.append("<h3>Quarantined rows by reason</h3>")
    if reasons:
        parts.append(html_table(["table: reason", *days, "total"],
                                ([key, *(by_day.get(d, 0) for d in days), sum(by_day.values())]
                                 for key, by_day in sorted(reasons.items()))))
    else:
        parts.append("<p>No quarantined rows in these days.</p>")
    share = []
    for i, _ds in enumerate(days):
        q = sum(counts[f"quarantine/{t}"][i] or 0 for t in ETL_TABLES["quarantine"])
        clean = sum(counts[f"clean/{t}"][i] or 0 for t in ETL_TABLES["clean"])
        share.append(100.0 * q / (q + clean) if q + clean else float("nan"))
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    x = range(len(days))
    ax1.bar(x, [n or 0 for n in counts["clean/behavior_events"]], color="#4878a8")
    ax1.set_title("clean behavior_events rows per day")
    ax2.bar(x, share, color="#d08030")
    ax2.set_title("quarantined share of validated rows (%)")
    ax2.set_ylim(bottom=0, top=max([v for v in share if v == v] + [0.0]) * 1.2 or 1.0)
    for ax in (ax1, ax2):
        ax.set_xticks(list(x), [d[5:] for d in days], rotation=30)
        ax.grid(axis="y", alpha=0.3)
    parts.append(img_tag(figure_png(fig), "ETL rows and quarantine share per day"))
    parts.append(html_table(["ds", "quarantined share (%)"], ([d, s] for d, s in zip(days, share, strict=True))))
    return Section("etl", "ETL", "".join(parts))


def section_exports(ctx: Context) -> Section:
    rows, published = [], 0
    for table in EXPORT_TABLES:
        n, manifest = partition_rows(ctx.root, "exports", table, ctx.ds)
        if n is None:
            rows.append([table, "not published", None, None, None, None])
            continue
        published += 1
        model = manifest.get("model") or {}
        gate = manifest.get("gates") or {}
        failed = [k for k, v in gate.items() if not (v or {}).get("passed", False)]
        rows.append([table, "published", n, manifest.get("run_id"),
                     f"{model.get('name')}/{model.get('version')}" if model else None,
                     f"{len(gate) - len(failed)}/{len(gate)} passed" + (f" (failed: {', '.join(failed)})" if failed
                                                                        else "")])
    body = html_table(["table", "status", "rows", "run id", "model", "gates"], rows)
    serving = serving_rows(ctx.root, ctx.ds)
    if serving:
        body += ('<h3>Which model versions served, and why</h3><p class="meta">From the gate decisions of '
                 f"{ctx.ds} (<code>models/&lt;name&gt;/decisions/</code>): a refused gate leaves the previous "
                 "version serving.</p>" + html_table(["model", "serving version", "why"], serving))
    body += u2i_retrieval(ctx)
    if not published:
        return Section("exports", "Exports", missing(f"no export of {ctx.ds} is published under "
                                                     f"{ctx.root / 'exports'}") + body, "missing")
    return Section("exports", "Exports", body)


def u2i_retrieval(ctx: Context) -> str:
    """What the u2i list fused on ``ds``: with or without KARMA and why, the fitted weights, the
    valid HR@200 of both fits and each channel's share of the served items."""
    n, manifest = partition_rows(ctx.root, "exports", "u2i", ctx.ds)
    retrieval = manifest.get("retrieval") if n is not None else None
    if not retrieval:
        return ""
    fit = retrieval.get("fit") or {}
    counts = manifest.get("counts") or {}
    total = sum(v for k, v in counts.items() if k.startswith("channel_")) or 1
    rows = [[c, (fit.get("weights") or {}).get(c), counts.get(f"channel_{c}", 0) / total]
            for c in ("karma", "cooccurrence", "text", "popularity")]
    valid = retrieval.get("valid") or {}
    hr = {v: (valid.get(v) or {}).get("hr@200") for v in ("with", "without")}
    hr = {v: f"{x:.4f}" if isinstance(x, int | float) else "–" for v, x in hr.items()}
    return ("<h3>u2i: the fused retrieval list</h3>"
            f'<p class="meta">Serving <b>{esc(retrieval.get("serving"))}</b>: {esc(retrieval.get("reason"))}. '
            f"Weights and k0 = {esc(fit.get('k0'))} fitted on the valid split of KARMA version "
            f"{esc(retrieval.get('channels_version'))}; valid HR@200 with KARMA {esc(hr['with'])}, without "
            f"{esc(hr['without'])}.</p>"
            + html_table(["channel", "weight", "share of served items"], rows))


def section_karma(ctx: Context) -> Section:
    folders = versions(ctx.root, "karma")
    if not folders:
        return Section("karma", "KARMA", missing(f"no KARMA model versions under {ctx.root / 'models' / 'karma'}"),
                       "missing")
    cur = current(ctx.root, "karma")
    rows, plot, heatmaps = [], {"hr@10": [], "hr@200": [], "popularity_hr@200": []}, []
    for folder in folders:
        manifest = read_json(folder / "manifest.json") or {}
        metrics_file = read_json(folder / "metrics.json") or {}
        # metrics.json is the evaluation itself; a registered manifest's "metrics" is its summary
        summary = metrics_file.get("summary") or manifest.get("metrics") or {}
        v = folder.name
        rows.append([v, v == cur, manifest.get("variant") or metrics_file.get("variant"),
                     metrics_file.get("eval_ds") or manifest.get("ds"), *(summary.get(c) for c in KARMA_COLUMNS)])
        for key in plot:
            plot[key].append((v, summary.get(key)))
        report_dir = rebase(manifest.get("report_dir") or metrics_file.get("report_dir"), ctx.root, "reports")
        heatmaps.append((v, report_dir))
    parts = [f'<p class="meta">Test-split summary of each registered version ({esc(ctx.root / "models" / "karma")}'
             f'); CURRENT = {esc(cur or "none")}.</p>',
             html_table(["version", "current", "variant", "eval ds", *KARMA_COLUMNS], rows)]
    if any(y is not None for pts in plot.values() for _, y in pts):
        parts.append(img_tag(line_plot_png(plot, "KARMA test HR per model version", "HR",
                                        dashed=["popularity_hr@200"]), "KARMA HR per version"))
    else:
        parts.append(missing("no KARMA metrics recorded (nothing to plot)"))
    parts.append("<h3>Attention-sink heatmaps α(layer, head)</h3>")
    for v, report_dir in heatmaps[-MAX_HEATMAPS:][::-1]:
        parts.append(f"<h4>karma/{esc(v)}</h4>")
        if report_dir is None:
            parts.append(missing(f"karma/{v}: no report_dir recorded (not evaluated by karma_model.evaluate)"))
        else:
            parts.append(png_file_tag(report_dir / "attention_sinks.png", f"attention sinks karma/{v}"))
    return Section("karma", "KARMA", "".join(parts))


def _aigq_names(root: Path) -> list[str]:
    base = root / "models"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and p.name.startswith(AIGQ_POLICY_PREFIXES) and "ablation" not in p.name)


def section_aigq(ctx: Context) -> Section:
    names = _aigq_names(ctx.root)
    ctr_versions = versions(ctx.root, "aigq_ctr")
    if not names and not ctr_versions:
        return Section("aigq", "AIGQ", missing(f"no AIGQ model versions under {ctx.root / 'models'}"), "missing")
    parts = []
    parts.append("<h3>u2q: what is served</h3>")
    parts.append(u2q_serving_html(ctx.root, ctx.ds))  # export/report_aigq.py
    if names:
        parts += ["<h3>Policies</h3>", policies_html(ctx.root, names)]
    else:
        parts.append(missing("no AIGQ policy versions (aigq_direct*, aigq_think*, aigq_plain*)"))
    parts.append("<h3>CTR reward model (aigq_ctr)</h3>")
    if ctr_versions:
        cur = current(ctx.root, "aigq_ctr")
        rows, plot = [], {"model AUC": [], "query-CTR baseline AUC": []}
        for folder in ctr_versions:
            m = read_json(folder / "metrics.json") or ((read_json(folder / "manifest.json") or {}).get("metrics") or {})
            model, base = m.get("model") or {}, m.get("baseline_query_ctr") or {}
            logged = m.get("model_logged_position") or {}
            rows.append([folder.name, folder.name == cur, m.get("eval_on"), m.get("eval_ds"), model.get("n"),
                         model.get("positives"), model.get("auc"), model.get("logloss"), logged.get("logloss"),
                         base.get("auc"), base.get("logloss")])
            plot["model AUC"].append((folder.name, model.get("auc")))
            plot["query-CTR baseline AUC"].append((folder.name, base.get("auc")))
        parts.append(html_table(["version", "current", "eval on", "eval ds", "rows", "clicks", "AUC", "log-loss",
                                 "log-loss (logged position)", "baseline AUC", "baseline log-loss"], rows))
        if any(y is not None for pts in plot.values() for _, y in pts):
            parts.append(img_tag(line_plot_png(plot, "CTR model AUC per version", "AUC",
                                            dashed=["query-CTR baseline AUC"]), "CTR AUC per version"))
    else:
        parts.append(missing(f"no aigq_ctr versions under {ctx.root / 'models' / 'aigq_ctr'}"))
    return Section("aigq", "AIGQ", "".join(parts))


def section_karma_ranking(ctx: Context) -> Section:
    body, status = karma_ranking_section(ctx.root, ctx.ds)  # export/report_ranking.py
    return Section("karma_ranking", "KARMA in ranking", body, status)


def section_ablations(ctx: Context) -> Section:
    files: list[tuple[str, Path]] = []
    notes = []
    for name in ABLATIONS:
        path = newest_ablation(ctx.root, name, ctx.ds)
        if path is None:
            notes.append(missing(f"no {name} report under {ctx.root / 'reports' / name}"))
        else:
            files.append((name, path))
    for extra in ctx.ablations:
        path = extra / "ablation.md" if extra.is_dir() else extra
        if path.is_file():
            files.append((str(extra), path))
        else:
            notes.append(missing(f"--ablation {extra}: no such file (nor {extra}/ablation.md)"))
    parts = list(notes)
    for label, path in files:
        parts.append(f'<h3>{esc(label)}</h3><p class="meta">{esc(path)}</p>')
        parts.append(markdown_to_html(path.read_text(encoding="utf-8", errors="replace"), path.parent,
                                      heading_offset=3))
    return Section("ablations", "Ablations", "".join(parts), "ok" if files else "missing")


def section_samples(ctx: Context) -> Section:
    parts, found = [], 0
    parts.append("<h3>u2q: ranked query lists</h3>")
    u2q = read_export(ctx.root, ctx.ds, "u2q", ["user_id", "run_ds", "rank", "query", "source", "model_name", "model_version"])
    if u2q is None:
        parts.append(missing(f"u2q not published: {partition_path(ctx.root, 'exports', 'u2q', ctx.ds)}"))
    else:
        found += 1
        df = u2q.to_pandas().sort_values(["user_id", "run_ds", "rank"], ascending=[True, False, True], kind="stable")
        users = list(dict.fromkeys(df["user_id"]))[: ctx.rows]
        rows = []
        for uid in users:
            for run_ds, g in df[df["user_id"] == uid].groupby("run_ds", sort=False):
                queries = "".join(f"<li>{esc(q)}{' <i>(fallback)</i>' if s == 'fallback' else ''}</li>"
                                  for q, s in zip(g["query"], g["source"], strict=True))
                rows.append([esc(uid), esc(run_ds), esc(f"{g['model_name'].iloc[0]}/{g['model_version'].iloc[0]}"),
                             f'<ol class="queries">{queries}</ol>'])
        parts.append(f'<p class="meta">The first {len(users)} of {df["user_id"].nunique():,} users '
                     f"({len(df):,} rows, every kept run).</p>")
        parts.append(html_table(["user", "run ds", "model", "queries"], rows, raw_html=True))
    parts.append("<h3>x2q: trigger → queries</h3>")
    x2q = read_export(ctx.root, ctx.ds, "x2q", ["trigger_key", "rank", "query", "score", "s_rel", "s_eff", "ctr", "support",
                                    "attribution"])
    if x2q is None:
        parts.append(missing(f"x2q not published: {partition_path(ctx.root, 'exports', 'x2q', ctx.ds)}"))
    else:
        found += 1
        head = x2q.sort_by([("trigger_key", "ascending"), ("rank", "ascending")]).slice(0, ctx.rows)
        parts.append(f'<p class="meta">The first {head.num_rows} of {x2q.num_rows:,} rows.</p>')
        parts.append(html_table(head.column_names, ([r[c] for c in head.column_names] for r in head.to_pylist())))
    parts.append("<h3>u2i: top items</h3>")
    u2i = read_export(ctx.root, ctx.ds, "u2i", ["user_id", "rank", "item_id", "score", "channel"])
    if u2i is None:
        parts.append(missing(f"u2i not published: {partition_path(ctx.root, 'exports', 'u2i', ctx.ds)}"))
    else:
        found += 1
        df = u2i.to_pandas().sort_values(["user_id", "rank"], kind="stable")
        users = list(dict.fromkeys(df["user_id"]))[: ctx.rows]
        rows = [[uid, ", ".join(f"{i} ({s:.4f}, {c})" for i, s, c in zip(g["item_id"].head(10), g["score"].head(10),
                                                                           g["channel"].head(10), strict=True))]
                for uid, g in ((u, df[df["user_id"] == u]) for u in users)]
        parts.append(f'<p class="meta">The first {len(users)} users, their 10 best items (fused score, channel).</p>')
        parts.append(html_table(["user", "items"], rows))
    return Section("samples", "Export samples", "".join(parts), "ok" if found else "missing")


SECTIONS: tuple[Callable[[Context], Section], ...] = (section_etl, section_exports, section_karma,
                                                     section_karma_ranking, section_aigq, section_ablations,
                                                     section_samples)
TITLES = {"section_etl": "ETL", "section_exports": "Exports", "section_karma": "KARMA",
          "section_karma_ranking": "KARMA in ranking", "section_aigq": "AIGQ",
          "section_ablations": "Ablations", "section_samples": "Export samples"}


def build_sections(ctx: Context) -> list[Section]:
    out = []
    for build in SECTIONS:
        key = build.__name__.removeprefix("section_")
        try:
            out.append(build(ctx))
        except Exception as exc:  # one broken input must not cost the whole report
            logger.exception("report section %s failed", key)
            out.append(Section(key, TITLES[build.__name__],
                               f'<p class="error">section failed: {esc(type(exc).__name__)}: {esc(exc)}</p>',
                               "error"))
    return out


def render_page(ctx: Context, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.key}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Pipeline report {esc(ctx.ds)}</title><style>{CSS}</style></head><body>"
            f"<h1>Generative search pipeline: report for {esc(ctx.ds)}</h1>"
            f'<p class="meta">Data root <code>{esc(ctx.root)}</code>; ETL window {esc(ctx.days[0])} .. '
            f"{esc(ctx.days[-1])}; generated by <code>python -m export.report</code>.</p>"
            f"<nav>{nav}</nav>{body}</body></html>\n")


def report_dir(root: str | Path, ds: str) -> Path:
    """The report partition of ``ds``.

    >>> report_dir("/data", "2026-11-03").as_posix()
    '/data/reports/ds=2026-11-03'
    """
    return Path(root) / "reports" / f"ds={check_ds(ds)}"


def publish(out_dir: Path, page: str, manifest: Mapping) -> Path:
    """``index.html`` via a hidden temporary file and ``os.replace``, then the manifest and
    ``_SUCCESS`` beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "index.html"
    for name, text in ((final.name, page), (MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))):
        tmp = out_dir / f".{name}.{uuid.uuid4().hex[:12]}"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
    (out_dir / SUCCESS).touch()
    return final


def build_report(root: str | Path, ds: str, days: int = 7, rows: int = 10,
                 ablations: Sequence[str | Path] = ()) -> dict:
    """Write ``<root>/reports/ds=<ds>/index.html``; returns its path and each section's status."""
    if days < 1 or rows < 1:
        raise ValueError("days and rows must be >= 1")
    root = Path(root)
    ctx = Context(root, check_ds(ds), [*previous_ds(ds, days - 1), ds], rows, [Path(a) for a in ablations])
    sections = build_sections(ctx)
    page = render_page(ctx, sections)
    status = {s.key: s.status for s in sections}
    path = publish(report_dir(root, ds), page, {"ds": ds, "days": ctx.days, "sections": status,
                                                 "bytes": len(page.encode())})
    logger.info("report for %s: %s (%d KiB) %s", ds, path, len(page.encode()) // 1024, status)
    return {"path": str(path), "sections": status, "bytes": len(page.encode())}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date (YYYY-MM-DD)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--days", type=int, default=7, help="ETL days ending at --ds")
    parser.add_argument("--rows", type=int, default=10, help="sample users / rows per export table")
    parser.add_argument("--ablation", action="append", default=[], help="an ablation.md (or its folder); repeatable")
    args = parser.parse_args(argv)
    if args.days < 1 or args.rows < 1:
        parser.error("--days and --rows must be >= 1")
    cfg = load_config(args.config, args.profile)
    root = Path(args.data_root).resolve() if args.data_root else Path(cfg["data_root"])
    try:
        result = build_report(root, args.ds, args.days, args.rows, args.ablation)
    except ValueError as exc:
        parser.error(str(exc))
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
