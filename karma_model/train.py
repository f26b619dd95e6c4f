"""Train one KARMA variant on the ``train`` split of the days ending at ``ds`` and publish the model.

Training runs through :func:`common.training.train_loop` (checkpoints every ``save_steps`` in a
hidden sibling ``.ckpt-<version>`` of the output folder, ``--resume`` from the newest one, gradient
accumulation, DDP under ``torchrun --nproc-per-node N``; each loss term logged per step).
``transformers.Trainer`` would give the same but needs ``accelerate``, absent from the pinned
environment; the loop keeps Trainer's checkpoint layout and ``global_step`` semantics.

Output (``--out``, default ``<data_root>/models/karma_<variant slug>/<ds>/``, published atomically):
``backbone/`` (HF causal LM, safetensors), ``heads.safetensors`` (W_u, W_i, rec/image heads),
``karma_config.json``, the tokenizer, ``manifest.json`` (data range, code version, base model,
losses on train and valid), ``trainer_state.json`` (every step's loss terms). Reload with
:func:`karma_model.load.load_karma`.

Under ``torchrun`` every rank trains on its shard of each global batch (``batch_size`` per rank)
and ``L_act`` sees every rank's candidates (:func:`karma_model.losses.gather_candidates`); rank 0
alone writes checkpoints and the published folder and prints the JSON result line; the other
ranks return 0 once training is done.

Usage::

    python -m karma_model.train --ds 2026-11-03 [--data-root D] [--variant act+gen+rec] [--images]
        [--base-model PATH] [--out DIR] [--max-steps N] [--seed S] [--resume]
    torchrun --nproc-per-node 2 -m karma_model.train --ds ...
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import torch

from base_lm.load import code_version, read_manifest
from base_lm.release import latest_base_model
from common.ddp import is_main_process, world_size
from common.paths import check_ds, previous_ds
from common.publish import atomic_partition
from common.steps import emit_result
from common.training import (
    EarlyStopping,
    LoopArgs,
    cli_overrides,
    evaluate_loss,
    parse_cli,
    start_ranks,
    train_loop,
    training_arg_parser,
    training_entry_point,
    write_trainer_state,
)
from karma_model.config import VARIANTS, KarmaConfig
from karma_model.data import (
    ItemCatalog,
    KarmaCollator,
    KarmaDataset,
    KarmaEncoder,
    read_item_corpus,
    read_samples,
)
from karma_model.load import save_karma
from karma_model.model import KarmaModel

logger = logging.getLogger(__name__)

EARLY_STOPPING_BATCHES = 32  # valid batches per early-stopping evaluation (at least eval_batches)


class TrainCollator(KarmaCollator):
    """:class:`KarmaCollator` plus ``candidate_rows`` (U,): the catalogue row of each candidate
    column, which DDP needs to count an item held by several ranks once (as one process does)."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        rows = list(
            dict.fromkeys(
                [ex.target_row for ex in examples] + [n for ex in examples for n in ex.negative_rows]
            )
        )
        if len(rows) != batch["item_input_ids"].shape[0]:  # the collator's candidate order changed
            raise RuntimeError(f"{len(rows)} candidate rows for {batch['item_input_ids'].shape[0]} items")
        batch["candidate_rows"] = torch.tensor(rows, dtype=torch.long)  # (n_candidates,)
        return batch


def loop_args(config: KarmaConfig, checkpoint_dir: str | Path):
    """The training-loop settings of a KARMA config."""
    return LoopArgs.from_config(config, checkpoint_dir)


def train_karma(
    config: KarmaConfig,
    base_model: str | Path,
    train_samples: pa.Table,
    catalog: ItemCatalog,
    checkpoint_dir: str | Path,
    valid_samples: pa.Table | None = None,
    resume: bool | str | Path = False,
    attn_implementation: str = "sdpa",
):
    """Build KARMA on ``base_model`` and train it; returns ``(model, tokenizer, train_state, metrics)``.

    ``train_state.log_history`` holds every step's loss terms; ``metrics`` summarises them and adds
    the mean loss terms on ``valid_samples``.
    """
    model, tokenizer = KarmaModel.from_base(base_model, config, attn_implementation=attn_implementation)
    encoder = KarmaEncoder(tokenizer, config, catalog)
    if config.text_features and not resume:
        model.init_text_projection(encoder.item_vectors(range(len(catalog))).numpy())
    collator = TrainCollator(encoder)
    train_ds = KarmaDataset(train_samples, encoder)
    logger.info(
        "training %s on %d samples, %d items (lambda_gen=%.3g, lambda_rec=%.3g, images=%s)",
        config.variant,
        len(train_ds),
        len(catalog),
        config.lambda_gen,
        config.lambda_rec,
        encoder.use_images,
    )
    args = loop_args(config, checkpoint_dir)
    if config.epochs > 0:
        per_step = config.batch_size * config.gradient_accumulation_steps * world_size()
        args = dataclasses.replace(args, max_steps=max(1, math.ceil(config.epochs * len(train_ds) / per_step)))
    stopper = None
    if config.early_stopping_patience > 0:
        if valid_samples is None or not valid_samples.num_rows:
            raise ValueError("early_stopping_patience needs valid samples")
        stop_ds = KarmaDataset(valid_samples, encoder)
        batches = max(config.eval_batches, EARLY_STOPPING_BATCHES)
        stopper = EarlyStopping(lambda: evaluate_loss(model, stop_ds, collator, config.batch_size, batches)["loss_act"],
                                every=config.eval_steps, patience=config.early_stopping_patience)
    t0 = time.perf_counter()
    state = train_loop(model, train_ds, collator, args, resume_from_checkpoint=resume, early_stopping=stopper)
    seconds = time.perf_counter() - t0
    last = state.log_history[-10:]
    train_terms = (
        {k: sum(e[k] for e in last) / len(last) for k in last[0] if k.startswith("loss")} if last else {}
    )
    metrics = {
        "steps": state.global_step,
        "train_seconds": round(seconds, 1),
        "max_steps": args.max_steps,
        **({"early_stopping": {"best_step": stopper.best_step, "stopped_at": stopper.stopped_at,
                               "valid_loss_act": stopper.history}} if stopper is not None else {}),
        "n_train": len(train_ds),
        "n_items": len(catalog),
        "train_last10": train_terms,
        "train_first": {k: v for k, v in state.log_history[0].items() if k.startswith("loss")}
        if state.log_history
        else {},
    }
    # metrics are rank 0's to publish: the other ranks skip the evaluation
    if valid_samples is not None and valid_samples.num_rows and config.eval_batches and is_main_process():
        valid_ds = KarmaDataset(valid_samples, encoder)
        metrics["valid"] = evaluate_loss(model, valid_ds, collator, config.batch_size, config.eval_batches)
        metrics["n_valid"] = len(valid_ds)
    return model, tokenizer, state, metrics


@training_entry_point
def main(argv: list[str] | None = None) -> int:
    parser = training_arg_parser(__doc__.splitlines()[0], "<data_root>/models/karma_<slug>/<ds>")
    parser.add_argument("--variant", choices=VARIANTS, default=None)
    parser.add_argument(
        "--images",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use item image vectors (default: karma.use_images)",
    )
    parser.add_argument("--base-model", default=None, help="local HF checkpoint (default: newest base_lm)")
    args, cfg, data_root = parse_cli(parser, argv)
    section = dict(cfg.get("karma") or {})
    base_model = args.base_model or section.pop("base_model", None)
    section.pop("base_model", None)
    section.pop("gate", None)  # the release gate (karma_model.release), not a training setting
    section.pop("fusion", None)  # the fused u2i list (karma_model.evaluate / export.u2i), not training
    config = dataclasses.replace(
        KarmaConfig.from_dict(section),
        **cli_overrides(variant=args.variant, use_images=args.images, max_steps=args.max_steps, seed=args.seed),
    )
    ds = check_ds(args.ds)
    ds_list = [*previous_ds(ds, config.days - 1), ds]
    base_model = Path(base_model) if base_model else latest_base_model(data_root, ds)
    final = Path(args.out) if args.out else Path(data_root) / "models" / f"karma_{config.slug}" / ds
    checkpoint_dir = final.parent / f".ckpt-{final.name}"

    rank = start_ranks(checkpoint_dir, args.resume)
    train = read_samples(data_root, ds_list, "train")
    if train.num_rows == 0:
        raise FileNotFoundError(f"no karma_samples train rows for {ds_list[0]}..{ds} under {data_root}")
    valid = read_samples(data_root, ds_list, "valid")
    catalog = ItemCatalog.from_table(read_item_corpus(data_root, ds))
    model, tokenizer, state, metrics = train_karma(
        config, base_model, train, catalog, checkpoint_dir, valid, resume=bool(args.resume)
    )
    if rank != 0:  # rank 0 publishes, cleans up and prints the result line
        return 0
    manifest = {
        "name": f"karma_{config.slug}",
        "version": ds,
        "ds": ds,
        "ds_range": [ds_list[0], ds],
        "variant": config.variant,
        "use_images": config.use_images,
        "code_version": code_version(),
        "base_model": {"path": str(base_model), "manifest": read_manifest(base_model)},
        "config": config.to_dict(),
        "metrics": metrics,
    }
    with atomic_partition(final, manifest) as tmp:
        write_trainer_state(state, tmp)
        save_karma(model.to("cpu"), tokenizer, tmp, manifest)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    emit_result({"model_dir": str(final), "metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
