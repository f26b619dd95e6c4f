"""Training loop of the CTR reward model (:mod:`aigq_model.ctr_model`).

Loss: BCE; Adam, the position bias at ``bias_lr_mult`` times the learning rate (so it takes the
position effect before the content features can); at most ``epochs`` epochs with early stopping
on the valid split's log-loss (the best epoch's weights are kept).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from aigq_model.ctr_eval import logloss, score_metrics
from aigq_model.ctr_model import CTRConfig, CTRModel, encode_rows, feature_batch, predict_probs

logger = logging.getLogger(__name__)


def train_ctr(
    rows_train: Sequence[Mapping], rows_valid: Sequence[Mapping] = (), config: CTRConfig | None = None
) -> tuple[CTRModel, dict]:
    """Train on labelled ``ctr_samples`` rows; returns ``(model in eval mode, history)``.

    ``history``: ``epochs`` (per epoch: ``train_loss``, and with valid rows ``valid_logloss`` /
    ``valid_auc`` with the logged positions), ``best_epoch``, ``stopped_early``, ``seconds``.
    With valid rows the best epoch's weights are returned; without, the last epoch's.
    """
    config = config or CTRConfig()
    if not rows_train:
        raise ValueError("no CTR training rows")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    t0 = time.perf_counter()
    train = encode_rows(rows_train, config)
    valid = encode_rows(rows_valid, config) if rows_valid else None
    model = CTRModel(config)
    mean = float(np.clip(train.labels.mean(), 1e-3, 1 - 1e-3))
    with torch.no_grad():
        model.mlp[-1].bias.fill_(math.log(mean / (1 - mean)))  # start at the base rate
    bias = list(model.position_bias.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("position_bias.")]
    opt = torch.optim.Adam(
        [{"params": rest}, {"params": bias, "lr": config.learning_rate * config.bias_lr_mult}],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    loss_fn = nn.BCEWithLogitsLoss()
    labels = torch.from_numpy(train.labels)
    epochs: list[dict] = []
    best_loss, best_epoch, best_state, bad = math.inf, None, None, 0
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(train), generator=gen).numpy()
        total, seen = 0.0, 0
        for start in range(0, len(train), config.batch_size):
            idx = perm[start : start + config.batch_size]
            loss = loss_fn(model(**feature_batch(train, idx)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        record = {"epoch": epoch, "train_loss": round(total / seen, 6)}
        if valid is not None:
            probs = predict_probs(model, valid)
            record["valid_logloss"] = round(logloss(valid.labels, probs), 6)
            record["valid_auc"] = score_metrics(valid.labels, probs)["auc"]
            if record["valid_logloss"] < best_loss - 1e-6:
                best_loss, best_epoch, bad = record["valid_logloss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        epochs.append(record)
        logger.info("ctr epoch %s", record)
        if valid is not None and bad > config.patience:
            stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    history = {
        "epochs": epochs,
        "best_epoch": best_epoch if best_epoch is not None else len(epochs),
        "stopped_early": stopped_early,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return model.eval(), history
