"""KARMA's losses (docs/method.md, "KARMA"), pure functions of tensors tested against hand-computed
values: ``L_act`` (:func:`info_nce_loss`, with every rank's candidates under DDP:
:func:`gather_candidates`), the next-token loss of ``L_gen`` / ``L_rec`` (:func:`shifted_lm_loss`)
and ``L_img`` (:func:`image_regression_loss`). :class:`karma_model.model.KarmaModel` combines them.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather

from karma_model.data import IGNORE

logger = logging.getLogger(__name__)


def info_nce_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    candidate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-log softmax(s(u, i) / τ)[label]`` averaged over users; returns ``(loss, logits)``.

    ``user_emb`` (B, d) and ``item_emb`` (U, d) are unit vectors, so ``s`` is the cosine;
    ``candidate_mask`` (B, U) excludes candidates (False) from a user's denominator.
    """
    logits = user_emb @ item_emb.T / temperature  # (B, U)
    if candidate_mask is not None:
        logits = logits.masked_fill(~candidate_mask, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits.float(), labels), logits


_warned_no_rows = False


def gather_candidates(
    item_emb: torch.Tensor, labels: torch.Tensor, candidate_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every rank's InfoNCE candidates, for this rank's users: ``(items (U_all, d), labels (B,),
    candidate_mask (B, U_all) or None)``. Every rank must call it.

    Items are gathered in rank order with gradient: the backward of the gather sums the gradients
    every rank's loss sends to this rank's items, and DDP's mean over ranks then equals the
    gradient of the global mean. ``candidate_rows`` (U,) — catalogue rows of this rank's
    candidates — lets an item that several ranks hold count once, as in one process where the
    collator deduplicates the whole batch: later copies leave every denominator and a label on a
    later copy moves to the first. Without it duplicates stay (a small bias; a warning says so).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    n_local = item_emb.shape[0]
    sizes = [torch.zeros(1, dtype=torch.long, device=item_emb.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n_local], dtype=torch.long, device=item_emb.device))
    sizes = [int(x) for x in sizes]
    width = max(sizes)
    padded = F.pad(item_emb, (0, 0, 0, width - n_local))  # (width, d): equal shapes for the gather
    items = torch.cat([g[:n] for g, n in zip(all_gather(padded), sizes, strict=True)])  # (U_all, d)
    labels = labels + sum(sizes[:rank])
    if candidate_rows is None:
        global _warned_no_rows
        if not _warned_no_rows:
            logger.warning("no candidate_rows: an item held by several ranks counts more than once in L_act")
            _warned_no_rows = True
        return items, labels, None
    rows = F.pad(candidate_rows.to(item_emb.device).long(), (0, width - n_local), value=-1)
    gathered = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(gathered, rows)
    rows = torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])  # (U_all,)
    _, inverse = torch.unique(rows, return_inverse=True)
    position = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")[inverse]  # (U_all,)
    keep = first == position
    return items, first[labels], keep.unsqueeze(0).expand(labels.shape[0], -1)


def lm_target_count(labels: torch.Tensor) -> int:
    """How many positions :func:`shifted_lm_loss` averages over for ``labels``."""
    return int((labels[:, 1:] != IGNORE).sum())


def shifted_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """Next-token cross entropy of positions whose next label is not ``IGNORE``.

    ``hidden`` (B, L, h) and ``labels`` (B, L) are aligned like HF ``labels`` (position t predicts
    ``labels[t + 1]``); the LM head runs on the selected positions only.
    """
    targets = labels[:, 1:]  # (B, L-1)
    keep = targets != IGNORE
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    logits = lm_head(hidden[:, :-1][keep])  # (n_targets, vocab)
    return F.cross_entropy(logits.float(), targets[keep])


def image_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Mean over rows with an image of ``1 - cos(pred, target)`` or of the per-row MSE."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    pred, target = pred[mask].float(), target[mask].float()  # (n, image_dim)
    if kind == "mse":
        return F.mse_loss(pred, target)
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
