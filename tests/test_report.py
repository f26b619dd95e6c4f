"""Analyst report (export.report) and the table inspector (export.inspect) on a hand-written data
root: manifests, registry folders, metrics files and small export partitions (no Spark, no torch)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from common.arrow_io import write_partition
from common.paths import partition_path
from common.publish import atomic_partition
from common.registry import commit_version, record_decision, set_current, stage_version
from export import inspect as inspect_cli
from export import report

REPO = Path(__file__).resolve().parents[1]
D2, DS = "2026-11-02", "2026-11-03"
CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")  # as scripts/report_screenshot.sh
XSS = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ETL_COLOUR = (0x48, 0x78, 0xA8)  # the clean-rows bars of the ETL plot
SHARE_COLOUR = (0xD0, 0x80, 0x30)  # the quarantine-share bars


def _png(path: Path, kind: str = "heatmap") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(3, 2))
    if kind == "heatmap":
        ax.imshow(np.linspace(0, 1, 8).reshape(2, 4), vmin=0, vmax=1, cmap="viridis")
    else:
        ax.plot([10, 50, 200], [0.1, 0.3, 0.5])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return path


def _manifest_only(root: Path, area: str, table: str, ds: str, manifest: dict) -> None:
    with atomic_partition(partition_path(root, area, table, ds), {"table": table, "ds": ds, **manifest}):
        pass


def _register(root: Path, name: str, version: str, manifest: dict, files: dict[str, str] | None = None) -> Path:
    tmp = stage_version(root, name, version)
    for fname, text in (files or {}).items():
        (tmp / fname).write_text(text)
    return commit_version(tmp, root, name, version, manifest)


def make_report_root(root: Path) -> Path:
    """Two ETL days with quarantined rows, two KARMA versions (one with a heatmap), AIGQ policies
    and a CTR model, a KARMA ablation, and u2q / x2q / u2i exports of DS with hostile text."""
    etl = {D2: (1000, 10, {"null_user_id": 6, "ts_out_of_day": 4}), DS: (1100, 7, {"null_user_id": 7})}
    for ds, (raw, bad, reasons) in etl.items():
        _manifest_only(root, "raw", "behavior_events", ds, {"rows": raw})
        _manifest_only(root, "clean", "behavior_events", ds, {"rows": raw - bad})
        _manifest_only(root, "quarantine", "behavior_events", ds, {"rows": bad, "reasons": reasons})
        _manifest_only(root, "sessions", "behavior_sessions", ds, {"rows": raw - bad})
        _manifest_only(root, "samples", "karma_samples", ds, {"rows": 321})

    report_dir = root / "reports" / "karma_act_gen_rec" / f"ds={DS}"
    _png(report_dir / "attention_sinks.png")
    _register(root, "karma", D2, {"variant": "act", "metrics": {"hr@10": 0.1111, "hr@200": 0.4444,
                                                                "popularity_hr@200": 0.2}})
    _register(root, "karma", DS, {"variant": "act+gen+rec", "report_dir": str(report_dir),
                                  "metrics": {"hr@10": 0.1234, "hr@200": 0.5678, "popularity_hr@200": 0.2}})
    set_current(root, "karma", DS)
    record_decision(root, "karma", DS, registered=True, failures=[], serving=DS)  # models/karma/decisions/

    def aigq_metrics(name, q10):
        return json.dumps({"model": name, "ds": DS, "split": "test", "results": {
            name: {"all": {"query_hr@10": q10, "query_hr@10_lo": 0.0531, "query_hr@10_hi": 0.2, "query_hr@30": 0.3,
                           "cate_hr@30": 0.3, "n_users": 75.0}},
            "hybrid": {"all": {"query_hr@10": 0.2222, "novel_share@10": 0.4321},
                       "cold_start": {"query_hr@10": 0.0777, "n_users": 5.0}},
            "popularity": {"all": {"query_hr@10": 0.0999}, "cold_start": {"query_hr@10": 0.0666}}},
            "info": {"exported": {"best_heuristic": {"query_hr@10": "popularity"}, "vs_best_heuristic": {
                "hybrid": {"query_hr@10": {"delta": 0.1223, "lo": 0.0512, "hi": 0.1934, "n": 75}}}}}})

    _register(root, "aigq_direct", D2, {"kind": "direct"}, {"metrics.json": aigq_metrics("aigq_direct", 0.1212)})
    _register(root, "aigq_direct", DS, {"kind": "direct"}, {"metrics.json": aigq_metrics("aigq_direct", 0.1333)})
    _register(root, "aigq_direct_grpo", DS, {"kind": "direct"},
              {"metrics.json": aigq_metrics("aigq_direct_grpo", 0.1414)})
    _register(root, "aigq_think", DS, {"kind": "think"})  # no metrics.json
    set_current(root, "aigq_direct", DS)
    ctr = {"eval_on": "next_day", "eval_ds": DS, "model": {"auc": 0.6177, "logloss": 0.5089, "n": 372, "positives": 75},
           "model_logged_position": {"auc": 0.77, "logloss": 0.4521},
           "baseline_query_ctr": {"auc": 0.4612, "logloss": 0.5069}}
    _register(root, "aigq_ctr", DS, {"metrics": ctr}, {"metrics.json": json.dumps(ctr)})

    ranking = root / "reports" / "karma_ranking" / f"ds={DS}"
    ranking.mkdir(parents=True)

    def fs(auc):
        return {"mean": {"auc": auc, "logloss": 0.4321}, "std": {"auc": 0.0012, "logloss": 0.0001}}

    diff = {"mean": 0.0041, "per_seed": [0.004, 0.0042], "seed_spread": 0.0024, "beyond_seed_spread": True,
            "bootstrap_95": {"low": 0.0001, "high": 0.0081, "resamples": 200}}
    (ranking / "metrics.json").write_text(json.dumps({
        "ds": DS, "eval_ds": DS, "train_ds": "2026-11-02", "skipped": False, "seeds": [0, 1],
        "karma_model": {"version": "2026-11-01"}, "rows": {"eval": 7491}, "positives": {"eval": 1351},
        "feature_sets": {"without_karma": fs(0.6070), "with_karma": fs(0.6087), "with_karma_cos": fs(0.6111)},
        "auc_difference": {"with_karma": {**diff, "mean": 0.0017, "beyond_seed_spread": False},
                           "with_karma_cos": diff}}))
    abl = root / "reports" / "karma_ablation" / f"ds={DS}"
    abl.mkdir(parents=True)
    (abl / "ablation.md").write_text(
        "# KARMA ablation\n\nSeeds [0, 1]; base `newest base_lm`.\n\n| method | HR@10 | seeds |\n|---|---|---|\n"
        "| act+gen+rec | 0.3581 ± 0.0096 | 2 |\n| popularity (baseline) | 0.0000 | – |\n\n![HR@K](hr_at_k.png)\n")
    _png(abl / "hr_at_k.png", "line")

    t = dt.datetime(2026, 11, 4, tzinfo=dt.UTC)
    u2q = [dict(user_id=u, run_ds=DS, run_id="run-7", rank=r + 1, query=q, source="model", model_name="aigq_direct",
                model_version=DS, generated_at=t)
           for u in ("u1", "u2") for r, q in enumerate(["red shoe", XSS if u == "u1" else "hat"])]
    gates = {"coverage": {"passed": True, "failures": []}, "blocklist": {"passed": True, "failures": []}}
    model = {"name": "aigq_direct", "version": DS}
    serving = {"mode": "hybrid", "reason": "aigq_direct/2026-11-03 is registered", "heuristic": None,
               "merge": {"own": 1.0, "heuristic": 0.0, "c": 1.0, "heuristic_name": None}}
    write_partition(root, "exports", "u2q", DS, u2q, {"run_id": "run-7", "model": model, "gates": gates,
                                                      "lists": serving, "counts": {"model_rows": 3, "history_rows": 1}})
    x2q = [dict(trigger_key="query:<img src=x onerror=alert(1)>", trigger_type="query", trigger_value="x", rank=1,
                query="shoe & sock", score=0.75, s_rel=1.0, s_eff=0.2, popularity=0.2, ctr=None, support=3,
                attribution="model", run_id="run-7", model_name="aigq_think", model_version=DS,
                ctr_model_version=None, generated_at=t)]
    write_partition(root, "exports", "x2q", DS, x2q, {"run_id": "run-7", "model": model, "gates": gates})
    u2i = [dict(user_id="u1", run_id="run-7", rank=1, item_id="i42", score=0.5, channel="cooccurrence",
                model_name="heuristics", model_version=DS, index_version=None, generated_at=t)]
    retrieval = {"serving": "fused_without_karma", "reason": "KARMA 2026-11-03 refused by its gate (x)",
                 "channels_version": DS, "fit": {"weights": {"karma": 0.0, "cooccurrence": 0.75, "text": 0.25,
                                                             "popularity": 0.0}, "k0": 60.0},
                 "valid": {"with": {"hr@200": 0.41}, "without": {"hr@200": 0.4}}}
    write_partition(root, "exports", "u2i", DS, u2i, {"run_id": "run-7", "model": {"name": "karma", "version": DS},
                                                      "retrieval": retrieval,
                                                      "counts": {"channel_cooccurrence": 3, "channel_text": 1},
                                                      "gates": {"coverage": {"passed": False, "failures": ["x"]}}})
    return root


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, str, str]] = []
        self.h2: list[str] = []
        self.text: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_report_root(tmp_path_factory.mktemp("report") / "data")
    extra = root.parent / "extra_ablation.md"
    extra.write_text(f"## Extra {XSS}\n\n| a | b |\n|---|---|\n| **x** | 1 |\n\n![remote](https://example.com/a.png)\n")
    result = report.build_report(root, DS, days=3, rows=5, ablations=[extra])
    return root, result, Path(result["path"]).read_text(encoding="utf-8")


def test_report_has_every_section_with_the_numbers(built):
    root, result, page = built
    assert result["path"] == str(root / "reports" / f"ds={DS}" / "index.html")
    assert result["sections"] == {k: "ok" for k in ("etl", "exports", "karma", "karma_ranking", "aigq", "ablations",
                                                    "samples")}
    doc = parse(page)
    assert doc.h2 == ["ETL", "Exports", "KARMA", "KARMA in ranking", "AIGQ", "Ablations", "Export samples"]
    assert "karma/decisions" not in page  # the registry's decisions folder is not a model version
    text = " ".join(doc.text)
    for expected in ("1,100", "1,093", "behavior_events: null_user_id", "ts_out_of_day",  # ETL + quarantine
                     "run-7", "aigq_direct/" + DS, "0/1 passed (failed: coverage)", "2/2 passed",  # exports
                     "0.5678", "0.4444", "act+gen+rec",  # KARMA versions
                     "0.1333", "0.1212", "0.1414", "0.0999", "no metrics.json",  # AIGQ policies
                     "+0.1223 [+0.0512, +0.1934]", "0.0777 / 0.0666", "0.4321", "[0.053, 0.200]",
                     "serves the hybrid list", "history 1",  # exported vs best heuristic, u2q serving
                     "0.6177", "0.4612",  # CTR
                     "0.6111 ± 0.0012", "+0.0041", "[+0.0001, +0.0081]",  # KARMA in ranking
                     "0.3581 ± 0.0096", "shoe & sock", "red shoe", "i42 (0.5000, cooccurrence)",
                     "fused_without_karma", "refused by its gate"):
        assert expected in text, expected
    # quarantine: 13 null_user_id rows over the two days; share on DS = 7 / 1100
    assert "13" in text
    assert f"{100 * 7 / 1100:.4f}" in text
    assert "section failed" not in page
    assert "karma/2026-11-02: no report_dir recorded" in text
    assert "image not embedded: https://example.com/a.png" in text


def test_report_is_self_contained_and_its_images_are_pngs(built):
    _root, _result, page = built
    doc = parse(page)
    links = [(t, k, v) for t, k, v in doc.attrs if k in ("src", "href")]
    assert not [link for link in links if "http://" in link[2] or "https://" in link[2]]
    assert all(v.startswith("#") for t, k, v in links if k == "href")
    imgs = [v for t, k, v in links if t == "img" and k == "src"]
    # ETL plot, KARMA plot + one heatmap, AIGQ plot, CTR plot, the ablation's PNG
    assert len(imgs) >= 6
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    assert not {"script", "link", "iframe", "object", "embed"} & set(doc.tags)


def test_user_text_is_escaped(built):
    _root, _result, page = built
    assert "<script>" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "query:&lt;img src=x onerror=alert(1)&gt;" in page
    text = "".join(parse(page).text)
    assert XSS in text
    assert "query:<img src=x onerror=alert(1)>" in text  # shown as text, not markup
    assert "<strong>x</strong>" in page
    assert "shoe &amp; sock" in page


def test_report_publishes_atomically_and_reruns_identically(built):
    root, result, page = built
    out = root / "reports" / f"ds={DS}"
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_manifest.json", "index.html"]
    assert json.loads((out / "_manifest.json").read_text())["sections"]["karma"] == "ok"
    assert report.main(["--ds", DS, "--data-root", str(root), "--days", "3", "--rows", "5",
                        "--ablation", str(root.parent / "extra_ablation.md")]) == 0
    assert (out / "index.html").read_text(encoding="utf-8") == page  # no clock in the page
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_manifest.json", "index.html"]


def test_missing_inputs_are_reported_not_fatal(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    result = report.build_report(empty, DS, days=2, rows=3, ablations=[tmp_path / "nope.md"])
    assert set(result["sections"].values()) == {"missing"}
    page = Path(result["path"]).read_text()
    text = " ".join(parse(page).text)
    for expected in ("no published ETL partitions", "no export of 2026-11-03 is published",
                     "no KARMA model versions", "no scored day at or before", "no AIGQ model versions",
                     "no karma_ablation report",
                     "--ablation " + str(tmp_path / "nope.md"), "u2q not published"):
        assert expected in text, expected

    def broken(ctx):
        raise RuntimeError("disk on fire <b>")

    monkeypatch.setattr(report, "SECTIONS", (report.section_etl, broken))
    monkeypatch.setitem(report.TITLES, "broken", "Broken")
    result = report.build_report(empty, DS, days=2)
    page = Path(result["path"]).read_text()
    assert result["sections"] == {"etl": "missing", "broken": "error"}
    assert "section failed: RuntimeError: disk on fire &lt;b&gt;" in page


def test_markdown_tables_headings_and_images(tmp_path):
    _png(tmp_path / "p.png", "line")
    out = report.markdown_to_html("# Title\n\ntext `code`\n- a\n- b\n\n| m | v |\n|---|---|\n| x | 0.5 |\n\n"
                                  "![plot](p.png)\n![gone](missing.png)\n", tmp_path)
    doc = parse(out)
    assert doc.tags["h3"] == 1
    assert doc.tags["table"] == 1
    assert doc.tags["li"] == 2
    assert doc.tags["code"] == 1
    assert out.count("data:image/png;base64,") == 1
    assert f"no image at {tmp_path / 'missing.png'}" in out


# --- inspect ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(built):
    return built[0]


def test_inspect_prints_schema_rows_nulls_and_samples(root, capsys):
    assert inspect_cli.main(["x2q", "--data-root", str(root), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert f"partition: {partition_path(root, 'exports', 'x2q', DS)}" in out
    assert "rows: 1" in out
    assert "trigger_key" in out
    assert "support" in out
    assert "  ctr " in out
    assert "100.00%" in out  # ctr is null in the only row
    assert "-- row 1" in out
    assert "'shoe & sock'" in out
    assert '"run_id": "run-7"' in out

    assert inspect_cli.main(["u2q", "--ds", DS, "--area", "exports", "--data-root", str(root), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "rows: 4" in out
    assert "-- row 2" in out
    assert "-- row 3" not in out
    assert "rank" in out
    assert '"gates_passed": "2/2"' in out

    # a direct partition path, and a table folder (newest published partition)
    assert inspect_cli.main([str(partition_path(root, "exports", "u2i", DS)), "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert "rows: 1" in out
    assert "sample rows (0)" in out
    assert inspect_cli.main([str(root / "clean" / "behavior_events")]) == 0
    assert f"ds={DS}" in capsys.readouterr().out


def test_inspect_missing_table_or_partition_exits_2_naming_the_path(root, capsys):
    assert inspect_cli.main(["nope", "--data-root", str(root)]) == 2
    assert str(root / "exports" / "nope") in capsys.readouterr().err
    assert inspect_cli.main(["u2q", "--ds", "2026-10-01", "--data-root", str(root)]) == 2
    assert str(partition_path(root, "exports", "u2q", "2026-10-01")) in capsys.readouterr().err
    assert inspect_cli.main([str(root / "exports" / "u2q" / "ds=1999-01-01")]) == 2
    assert "no such folder" in capsys.readouterr().err
    hidden = partition_path(root, "exports", "u2q", "2026-11-05")
    hidden.mkdir(parents=True)
    try:
        assert inspect_cli.main(["u2q", "--ds", "2026-11-05", "--data-root", str(root)]) == 2
        assert f"not published (no _SUCCESS): {hidden}" in capsys.readouterr().err
        assert inspect_cli.main(["u2q", "--ds", "2026-11-05", "--data-root", str(root), "--unpublished"]) == 0
        assert "rows: 0" in capsys.readouterr().out
    finally:
        hidden.rmdir()
    with pytest.raises(SystemExit) as e:
        inspect_cli.main(["u2q", "--area", "bogus", "--data-root", str(root)])
    assert e.value.code == 2


# --- headless Chromium ----------------------------------------------------------------------------
def _near(pixels, colour, tol=12):
    import numpy as np

    return int((np.abs(pixels[..., :3].astype(int) - np.array(colour)).max(axis=-1) <= tol).sum())


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built, tmp_path):
    """The page as a browser draws it: a screenshot with content, the embedded plots visible."""
    if not CHROMIUM.exists():
        # Skipped on a developer's machine without a browser; in CI (.ci/run sets CI and installs
        # Chromium) a missing browser is a failure, so the check cannot be silently lost there.
        missing = f"{CHROMIUM} not installed (apt-get install chromium chromium-driver); the screenshot check needs it"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI={os.environ['CI']} but {missing}", pytrace=False)
        pytest.skip(missing)
    import numpy as np
    from PIL import Image

    root, result, _page = built
    copy = tmp_path / "index.html"  # a private copy: other tests rewrite the report
    shutil.copy(result["path"], copy)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "report_screenshot.sh"), str(copy), str(shot), "1280,3000"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_MAGIC)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1280)
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not a blank page
    # The ETL plot (clean rows and quarantine share bars) was decoded and drawn.
    assert _near(pixels, ETL_COLOUR) > 2000
    assert _near(pixels, SHARE_COLOUR) > 2000
    # Something is drawn below the first screen too (the KARMA / AIGQ plots and tables).
    assert pixels[1200:].std() > 10
