"""AIGQ IL-SFT: next-token loss on the ordered query list given the user context (prompt masked).

Kinds: ``direct`` (``aigq_direct_sft``, the whole ordered list), ``think`` (``aigq_think_sft``,
interest points with triggers), ``plain`` (the ablation: ``aigq_direct_sft`` exploded to one
query per sample, so the order is no longer supervised). Prompt style ``compressed`` (special
tokens) or ``verbose``.

The prompt special tokens and output markers are added to the base model first (each new row =
mean of its readable name's sub-word embeddings). Training runs through
:func:`common.training.train_loop` (checkpoints every ``save_steps`` in a hidden sibling
``.ckpt-<version>``, ``--resume``, gradient accumulation, DDP under torchrun).

Output (``--out``, default ``<data_root>/models/aigq_<kind>/<ds>/``, written through
``common.registry.stage_version``/``commit_version``, not registered): HF causal LM
(safetensors), tokenizer, ``manifest.json`` (data dates, base model, config, losses),
``trainer_state.json`` (every step's loss). Reload with :func:`aigq_model.load.load_aigq`.

Under ``torchrun`` each rank trains on its shard of every global batch (``batch_size`` per rank);
the token loss is weighted by each rank's share of the global batch's target tokens
(``loss_items``), so the DDP loss and gradient are the global token mean's, as in one process.
Rank 0 alone writes checkpoints and the version and prints the JSON result line.

Usage::

    python -m aigq_model.train_sft --ds 2026-11-03 [--data-root D] [--kind direct] [--style compressed]
        [--base-model PATH] [--max-steps N] [--seed S] [--resume] [--out DIR]
    torchrun --standalone --nproc-per-node 2 -m aigq_model.train_sft --ds ...
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aigq_model.load import save_aigq
from aigq_model.prompts import add_prompt_tokens, all_special_tokens, compressed_special_tokens
from aigq_model.targets import (
    IGNORE_INDEX,
    TARGET_KINDS,
    explode_plain_sft,
    sft_text_pair,
    tokenize_sft_example,
)
from base_lm.load import code_version, load_base_lm, read_manifest
from base_lm.release import latest_base_model
from common.arrow_io import read_partition
from common.ddp import is_main_process
from common.device import resolve
from common.paths import check_ds, is_published, partition_path, previous_ds
from common.registry import commit_version, registry_target, stage_version
from common.steps import emit_result
from common.training import (
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

logger = logging.getLogger(__name__)

STYLES = ("compressed", "verbose")
FORMAT = "aigq"
SAMPLE_TABLE = {"direct": "aigq_direct_sft", "plain": "aigq_direct_sft", "think": "aigq_think_sft"}


@dataclass
class SFTConfig:
    """IL-SFT settings (``aigq.sft`` in conf/pipeline.yaml)."""

    kind: str = "direct"
    style: str = "compressed"
    max_history: int = 20
    max_queries: int = 10
    max_len: int = 384
    days: int = 7
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    lr_scheduler_type: str = "cosine"
    max_steps: int = 200
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    eval_batches: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"kind must be one of {TARGET_KINDS}, got {self.kind!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if min(self.max_history, self.max_queries, self.days, self.batch_size, self.max_steps) < 1:
            raise ValueError("max_history, max_queries, days, batch_size and max_steps must be >= 1")
        if self.max_len < 8:
            raise ValueError("max_len must be >= 8")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> SFTConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown aigq.sft settings: {sorted(unknown)}")
        return cls(**section)

    @property
    def name(self) -> str:
        """Registry name of the models this config trains."""
        return f"aigq_{self.kind}"


# --- data -------------------------------------------------------------------------------------
def read_sft_rows(
    data_root: str | Path, ds_list: Sequence[str], kind: str, split: str | None = "train"
) -> list[dict]:
    """Rows of the kind's sample table over the published partitions of ``ds_list`` (one split,
    or all with ``split=None``), as dicts; ``plain`` rows are exploded to one query each."""
    table = SAMPLE_TABLE[kind]
    rows: list[dict] = []
    for ds in ds_list:
        if not is_published(partition_path(data_root, "samples", table, ds)):
            continue
        part = read_partition(data_root, "samples", table, ds).to_pylist()
        rows += [r for r in part if split is None or r.get("split") == split]
    if kind == "plain":
        rows = [x for r in rows for x in explode_plain_sft(r)]
    logger.info("%s: %d %s rows from %d days", table, len(rows), split or "all", len(ds_list))
    return rows


class SFTDataset:
    """Tokenised IL-SFT examples (``input_ids``, ``attention_mask``, ``labels`` with -100 on the prompt)."""

    def __init__(self, rows: Sequence[Mapping], tokenizer, config: SFTConfig):
        self.examples = []
        for r in rows:
            prompt, target = sft_text_pair(
                r, config.kind, config.style, config.max_history, config.max_queries
            )
            if target:
                self.examples.append(tokenize_sft_example(tokenizer, prompt, target, config.max_len))
        logger.info(
            "%d SFT examples (%d rows without target dropped)", len(self.examples), len(rows) - len(self)
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class SFTCollator:
    """Right-pads a batch: pad id on inputs, 0 on the mask, -100 on labels."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in examples)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            pad = width - len(e["input_ids"])
            out["input_ids"].append(e["input_ids"] + [self.pad_token_id] * pad)
            out["attention_mask"].append(e["attention_mask"] + [0] * pad)
            out["labels"].append(e["labels"] + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}  # (batch, width)


# --- model ------------------------------------------------------------------------------------
def prepare_model(base_model: str | Path, config: SFTConfig, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: the base LM with the prompt special tokens and output markers added."""
    model, tokenizer = load_base_lm(base_model, attn_implementation=attn_implementation)
    tokens = all_special_tokens(config.max_history)
    if config.style == "verbose":  # the verbose prompt uses no prompt tokens; only the output markers
        tokens = [t for t in tokens if t not in set(compressed_special_tokens(config.max_history))]
    add_prompt_tokens(tokenizer, model, tokens)
    return model, tokenizer


def publish_aigq(
    model, tokenizer, root, name: str, version: str, manifest: dict, area: str = "models", state=None
) -> Path:
    """Save a policy into a staged version folder and commit it with ``manifest`` (registry
    layout, not yet CURRENT); nothing is left behind when saving fails. Returns the folder.
    ``state`` (a :class:`common.training.TrainState`) adds ``trainer_state.json``."""
    tmp = stage_version(root, name, version, area)
    try:
        if state is not None:
            write_trainer_state(state, tmp)
        save_aigq(model, tokenizer, tmp)
        return commit_version(tmp, root, name, version, manifest, area)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def loop_args(config: SFTConfig, checkpoint_dir: str | Path):
    """The training-loop settings of an SFT config (warm-up capped below ``max_steps``)."""
    return LoopArgs.from_config(
        config, checkpoint_dir, warmup_steps=min(config.warmup_steps, max(config.max_steps - 1, 0))
    )


def target_tokens(batch: Mapping) -> int:
    """Target tokens the causal-LM loss of ``batch`` averages over (shifted labels not -100)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def train_sft(
    config: SFTConfig,
    base_model: str | Path,
    train_rows: Sequence[Mapping],
    checkpoint_dir: str | Path,
    valid_rows: Sequence[Mapping] = (),
    resume: bool = False,
):
    """Add the prompt tokens to ``base_model`` and train; returns ``(model, tokenizer, state, metrics)``.

    ``metrics`` holds the masked (target-token) loss on the training examples and on the valid
    rows before and after training, the first/last step losses and timing.
    """
    torch.manual_seed(config.seed)
    model, tokenizer = prepare_model(base_model, config)
    train_ds = SFTDataset(train_rows, tokenizer, config)
    if len(train_ds) == 0:
        raise ValueError("no IL-SFT training examples")
    valid_ds = SFTDataset(valid_rows, tokenizer, config) if valid_rows else None
    collate = SFTCollator(tokenizer.pad_token_id)

    def losses(ds) -> float | None:  # rank 0's metrics: the other ranks skip the evaluation
        if ds is None or len(ds) == 0 or not config.eval_batches or not is_main_process():
            return None
        return evaluate_loss(model, ds, collate, config.batch_size, config.eval_batches, config.seed).get(
            "loss"
        )

    model.to(resolve())  # evaluate where it trains (runtime.device), not on the CPU
    train_before, valid_before = losses(train_ds), losses(valid_ds)
    t0 = time.perf_counter()
    state = train_loop(
        model,
        train_ds,
        collate,
        loop_args(config, checkpoint_dir),
        resume_from_checkpoint=resume or None,
        loss_items=target_tokens,
    )
    seconds = time.perf_counter() - t0
    train_after, valid_after = losses(train_ds), losses(valid_ds)
    model.to("cpu")
    hist = state.log_history
    metrics = {
        "steps": state.global_step,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(len(hist), 1), 4),
        "n_train": len(train_ds),
        "n_valid": len(valid_ds) if valid_ds is not None else 0,
        "train_loss_first": hist[0]["loss"] if hist else None,
        "train_loss_last": hist[-1]["loss"] if hist else None,
        "train_eval_loss_before": train_before,
        "train_eval_loss": train_after,
        "valid_loss_before": valid_before,
        "valid_loss": valid_after,
    }
    return model, tokenizer, state, metrics


@training_entry_point
def main(argv: list[str] | None = None) -> int:
    parser = training_arg_parser(__doc__.splitlines()[0], "<data_root>/models/aigq_<kind>/<ds>")
    parser.add_argument("--kind", choices=TARGET_KINDS, default=None)
    parser.add_argument("--style", choices=STYLES, default=None)
    parser.add_argument(
        "--base-model", default=None, help="local HF checkpoint (default: newest base_lm <= ds)"
    )
    args, cfg, data_root = parse_cli(parser, argv)
    aigq = dict(cfg.get("aigq") or {})
    config = dataclasses.replace(
        SFTConfig.from_dict(aigq.get("sft")),
        **cli_overrides(kind=args.kind, style=args.style, max_steps=args.max_steps, seed=args.seed),
    )
    ds = check_ds(args.ds)
    ds_list = [*previous_ds(ds, config.days - 1), ds]
    base = args.base_model or aigq.get("base_model")
    base_model = Path(base) if base else latest_base_model(data_root, ds)
    root, area, name, version = registry_target(data_root, config.name, ds, args.out)
    checkpoint_dir = Path(root) / area / name / f".ckpt-{version}"

    rank = start_ranks(checkpoint_dir, args.resume)
    train_rows = read_sft_rows(data_root, ds_list, config.kind, "train")
    if not train_rows:
        raise FileNotFoundError(
            f"no {SAMPLE_TABLE[config.kind]} train rows for {ds_list[0]}..{ds} under {data_root}"
        )
    valid_rows = read_sft_rows(data_root, ds_list, config.kind, "valid")
    model, tokenizer, state, metrics = train_sft(
        config, base_model, train_rows, checkpoint_dir, valid_rows, resume=args.resume
    )
    if rank != 0:  # rank 0 publishes, cleans up and prints the result line
        return 0
    manifest = {
        "format": FORMAT,
        "name": config.name,
        "kind": config.kind,
        "style": config.style,
        "ds": ds,
        "ds_range": [ds_list[0], ds],
        "data_dates": sorted({str(r["event_time"].date()) for r in train_rows if r.get("event_time")}),
        "sample_table": SAMPLE_TABLE[config.kind],
        "code_version": code_version(),
        "base_model": {"path": str(base_model), "manifest": read_manifest(base_model)},
        "config": dataclasses.asdict(config),
        "metrics": metrics,
    }
    final = publish_aigq(model, tokenizer, root, name, version, manifest, area, state=state)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    emit_result({"model_dir": str(final), "name": config.name, "version": version, "metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
