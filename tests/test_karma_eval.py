"""karma_model.evaluate / embed / release on a tiny randomly initialised KARMA model (no MiniLM)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from common.schemas import ITEM_CORPUS, KARMA_SAMPLES
from karma_model.data import ItemCatalog
from tests.test_base_lm import make_tiny_base
from tests.test_karma_model import item_rows, sample_rows, tiny_config

DS = "2026-11-03"


def fake_encoder(texts):
    """Deterministic unit vectors per text (stands in for MiniLM)."""
    out = np.stack([np.random.default_rng(int(hashlib.md5(str(t).encode()).hexdigest()[:8], 16)).standard_normal(8)
                    for t in texts]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data root with one day of samples (train/valid/test) and a 2-step KARMA model published on it."""
    from base_lm.load import read_manifest
    from common.arrow_io import write_partition
    from common.publish import atomic_partition
    from karma_model.load import save_karma
    from karma_model.train import train_karma

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("karma_eval")
    root = tmp / "data"
    rows = sample_rows(24)
    for i, r in enumerate(rows):
        r["split"] = "train" if i < 14 else ("valid" if i < 19 else "test")
    write_partition(root, "samples", "item_corpus", DS, item_rows())
    write_partition(root, "samples", "karma_samples", DS, rows)
    base = make_tiny_base(tmp / "base")
    config = tiny_config("act+gen+rec", max_steps=2)
    catalog = ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))
    train = pa.Table.from_pylist([r for r in rows if r["split"] == "train"], schema=KARMA_SAMPLES)
    model, tok, _state, metrics = train_karma(config, base, train, catalog, tmp / "ckpt")
    out = root / "models" / "karma_act_gen_rec" / DS
    manifest = {"name": "karma_act_gen_rec", "version": DS, "ds": DS, "ds_range": [DS, DS],
                "variant": config.variant, "config": config.to_dict(), "metrics": metrics,
                "base_model": {"path": str(base), "manifest": read_manifest(base)}}
    with atomic_partition(out, manifest) as t:
        save_karma(model, tok, t, manifest)
    return root, out, base


def test_evaluate_reports_exact_index_baselines_and_diagnostics(trained, tmp_path):
    from karma_model.evaluate import METRICS_FILE, evaluate, write_report

    root, model_dir, _base = trained
    metrics, alphas = evaluate(model_dir, root, baselines=("popularity", "cooccurrence", "text"), n_attention=4,
                               n_decode=2, ks=(1, 5, 10), text_encoder=fake_encoder)
    assert metrics["splits"] == ["valid", "test"]
    assert metrics["n_items"] == 12
    model = metrics["model"]
    for split, n in (("valid", 5), ("test", 5)):
        exact, index = model["exact"][split], model["index"][split]
        assert exact["n"] == n
        assert 0 <= exact["hr@1"] <= exact["hr@5"] <= exact["hr@10"] <= 1
        assert model["recall_loss"][split]["hr@10"] == pytest.approx(exact["hr@10"] - index["hr@10"])
        for name in ("popularity", "cooccurrence", "text"):
            assert metrics["baselines"][name]["metrics"][split]["n"] == n
    diag = model["diagnostics"]
    assert np.asarray(diag["sink"]["alpha"]).shape == (2, 4)  # tiny base: 2 layers x 4 heads
    assert 0 <= diag["sink_ratio"] <= 1
    assert 1 <= diag["information_abundance"] <= 16
    assert 0 <= diag["reconstruction_token_accuracy"] <= 1
    assert 0 <= diag["rouge_l"] <= 1
    assert set(alphas) == {"karma[act+gen+rec]", f"base LM {trained[2].name}"}  # base LM compared by default
    summary = metrics["summary"]
    assert {"hr@10", "popularity_hr@10", "text_hr@10", "sink_ratio"} <= set(summary)

    report = write_report(metrics, tmp_path / "report", alphas)
    files = {p.name for p in report.iterdir()}
    assert {"report.md", METRICS_FILE, "hr_at_k_test.png", "attention_sinks.png", "_SUCCESS"} <= files
    text = (report / "report.md").read_text()
    assert "| popularity |" in text
    assert "karma[act+gen+rec] index" in text


def test_history_items_are_filtered_and_baselines_tuned_on_valid_only():
    from karma_model.channels import evaluate_baselines
    from karma_model.evaluate import build_split

    rows = sample_rows(12)
    for i, r in enumerate(rows):
        r["split"] = "train" if i < 8 else "valid"
    catalog = ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))
    split = build_split([r for r in rows if r["split"] == "valid"], catalog.row, "valid")
    for hist, excl, base in zip(split.histories, split.exclude, split.baseline_histories, strict=True):
        assert excl == sorted({catalog.row[b["item_id"]] for b in hist if b["item_id"]})
        assert base[0] == "organic chocolate"  # search behaviours reach the text baseline as queries
    res = evaluate_baselines(["popularity"], catalog, rows, {"valid": split}, ks=(1, 5))
    assert res["popularity"]["n_trials"] == 3
    assert set(res["popularity"]["metrics"]) == {"valid"}


def test_embed_publishes_a_loadable_index_and_cli_writes_metrics_into_the_model(trained, capsys):
    from karma_model.embed import embed_catalogue, index_params_from_config
    from karma_model.evaluate import main
    from karma_model.index import load_index

    root, model_dir, _base = trained
    info = embed_catalogue(model_dir, root, DS, index_section={"factory": "Flat"})
    index = load_index(info["index_dir"])
    assert info["index_dir"] == str(root / "indexes" / "karma" / DS)
    assert len(index) == 12
    assert index.manifest["model_version"] == DS
    assert index.manifest["variant"] == "act+gen+rec"
    _, ids = index.search(np.eye(1, index.dim, dtype=np.float32), 3)
    assert set(ids[0]) <= {r["item_id"] for r in item_rows()}
    assert index_params_from_config({}, 10**7).factory.startswith("IVF")

    assert main(["--model-dir", str(model_dir), "--data-root", str(root), "--baselines", "popularity",
                 "--no-base", "--n-attention", "2", "--n-decode", "0"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert line["metrics_path"] == str(model_dir / "metrics.json")
    assert saved["summary"]["popularity_hr@200"] == 1.0  # fewer than 200 items: every target is in the top 200
    assert (root / "reports" / "karma_act_gen_rec" / f"ds={DS}" / "report.md").is_file()


def test_register_through_the_gate_and_refuse_a_regression(trained, tmp_path):
    from common.registry import GateRejected, current_version, read_manifest
    from karma_model.release import register_karma

    root, model_dir, _base = trained
    metrics = tmp_path / "m.json"
    fused = {"fused_valid_hr@200": 0.45, "fused_without_valid_hr@200": 0.4}
    metrics.write_text(json.dumps({"summary": {"hr@200": 0.5, **fused}}))
    register_karma(root, model_dir, "2026-11-03", index_dir="/x", metrics_path=metrics)
    assert current_version(root, "karma") == "2026-11-03"
    manifest = read_manifest(root / "models" / "karma" / "2026-11-03")
    assert manifest["ds_range"] == [DS, DS]
    assert manifest["base_model"]["path"]
    assert manifest["config"]["variant"]
    assert (root / "models" / "karma" / "2026-11-03" / "backbone").is_dir()
    metrics.write_text(json.dumps({"summary": {"hr@200": 0.44, **fused}}))  # < 0.9 x 0.5
    with pytest.raises(GateRejected, match="current 2026-11-03"):
        register_karma(root, model_dir, "2026-11-04", metrics_path=metrics)
    assert current_version(root, "karma") == "2026-11-03"
