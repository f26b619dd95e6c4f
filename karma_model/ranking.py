"""KARMA in ranking: a daily item-CTR model trained on day T's result pages, scored on day T+1's,
with and without KARMA features.

Method. The rows are ``clean/item_impressions`` (one per item shown by a search). The model is
a small MLP (``hidden`` units; 0 = logistic regression) on standardised features
(:mod:`karma_model.ranking_features`) plus a per-position bias that is **added in training only**
(as the query-CTR model of :mod:`aigq_model.ctr_model` does): the score of a row at serving time
is its click probability in the top slot, so the ranking never depends on where the log happened
to show the item. Training: BCE, Adam (the position bias at ``bias_lr_mult`` times the learning
rate), at most ``epochs`` epochs with early stopping on the log-loss of the last
``valid_fraction`` of day T's requests (by time), the best epoch kept. The same procedure, seeds
and rows run on three feature sets (:data:`FEATURE_SETS`): ``without_karma``
(:data:`~karma_model.ranking_features.BASE_FEATURES`), ``with_karma`` (those plus ``cos(e_u, e_i)``
and the interest embedding ``e_u`` of a KARMA model) and ``with_karma_cos`` (plus the cosine
only: which of KARMA's two feature groups carries the gain).

Which KARMA model. One version scores both days (the raw ``e_u`` coordinates of two versions are
not comparable): by default the version registered as serving on T-1 (``models/karma``), i.e. one
trained on data before T, that saw the clicks of neither day; ``--model-dir`` names another. A
model whose data reaches T or later is recorded as such (``karma_model.saw_train_day``) and logged.

Metrics on day T+1, per feature set and seed, then mean ± sample std over seeds: ``auc`` (scores
at the top slot: the ranking's quality, position-blind), ``logloss`` (with the logged positions:
calibration), ``auc_logged_position`` and ``logloss_top_slot``; per KARMA feature set, its AUC
minus the baseline's with a 95% bootstrap interval over requests (of the seed-averaged scores: the
data's noise, beside the seeds' spread); and, for reference, the AUC of day T's smoothed item CTR
alone.

Usage::

    python -m karma_model.ranking --ds 2026-11-03 [--train-ds 2026-11-02] [--model-dir DIR]
        [--data-root R] [--config F] [--profile P] [--seeds 0 1] [--out FILE]

scores ``--ds`` (default training day: the day before) and writes
``<root>/reports/karma_ranking/ds=<ds>/metrics.json`` atomically. A day without impressions (an
absent or empty partition), or no KARMA version before the training day, is a logged skip: exit
0, ``{"skipped": true, "reason": ...}``, nothing written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigq_model.ctr_eval import auc, score_metrics
from base_lm.load import read_manifest
from common.paths import check_ds, previous_ds
from common.registry import model_dir as registry_dir
from common.registry import serving_version
from common.steps import emit_result, write_json_atomic
from karma_model import ranking_features as rf

logger = logging.getLogger(__name__)

REPORT_NAME = "karma_ranking"
FEATURE_SETS = ("without_karma", "with_karma", "with_karma_cos")
KARMA_SETS = ("with_karma", "with_karma_cos")
METRIC_KEYS = ("auc", "logloss", "auc_logged_position", "logloss_top_slot")


@dataclass
class RankingConfig:
    """``karma_ranking:`` in conf/pipeline.yaml."""

    seeds: list[int] = field(default_factory=lambda: [0, 1])
    max_history: int = 100  # behaviours per request for the history features (KARMA reads its own history_len)
    recent: int = 5  # item behaviours of the "recent" leaf share
    prior_strength: float = 20.0  # pseudo-impressions at the day's mean CTR in the item / leaf CTR priors
    hidden: int = 32  # MLP hidden units; 0 = logistic regression
    n_positions: int = 10  # positions clipped to [0, n_positions - 1] (training-only bias)
    epochs: int = 30
    patience: int = 3  # epochs without a better valid log-loss before stopping
    batch_size: int = 256
    learning_rate: float = 0.003
    bias_lr_mult: float = 10.0  # learning-rate multiplier of the position bias
    weight_decay: float = 0.0001
    valid_fraction: float = 0.1  # last share of day T's requests (by time) for early stopping
    embed_batch_size: int = 64  # histories / items per KARMA forward pass
    bootstrap: int = 200  # resamples of the AUC-difference interval (0: none)

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("karma_ranking.seeds must name at least one seed")
        if min(self.max_history, self.recent, self.n_positions, self.epochs, self.batch_size,
               self.embed_batch_size) < 1 or self.hidden < 0 or self.patience < 0 or self.bootstrap < 0:
            raise ValueError("karma_ranking: sizes must be >= 1 (hidden, patience, bootstrap >= 0)")
        if not 0.0 < self.valid_fraction < 0.5:
            raise ValueError("karma_ranking.valid_fraction must be in (0, 0.5)")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> RankingConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown karma_ranking settings: {sorted(unknown)}")
        return cls(**section)


# --- model ------------------------------------------------------------------------------------------
class Ranker(nn.Module):
    """MLP logit of standardised features, plus a position bias when ``position`` is given."""

    def __init__(self, n_in: int, hidden: int, n_positions: int):
        super().__init__()
        self.mlp = (nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if hidden
                    else nn.Sequential(nn.Linear(n_in, 1)))
        self.position_bias = nn.Embedding(n_positions, 1)
        nn.init.zeros_(self.position_bias.weight)

    def forward(self, x: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        logit = self.mlp(x).squeeze(-1)
        return logit if position is None else logit + self.position_bias(position).squeeze(-1)


@dataclass
class Standardiser:
    """Column mean / std of the training rows; constant columns map to 0."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-6, std, np.inf))

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))


@torch.no_grad()
def predict(model: Ranker, x: torch.Tensor, position: np.ndarray | None = None) -> np.ndarray:
    """Click probabilities; ``position=None`` scores every row in the top slot (position 0)."""
    model.eval()
    n_pos = model.position_bias.num_embeddings
    pos = np.zeros(len(x), dtype=np.int64) if position is None else np.clip(position, 0, n_pos - 1)
    return torch.sigmoid(model(x, torch.from_numpy(pos.astype(np.int64)))).double().numpy()


def train_ranker(x_train: np.ndarray, pos_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                 pos_valid: np.ndarray, y_valid: np.ndarray, config: RankingConfig, seed: int):
    """``(model, standardiser, history)``: BCE with the logged positions, early stopping on valid."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    scale = Standardiser.fit(x_train)
    xt, xv = scale(x_train), scale(x_valid)
    pt = torch.from_numpy(np.clip(pos_train, 0, config.n_positions - 1).astype(np.int64))
    yt = torch.from_numpy(y_train.astype(np.float32))
    model = Ranker(xt.shape[1], config.hidden, config.n_positions)
    rate = float(np.clip(y_train.mean(), 1e-3, 1 - 1e-3))
    with torch.no_grad():
        model.mlp[-1].bias.fill_(math.log(rate / (1 - rate)))  # start at the base rate
    opt = torch.optim.Adam([
        {"params": [p for n, p in model.named_parameters() if not n.startswith("position_bias.")]},
        {"params": list(model.position_bias.parameters()), "lr": config.learning_rate * config.bias_lr_mult},
    ], lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_epoch, best_state, bad, epochs = math.inf, 0, None, 0, []
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), config.batch_size):
            idx = perm[start : start + config.batch_size]
            loss = loss_fn(model(xt[idx], pt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        valid_loss = score_metrics(y_valid, predict(model, xv, pos_valid))["logloss"]
        epochs.append({"epoch": epoch, "train_loss": round(total / len(xt), 6), "valid_logloss": valid_loss})
        if valid_loss is not None and valid_loss < best - 1e-6:
            best, best_epoch, bad, best_state = valid_loss, epoch, 0, copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad > config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    history = {"epochs_run": len(epochs), "best_epoch": best_epoch or len(epochs), "valid_logloss": best,
               "seconds": round(time.perf_counter() - t0, 3)}
    return model.eval(), scale, history


def evaluate(model: Ranker, scale: Standardiser, x: np.ndarray, position: np.ndarray, y: np.ndarray) -> tuple[dict, np.ndarray]:
    """``(metrics, top-slot scores)`` on labelled rows (see the module docstring)."""
    xs = scale(x)
    top, logged = predict(model, xs), predict(model, xs, position)
    m_top, m_logged = score_metrics(y, top), score_metrics(y, logged)
    return {"auc": m_top["auc"], "logloss": m_logged["logloss"], "auc_logged_position": m_logged["auc"],
            "logloss_top_slot": m_top["logloss"], "n": m_top["n"], "positives": m_top["positives"]}, top


# --- statistics ---------------------------------------------------------------------------------------
def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value) of the non-null values.

    >>> mean_std([0.70, 0.72])
    (0.71, 0.014142)
    """
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return None, None
    return round(float(v.mean()), 6), round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 6)


def bootstrap_auc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: np.ndarray, n: int,
                             seed: int = 0) -> dict | None:
    """95% interval of ``AUC(a) - AUC(b)`` over ``n`` resamples of whole ``groups`` (requests)."""
    if n < 1:
        return None
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    diffs = []
    for _ in range(n):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        d = auc(y[rows], a[rows]) - auc(y[rows], b[rows])
        if d == d:
            diffs.append(d)
    if not diffs:
        return None
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"low": round(float(lo), 6), "high": round(float(hi), 6), "resamples": len(diffs)}


def auc_difference(with_: Mapping, without: Mapping, scores_with: Sequence[np.ndarray],
                   scores_without: Sequence[np.ndarray], y: np.ndarray, groups: np.ndarray,
                   config: RankingConfig) -> dict:
    """AUC of a KARMA feature set minus the baseline's: mean, per seed, the seeds' spread (the sum
    of the two sample stds), whether the mean exceeds it, and the bootstrap interval."""
    seeds = list(map(str, config.seeds))
    delta = round(with_["mean"]["auc"] - without["mean"]["auc"], 6)
    spread = round(with_["std"]["auc"] + without["std"]["auc"], 6)
    return {"mean": delta, "per_seed": [round(with_["seeds"][s]["auc"] - without["seeds"][s]["auc"], 6) for s in seeds],
            "seed_spread": spread, "beyond_seed_spread": bool(delta > spread),
            "bootstrap_95": bootstrap_auc_difference(y, np.mean(scores_with, axis=0), np.mean(scores_without, axis=0),
                                                     groups, config.bootstrap)}


# --- the daily run --------------------------------------------------------------------------------------
def default_karma_dir(root: str | Path, train_ds: str) -> Path | None:
    """The KARMA version that served on the day before ``train_ds`` (trained before it), if any."""
    before = previous_ds(train_ds, 1)[0]
    version = serving_version(root, "karma", before)
    if version is None or version > before:
        return None
    return registry_dir(root, "karma", version)


def _split_by_time(frame, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Row masks ``(train, valid)``: the last ``valid_fraction`` of the requests by time are valid."""
    first = frame.groupby("request_id")["t"].min().sort_values(kind="stable")
    n_valid = max(1, int(round(len(first) * valid_fraction)))
    valid = frame["request_id"].isin(set(first.index[-n_valid:])).to_numpy()
    return ~valid, valid


def run_ranking(root: str | Path, ds: str, config: RankingConfig, train_ds: str | None = None,
                model_dir: str | Path | None = None, lookback_days: int = 7) -> dict:
    """Train on ``train_ds`` (default the day before ``ds``), score ``ds``; the metrics (or a skip)."""
    ds = check_ds(ds)
    train_ds = check_ds(train_ds) if train_ds else previous_ds(ds, 1)[0]
    if train_ds >= ds:
        raise ValueError(f"train day {train_ds} must come before the scored day {ds}")
    t0 = time.perf_counter()
    base = {"ds": ds, "train_ds": train_ds, "eval_ds": ds}
    train_frame, eval_frame = rf.read_impressions(root, train_ds), rf.read_impressions(root, ds)
    for day, frame in ((train_ds, train_frame), (ds, eval_frame)):
        if frame is None:
            return {**base, "skipped": True, "reason": f"no item impressions on {day} (clean/item_impressions "
                                                        "absent or empty)"}
    if train_frame["clicked"].min() == train_frame["clicked"].max():
        return {**base, "skipped": True, "reason": f"{train_ds}: impressions of one class only"}
    model_dir = Path(model_dir) if model_dir else default_karma_dir(root, train_ds)
    if model_dir is None:
        return {**base, "skipped": True, "reason": f"no KARMA version registered before {train_ds}"}
    manifest = read_manifest(model_dir)
    karma = {"path": str(model_dir), "version": manifest.get("version") or model_dir.name,
             "trained_through": manifest.get("ds"), "variant": manifest.get("variant")}
    karma["saw_train_day"] = bool(karma["trained_through"] and karma["trained_through"] >= train_ds)
    if karma["saw_train_day"]:
        logger.warning("KARMA model %s was trained on data through %s: it saw the training day %s", model_dir,
                       karma["trained_through"], train_ds)

    ctx = rf.load_context(root, train_ds, ds, lookback_days)
    prev_priors = rf.Priors.from_frame(rf.read_impressions(root, previous_ds(train_ds, 1)[0]), ctx.items)
    day_priors = rf.Priors.from_frame(train_frame, ctx.items)
    featurizer = rf.KarmaFeaturizer(model_dir, root, ds, config.embed_batch_size)
    x, t_feat = {}, time.perf_counter()
    for name, frame, priors, loo in (("train", train_frame, prev_priors or day_priors, prev_priors is None),
                                     ("eval", eval_frame, day_priors, False)):
        requests, histories = rf.request_histories(frame, ctx.log, max(config.max_history, featurizer.history_len))
        base_x = rf.base_features(frame, requests, histories, ctx, priors, config.prior_strength, config.recent, loo)
        t_k = time.perf_counter()
        karma_x = featurizer.features(frame, requests, histories)
        x[name] = {"without_karma": base_x, "with_karma": np.concatenate([base_x, karma_x], axis=1),
                   "with_karma_cos": np.concatenate([base_x, karma_x[:, :1]], axis=1),
                   "karma_seconds": time.perf_counter() - t_k}
    feature_seconds = time.perf_counter() - t_feat

    tr, va = _split_by_time(train_frame, config.valid_fraction)
    y_train, pos_train = train_frame["clicked"].to_numpy(), train_frame["position"].to_numpy()
    y_eval, pos_eval = eval_frame["clicked"].to_numpy(), eval_frame["position"].to_numpy()
    results, scores = {}, {}
    for fs in FEATURE_SETS:
        per_seed = {}
        for seed in config.seeds:
            xt = x["train"][fs]
            model, scale, history = train_ranker(xt[tr], pos_train[tr], y_train[tr], xt[va], pos_train[va],
                                                 y_train[va], config, seed)
            metrics, top = evaluate(model, scale, x["eval"][fs], pos_eval, y_eval)
            per_seed[str(seed)] = {**metrics, **history}
            scores.setdefault(fs, []).append(top)
        summary = {k: mean_std([m[k] for m in per_seed.values()]) for k in METRIC_KEYS}
        results[fs] = {"n_features": int(x["train"][fs].shape[1]), "seeds": per_seed,
                       "mean": {k: v[0] for k, v in summary.items()}, "std": {k: v[1] for k, v in summary.items()}}
    prior = rf.prior_features(eval_frame, day_priors, ctx.items, config.prior_strength)[:, 0]
    return {
        **base, "skipped": False,
        "karma_model": {**karma, "proj_dim": featurizer.dim, "history_len": featurizer.history_len},
        "rows": {"train": int(tr.sum()), "valid": int(va.sum()), "eval": len(eval_frame)},
        "requests": {"train": int(train_frame["request_id"].nunique()), "eval": int(eval_frame["request_id"].nunique())},
        "positives": {"train": int(y_train.sum()), "eval": int(y_eval.sum())},
        "priors_from": previous_ds(train_ds, 1)[0] if prev_priors else f"{train_ds} (own request left out)",
        "base_features": list(rf.BASE_FEATURES),
        "karma_features": ["karma_cos", f"karma_eu_00..{featurizer.dim - 1:02d}"],
        "seeds": list(config.seeds),
        "feature_sets": results,
        "auc_difference": {fs: auc_difference(results[fs], results["without_karma"], scores[fs],
                                              scores["without_karma"], y_eval, eval_frame["request_id"].to_numpy(),
                                              config) for fs in KARMA_SETS},
        "reference": {"item_ctr_prior": score_metrics(y_eval, prior)},
        "config": dataclasses.asdict(config),
        "seconds": {"features": round(feature_seconds, 2),
                    "karma_features": round(x["train"]["karma_seconds"] + x["eval"]["karma_seconds"], 2),
                    "total": round(time.perf_counter() - t0, 2)},
    }


def metrics_path(root: str | Path, ds: str) -> Path:
    """``<root>/reports/karma_ranking/ds=<ds>/metrics.json``.

    >>> metrics_path("/data", "2026-11-03").as_posix()
    '/data/reports/karma_ranking/ds=2026-11-03/metrics.json'
    """
    return Path(root) / "reports" / REPORT_NAME / f"ds={check_ds(ds)}" / "metrics.json"


def summary_line(m: Mapping) -> str:
    """One human line of a run's metrics."""
    if m.get("skipped"):
        return f"skipped: {m.get('reason')}"
    fs = m["feature_sets"]

    def cell(name):
        return (f"AUC {fs[name]['mean']['auc']:.4f} ± {fs[name]['std']['auc']:.4f}, "
                f"log-loss {fs[name]['mean']['logloss']:.4f} ± {fs[name]['std']['logloss']:.4f}")

    return (f"without KARMA {cell('without_karma')}; with KARMA {cell('with_karma')}; "
            f"with the KARMA cosine only {cell('with_karma_cos')}")


def main(argv: list[str] | None = None) -> int:
    from common.training import parse_cli

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="the day scored (T+1)")
    parser.add_argument("--train-ds", default=None, help="the day trained on (T; default: the day before --ds)")
    parser.add_argument("--model-dir", default=None, help="KARMA model folder (default: the version serving on T-1)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: karma_ranking.seeds")
    parser.add_argument("--out", default=None, help="metrics file (default <root>/reports/karma_ranking/ds=<ds>/metrics.json)")
    args, cfg, root = parse_cli(parser, argv)
    config = RankingConfig.from_dict(cfg.get("karma_ranking"))
    if args.seeds:
        config = dataclasses.replace(config, seeds=list(args.seeds))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    lookback = int((cfg.get("samples") or {}).get("lookback_days", 7))
    metrics = run_ranking(root, args.ds, config, args.train_ds, args.model_dir, lookback)
    logger.info("karma_ranking %s: %s", args.ds, summary_line(metrics))
    if metrics["skipped"]:
        emit_result({"skipped": True, "reason": metrics["reason"], "ds": metrics["ds"]})
        return 0
    path = write_json_atomic(Path(args.out) if args.out else metrics_path(root, args.ds), metrics)
    emit_result({"skipped": False, "metrics_path": str(path), "ds": metrics["ds"], "train_ds": metrics["train_ds"],
                 "auc_difference": {fs: metrics["auc_difference"][fs]["mean"] for fs in KARMA_SETS},
                 "beyond_seed_spread": {fs: metrics["auc_difference"][fs]["beyond_seed_spread"] for fs in KARMA_SETS},
                 **{fs: metrics["feature_sets"][fs]["mean"] for fs in FEATURE_SETS}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
