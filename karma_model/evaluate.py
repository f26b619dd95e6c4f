"""Evaluate a published KARMA model: retrieval vs tuned baselines, index recall loss, collapse diagnostics.

On the ``valid`` and ``test`` splits of the model's last training day (``ds``):

- HR@K / NDCG@K (K = 10, 50, 200, 1000) of the next item over the whole catalogue, history items
  filtered, by exact inner-product search and through a faiss index built from the item tower;
  ``recall_loss`` = exact − index.
- Baselines (popularity, co-occurrence, MiniLM text-embedding mean), each fitted on the ``train``
  split of the model's data range and tuned on ``valid`` only (metric ``hr@200``), scored the same way.
- Diagnostics: attention-sink ratio α(layer, head) (eager attention, on a subset of test
  histories), information abundance of the test user-embedding matrix, reconstruction token
  accuracy teacher-forced from ``e_u`` (and ROUGE-L of greedy text decoded from ``e_u``) for the
  variants with a reconstruction head.
- ``--compare DIR ...``: other KARMA folders (retrieval + diagnostics) or plain causal LMs (sink
  heatmap only); the model's base LM is added unless ``--no-base``.

Outputs: ``metrics.json`` in the model folder (read by the registry gate) and a report partition
``<root>/reports/karma_<slug>/ds=<ds>/`` (``report.md``, ``metrics.json``, PNG plots).

Usage::

    python -m karma_model.evaluate --ds 2026-11-03 --model-dir DIR [--data-root R] [--splits valid test]
        [--out metrics.json] [--compare DIR ...] [--baselines popularity cooccurrence text]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from base_lm.load import read_manifest
from common.config import load_config
from common.hf_offline import quiet_offline_hf
from common.logging_setup import setup_logging
from common.paths import check_ds, partition_path
from common.publish import atomic_partition
from common.steps import emit_result, write_json_atomic
from karma_model.channels import (
    BASELINES,
    FUSION_FILE,
    RETRIEVAL_DIR,
    TUNE_METRIC,
    HeuristicChannels,
    evaluate_baselines,
    evaluate_fusion,
)
from karma_model.config import CONFIG_FILE
from karma_model.data import (
    IGNORE,
    ItemCatalog,
    KarmaEncoder,
    collate_histories,
    pad,
    read_item_corpus,
    read_samples,
)
from karma_model.diagnostics import (
    SINK_EPS,
    SinkStats,
    attention_sink_alpha,
    information_abundance,
    rouge_l_f,
)
from karma_model.embed import index_params_from_config
from karma_model.eval_report import plot_attention, plot_hit_rates, render_report
from karma_model.fusion import HEURISTIC_CHANNELS
from karma_model.index import build_index, index_ranks
from karma_model.load import load_karma
from karma_model.metrics import DEFAULT_KS, exact_topk_and_ranks, recall_loss, retrieval_metrics
from karma_model.model import KarmaModel, embed_histories, embed_items

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
ARRAYS = "_arrays"  # evaluate_karma_model's embeddings, popped before anything is written
FUSION_DEPTH = 400  # candidates per channel
FUSION_K = 200  # the fusion is fitted on valid HR@FUSION_K
SPLITS = ("valid", "test")


# --- evaluation data -------------------------------------------------------------------------------
@dataclass
class EvalSplit:
    """Samples of one split whose target is in the catalogue and whose history is not empty."""

    name: str
    histories: list[list[dict]]  # karma_samples.history structs, for the LLM
    targets: np.ndarray  # (n,) catalogue rows
    exclude: list[list[int]]  # history item rows (filtered from the ranking)
    baseline_histories: list[list] = field(default_factory=list)  # item rows or query strings

    def __len__(self) -> int:
        return len(self.targets)

    def target_ids(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.asarray([item_ids[t] for t in self.targets], dtype=object)

    def exclude_ids(self, item_ids: Sequence[str]) -> list[list[str]]:
        return [[item_ids[r] for r in rows] for rows in self.exclude]


def build_split(rows: Sequence[Mapping], row_of: Mapping[str, int], name: str, limit: int | None = None) -> EvalSplit:
    """An :class:`EvalSplit` from ``karma_samples`` rows (at most ``limit``, in time order)."""
    rows = sorted(
        (r for r in rows if r["target_item_id"] in row_of and r["history"]),
        key=lambda r: (r["event_time"], r["sample_id"]),
    )
    if limit is not None:
        rows = rows[:limit]
    histories, targets, exclude, base = [], [], [], []
    for r in rows:
        hist = list(r["history"])
        histories.append(hist)
        targets.append(row_of[r["target_item_id"]])
        exclude.append(sorted({row_of[b["item_id"]] for b in hist if b.get("item_id") in row_of}))
        base.append([row_of[b["item_id"]] if b.get("item_id") in row_of else (b.get("text") or None) for b in hist])
    return EvalSplit(name, histories, np.asarray(targets, dtype=np.int64), exclude, base)


# --- KARMA retrieval and diagnostics -------------------------------------------------------------
def karma_retrieval(model, encoder, splits: Mapping[str, EvalSplit], index_params=None, ks=DEFAULT_KS,
                    with_index: bool = True) -> dict:
    """Item and user embeddings, exact and index metrics per split.

    Returns ``{"item_emb", "user_emb": {split: array}, "exact": {split: metrics}, "index": ...,
    "recall_loss": ..., "index_info": manifest}``.
    """
    t0 = time.perf_counter()
    item_emb = embed_items(model, encoder)
    item_seconds = time.perf_counter() - t0
    item_ids = encoder.catalog.item_ids
    out: dict = {"item_emb": item_emb, "user_emb": {}, "exact": {}, "index": {}, "recall_loss": {},
                 "timing": {"embed_items_s": round(item_seconds, 2)}}
    index = None
    if with_index:
        index = build_index(item_emb, np.asarray(item_ids, dtype=object), index_params)
        out["index_info"] = {k: index.manifest[k] for k in ("factory", "dim", "n", "build_seconds")}
    for name, split in splits.items():
        t0 = time.perf_counter()
        user_emb = embed_histories(model, encoder, split.histories) if len(split) else np.zeros((0, item_emb.shape[1]),
                                                                                                 np.float32)
        out["timing"][f"embed_{name}_s"] = round(time.perf_counter() - t0, 2)
        out["user_emb"][name] = user_emb
        if not len(split):
            continue
        ranks = exact_topk_and_ranks(user_emb, item_emb, split.targets, split.exclude, ks=ks).ranks
        out["exact"][name] = retrieval_metrics(ranks, ks)
        if index is not None:
            iranks = index_ranks(index, user_emb, split.target_ids(item_ids), split.exclude_ids(item_ids), ks=ks)
            out["index"][name] = retrieval_metrics(iranks, ks)
            out["recall_loss"][name] = recall_loss(out["exact"][name], out["index"][name])
    return out


def use_eager_attention(model) -> None:
    """Switch a loaded backbone to eager attention (needed for attention weights)."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    backbone.set_attn_implementation("eager")


def sink_alpha(model, encoder, histories: Sequence[Sequence[dict]], batch_size: int = 16) -> np.ndarray:
    """α(layer, head) pooled over ``histories`` (row-weighted mean of per-batch α)."""
    use_eager_attention(model)
    total, n = None, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(histories), batch_size):
            chunk = histories[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_histories(encoder, chunk).items()}
            alpha = attention_sink_alpha(model.history_attentions(**batch), batch["attention_mask"]) * len(chunk)
            total = alpha if total is None else total + alpha
            n += len(chunk)
    if total is None:
        raise ValueError("no histories for the attention diagnostics")
    return total / n


def sink_summary(alpha: np.ndarray) -> dict:
    """:class:`karma_model.diagnostics.SinkStats` fields of a pooled α matrix."""
    above = alpha > SINK_EPS
    stats = SinkStats(alpha, alpha.mean(axis=1), above.mean(axis=1), float(above.mean()), SINK_EPS)
    return stats.to_dict()


def reconstruction_fidelity(model, encoder, user_emb: np.ndarray, target_rows: Sequence[int], batch_size: int = 32,
                            n_decode: int = 16) -> dict:
    """Teacher-forced token accuracy of the next item's text from ``e_u`` (+ ROUGE-L of greedy decodes).

    Empty dict for variants without a reconstruction head.
    """
    if getattr(model, "rec_proj", None) is None or not len(target_rows):
        return {}
    device = next(model.parameters()).device
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(target_rows), batch_size):
            rows = list(target_rows[start : start + batch_size])
            tgts = [encoder.target(r) for r in rows]
            ids, mask = pad([[encoder.ids["<REC>"]] + t for t in tgts], encoder.pad_id)
            labels, _ = pad([[IGNORE] + t for t in tgts], IGNORE)
            emb = torch.from_numpy(user_emb[start : start + batch_size]).to(device)
            logits, full_labels = model.reconstruction_logits(emb, ids.to(device), mask.to(device), labels.to(device))
            pred = logits.argmax(-1)[:, :-1]
            gold = full_labels[:, 1:]
            keep = gold != IGNORE
            correct += int((pred[keep] == gold[keep]).sum())
            total += int(keep.sum())
        out = {"reconstruction_token_accuracy": correct / total if total else float("nan"),
               "reconstruction_tokens": total}
        if n_decode > 0:
            k = min(n_decode, len(target_rows))
            decoded = model.decode_interest(torch.from_numpy(user_emb[:k]).to(device),
                                            max_new_tokens=encoder.config.max_target_tokens)
            tok = encoder.tokenizer
            scores = []
            for ids_, row in zip(decoded, target_rows[:k], strict=True):
                ref = tok.decode(encoder.target(row)[:-1], skip_special_tokens=True)
                scores.append(rouge_l_f(tok.decode(ids_, skip_special_tokens=True), ref))
            out["rouge_l"] = float(np.mean(scores))
            out["rouge_l_n"] = k
    return out


def evaluate_karma_model(model, encoder, splits: Mapping[str, EvalSplit], index_params=None, ks=DEFAULT_KS,
                         n_attention: int = 64, with_index: bool = True, n_decode: int = 16) -> dict:
    """Retrieval metrics and diagnostics of one KARMA model (see the module docstring)."""
    ret = karma_retrieval(model, encoder, splits, index_params, ks, with_index)
    diag_split = "test" if "test" in splits and len(splits["test"]) else next(iter(splits))
    split = splits[diag_split]
    user_emb = ret["user_emb"][diag_split]

    diagnostics: dict = {"split": diag_split, "n": len(split)}
    if len(split):
        diagnostics["information_abundance"] = information_abundance(user_emb)
        diagnostics.update(reconstruction_fidelity(model, encoder, user_emb, split.targets, n_decode=n_decode))
        alpha = sink_alpha(model, encoder, split.histories[:n_attention])
        diagnostics["sink"] = sink_summary(alpha)
        diagnostics["sink_ratio"] = diagnostics["sink"]["sink_ratio"]
        diagnostics["n_attention"] = min(n_attention, len(split))
    return {
        "exact": ret["exact"],
        "index": ret["index"],
        "recall_loss": ret["recall_loss"],
        "index_info": ret.get("index_info", {}),
        "diagnostics": diagnostics,
        "timing": ret["timing"],
        ARRAYS: {"item_emb": ret["item_emb"], "user_emb": ret["user_emb"]},
    }


# --- report ------------------------------------------------------------------------------------------
def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_report(metrics: Mapping, out_dir: str | Path, alphas: Mapping[str, np.ndarray]) -> Path:
    """Publish ``report.md``, ``metrics.json`` and the PNGs (:mod:`karma_model.eval_report`) atomically
    into ``out_dir``."""
    manifest = {"kind": "karma_eval_report", "model_dir": metrics.get("model_dir"), "ds": metrics.get("ds")}
    with atomic_partition(out_dir, manifest) as tmp:
        plots = {}
        for split in metrics.get("splits", []):
            if plot_hit_rates(metrics, split, tmp / f"hr_at_k_{split}.png"):
                plots[f"HR@K {split}"] = f"hr_at_k_{split}.png"
        if plot_attention(alphas, tmp / "attention_sinks.png"):
            plots["attention α(layer, head)"] = "attention_sinks.png"
        (tmp / "report.md").write_text(render_report(metrics, plots, TUNE_METRIC))
        write_json_atomic(tmp / METRICS_FILE, metrics, default=_json_default)
    return Path(out_dir)


# --- orchestration -----------------------------------------------------------------------------------
def _load_compare(path: Path, config, attn: str = "sdpa"):
    """``(model, tokenizer, is_karma)``: a KARMA folder, or a plain causal LM wrapped for diagnostics."""
    if (path / CONFIG_FILE).is_file():
        model, tok = load_karma(path, attn_implementation=attn)
        return model, tok, True
    model, tok = KarmaModel.from_base(path, config, attn_implementation="eager")
    return model.eval(), tok, False


def evaluate(model_dir: str | Path, data_root: str | Path, ds: str | None = None, splits: Sequence[str] = SPLITS,
             baselines: Sequence[str] = BASELINES, compare: Sequence[str | Path] = (), include_base: bool = True,
             index_params=None, max_eval: int | None = 5000, n_attention: int = 64, n_decode: int = 16,
             ks=DEFAULT_KS, text_encoder=None, fusion_depth: int = FUSION_DEPTH, fusion_k: int = FUSION_K,
             retrieval_dir: str | Path | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Full evaluation of one model folder; returns ``(metrics, {model name: α matrix})``.

    With the three baselines, the fused u2i list is fitted on valid without and with KARMA
    (:func:`karma_model.channels.evaluate_fusion`); ``retrieval_dir`` (the CLI: the model folder's
    ``retrieval/``) receives the fitted channels and the fusion, which the export serves."""
    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    ds = ds or manifest.get("ds")
    if ds is None:
        raise ValueError(f"{model_dir}: no ds in the manifest; pass --ds")
    ds_range = manifest.get("ds_range") or [ds, ds]
    catalog = ItemCatalog.from_table(read_item_corpus(data_root, ds))
    eval_rows = read_samples(data_root, [ds]).to_pylist()
    by_split = {s: build_split([r for r in eval_rows if r["split"] == s], catalog.row, s, max_eval) for s in splits}
    for s, sp in by_split.items():
        logger.info("%s: %d samples", s, len(sp))
    if not any(len(sp) for sp in by_split.values()):
        raise FileNotFoundError(f"no valid/test karma_samples for {ds} under {data_root}")

    model, tok = load_karma(model_dir)
    encoder = KarmaEncoder(tok, model.config, catalog)
    result = evaluate_karma_model(model, encoder, by_split, index_params, ks, n_attention, True, n_decode)
    arrays = result.pop(ARRAYS)
    variant = model.config.variant + ("+img" if model.config.use_images else "")
    alphas = {f"karma[{variant}]": np.asarray(result["diagnostics"]["sink"]["alpha"])} \
        if "sink" in result["diagnostics"] else {}
    config = model.config
    del model

    compare_paths = [Path(p) for p in compare]
    base_path = (manifest.get("base_model") or {}).get("path")
    if include_base and base_path and Path(base_path).is_dir() and Path(base_path) not in compare_paths:
        compare_paths.insert(0, Path(base_path))
    compared: dict[str, dict] = {}
    for path in compare_paths:
        cmodel, ctok, is_karma = _load_compare(path, config)
        if is_karma:
            cvariant = cmodel.config.variant + ("+img" if cmodel.config.use_images else "")
            name = f"karma[{cvariant}] {path.name}" if f"karma[{cvariant}]" in alphas else f"karma[{cvariant}]"
            cenc = KarmaEncoder(ctok, cmodel.config, catalog)
            cres = evaluate_karma_model(cmodel, cenc, by_split, index_params, ks, n_attention, False, n_decode)
            cres.pop(ARRAYS)
            entry = {"path": str(path), "exact": cres["exact"], "diagnostics": cres["diagnostics"]}
        else:
            name = f"base LM {path.name}"
            cenc = KarmaEncoder(ctok, config, catalog)
            diag_split = by_split["test"] if len(by_split.get("test", [])) else next(iter(by_split.values()))
            alpha = sink_alpha(cmodel, cenc, diag_split.histories[:n_attention])
            sink = sink_summary(alpha)
            entry = {"path": str(path), "exact": {}, "diagnostics": {"sink": sink, "sink_ratio": sink["sink_ratio"]}}
        if "sink" in entry["diagnostics"]:
            alphas[name] = np.asarray(entry["diagnostics"]["sink"]["alpha"])
        compared[name] = entry
        del cmodel

    base_results, fitted, fusion = {}, {}, {}
    if baselines:
        train_rows = read_samples(data_root, _dates(ds_range), "train").to_pylist()
        base_results = evaluate_baselines(baselines, catalog, train_rows, by_split, ks, text_encoder=text_encoder,
                                          fitted=fitted)
    if set(HEURISTIC_CHANNELS) <= set(fitted):
        channels = HeuristicChannels(list(catalog.item_ids), fitted["cooccurrence"], fitted["text"],
                                     fitted["popularity"], int(config.history_len))
        fusion = evaluate_fusion(channels, by_split, arrays["user_emb"], arrays["item_emb"], fusion_depth,
                                 fusion_k, ks)
        if retrieval_dir is not None:
            channels.save(retrieval_dir, {name: b["params"] for name, b in base_results.items()})
            write_json_atomic(Path(retrieval_dir) / FUSION_FILE, fusion)
    else:
        logger.warning("fused u2i not evaluated: it needs the baselines %s (got %s)", HEURISTIC_CHANNELS,
                       sorted(fitted))

    metrics = {
        "model_dir": str(model_dir),
        "name": manifest.get("name"),
        "variant": variant,
        "ds": manifest.get("ds", ds),
        "eval_ds": ds,
        "ds_range": ds_range,
        "splits": [s for s in splits if len(by_split[s])],
        "n_items": len(catalog),
        "ks": list(ks),
        "model": result,
        "compare": compared,
        "baselines": base_results,
        "fusion": fusion,
        "summary": summary(result, base_results, fusion),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    return metrics, alphas


def _dates(ds_range: Sequence[str]) -> list[str]:
    start, end = dt.date.fromisoformat(ds_range[0]), dt.date.fromisoformat(ds_range[-1])
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def summary(model_result: Mapping, baseline_results: Mapping, fusion: Mapping | None = None,
            split: str = "test") -> dict:
    """Flat headline figures (what the gate and the ablation table read): the model's ``split``
    metrics, each baseline's as ``<name>_<metric>``, the fused lists' as ``fused_<metric>`` (with
    KARMA) and ``fused_without_<metric>``, and on valid as ``fused_valid_<metric>`` /
    ``fused_without_valid_<metric>`` (what the gate compares)."""
    diag = model_result.get("diagnostics", {})
    out = {"split": split}
    for k, v in model_result.get("exact", {}).get(split, {}).items():
        out[k] = v
    for k, v in model_result.get("index", {}).get(split, {}).items():
        if k != "n":
            out[f"index_{k}"] = v
    for name, base in baseline_results.items():
        m = base["metrics"].get(split, {})
        for k in ("hr@10", "hr@50", "hr@200", "ndcg@10"):
            if k in m:
                out[f"{name}_{k}"] = m[k]
    for variant, prefix in (("with", "fused"), ("without", "fused_without")):
        metrics = (fusion or {}).get(variant, {}).get("metrics", {})
        for name, tag in ((split, ""), ("valid", "_valid")):
            for k in ("hr@10", "hr@50", "hr@200", "ndcg@10"):
                if k in metrics.get(name, {}):
                    out[f"{prefix}{tag}_{k}"] = metrics[name][k]
    for k in ("sink_ratio", "information_abundance", "reconstruction_token_accuracy", "rouge_l"):
        if k in diag:
            out[k] = diag[k]
    return out


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_offline_hf()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", default=None, help="evaluation date (default: the model's ds)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    parser.add_argument("--compare", nargs="*", default=[], help="other KARMA folders or causal LMs")
    parser.add_argument("--no-base", action="store_true", help="do not add the model's base LM to --compare")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here")
    parser.add_argument("--report-dir", default=None, help="default <root>/reports/karma_<slug>/ds=<ds>")
    parser.add_argument("--max-eval", type=int, default=5000, help="samples per split at most")
    parser.add_argument("--n-attention", type=int, default=64, help="histories for the attention diagnostics")
    parser.add_argument("--n-decode", type=int, default=16, help="greedy decodes for ROUGE-L (0 = none)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.profile)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    index_params = index_params_from_config(cfg.get("karma_index"))
    ds = check_ds(args.ds) if args.ds else None
    fusion_cfg = (cfg.get("karma") or {}).get("fusion") or {}
    metrics, alphas = evaluate(args.model_dir, data_root, ds, args.splits, args.baselines, args.compare,
                               not args.no_base, index_params, args.max_eval, args.n_attention, args.n_decode,
                               fusion_depth=int(fusion_cfg.get("depth", FUSION_DEPTH)),
                               fusion_k=int(fusion_cfg.get("k", FUSION_K)),
                               retrieval_dir=Path(args.model_dir) / RETRIEVAL_DIR)
    slug = Path(args.model_dir).parent.name
    report_dir = Path(args.report_dir) if args.report_dir else partition_path(data_root, "reports", slug,
                                                                              metrics["eval_ds"])
    metrics["report_dir"] = str(report_dir)
    write_report(metrics, report_dir, alphas)
    model_metrics = write_json_atomic(Path(args.model_dir) / METRICS_FILE, metrics, default=_json_default)
    if args.out:
        write_json_atomic(Path(args.out), metrics, default=_json_default)
    emit_result({"metrics_path": str(model_metrics), "report_dir": str(report_dir),
                 "summary": metrics["summary"]}, default=_json_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
