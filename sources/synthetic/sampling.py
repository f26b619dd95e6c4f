"""Seeded generators and the small array helpers every part of the synthetic world uses.

Every random draw comes from ``SeedSequence([seed, purpose, *keys])`` (see the package
docstring), so a table depends only on the seed, the purpose and its day / shard keys.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# RNG purposes
PURPOSE_ITEMS, PURPOSE_USERS, PURPOSE_DRIFT, PURPOSE_EVENTS, PURPOSE_BAD_ROWS = 1, 2, 3, 4, 5


def seeded_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """The generator of one purpose (``PURPOSE_*``) and its keys (day ordinal, shard)."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))


def grouped_arange(counts: np.ndarray) -> np.ndarray:
    """``[0..c0-1, 0..c1-1, ...]`` for group sizes ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def sample_slots(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One slot index per row of ``weights`` (n, k), proportional to the row's weights."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def head_skewed(rng: np.random.Generator, counts: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Index in ``[0, count)`` per row, skewed to 0 (popular head)."""
    return np.minimum((counts * rng.random(len(counts)) ** power).astype(np.int64), np.maximum(counts - 1, 0))


def padded_ids(prefix: str, n: int, start: int = 0, stop: int | None = None) -> list[str]:
    """Ids ``start..stop-1`` of ``n``, zero-padded to one width so they sort numerically."""
    width = max(6, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{width}d}" for i in range(start, n if stop is None else stop)]


def take_or_null(values: pa.Array, indices: np.ndarray) -> pa.Array:
    """``values[indices]`` with null where ``indices < 0``."""
    indices = np.asarray(indices)
    mask = indices < 0
    idx = pa.array(np.where(mask, 0, indices).astype(np.int32), mask=mask if mask.any() else None)
    return values.take(idx)


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """A list column: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with each row (last axis) L2-normalised."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

