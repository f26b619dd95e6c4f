"""Daily CTR reward model for IL-GRPO: p(click | user profile, recent searches, query).

Features (all hashed with ``zlib.crc32``, so they are stable across processes and runs):

- the query: word unigrams + character 3-grams of each ``#word#``, mean-pooled by an
  ``EmbeddingBag`` over ``n_buckets`` buckets;
- the last ``max_recent`` recent searches, concatenated, through the *same* bag (one space, so
  the query/history cosine and dot product are meaningful interaction features);
- the four profile fields (``gender``, ``age_bucket``, ``city``, ``purchase_level``; null is a
  value of its own), one hashed embedding each;
- the max word-level Jaccard overlap between the query and any recent search (computed in
  Python) and a "has recent searches" flag.

An MLP maps ``[q, r, q*r, profile, cos, dot, jaccard, has_recent]`` to a logit, to which a
per-position bias (shown positions clipped to [0, ``n_positions`` - 1]; learning rate
``bias_lr_mult`` times the others, so it takes the position effect before the content features
can) is **added in training only** to absorb position bias. At scoring time (``CTRScorer.predict``, ``evaluate_ctr``) the
position is fixed to 0, so the score is the click probability as if shown in the top slot and
the ranking of queries never depends on where the log happened to show them. Loss: BCE; Adam;
at most ``epochs`` epochs with early stopping on the valid split's log-loss (the best epoch's
weights are kept).

The reward is ``ctr_reward(p) = clip(gamma * p, 0, beta)``.

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

import copy
import dataclasses
import functools
import itertools
import json
import logging
import math
import shutil
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigq_model.parsing import normalize_query
from common.steps import emit_result

logger = logging.getLogger(__name__)

NAME = "aigq_ctr"
FORMAT = "aigq_ctr"
TABLE = "ctr_samples"
PROFILE_FIELDS = ("gender", "age_bucket", "city", "purchase_level")
WEIGHTS_FILE = "ctr_model.safetensors"
CONFIG_FILE = "ctr_config.json"
METRICS_FILE = "metrics.json"
SCORING_POSITION = 0
_EPS = 1e-7


@dataclass
class CTRConfig:
    """CTR model settings (``aigq.ctr`` in conf/pipeline.yaml)."""

    n_buckets: int = 2**16  # hashed text feature space (query and recent searches)
    dim: int = 32
    profile_buckets: int = 2**12
    profile_dim: int = 8
    max_recent: int = 10  # last N recent searches used
    n_positions: int = 10  # positions clipped to [0, n_positions - 1] (training only)
    hidden: int = 64
    dropout: float = 0.1
    epochs: int = 20
    patience: int = 3  # epochs without a better valid log-loss before stopping
    batch_size: int = 256
    learning_rate: float = 3e-3
    bias_lr_mult: float = 10.0  # learning-rate multiplier of the position bias (learnt fast, before content)
    weight_decay: float = 0.0
    predict_batch_size: int = 1024
    baseline_prior: float = 10.0  # pseudo-impressions at the global CTR for the query-CTR baseline
    gamma: float = 1.0  # reward = clip(gamma * p, 0, beta)
    beta: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if min(self.n_buckets, self.profile_buckets) < 2:
            raise ValueError("n_buckets and profile_buckets must be >= 2")
        if min(self.dim, self.profile_dim, self.hidden, self.n_positions, self.epochs, self.batch_size) < 1:
            raise ValueError("dim, profile_dim, hidden, n_positions, epochs and batch_size must be >= 1")
        if self.max_recent < 0 or self.patience < 0 or self.predict_batch_size < 1:
            raise ValueError("max_recent and patience must be >= 0, predict_batch_size >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> CTRConfig:
        section = dict(section or {})
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown aigq.ctr settings: {sorted(unknown)}")
        return cls(**section)


def ctr_reward(p, gamma: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """``clip(gamma * p, 0, beta)``, element-wise.

    >>> ctr_reward([0.1, 0.5, 0.9], gamma=2.0, beta=1.0).tolist()
    [0.2, 1.0, 1.0]
    >>> float(ctr_reward(0.3))
    0.3
    """
    return np.clip(gamma * np.asarray(p, dtype=np.float64), 0.0, beta)


# --- metrics ----------------------------------------------------------------------------------
def auc(labels, scores) -> float:
    """ROC AUC by Mann-Whitney with average ranks for ties; NaN when one class is missing.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])  # the tie counts one half
    0.875
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    n_pos = int((y == 1).sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]); NaN when empty."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), _EPS, 1 - _EPS)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def score_metrics(labels, probs) -> dict:
    """``{"auc", "logloss", "n", "positives"}``; undefined values are ``None`` (JSON-safe)."""
    y = np.asarray(labels, dtype=np.int64).ravel()

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    return {
        "auc": clean(auc(y, probs)) if y.size else None,
        "logloss": clean(logloss(y, probs)),
        "n": int(y.size),
        "positives": int(y.sum()),
    }


# --- features ---------------------------------------------------------------------------------
def _bucket(key: str, buckets: int) -> int:
    """Stable hash of ``key`` into [1, buckets) (0 is never used)."""
    return 1 + zlib.crc32(key.encode("utf-8")) % (buckets - 1)


@functools.lru_cache(maxsize=200_000)
def text_feature_ids(text: str, buckets: int) -> tuple[int, ...]:
    """Hashed word unigrams (``w:``) and character 3-grams of ``#word#`` (``c:``) of the
    normalised text.

    >>> len(text_feature_ids("Red shoe", 2**16))  # 2 words + 3 + 4 trigrams
    9
    """
    words = normalize_query(text).split()
    keys = [f"w:{w}" for w in words]
    for w in words:
        padded = f"#{w}#"
        keys += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
    return tuple(_bucket(k, buckets) for k in keys)


@functools.lru_cache(maxsize=100_000)
def _recent_feature_ids(recent: tuple[str, ...], buckets: int) -> tuple[int, ...]:
    return tuple(itertools.chain.from_iterable(text_feature_ids(q, buckets) for q in recent))


@functools.lru_cache(maxsize=200_000)
def _word_set(text: str) -> frozenset[str]:
    return frozenset(normalize_query(text).split())


def max_jaccard(query: str, recent: Sequence[str]) -> float:
    """Max word-level Jaccard overlap between ``query`` and any recent search (0.0 when none).

    >>> max_jaccard("red running shoe", ["blue hat", "red shoe"])
    0.6666666666666666
    """
    q = _word_set(query)
    best = 0.0
    for r in recent:
        w = _word_set(r)
        if q and w:
            best = max(best, len(q & w) / len(q | w))
    return best


def _recent(context: Mapping, max_recent: int) -> tuple[str, ...]:
    recent = [q for q in (context.get("recent_queries") or []) if isinstance(q, str) and q.strip()]
    return tuple(recent[-max_recent:]) if max_recent > 0 else ()


def context_from_sample(sample: Mapping, max_recent: int = 10) -> dict:
    """A scoring context from an AIGQ SFT sample row: its profile fields and the texts of the
    history's ``search`` entries (oldest first, the last ``max_recent``)."""
    searches = [
        h.get("text")
        for h in (sample.get("history") or [])
        if h.get("event_type") == "search" and isinstance(h.get("text"), str) and h.get("text").strip()
    ]
    return {
        **{f: sample.get(f) for f in PROFILE_FIELDS},
        "recent_queries": searches[-max_recent:] if max_recent > 0 else [],
    }


@dataclass
class Encoded:
    """Featurised rows (see :func:`encode`)."""

    query_ids: list[tuple[int, ...]]
    recent_ids: list[tuple[int, ...]]
    profile: np.ndarray  # (n, 4) int64
    position: np.ndarray  # (n,) int64, clipped
    dense: np.ndarray  # (n, 2) float32: max Jaccard, has recent searches
    labels: np.ndarray  # (n,) float32 (zeros when unlabelled)

    def __len__(self) -> int:
        return len(self.query_ids)


def encode(
    contexts: Sequence[Mapping],
    queries: Sequence[str],
    config: CTRConfig,
    positions: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
) -> Encoded:
    if len(contexts) != len(queries):
        raise ValueError(f"{len(contexts)} contexts for {len(queries)} queries")
    recents = [_recent(c, config.max_recent) for c in contexts]
    profile = np.array(
        [
            [_bucket(f"{f}={c.get(f) if c.get(f) is not None else '<null>'}", config.profile_buckets)
             for f in PROFILE_FIELDS]
            for c in contexts
        ],
        dtype=np.int64,
    ).reshape(len(contexts), len(PROFILE_FIELDS))
    pos = np.zeros(len(queries), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    dense = np.array(
        [[max_jaccard(q or "", r), float(bool(r))] for q, r in zip(queries, recents, strict=True)],
        dtype=np.float32,
    ).reshape(len(queries), 2)
    return Encoded(
        query_ids=[text_feature_ids(q or "", config.n_buckets) for q in queries],
        recent_ids=[_recent_feature_ids(r, config.n_buckets) for r in recents],
        profile=profile,
        position=np.clip(pos, 0, config.n_positions - 1),
        dense=dense,
        labels=np.zeros(len(queries), np.float32) if labels is None else np.asarray(labels, dtype=np.float32),
    )


def encode_rows(rows: Sequence[Mapping], config: CTRConfig, use_position: bool = True) -> Encoded:
    """Featurise ``ctr_samples`` rows; ``use_position=False`` scores them at position 0."""
    return encode(
        rows,
        [r.get("query") or "" for r in rows],
        config,
        positions=[r.get("position") or 0 for r in rows] if use_position else None,
        labels=[int(r.get("label") or 0) for r in rows],
    )


def _bag(seqs: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(s) for s in seqs]
    offsets = torch.tensor([0, *itertools.accumulate(lengths)][:-1], dtype=torch.long)
    flat = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)
    return flat, offsets


def _batch(enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
    q, q_off = _bag([enc.query_ids[i] for i in idx])
    r, r_off = _bag([enc.recent_ids[i] for i in idx])
    return {
        "query": q,
        "query_offsets": q_off,
        "recent": r,
        "recent_offsets": r_off,
        "profile": torch.from_numpy(enc.profile[idx]),
        "position": torch.from_numpy(enc.position[idx]),
        "dense": torch.from_numpy(enc.dense[idx]),
    }


# --- model ------------------------------------------------------------------------------------
class CTRModel(nn.Module):
    """Hashed-feature MLP; ``forward`` returns logits ``(batch,)`` including the position bias."""

    def __init__(self, config: CTRConfig):
        super().__init__()
        self.config = config
        self.text = nn.EmbeddingBag(config.n_buckets, config.dim, mode="mean")
        self.profile = nn.Embedding(config.profile_buckets, config.profile_dim)
        self.position_bias = nn.Embedding(config.n_positions, 1)
        n_in = 3 * config.dim + len(PROFILE_FIELDS) * config.profile_dim + 2 + 2
        self.mlp = nn.Sequential(
            nn.Linear(n_in, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )
        nn.init.normal_(self.text.weight, std=0.1)
        nn.init.normal_(self.profile.weight, std=0.1)
        nn.init.zeros_(self.position_bias.weight)

    def forward(self, query, query_offsets, recent, recent_offsets, profile, position, dense):
        q = self.text(query, query_offsets)  # (batch, dim); an empty bag is zeros
        r = self.text(recent, recent_offsets)  # (batch, dim)
        dot = (q * r).sum(-1, keepdim=True)
        cos = dot / (q.norm(dim=-1, keepdim=True) * r.norm(dim=-1, keepdim=True) + 1e-6)
        prof = self.profile(profile).flatten(1)  # (batch, 4 * profile_dim)
        x = torch.cat([q, r, q * r, prof, cos, dot, dense], dim=-1)
        return self.mlp(x).squeeze(-1) + self.position_bias(position).squeeze(-1)


@torch.no_grad()
def _predict(model: CTRModel, enc: Encoded) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = []
    step = model.config.predict_batch_size
    for start in range(0, len(enc), step):
        idx = np.arange(start, min(start + step, len(enc)))
        out.append(torch.sigmoid(model(**_batch(enc, idx))).numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0, dtype=np.float64)


class CTRScorer:
    """Scores (context, query) pairs with a trained :class:`CTRModel` at position 0."""

    def __init__(self, model: CTRModel):
        self.model = model.eval()

    @property
    def config(self) -> CTRConfig:
        return self.model.config

    def predict(self, contexts: Sequence[Mapping], queries: Sequence[str]) -> np.ndarray:
        """One click probability per pair ``(contexts[i], queries[i])``; a context holds the
        profile fields and ``recent_queries`` (oldest first). Position is fixed to 0."""
        return _predict(self.model, encode(contexts, queries, self.config))

    def predict_rows(self, rows: Sequence[Mapping], use_position: bool = False) -> np.ndarray:
        """Probabilities for ``ctr_samples`` rows (at position 0 unless ``use_position``)."""
        return _predict(self.model, encode_rows(rows, self.config, use_position))

    def reward(self, contexts: Sequence[Mapping], queries: Sequence[str]) -> np.ndarray:
        """``ctr_reward`` of the predictions with the config's gamma and beta."""
        return ctr_reward(self.predict(contexts, queries), self.config.gamma, self.config.beta)


def _as_model(model) -> CTRModel:
    return model.model if isinstance(model, CTRScorer) else model


def evaluate_ctr(model, rows: Sequence[Mapping], use_position: bool = False) -> dict:
    """``{"auc", "logloss", "n", "positives"}`` of a model (or scorer) on labelled rows, scored
    as at serving time (position 0) unless ``use_position``."""
    m = _as_model(model)
    probs = _predict(m, encode_rows(rows, m.config, use_position))
    return score_metrics([int(r.get("label") or 0) for r in rows], probs)


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
            loss = loss_fn(model(**_batch(train, idx)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        record = {"epoch": epoch, "train_loss": round(total / seen, 6)}
        if valid is not None:
            probs = _predict(model, valid)
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


# --- baseline ---------------------------------------------------------------------------------
class QueryCTRBaseline:
    """Popularity baseline: the query's smoothed empirical CTR on the training rows,
    ``(clicks + prior * mean) / (impressions + prior)``, the global mean for unseen queries."""

    def __init__(self, rows: Sequence[Mapping], prior: float = 10.0):
        clicks: dict[str, float] = {}
        shown: dict[str, int] = {}
        for r in rows:
            q = normalize_query(r.get("query"))
            clicks[q] = clicks.get(q, 0.0) + float(r.get("label") or 0)
            shown[q] = shown.get(q, 0) + 1
        n = sum(shown.values())
        self.mean = sum(clicks.values()) / n if n else 0.0
        self.ctr = {q: (clicks[q] + prior * self.mean) / (shown[q] + prior) for q in shown}

    def predict_rows(self, rows: Sequence[Mapping]) -> np.ndarray:
        return np.array([self.ctr.get(normalize_query(r.get("query")), self.mean) for r in rows], dtype=np.float64)


# --- persistence ------------------------------------------------------------------------------
def save_ctr(model, config: CTRConfig | None, out_dir: str | Path) -> Path:
    """Write ``ctr_model.safetensors`` (state dict) and ``ctr_config.json`` into ``out_dir``."""
    from safetensors.torch import save_file

    m = _as_model(model)
    config = config or m.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    return out_dir


def load_ctr(path: str | Path) -> CTRScorer:
    """A :class:`CTRScorer` from a folder written by :func:`save_ctr` (e.g. a registry version)."""
    from safetensors.torch import load_file

    path = Path(path)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path / f}: not a CTR model folder (written by aigq_model.ctr.save_ctr)")
    config = CTRConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    model = CTRModel(config)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return CTRScorer(model)


# --- entry point ------------------------------------------------------------------------------
def read_ctr_rows(data_root: str | Path, ds: str) -> list[dict]:
    """All rows of ``samples/ctr_samples/ds=<ds>``; ``FileNotFoundError`` naming the path when
    the partition is not published."""
    from common.arrow_io import read_partition
    from common.paths import is_published, partition_path

    path = partition_path(data_root, "samples", TABLE, ds)
    if not is_published(path):
        raise FileNotFoundError(f"{TABLE} partition not published: {path}")
    return read_partition(data_root, "samples", TABLE, ds).to_pylist()


def run_daily(data_root: str | Path, ds: str, config: CTRConfig) -> tuple[CTRModel, dict, dict]:
    """Train on ds, evaluate on ds+1 (or ds's test split); returns ``(model, metrics, n_rows)``."""
    from common.paths import ds_range, is_published, partition_path

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
    import argparse

    from aigq_model.train_sft import _registry_target
    from common.config import load_config
    from common.logging_setup import setup_logging
    from common.paths import check_ds
    from common.registry import commit_version, register, stage_version

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
    root, area, name, version = _registry_target(data_root, NAME, ds, args.out)
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
