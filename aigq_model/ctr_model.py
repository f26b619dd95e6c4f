"""The daily CTR reward model of IL-GRPO: p(click | user profile, recent searches, query).

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
per-position bias (shown positions clipped to [0, ``n_positions`` - 1]) is **added in training
only** to absorb position bias. At scoring time (:meth:`CTRScorer.predict`,
:func:`aigq_model.ctr_eval.evaluate_ctr`) the position is fixed to 0, so the score is the click
probability as if shown in the top slot and the ranking of queries never depends on where the log
happened to show them.

The reward is ``ctr_reward(p) = clip(gamma * p, 0, beta)``. Training: :mod:`aigq_model.ctr_train`;
the daily entry point: :mod:`aigq_model.ctr`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aigq_model.parsing import normalize_query

PROFILE_FIELDS = ("gender", "age_bucket", "city", "purchase_level")
WEIGHTS_FILE = "ctr_model.safetensors"
CONFIG_FILE = "ctr_config.json"
SCORING_POSITION = 0


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


def feature_batch(enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """The model inputs of rows ``idx`` of ``enc`` (keyword arguments of :meth:`CTRModel.forward`)."""
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
def predict_probs(model: CTRModel, enc: Encoded) -> np.ndarray:
    """Click probabilities of every row of ``enc`` (batches of ``predict_batch_size``, no grad)."""
    was_training = model.training
    model.eval()
    out = []
    step = model.config.predict_batch_size
    for start in range(0, len(enc), step):
        idx = np.arange(start, min(start + step, len(enc)))
        out.append(torch.sigmoid(model(**feature_batch(enc, idx))).numpy())
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
        return predict_probs(self.model, encode(contexts, queries, self.config))

    def predict_rows(self, rows: Sequence[Mapping], use_position: bool = False) -> np.ndarray:
        """Probabilities for ``ctr_samples`` rows (at position 0 unless ``use_position``)."""
        return predict_probs(self.model, encode_rows(rows, self.config, use_position))

    def reward(self, contexts: Sequence[Mapping], queries: Sequence[str]) -> np.ndarray:
        """``ctr_reward`` of the predictions with the config's gamma and beta."""
        return ctr_reward(self.predict(contexts, queries), self.config.gamma, self.config.beta)


def as_ctr_model(model) -> CTRModel:
    """The :class:`CTRModel` of a model or a :class:`CTRScorer`."""
    return model.model if isinstance(model, CTRScorer) else model


# --- persistence ------------------------------------------------------------------------------
def save_ctr(model, config: CTRConfig | None, out_dir: str | Path) -> Path:
    """Write ``ctr_model.safetensors`` (state dict) and ``ctr_config.json`` into ``out_dir``."""
    m = as_ctr_model(model)
    config = config or m.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    return out_dir


def load_ctr(path: str | Path) -> CTRScorer:
    """A :class:`CTRScorer` from a folder written by :func:`save_ctr` (e.g. a registry version)."""
    path = Path(path)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path / f}: not a CTR model folder (written by aigq_model.ctr_model.save_ctr)")
    config = CTRConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    model = CTRModel(config)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return CTRScorer(model)
