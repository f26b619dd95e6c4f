"""Pre-train the pipeline's own tiny base LM: tokenizer + Qwen-architecture causal LM from scratch.

Text: the item corpus (``samples/item_corpus``, newest partition at or before ``ds``) plus the
behaviour texts (queries typed, titles clicked) of ``karma_samples`` and the target queries of
``aigq_direct_sft`` over the ``days`` days ending at ``ds``; duplicates removed. Each text becomes
``<bos> text <eos>``; the stream is packed into ``block_size`` blocks, a held-out share of which
gives the eval loss written to the manifest (before and after training).

Training uses :func:`common.training.train_loop` (plain next-token loss from
``Qwen2ForCausalLM(labels=...)``): ``transformers.Trainer`` would need ``accelerate``, which the
pinned environment lacks; the loop gives the same checkpoints/resume/accumulation/DDP.

Output folder (``--out``, default ``<data_root>/models/base_lm/<ds>/``, published atomically):
``config.json``, ``model.safetensors``, ``tokenizer.json`` (+ config), ``manifest.json``.

Usage: ``python -m base_lm.pretrain --ds 2026-11-03 [--data-root D] [--out DIR] [--max-steps N]``
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from base_lm.load import code_version, make_readable, write_manifest
from base_lm.tokenizer import save_tokenizer, train_tokenizer
from common.arrow_io import read_partition
from common.ddp import is_main_process
from common.device import resolve
from common.paths import check_ds, is_published, latest_published_ds, partition_path, previous_ds
from common.publish import atomic_partition
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

ARCHS = ("qwen2", "qwen3")


@dataclass
class BaseLMConfig:
    """Tokenizer, architecture and pre-training settings (``base_lm:`` in conf/pipeline.yaml)."""

    arch: str = "qwen2"
    vocab_size: int = 4000
    min_frequency: int = 2
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    block_size: int = 128
    days: int = 7
    eval_fraction: float = 0.05
    max_steps: int = 300
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    save_steps: int = 0
    seed: int = 0
    #: Also pre-train on behaviour sequences: each user's newest ``karma_samples`` history of each
    #: day as one text, a line per behaviour (``search <query>`` / ``click <title>`` ...), so the
    #: LM sees which queries and items follow each other before any task fine-tuning.
    behaviour_sequences: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if not 1 < self.block_size <= self.max_position_embeddings:
            raise ValueError("block_size must be in (1, max_position_embeddings]")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
        if min(self.vocab_size, self.max_steps, self.batch_size, self.days, self.num_hidden_layers) < 1:
            raise ValueError("vocab_size, max_steps, batch_size, days and num_hidden_layers must be >= 1")

    @classmethod
    def from_dict(cls, section: dict | None) -> BaseLMConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown base_lm settings: {sorted(unknown)}")
        return cls(**section)


# --- text -------------------------------------------------------------------------------------
def sequence_text(history: Sequence[dict]) -> str:
    """One behaviour sequence as text: a ``<event_type> <text>`` line per behaviour, oldest first."""
    return "\n".join(f"{b['event_type']} {b['text'].strip()}" for b in history if b.get("text") and b["text"].strip())


def collect_texts(data_root: str | Path, ds_list: Sequence[str], sequences: bool = False) -> list[str]:
    """Unique item texts, behaviour texts and queries of the published partitions in ``ds_list``;
    with ``sequences``, also each user's newest behaviour history of each day (``sequence_text``)."""
    texts: set[str] = set()
    corpus_ds = latest_published_ds(data_root, "samples", "item_corpus", max(ds_list))
    if corpus_ds is not None:
        texts.update(
            read_partition(data_root, "samples", "item_corpus", corpus_ds).column("text").to_pylist()
        )
    for ds in ds_list:
        if is_published(partition_path(data_root, "samples", "karma_samples", ds)):
            table = read_partition(data_root, "samples", "karma_samples", ds)
            history = table.column("history").to_pylist()
            texts.update(b["text"] for h in history for b in h)
            if sequences:
                newest: dict[str, tuple] = {}
                for user, t, h in zip(table.column("user_id").to_pylist(), table.column("event_time").to_pylist(),
                                      history, strict=True):
                    if user not in newest or t > newest[user][0]:
                        newest[user] = (t, h)
                texts.update(sequence_text(h) for _t, h in newest.values() if len(h) > 1)
        if is_published(partition_path(data_root, "samples", "aigq_direct_sft", ds)):
            queries = (
                read_partition(data_root, "samples", "aigq_direct_sft", ds)
                .column("target_queries")
                .to_pylist()
            )
            texts.update(q for qs in queries for q in (qs or []))
    out = sorted(t.strip() for t in texts if t and t.strip())
    if not out:
        raise FileNotFoundError(f"no text for {ds_list[0]}..{ds_list[-1]} under {data_root}/samples")
    logger.info("collected %d unique texts from %s..%s", len(out), ds_list[0], ds_list[-1])
    return out


def pack_blocks(tokenizer, texts: Iterable[str], block_size: int):
    """``<bos> text <eos>`` for each text, concatenated and cut into ``(n_blocks, block_size)``."""
    stream: list[int] = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(bos + ids + [tokenizer.eos_token_id])
    n = len(stream) // block_size
    if n == 0:
        raise ValueError(f"only {len(stream)} tokens: fewer than one block of {block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)  # (n_blocks, block)


class BlockDataset:
    """Packed blocks as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i]}


def collate_blocks(examples: list[dict]) -> dict:
    ids = torch.stack([e["input_ids"] for e in examples])  # (batch, block)
    return {"input_ids": ids, "labels": ids}


# --- model ------------------------------------------------------------------------------------
def build_model(tokenizer, cfg: BaseLMConfig):
    """A randomly initialised Qwen2/Qwen3 causal LM sized by ``cfg``, vocabulary from ``tokenizer``."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
    )
    if cfg.arch == "qwen3":
        config = Qwen3Config(head_dim=cfg.hidden_size // cfg.num_attention_heads, **common)
        model = Qwen3ForCausalLM(config)
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    logger.info(
        "built %s: %.2fM parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6
    )
    return model


def save_base_lm(model, tokenizer, out_dir: str | Path, manifest: dict) -> Path:
    """Write weights (safetensors), config, tokenizer and ``manifest.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    write_manifest(out_dir, {"format": "base_lm", **manifest})
    make_readable(out_dir)
    return out_dir


def pretrain(
    texts: Sequence[str], cfg: BaseLMConfig, checkpoint_dir: str | Path, resume: bool = False
) -> tuple[object, object, dict, object]:
    """Train tokenizer and LM on ``texts``; returns ``(model, tokenizer, metrics, train_state)``.

    Under torchrun every rank trains the same tokenizer (deterministic) and packs the same blocks;
    the blocks are full (no padding), so the mean of the ranks' losses is the global mean. The
    held-out losses are measured on rank 0 only (``None`` elsewhere)."""
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    blocks = pack_blocks(tokenizer, [texts[i] for i in order], cfg.block_size)
    n_eval = int(len(blocks) * cfg.eval_fraction)
    train_ds, eval_ds = BlockDataset(blocks[n_eval:]), BlockDataset(blocks[:n_eval])
    model = build_model(tokenizer, cfg)
    args = LoopArgs.from_config(cfg, checkpoint_dir)

    def held_out() -> float | None:
        return evaluate_loss(model, eval_ds, collate_blocks, cfg.batch_size).get("loss") if is_main_process() else None

    model.to(resolve())  # evaluate where it trains (runtime.device)
    eval_before = held_out()
    t0 = time.perf_counter()
    state = train_loop(model, train_ds, collate_blocks, args, resume_from_checkpoint=resume or None)
    eval_after = held_out()
    model.to("cpu")
    history = state.log_history
    metrics = {
        "train_loss_first": history[0]["loss"] if history else None,
        "train_loss_last": history[-1]["loss"] if history else None,
        "eval_loss_before": eval_before,
        "eval_loss": eval_after,
        "steps": state.global_step,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "n_texts": len(texts),
        "n_train_blocks": len(train_ds),
        "n_eval_blocks": len(eval_ds),
        "vocab_size": len(tokenizer),
    }
    return model, tokenizer, metrics, state


@training_entry_point
def main(argv: list[str] | None = None) -> int:
    """Under torchrun (DDP) rank 0 alone clears old checkpoints, publishes and prints the result."""
    parser = training_arg_parser(__doc__.splitlines()[0], "<data_root>/models/base_lm/<ds>")
    parser.add_argument("--days", type=int, default=None, help="days of samples ending at ds")
    args, cfg, data_root = parse_cli(parser, argv)
    lm_cfg = dataclasses.replace(
        BaseLMConfig.from_dict(cfg.get("base_lm")),
        **cli_overrides(days=args.days, max_steps=args.max_steps, seed=args.seed),
    )
    ds = check_ds(args.ds)
    ds_list = [*previous_ds(ds, lm_cfg.days - 1), ds]
    final = Path(args.out) if args.out else Path(data_root) / "models" / "base_lm" / ds
    checkpoint_dir = final.parent / f".ckpt-{final.name}"
    rank = start_ranks(checkpoint_dir, args.resume)
    texts = collect_texts(data_root, ds_list, lm_cfg.behaviour_sequences)
    model, tokenizer, metrics, state = pretrain(texts, lm_cfg, checkpoint_dir, resume=args.resume)
    if rank != 0:  # rank 0 publishes, cleans up and prints the result line
        return 0
    manifest = {
        "format": "base_lm",
        "name": "base_lm",
        "ds": ds,
        "ds_range": [ds_list[0], ds_list[-1]],
        "code_version": code_version(),
        "config": dataclasses.asdict(lm_cfg),
        "metrics": metrics,
        "architecture": type(model).__name__,
    }
    with atomic_partition(final, manifest) as tmp:
        write_trainer_state(state, tmp)
        save_base_lm(model, tokenizer, tmp, manifest)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    emit_result({"model_dir": str(final), "metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
