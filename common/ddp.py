"""DDP helpers shared by every torch entry point and model: the process group under ``torchrun``
(gloo on CPU, nccl on GPU), rank queries, and the collectives that turn per-rank means into
global-batch means.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op or returns the
single-process answer, so library code calls them unconditionally.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from common import device as devices


def setup_distributed() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = devices.resolve()  # runtime.device: auto | cpu | cuda
    cuda = device.type == "cuda"
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, device


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def cleanup_distributed() -> None:
    """Leave the process group (end of an entry point; a no-op outside torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def quiet_other_ranks(rank: int) -> None:
    """Entry points: ranks other than 0 log warnings and errors only (no duplicated progress)."""
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)


def global_mean_scale(n_local: int | float | torch.Tensor, device=None) -> float:
    """``world x n_local / sum over ranks of n_local`` (1.0 outside DDP): the factor that turns a
    rank's mean over its ``n_local`` items into its share of the global mean, so that the mean over
    ranks (what DDP's gradient averaging optimises) is the mean over all ranks' items. Every rank
    must call it (one all-reduce)."""
    world = world_size()
    if world == 1:
        return 1.0
    n = float(n_local)
    total = torch.tensor([n], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return world * n / max(float(total.item()), 1.0)


def mean_over_ranks(values: dict[str, float], device) -> dict[str, float]:
    """Each value averaged over ranks (every rank must hold the same keys)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    vec = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec)
    vec /= world_size()
    return dict(zip(keys, vec.tolist(), strict=True))


def distributed_training() -> bool:
    """True inside a torchrun process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
