"""A compact training loop with what we would take from ``transformers.Trainer``.

Why not ``Trainer`` itself: on transformers 5 it requires ``accelerate``, which is not in the pinned
environment. This loop keeps Trainer's contract for the parts we need, so switching back later is
mechanical:

- checkpoints ``<output_dir>/checkpoint-<step>/`` with ``model.safetensors``, ``optimizer.pt``,
  ``scheduler.pt``, ``rng_state_<rank>.pth`` and ``trainer_state.json`` (``global_step``,
  ``log_history``), the newest ``save_total_limit`` kept; written to a hidden temporary folder and
  renamed, so a crash never leaves a half checkpoint;
- ``resume_from_checkpoint`` (a path, or ``True`` for the newest one): weights, optimizer, scheduler,
  RNG and data position are restored, so a resumed run equals an uninterrupted one;
- gradient accumulation, gradient clipping, warmup + linear/cosine schedule, bf16 autocast on GPU;
- DDP when started by ``torchrun`` (``WORLD_SIZE > 1``): gloo on CPU, nccl on GPU, each rank a
  disjoint shard of every epoch's permutation (the union of the ranks' i-th batches is the
  single-process i-th batch of ``world x per_device_batch_size``). Rank 0 alone writes the shared
  checkpoint files; every logged loss term is the mean over ranks, and a loss averaged over a
  varying number of items (target tokens) is re-weighted by ``loss_items`` so that the DDP loss
  and gradient equal those of one process with the whole global batch. Entry points publish from
  rank 0 only (:func:`common.ddp.is_main_process`) and end with
  :func:`common.ddp.cleanup_distributed` (:func:`training_entry_point`).

The training entry points share their start too: :func:`training_arg_parser` (the common flags),
:func:`parse_cli` (logging, offline Hugging Face, config, device, data root),
:func:`cli_overrides` (the flags given) and :func:`start_ranks` (process group, fresh checkpoints).

The model's ``forward(**batch)`` must return a ``ModelOutput`` with ``loss``; every other scalar
field whose name starts with ``loss`` is logged per step (``KarmaOutput.loss_act`` etc.).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch.nn.parallel import DistributedDataParallel
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from common.config import load_config
from common.ddp import (
    barrier,
    cleanup_distributed,
    global_mean_scale,
    mean_over_ranks,
    quiet_other_ranks,
    setup_distributed,
)
from common.device import configure as configure_device
from common.device import use_bf16
from common.hf_offline import quiet_offline_hf
from common.logging_setup import setup_logging

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class LoopArgs:
    """Training-loop settings (names follow ``transformers.TrainingArguments`` where they exist)."""

    output_dir: str
    max_steps: int = 100
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 0  # 0: no checkpoints at all
    save_total_limit: int = 2
    seed: int = 0
    bf16: bool = False

    #: Fields a model config may carry under the same name (``batch_size`` maps to
    #: ``per_device_batch_size``); see :meth:`from_config`.
    CONFIG_FIELDS = ("max_steps", "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_steps",
                     "lr_scheduler_type", "logging_steps", "save_steps", "save_total_limit", "seed")

    @classmethod
    def from_config(cls, config, output_dir, **overrides) -> LoopArgs:
        """The loop settings of a model config: every ``CONFIG_FIELDS`` name the config has, its
        ``batch_size`` per device, bf16 on a CUDA device (``runtime.device``); ``overrides`` win."""
        kw = {name: getattr(config, name) for name in cls.CONFIG_FIELDS if hasattr(config, name)}
        kw.update(per_device_batch_size=config.batch_size, bf16=use_bf16(), **overrides)
        return cls(output_dir=str(output_dir), **kw)

    def __post_init__(self):
        if self.max_steps < 1 or self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("max_steps, per_device_batch_size and gradient_accumulation_steps must be >= 1")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}")
        if self.learning_rate <= 0 or self.save_steps < 0 or self.save_total_limit < 1:
            raise ValueError("learning_rate must be > 0, save_steps >= 0, save_total_limit >= 1")


@dataclass
class TrainState:
    global_step: int = 0
    log_history: list[dict] = field(default_factory=list)


@dataclass
class EarlyStopping:
    """Stop training when ``evaluate()`` (a loss on held-out data, lower is better) has not improved
    by ``min_delta`` for ``patience`` evaluations, run every ``every`` optimizer steps; the weights of
    the best evaluation are restored. ``history`` records ``(step, value)``, ``best_step`` the step
    whose weights the model ends with."""

    evaluate: Callable[[], float]
    every: int
    patience: int
    min_delta: float = 1e-4
    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped_at: int | None = None
    _best_weights: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.every < 1 or self.patience < 1:
            raise ValueError("early stopping needs every >= 1 and patience >= 1")


# --- data order -------------------------------------------------------------------------------
def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, sharded, equal length on every rank.

    The last incomplete batch is dropped when at least one full batch exists (uniform in-batch
    negatives); every rank gets the same number of batches, so DDP never waits on a missing one.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    per_rank = math.ceil(n / world)
    perm = (perm * math.ceil(per_rank * world / max(n, 1)))[: per_rank * world]
    local = perm[rank::world]
    n_batches = len(local) // batch_size if len(local) >= batch_size else 1
    return [local[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def loss_terms(output) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to back-propagate and every scalar ``loss*`` field of a ``ModelOutput``, as floats."""
    terms = {
        k: float(v.detach().float())
        for k, v in output.items()
        if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1
    }
    return output.loss, terms


# --- checkpoints ------------------------------------------------------------------------------
def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _CKPT_RE.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(model, optimizer, scheduler, state: TrainState, args: LoopArgs, rank: int = 0) -> Path:
    """Write ``checkpoint-<step>`` atomically and prune old ones (rank 0 writes the shared files)."""
    root = Path(args.output_dir)
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f".tmp-checkpoint-{state.global_step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(_rng_state(), tmp / f"rng_state_{rank}.pth")
    if rank == 0:
        save_model(model, str(tmp / MODEL_FILE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        doc = {"global_step": state.global_step, "log_history": state.log_history, "args": asdict(args)}
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1))
    barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for old in list_checkpoints(root)[: -args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved %s", final)
    barrier()
    return final


def write_trainer_state(state: TrainState, out_dir: str | Path) -> Path:
    """``trainer_state.json`` (``global_step``, per-step ``log_history``) into a published model
    folder, as ``Trainer.save_state`` does; callers write it from rank 0 only."""
    path = Path(out_dir) / STATE_FILE
    doc = {"global_step": state.global_step, "log_history": state.log_history}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, rank: int = 0) -> TrainState:
    path = Path(path)
    load_model(model, str(path / MODEL_FILE), device=str(next(model.parameters()).device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng_state_{rank}.pth"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    doc = json.loads((path / STATE_FILE).read_text())
    return TrainState(global_step=int(doc["global_step"]), log_history=list(doc.get("log_history", [])))


# --- optimisation -----------------------------------------------------------------------------
def build_optimizer(model, args: LoopArgs, total_steps: int):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    if args.lr_scheduler_type == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, args.warmup_steps)
    elif args.lr_scheduler_type == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    return optimizer, scheduler


def train_loop(
    model: torch.nn.Module,
    dataset: Sequence,
    collate_fn: Callable[[list], dict],
    args: LoopArgs,
    resume_from_checkpoint: str | Path | bool | None = None,
    loss_items: Callable[[dict], int] | None = None,
    early_stopping: EarlyStopping | None = None,
) -> TrainState:
    """Train ``model`` in place for ``args.max_steps`` optimizer steps (fewer with ``early_stopping``,
    whose best weights the model then ends with); returns the final state.

    ``loss_items(batch)``: how many items (e.g. target tokens) the model's ``loss`` averages over
    in ``batch``. Under DDP the loss and its logged terms are then re-weighted by
    :func:`global_mean_scale`, so ranks holding more tokens weigh more and the result is the
    global-batch mean. Without it each rank's mean counts equally (right when every rank's loss
    averages over the same number of items, e.g. rows of equal batches).
    """
    rank, world, device = setup_distributed()
    if len(dataset) == 0:
        raise ValueError("empty training set")
    torch.manual_seed(args.seed + rank)
    model.to(device).train()
    optimizer, scheduler = build_optimizer(model, args, args.max_steps)
    state = TrainState()
    if resume_from_checkpoint:
        ckpt = (
            latest_checkpoint(args.output_dir)
            if resume_from_checkpoint is True
            else Path(resume_from_checkpoint)
        )
        if world > 1:  # every rank resumes from the checkpoint rank 0 found
            chosen = [None if ckpt is None else str(ckpt)]
            dist.broadcast_object_list(chosen, src=0)
            ckpt = None if chosen[0] is None else Path(chosen[0])
        if ckpt is None:
            logger.warning("no checkpoint in %s: starting from scratch", args.output_dir)
        else:
            state = load_checkpoint(ckpt, model, optimizer, scheduler, rank)
            logger.info("resumed from %s at step %d", ckpt, state.global_step)
    wrapped = model
    if world > 1:
        # Variants leave some heads unused on some batches (e.g. no images): tolerate that.
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    accum = args.gradient_accumulation_steps
    per_epoch = len(epoch_batches(len(dataset), args.per_device_batch_size, 0, args.seed, rank, world))
    consumed = state.global_step * accum
    epoch, skip = divmod(consumed, per_epoch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    sums: dict[str, float] = {}
    micro = 0
    while state.global_step < args.max_steps and (early_stopping is None or early_stopping.stopped_at is None):
        batches = epoch_batches(len(dataset), args.per_device_batch_size, epoch, args.seed, rank, world)
        for idx in batches[skip:]:
            batch = to_device(collate_fn([dataset[i] for i in idx]), device)
            micro += 1
            sync = micro % accum == 0
            ctx = wrapped.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast:
                    loss, terms = loss_terms(wrapped(**batch))
                if loss_items is not None and world > 1:
                    scale = global_mean_scale(loss_items(batch), device)
                    loss = loss * scale
                    terms = {k: v * scale for k, v in terms.items()}
                (loss / accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / accum
            if not sync:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            sums = mean_over_ranks(sums, device)
            entry = {
                "step": state.global_step,
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                **{k: round(v, 6) for k, v in sums.items()},
            }
            state.log_history.append(entry)
            sums = {}
            if rank == 0 and (state.global_step % args.logging_steps == 0 or state.global_step == 1):
                logger.info(
                    "step %d/%d %s",
                    state.global_step,
                    args.max_steps,
                    " ".join(f"{k}={v:.4f}" for k, v in entry.items() if k.startswith("loss")),
                )
            last = state.global_step >= args.max_steps
            if early_stopping is not None and (state.global_step % early_stopping.every == 0 or last):
                last = _early_stop_check(early_stopping, model, state, final=last) or last
            if args.save_steps and (state.global_step % args.save_steps == 0 or last):
                save_checkpoint(model, optimizer, scheduler, state, args, rank)
            if last:
                break
        skip = 0
        epoch += 1
    model.eval()
    return state


def _early_stop_check(stopper: EarlyStopping, model, state: TrainState, final: bool = False) -> bool:
    """Evaluate, keep the best weights (CPU copy), and say whether to stop (the best restored);
    at the ``final`` step the best weights are restored whatever the patience left."""
    value = float(stopper.evaluate())
    model.train()
    stopper.history.append((state.global_step, value))
    state.log_history[-1]["valid_loss"] = round(value, 6)
    best = min((v for s, v in stopper.history if s != state.global_step), default=math.inf)
    if value < best - stopper.min_delta:
        stopper.best_step = state.global_step
        stopper._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return False
    since = sum(1 for s, _ in stopper.history if s > (stopper.best_step or 0))
    if since < stopper.patience and not final:
        return False
    stopper.stopped_at = state.global_step
    model.load_state_dict(stopper._best_weights)
    logger.info("early stopping at step %d: no gain for %d evaluations; best step %d (valid %.4f)",
                state.global_step, since, stopper.best_step, min(v for _, v in stopper.history))
    return True


@torch.no_grad()
def evaluate_loss(
    model, dataset: Sequence, collate_fn, batch_size: int, max_batches: int | None = None, seed: int = 0
) -> dict[str, float]:
    """Mean of every ``loss*`` term over (up to ``max_batches``) batches of ``dataset``."""
    if len(dataset) == 0:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    batches = epoch_batches(len(dataset), batch_size, 0, seed)[:max_batches]
    with torch.no_grad():  # no autograd graph: evaluation only
        for idx in batches:
            _, terms = loss_terms(model(**to_device(collate_fn([dataset[i] for i in idx]), device)))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / len(batches)
    model.train(was_training)
    return sums


# --- entry points -----------------------------------------------------------------------------
def training_entry_point(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Decorates a training entry point's ``main(argv)``: the torchrun process group is torn down
    (:func:`common.ddp.cleanup_distributed`) however ``main`` ends."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        finally:
            cleanup_distributed()

    return run


def training_arg_parser(description: str, out_default: str) -> argparse.ArgumentParser:
    """The flags every training entry point shares; callers add their own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", required=True, help="last logical date of the training data (YYYY-MM-DD)")
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None, help="override the profile's data_root")
    parser.add_argument("--out", default=None, help=f"output folder (default {out_default})")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    return parser


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict, str]:
    """An entry point's start: logging and offline Hugging Face set up, ``argv`` parsed, the config
    of ``--config``/``--profile`` loaded and its ``runtime.device`` applied. Returns ``(args, cfg,
    data_root)``; ``--data-root`` (resolved) wins over the profile's."""
    setup_logging()
    quiet_offline_hf()
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.profile)
    configure_device(cfg)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    return args, cfg, data_root


def cli_overrides(**flags) -> dict:
    """The flags that were passed (``None``: absent), to ``dataclasses.replace`` a config with.

    >>> cli_overrides(max_steps=None, seed=0, kind="think")
    {'seed': 0, 'kind': 'think'}
    """
    return {k: v for k, v in flags.items() if v is not None}


def start_ranks(checkpoint_dir: str | Path, resume: bool) -> int:
    """Join the torchrun process group (one process: rank 0 alone) and quiet the other ranks' logs;
    unless resuming, rank 0 clears ``checkpoint_dir`` (never mix with a previous run's
    checkpoints) before any rank looks at it. Returns this process's rank."""
    rank, _world, _device = setup_distributed()
    quiet_other_ranks(rank)
    if not resume and rank == 0:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    barrier()  # no rank looks at the checkpoints before rank 0 has cleared them
    return rank
