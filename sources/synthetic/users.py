"""Users and their interests: profiles, activity and the drifting interest mixture over leaves
(see the ``sources.synthetic`` docstring, **Users** and **Drift**)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common import schemas
from sources.synthetic.sampling import PURPOSE_DRIFT, PURPOSE_USERS, padded_ids, seeded_rng, take_or_null
from sources.synthetic.world import (
    AGE_BUCKETS,
    AGE_P,
    CITIES,
    CITY_P,
    GENDER_P,
    GENDERS,
    PURCHASE_LEVELS,
    PURCHASE_P,
    Catalog,
)

MAX_SLOTS = 8                   # interest slots per user
INIT_MIN_LEAVES, INIT_MAX_LEAVES = 2, 5
DRIFT_SIGMA = 0.3
DRIFT_DROP_BELOW = 0.04
DRIFT_NEW_LEAF_P = 0.12


@dataclass
class UserShard:
    """A fixed block of users: profile, activity and the current interest mixture."""

    index: int
    first_user: int
    user_ids: pa.Array
    prior_group: np.ndarray      # gender * n_ages + age, row of Catalog.leaf_prior_cum
    purchase_level: np.ndarray
    activity: np.ndarray
    leaf: np.ndarray             # (n, MAX_SLOTS) leaf index, -1 = empty slot
    weight: np.ndarray           # (n, MAX_SLOTS) mixture weights (0 for empty), rows sum to 1
    table: pa.Table | None       # the users rows (dropped once written)

    @property
    def size(self) -> int:
        return len(self.activity)


def _draw_leaves(rng: np.random.Generator, catalog: Catalog, prior_group: np.ndarray, k: int) -> np.ndarray:
    cum = catalog.leaf_prior_cum[prior_group]                  # (n, L)
    u = rng.random((len(prior_group), k))
    out = np.empty((len(prior_group), k), dtype=np.int64)
    for j in range(k):
        out[:, j] = np.minimum((cum <= u[:, j : j + 1]).sum(axis=1), catalog.n_leaves - 1)
    return out


def make_user_shard(catalog: Catalog, seed: int, shard: int, first_user: int, n: int, n_users: int) -> UserShard:
    """Users ``first_user .. first_user + n - 1`` (of ``n_users``): profiles and first-day interests."""
    rng = seeded_rng(seed, PURPOSE_USERS, shard)
    gender = rng.choice(len(GENDERS), size=n, p=GENDER_P)
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
    city = rng.choice(len(CITIES), size=n, p=CITY_P)
    level = rng.choice(len(PURCHASE_LEVELS), size=n, p=PURCHASE_P)
    activity = rng.gamma(2.0, 0.5, size=n)
    group = gender * len(AGE_BUCKETS) + age

    # 2-5 distinct leaves from the profile prior (draw MAX_SLOTS, keep the first k distinct)
    k = rng.integers(INIT_MIN_LEAVES, INIT_MAX_LEAVES + 1, size=n)
    cand = _draw_leaves(rng, catalog, group, MAX_SLOTS)
    distinct = np.ones_like(cand, dtype=bool)
    for j in range(1, MAX_SLOTS):
        distinct[:, j] = ~(cand[:, :j] == cand[:, j : j + 1]).any(axis=1)
    keep = distinct & (np.cumsum(distinct, axis=1) <= k[:, None])
    weight = np.where(keep, rng.gamma(1.0, 1.0, size=cand.shape), 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    leaf = np.where(keep, cand, -1)

    user_ids = pa.array(padded_ids("u", n_users, first_user, first_user + n), pa.string())
    table = pa.Table.from_arrays(
        [
            user_ids,
            take_or_null(pa.array(GENDERS, pa.string()), gender),
            take_or_null(pa.array(AGE_BUCKETS, pa.string()), age),
            take_or_null(pa.array(CITIES, pa.string()), city),
            take_or_null(pa.array(PURCHASE_LEVELS, pa.string()), level),
        ],
        schema=schemas.USERS,
    )
    return UserShard(shard, first_user, user_ids, group, level, activity, leaf.astype(np.int16),
                     weight.astype(np.float32), table)


def drift_interests(shard: UserShard, catalog: Catalog, seed: int, day_ordinal: int) -> None:
    """One day of interest drift for the shard (in place)."""
    rng = seeded_rng(seed, PURPOSE_DRIFT, day_ordinal, shard.index)
    n = shard.size
    active = shard.leaf >= 0
    logw = np.log(np.where(active, shard.weight, 1.0)) + rng.normal(0.0, DRIFT_SIGMA, size=shard.weight.shape)
    w = np.where(active, np.exp(logw), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    # drop faded leaves (the largest weight is >= 1/MAX_SLOTS, so a row never empties)
    active &= w >= DRIFT_DROP_BELOW
    w = np.where(active, w, 0.0)
    leaf = np.where(active, shard.leaf, -1)
    # occasionally a new leaf enters an empty slot
    new_leaf = _draw_leaves(rng, catalog, shard.prior_group, 1)[:, 0]
    new_w = rng.uniform(0.08, 0.25, size=n)
    wants = rng.random(n) < DRIFT_NEW_LEAF_P
    free_slot = np.argmin(active, axis=1)
    has_free = ~active.all(axis=1)
    already = (leaf == new_leaf[:, None]).any(axis=1)
    add = wants & has_free & ~already
    rows = np.flatnonzero(add)
    w /= w.sum(axis=1, keepdims=True)
    w[rows] *= (1.0 - new_w[rows])[:, None]
    w[rows, free_slot[rows]] = new_w[rows]
    leaf[rows, free_slot[rows]] = new_leaf[rows]
    shard.leaf, shard.weight = leaf.astype(np.int16), w.astype(np.float32)


def true_interest_table(shard: UserShard, catalog: Catalog) -> pa.Table:
    """The day's interest mixture per user (the day is the partition, not a column)."""
    rows, slots = np.nonzero(shard.leaf >= 0)
    return pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(rows.astype(np.int32))),
            take_or_null(pa.array(catalog.leaf_names, pa.string()), shard.leaf[rows, slots]),
            pa.array(shard.weight[rows, slots].astype(np.float32), pa.float32()),
        ],
        schema=schemas.TRUE_INTERESTS,
    )
