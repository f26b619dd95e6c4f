"""Daily CTR reward model for IL-GRPO: train on a day's ``ctr_samples``, evaluate, register.

The model, its features and the reward: :mod:`aigq_model.ctr_model`; the training loop:
:mod:`aigq_model.ctr_train`; metrics and the query-CTR baseline: :mod:`aigq_model.ctr_eval`.

Usage::

    python -m aigq_model.ctr --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--seed S] [--out DIR]

trains on the ``train`` split of ``samples/ctr_samples/ds=<ds>`` (``valid`` for early
stopping), evaluates on all of day ds+1 when published (``eval_on: next_day``), else on ds's
``test`` split (``eval_on: test_split``), against a smoothed per-query empirical CTR baseline,
and registers ``models/aigq_ctr/<ds>`` (``common.registry``, no gate). Prints one JSON line.
Metrics: ``model`` scores at position 0 (the reward's view: its AUC is the one to compare with
the position-blind baseline; its log-loss is pessimistic since every row is scored as a top
slot), ``model_logged_position`` with the logged positions (the calibration check: compare its
log-loss with the baseline's), ``baseline_query_ctr``, ``valid`` and the training curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from aigq_model.ctr_eval import QueryCTRBaseline, evaluate_ctr, score_metrics
from aigq_model.ctr_model import CTRConfig, CTRModel, save_ctr
from aigq_model.ctr_train import train_ctr
from common.arrow_io import read_partition
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import check_ds, ds_range, is_published, partition_path
from common.registry import commit_version, register, registry_target, stage_version
from common.steps import emit_result

NAME = "aigq_ctr"
FORMAT = "aigq_ctr"
TABLE = "ctr_samples"
METRICS_FILE = "metrics.json"


def read_ctr_rows(data_root: str | Path, ds: str) -> list[dict]:
    """All rows of ``samples/ctr_samples/ds=<ds>``; ``FileNotFoundError`` naming the path when
    the partition is not published."""
    path = partition_path(data_root, "samples", TABLE, ds)
    if not is_published(path):
        raise FileNotFoundError(f"{TABLE} partition not published: {path}")
    return read_partition(data_root, "samples", TABLE, ds).to_pylist()


def run_daily(data_root: str | Path, ds: str, config: CTRConfig) -> tuple[CTRModel, dict, dict]:
    """Train on ds, evaluate on ds+1 (or ds's test split); returns ``(model, metrics, n_rows)``."""
    rows = read_ctr_rows(data_root, ds)
    train_rows = [r for r in rows if r.get("split") == "train"]
    valid_rows = [r for r in rows if r.get("split") == "valid"]
    if not train_rows:
        raise ValueError(f"no train rows in {partition_path(data_root, 'samples', TABLE, ds)}")
    next_ds = ds_range(ds, 2)[1]
    if is_published(partition_path(data_root, "samples", TABLE, next_ds)):
        eval_on, eval_ds, eval_rows = "next_day", next_ds, read_ctr_rows(data_root, next_ds)
    else:
        eval_on, eval_ds, eval_rows = "test_split", ds, [r for r in rows if r.get("split") == "test"]
    model, history = train_ctr(train_rows, valid_rows, config)
    baseline = QueryCTRBaseline(train_rows, config.baseline_prior)
    eval_labels = [int(r.get("label") or 0) for r in eval_rows]
    epochs = history["epochs"]
    metrics = {
        "eval_on": eval_on,
        "eval_ds": eval_ds,
        "model": evaluate_ctr(model, eval_rows),
        "model_logged_position": evaluate_ctr(model, eval_rows, use_position=True),
        "baseline_query_ctr": score_metrics(eval_labels, baseline.predict_rows(eval_rows)),
        "valid": evaluate_ctr(model, valid_rows) if valid_rows else None,
        "train_loss_first": epochs[0]["train_loss"],
        "train_loss_last": epochs[-1]["train_loss"],
        "epochs_run": len(epochs),
        "best_epoch": history["best_epoch"],
        "stopped_early": history["stopped_early"],
        "train_seconds": history["seconds"],
    }
    n_rows = {"train": len(train_rows), "valid": len(valid_rows), "eval": len(eval_rows)}
    return model, metrics, n_rows


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date whose ctr_samples train the model")
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None, help="override the profile's data_root")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help=f"output folder (default <data_root>/models/{NAME}/<ds>)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.profile)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    config = CTRConfig.from_dict((cfg.get("aigq") or {}).get("ctr"))
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    ds = check_ds(args.ds)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    model, metrics, n_rows = run_daily(data_root, ds, config)
    root, area, name, version = registry_target(data_root, NAME, ds, args.out)
    manifest = {
        "format": FORMAT,
        "ds": ds,
        "sample_table": TABLE,
        "n_rows": n_rows,
        "config": dataclasses.asdict(config),
        "metrics": metrics,
    }
    tmp = stage_version(root, name, version, area)
    try:
        save_ctr(model, config, tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        final = commit_version(tmp, root, name, version, manifest, area)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    register(root, name, version, area=area)
    emit_result({"model_dir": str(final), "name": name, "version": version, "metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
