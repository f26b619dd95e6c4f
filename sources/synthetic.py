"""Synthetic Taobao-like logs that follow the raw contract (``common.schemas``).

Generative model
----------------
**Catalogue.** A fixed English category tree: 8 top categories x 5 sub-categories x 4 leaves
(160 leaves). Each leaf has one or two nouns ("running shoes", "trainers"); each top category has
an attribute list (colours, materials, sizes, features) and a brand list. Every leaf owns a
*finite* query vocabulary: its nouns, ``"<attribute> <noun>"`` for 4 of its top's attributes and
``"<brand> <noun>"`` for 2 of its brands, so a query names exactly one leaf and exact query hits
are meaningful. Queries are fixed by the tree (not by the seed).

**Items** (``i000123``): a leaf (every leaf gets one before any gets a second), a brand (mostly
one of the leaf's query brands), 1-3 attributes (``tags``), a title ``"<brand> <attrs> <noun>"``,
a log-normal price around a leaf base price, and an image embedding = 0.5 top centroid +
0.7 sub centroid + 0.9 leaf centroid + 0.6 noise (unit-norm random directions), L2-normalised.
Within a leaf, items have a popularity rank (a random permutation).

**Users** (``u000123``): gender, age bucket, city, purchase level, and a fixed activity level
~ Gamma(2, 0.5) (mean 1). Their latent interest is a sparse mixture over leaves: 2-5 leaves drawn
from a profile-dependent prior over top categories (e.g. beauty for women, kids for ages 30-39),
weights ~ Dirichlet(1). **Drift:** every following day each weight takes a log-normal step
(sigma 0.3) and is renormalised, a leaf whose weight falls under 0.04 is dropped, and with
probability 0.12 a new leaf (from the same prior) enters with weight ~U(0.08, 0.25). The mixture
of each day is written to ``raw/true_interests`` (ground truth; the ETL never reads it).

**A day.** A user has Poisson(activity x rate) sessions (at most 20); the rate and the number of
searches per session are set so the expected events per user-day is ``events_per_user_day``. A
session:

1. with probability 0.6 starts with a HintQ exposure (``hintq_exposures``, request ``h…``):
   3 distinct queries, each from the user's mixture with probability 0.6 (else from a uniform
   random leaf), shown in ranker-score order (score = 0.45 + 0.3 * match + noise, so scores
   descend). Each shown query is clicked with probability ``pos_factor * (0.15 + 0.35 *
   min(1, w / 0.3))`` when its leaf has mixture weight ``w > 0``, else ``pos_factor * 0.03``;
   the first success is the ``clicked_query``. Each shown query is one ``query_impressions`` row.
2. ``1 + Poisson(mu)`` searches. If the exposure was clicked, the first search is that query
   (scene ``hintq``, the exposure's request_id); the others are typed (scene ``search``,
   request ``s…``): leaf from the mixture (10% uniform exploration; a refinement keeps the
   previous search's leaf with probability 0.35), query from the leaf's vocabulary skewed to
   its head. Each search shows 4-8 items (``view``, same request_id): 80% from the query's leaf
   (consecutive popularity ranks from a head-skewed start), the rest uniform. A view is clicked
   with probability 0.28 / (1 + 0.08 * position) when the item's leaf is in the mixture, else
   0.04 / (1 + 0.08 * position); a click leads to ``cart`` (0.18) and ``buy`` (0.4 after a cart,
   0.04 without, times a purchase-level multiplier).
3. with probability 0.3, ``1 + Poisson(0.7)`` ``home`` clicks on items of the mixture's leaves
   (85%) or uniform items, request_id null;
4. an ``exit`` event (scene ``other``).

Events of a session follow each other after type-dependent gaps (0.5 s to at most 10 min:
views ~1-2 s, clicks ~20 s, purchases ~1 min). Sessions are laid out in the day with at least
31 min between one session's exit and the next session's start and a 16 min margin at both ends
of the day, so every event lies strictly inside ``[ds 00:00, ds+1 00:00)`` UTC and a 30-minute
gap sessioniser recovers exactly one session per ``exit``. A very long day is compressed in time.

Determinism. Every random draw comes from ``SeedSequence([seed, purpose, day, shard])``, where
``day`` is the date's ordinal and a shard is a fixed block of users whose size depends only on
``events_per_user_day``. The same seed and parameters therefore give identical tables, whatever
``chunk_rows`` is; one day can be regenerated alone (``only_ds``) since the interest drift up to
it is replayed cheaply without generating events.

Scale. Work is vectorised per shard (~200k events) with numpy; strings are built by pyarrow
``take`` from small vocabularies. Output streams through ``ParquetWriter`` in row groups of about
``chunk_rows`` rows, rolling to a new file every ``8 * chunk_rows`` rows, so memory stays bounded
by a shard plus one buffered chunk per table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import schemas
from common.config import load_config
from common.logging_setup import setup_logging
from common.paths import check_ds, ds_range, partition_path
from common.publish import atomic_partition

logger = logging.getLogger(__name__)

GENERATOR = "sources.synthetic"
GENERATOR_VERSION = 1

# --- the fixed world ----------------------------------------------------------------------
# top -> sub -> leaves; a leaf is "noun|synonym": the first noun names the leaf.
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Apparel": {
        "Tops": ["t-shirt|tee", "blouse", "hoodie|sweatshirt", "sweater|jumper"],
        "Bottoms": ["jeans", "trousers|pants", "skirt", "shorts"],
        "Outerwear": ["down jacket|puffer jacket", "trench coat", "windbreaker", "wool coat"],
        "Dresses": ["maxi dress", "mini dress", "evening gown", "shirt dress"],
        "Underwear": ["bra", "briefs", "socks", "pajamas|sleepwear"],
    },
    "Shoes & Bags": {
        "Sneakers": ["running shoes|trainers", "canvas shoes", "basketball shoes", "skate shoes"],
        "Boots": ["ankle boots", "snow boots", "chelsea boots", "rain boots"],
        "Formal Shoes": ["loafers", "oxford shoes", "high heels|pumps", "ballet flats"],
        "Handbags": ["tote bag", "crossbody bag", "clutch", "shoulder bag"],
        "Luggage": ["suitcase", "backpack|rucksack", "duffel bag", "wallet"],
    },
    "Electronics": {
        "Phones": ["smartphone|mobile phone", "phone case", "screen protector", "power bank"],
        "Computers": ["laptop|notebook", "tablet", "mechanical keyboard", "wireless mouse"],
        "Audio": ["earbuds", "headphones", "bluetooth speaker", "microphone"],
        "Cameras": ["mirrorless camera", "action camera", "tripod", "memory card"],
        "Wearables": ["smartwatch", "fitness tracker", "smart ring", "VR headset"],
    },
    "Home": {
        "Kitchen": ["frying pan|skillet", "rice cooker", "electric kettle", "knife set"],
        "Bedding": ["duvet|comforter", "pillow", "bed sheets", "mattress topper"],
        "Furniture": ["sofa|couch", "standing desk", "office chair", "bookshelf"],
        "Decor": ["table lamp", "wall clock", "vase", "area rug"],
        "Cleaning": ["vacuum cleaner", "spin mop", "storage box", "laundry basket"],
    },
    "Beauty": {
        "Skincare": ["face cream|moisturizer", "serum", "sunscreen", "facial cleanser"],
        "Makeup": ["lipstick", "foundation", "mascara", "eyeshadow palette"],
        "Hair Care": ["shampoo", "hair dryer", "hair straightener", "conditioner"],
        "Fragrance": ["perfume", "cologne", "body mist", "scented candle"],
        "Personal Care": ["electric toothbrush", "razor|shaver", "body lotion", "hand cream"],
    },
    "Sports": {
        "Fitness": ["yoga mat", "dumbbells", "resistance bands", "jump rope"],
        "Cycling": ["road bike", "bike helmet", "cycling jersey", "bike light"],
        "Camping": ["tent", "sleeping bag", "camping stove", "headlamp"],
        "Ball Sports": ["football|soccer ball", "basketball", "badminton racket", "tennis racket"],
        "Swimming": ["swimsuit", "swim goggles", "swim cap", "beach towel"],
    },
    "Kids": {
        "Toys": ["building blocks", "plush toy", "jigsaw puzzle", "toy car"],
        "Baby Care": ["diapers|nappies", "baby wipes", "baby bottle", "pacifier"],
        "Kids Clothing": ["kids jacket", "romper", "kids sneakers", "school uniform"],
        "Strollers": ["stroller|pram", "car seat", "baby carrier", "high chair"],
        "Learning": ["picture book", "drawing set", "flash cards", "kids tablet"],
    },
    "Food": {
        "Snacks": ["potato chips|crisps", "cookies", "beef jerky", "mixed nuts"],
        "Drinks": ["green tea", "coffee beans", "sparkling water", "fruit juice"],
        "Fresh": ["strawberries", "salmon", "avocado", "steak"],
        "Pantry": ["olive oil", "instant noodles", "soy sauce", "jasmine rice"],
        "Sweets": ["dark chocolate", "candy", "honey", "ice cream"],
    },
}
ATTRIBUTES: dict[str, list[str]] = {
    "Apparel": ["black", "white", "navy", "beige", "red", "cotton", "linen", "wool", "oversized", "slim fit"],
    "Shoes & Bags": ["black", "white", "brown", "leather", "canvas", "waterproof", "lightweight", "vintage",
                     "mini", "large"],
    "Electronics": ["black", "silver", "wireless", "portable", "256gb", "fast charging", "noise cancelling",
                    "waterproof", "4k", "gaming"],
    "Home": ["white", "grey", "wooden", "stainless steel", "ceramic", "nordic", "foldable", "large", "cotton",
             "smart"],
    "Beauty": ["moisturizing", "matte", "organic", "sensitive skin", "long lasting", "travel size", "vegan",
               "spf50", "fragrance free", "mens"],
    "Sports": ["lightweight", "breathable", "professional", "beginner", "adjustable", "waterproof", "foldable",
               "kids", "carbon", "quick dry"],
    "Kids": ["educational", "organic cotton", "newborn", "toddler", "wooden", "soft", "cartoon", "portable",
             "waterproof", "pink"],
    "Food": ["organic", "sugar free", "imported", "low fat", "gift box", "family pack", "spicy", "fresh",
             "premium", "sea salt"],
}
BRANDS: dict[str, list[str]] = {
    "Apparel": ["Lumora", "Urbanfit", "Maple & Co", "Serein", "Kestrel", "Aoyun"],
    "Shoes & Bags": ["Stridex", "Voyagio", "Pellino", "Trekmark", "Ondine", "Caspia"],
    "Electronics": ["Novatek", "Zentro", "Orbis", "Pixelon", "Hexa", "Voltra"],
    "Home": ["Hearthly", "Nordhaus", "Casaluna", "Tidyway", "Ember & Oak", "Kumo"],
    "Beauty": ["Velura", "Purelle", "Mirabel", "Senna", "Glowria", "Aquae"],
    "Sports": ["Peakline", "Fitora", "Trailhead", "Swiftrun", "Aerocore", "Bluefin"],
    "Kids": ["Tinytot", "Bubbloo", "Sproutly", "Kidora", "Panda Pal", "Littlebee"],
    "Food": ["Goldfield", "Harvesta", "Sunnyvale", "Crunchies", "Teahouse", "Oceanic"],
}
TOP_LOG_PRICE = {"Apparel": 4.6, "Shoes & Bags": 5.2, "Electronics": 6.3, "Home": 5.3, "Beauty": 4.8,
                 "Sports": 5.0, "Kids": 4.6, "Food": 3.6}
ATTR_QUERIES_PER_LEAF = 4
BRAND_QUERIES_PER_LEAF = 2

GENDERS = ("female", "male")
GENDER_P = (0.55, 0.45)
AGE_BUCKETS = ("18-24", "25-29", "30-34", "35-39", "40-49", "50+")
AGE_P = (0.2, 0.22, 0.2, 0.15, 0.14, 0.09)
CITIES = ("Shanghai", "Beijing", "Hangzhou", "Shenzhen", "Guangzhou", "Chengdu", "Wuhan", "Nanjing", "Xi'an",
          "Chongqing", "Suzhou", "Tianjin")
CITY_P = (0.14, 0.13, 0.1, 0.1, 0.1, 0.09, 0.07, 0.07, 0.06, 0.06, 0.04, 0.04)
PURCHASE_LEVELS = ("low", "medium", "high", "premium")
PURCHASE_P = (0.3, 0.4, 0.22, 0.08)
BUY_MULTIPLIER = np.array([0.7, 1.0, 1.3, 1.6])
# Top-category prior by gender (order of TAXONOMY) and multipliers by age bucket.
TOP_PRIOR_BY_GENDER = np.array([
    [2.0, 1.5, 0.8, 1.2, 2.0, 0.8, 1.0, 1.0],
    [0.9, 1.0, 2.2, 1.0, 0.5, 1.8, 0.8, 1.0],
])
TOP_MULT_BY_AGE = np.array([
    [1.2, 1.2, 1.3, 0.6, 1.2, 1.1, 0.3, 1.0],
    [1.1, 1.1, 1.2, 0.9, 1.1, 1.1, 0.8, 1.0],
    [1.0, 1.0, 1.0, 1.3, 1.0, 1.0, 2.0, 1.0],
    [0.9, 1.0, 1.0, 1.4, 0.9, 1.0, 1.8, 1.1],
    [0.9, 0.9, 0.9, 1.6, 0.9, 0.9, 1.0, 1.4],
    [0.8, 0.8, 0.7, 1.6, 0.8, 0.8, 0.8, 1.8],
])

# --- behaviour parameters (see the module docstring) ------------------------------------
MAX_SLOTS = 8                   # interest slots per user
INIT_MIN_LEAVES, INIT_MAX_LEAVES = 2, 5
DRIFT_SIGMA = 0.3
DRIFT_DROP_BELOW = 0.04
DRIFT_NEW_LEAF_P = 0.12
EXPLORE_P = 0.1
REFINE_SAME_LEAF_P = 0.35
HINTQ_P = 0.6
HINTQ_RELEVANT_P = 0.6
HINTQ_POS_FACTOR = np.array([1.0, 0.8, 0.65])
HINTQ_CLICK_BASE, HINTQ_CLICK_GAIN, HINTQ_CLICK_OTHER = 0.15, 0.35, 0.03
VIEWS_MIN, VIEWS_MAX = 4, 8
VIEW_FROM_LEAF_P = 0.8
CLICK_MATCH_P, CLICK_OTHER_P = 0.28, 0.04
CART_P, BUY_AFTER_CART_P, BUY_DIRECT_P = 0.18, 0.4, 0.04
HOME_P, HOME_EXTRA_MEAN, HOME_FROM_INTEREST_P = 0.3, 0.7, 0.85
MAX_SESSIONS = 20
TARGET_SESSIONS = 8.0           # above this many sessions a day, sessions get longer instead
BASE_EXTRA_SEARCHES = 0.8
MAX_SEARCHES = 200
# Measured mean events per search (search + views + click chain) at these parameters.
EVENTS_PER_SEARCH = 8.4
EVENTS_OUTSIDE_SEARCHES = 1.0 + HOME_P * (1.0 + HOME_EXTRA_MEAN)   # exit + home clicks
SHARD_TARGET_EVENTS = 200_000
DAY_US = 86_400_000_000
DAY_MARGIN_US = 16 * 60 * 1_000_000
SESSION_GAP_US = 31 * 60 * 1_000_000

# event-type codes (index into schemas.EVENT_TYPES) and scene codes (index into schemas.SCENES)
SEARCH, CLICK, CART, BUY, VIEW, EXIT = (schemas.EVENT_TYPES.index(t) for t in
                                        ("search", "click", "cart", "buy", "view", "exit"))
SCENE_SEARCH, SCENE_HINTQ, SCENE_HOME, SCENE_OTHER = (schemas.SCENES.index(s) for s in
                                                      ("search", "hintq", "home", "other"))
# gap before an event, seconds: minimum + Exp(mean); capped at GAP_CAP_S
GAP_MIN_S = {SEARCH: 5.0, VIEW: 0.5, CLICK: 3.0, CART: 10.0, BUY: 15.0, EXIT: 3.0}
GAP_MEAN_S = {SEARCH: 25.0, VIEW: 1.5, CLICK: 20.0, CART: 40.0, BUY: 60.0, EXIT: 30.0}
HINTQ_SEARCH_GAP = (2.0, 6.0)
HOME_CLICK_GAP = (5.0, 40.0)
GAP_CAP_S = 600.0

# RNG purposes
_ITEMS, _USERS, _DRIFT, _EVENTS, _BAD_ROWS = 1, 2, 3, 4, 5

#: Defects ``inject_bad_rows`` cycles through, named after the quarantine reason they trigger.
BAD_ROW_KINDS = (
    "null_user_id", "search_without_query", "unknown_event_type", "event_time_outside_partition", "duplicate",
)


def inject_bad_rows(events: pa.Table, rate: float, rng: np.random.Generator) -> pa.Table:
    """Corrupt about ``rate`` of the rows (for demos and quarantine drills; off by default).

    Chosen rows get one defect each, cycling through ``BAD_ROW_KINDS``; a ``duplicate`` keeps the
    original and adds an exact copy, the other kinds replace the original row.
    """
    n = events.num_rows
    k = int(rng.binomial(n, rate)) if n and rate > 0 else 0
    if k == 0:
        return events
    picked = np.sort(rng.choice(n, size=k, replace=False))
    rows = events.take(picked).to_pylist()
    replaced = np.zeros(n, dtype=bool)
    for j, row in enumerate(rows):
        kind = BAD_ROW_KINDS[j % len(BAD_ROW_KINDS)]
        if kind == "null_user_id":
            row["user_id"] = None
        elif kind == "search_without_query":
            row.update(event_type="search", query=None, item_id=None)
        elif kind == "unknown_event_type":
            row["event_type"] = "teleport"
        elif kind == "event_time_outside_partition":
            row["event_time"] = row["event_time"] + dt.timedelta(days=1)
        if kind != "duplicate":
            replaced[picked[j]] = True
    return pa.concat_tables([events.filter(pa.array(~replaced)), pa.Table.from_pylist(rows, schema=events.schema)])


def _rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))


def _grouped_arange(counts: np.ndarray) -> np.ndarray:
    """``[0..c0-1, 0..c1-1, ...]`` for group sizes ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _sample_slots(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One slot index per row of ``weights`` (n, k), proportional to the row's weights."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _head_skewed(rng: np.random.Generator, counts: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Index in ``[0, count)`` per row, skewed to 0 (popular head)."""
    return np.minimum((counts * rng.random(len(counts)) ** power).astype(np.int64), np.maximum(counts - 1, 0))


def _ids(prefix: str, n: int, start: int = 0, stop: int | None = None) -> list[str]:
    """Ids ``start..stop-1`` of ``n``, zero-padded to one width so they sort numerically."""
    width = max(6, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{width}d}" for i in range(start, n if stop is None else stop)]


def _take(values: pa.Array, indices: np.ndarray) -> pa.Array:
    """``values[indices]`` with null where ``indices < 0``."""
    indices = np.asarray(indices)
    mask = indices < 0
    idx = pa.array(np.where(mask, 0, indices).astype(np.int32), mask=mask if mask.any() else None)
    return values.take(idx)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


# --- catalogue ----------------------------------------------------------------------------
@dataclass
class Catalog:
    """Category tree, query vocabulary and items, as arrays for vectorised sampling."""

    leaf_names: list[str]
    leaf_top: np.ndarray
    leaf_prior_cum: np.ndarray        # (n_genders * n_ages, n_leaves) cumulative leaf prior
    query_text: pa.Array
    query_leaf: np.ndarray
    leaf_query_start: np.ndarray
    leaf_query_count: np.ndarray
    item_ids: pa.Array
    item_leaf: np.ndarray
    items_by_leaf: np.ndarray         # item indices grouped by leaf, popularity order inside
    leaf_item_start: np.ndarray
    leaf_item_count: np.ndarray
    items_table: pa.Table

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_names)


def _leaf_name(noun: str) -> str:
    return noun[0].upper() + noun[1:]


@dataclass(frozen=True)
class CategoryTree:
    """The fixed category tree and its query vocabulary (independent of the seed)."""

    tops: list[str]
    leaf_names: list[str]
    leaf_nouns: list[list[str]]
    leaf_top: np.ndarray
    leaf_sub: np.ndarray
    n_subs: int
    leaf_path: list[str]
    leaf_attrs: list[list[str]]      # the attributes used in the leaf's queries
    leaf_brands: list[list[str]]     # the brands used in the leaf's queries
    query_text: list[str]
    query_leaf: np.ndarray
    leaf_query_start: np.ndarray
    leaf_query_count: np.ndarray
    leaf_prior_cum: np.ndarray       # (n_genders * n_ages, n_leaves) cumulative leaf prior


@functools.cache
def category_tree() -> CategoryTree:
    tops = list(TAXONOMY)
    leaf_names, leaf_nouns, leaf_top, leaf_sub, leaf_path = [], [], [], [], []
    n_subs = 0
    for t, top in enumerate(tops):
        for sub in TAXONOMY[top]:
            for leaf in TAXONOMY[top][sub]:
                nouns = leaf.split("|")
                leaf_names.append(_leaf_name(nouns[0]))
                leaf_nouns.append([n.lower() for n in nouns])
                leaf_top.append(t)
                leaf_sub.append(n_subs)
                leaf_path.append(f"{top} > {sub} > {leaf_names[-1]}")
            n_subs += 1
    if len(set(leaf_names)) != len(leaf_names):
        raise ValueError("leaf names must be unique")
    leaf_top_arr = np.array(leaf_top, dtype=np.int64)

    # query vocabulary: nouns, attribute + noun, brand + noun
    query_text, query_leaf, leaf_attrs, leaf_brands, starts, counts = [], [], [], [], [], []
    for leaf in range(len(leaf_names)):
        top = tops[leaf_top[leaf]]
        attrs, brands = ATTRIBUTES[top], BRANDS[top]
        chosen_attrs = [attrs[(leaf * 3 + j) % len(attrs)] for j in range(ATTR_QUERIES_PER_LEAF)]
        chosen_brands = [brands[(leaf + j) % len(brands)] for j in range(BRAND_QUERIES_PER_LEAF)]
        noun = leaf_nouns[leaf][0]
        texts = list(leaf_nouns[leaf])
        texts += [f"{a} {noun}" for a in chosen_attrs]
        texts += [f"{b.lower()} {noun}" for b in chosen_brands]
        starts.append(len(query_text))
        counts.append(len(texts))
        query_text.extend(texts)
        query_leaf.extend([leaf] * len(texts))
        leaf_attrs.append(chosen_attrs)
        leaf_brands.append(chosen_brands)
    if len(set(query_text)) != len(query_text):
        raise ValueError("query vocabulary must be unique across leaves")

    # profile-dependent leaf prior: the top prior spread uniformly over the top's leaves
    leaves_per_top = np.bincount(leaf_top_arr, minlength=len(tops))
    priors = []
    for g in range(len(GENDERS)):
        for a in range(len(AGE_BUCKETS)):
            top_w = TOP_PRIOR_BY_GENDER[g] * TOP_MULT_BY_AGE[a]
            leaf_w = top_w[leaf_top_arr] / leaves_per_top[leaf_top_arr]
            priors.append(np.cumsum(leaf_w / leaf_w.sum()))
    return CategoryTree(
        tops=tops, leaf_names=leaf_names, leaf_nouns=leaf_nouns, leaf_top=leaf_top_arr,
        leaf_sub=np.array(leaf_sub, dtype=np.int64), n_subs=n_subs, leaf_path=leaf_path,
        leaf_attrs=leaf_attrs, leaf_brands=leaf_brands, query_text=query_text,
        query_leaf=np.array(query_leaf, dtype=np.int64), leaf_query_start=np.array(starts, dtype=np.int64),
        leaf_query_count=np.array(counts, dtype=np.int64), leaf_prior_cum=np.array(priors),
    )


def query_vocabulary() -> dict[str, str]:
    """Every query the generator can emit, mapped to its leaf category name."""
    tree = category_tree()
    return {q: tree.leaf_names[leaf] for q, leaf in zip(tree.query_text, tree.query_leaf, strict=True)}


def build_catalog(n_items: int, seed: int, image_dim: int) -> Catalog:
    """The category tree's arrays plus ``n_items`` seeded items."""
    tree = category_tree()
    tops, leaf_top, leaf_nouns = tree.tops, tree.leaf_top, tree.leaf_nouns
    leaf_attrs, leaf_brands = tree.leaf_attrs, tree.leaf_brands
    n_leaves = len(tree.leaf_names)

    # items
    rng = _rng(seed, _ITEMS)
    first = np.arange(min(n_items, n_leaves))
    rest = rng.integers(0, n_leaves, size=max(n_items - n_leaves, 0))
    item_leaf = np.concatenate([first, rest]).astype(np.int64)[rng.permutation(n_items)]
    order = np.lexsort((rng.random(n_items), item_leaf))          # by leaf, random popularity rank
    leaf_item_count = np.bincount(item_leaf, minlength=n_leaves)
    leaf_item_start = np.cumsum(leaf_item_count) - leaf_item_count

    top_c = _unit(rng.standard_normal((len(tops), image_dim)))
    sub_c = _unit(rng.standard_normal((tree.n_subs, image_dim)))
    leaf_c = _unit(rng.standard_normal((n_leaves, image_dim)))
    noise = _unit(rng.standard_normal((n_items, image_dim)))
    emb = (0.5 * top_c[leaf_top[item_leaf]] + 0.7 * sub_c[tree.leaf_sub[item_leaf]]
           + 0.9 * leaf_c[item_leaf] + 0.6 * noise)
    emb = _unit(emb).astype(np.float32)
    leaf_log_price = np.array([TOP_LOG_PRICE[tops[t]] for t in leaf_top]) + rng.normal(0, 0.5, n_leaves)
    price = np.round(np.exp(leaf_log_price[item_leaf] + rng.normal(0, 0.4, n_items)), 2)
    n_attrs = rng.integers(1, 4, size=n_items)
    attr_u = rng.random((n_items, 3))
    brand_from_leaf = rng.random(n_items) < 0.7
    brand_u = rng.random(n_items)
    noun_pick = rng.integers(0, 1000, size=n_items)

    titles, brands, tags = [], [], []
    for i in range(n_items):
        leaf = int(item_leaf[i])
        top = tops[leaf_top[leaf]]
        pool = BRANDS[top] if not brand_from_leaf[i] else leaf_brands[leaf]
        brand = pool[int(brand_u[i] * len(pool))]
        # first attribute from the leaf's query attributes (so attribute queries hit items)
        attrs_pool = ATTRIBUTES[top]
        picked = [leaf_attrs[leaf][int(attr_u[i, 0] * len(leaf_attrs[leaf]))]]
        for j in range(1, int(n_attrs[i])):
            a = attrs_pool[int(attr_u[i, j] * len(attrs_pool))]
            if a not in picked:
                picked.append(a)
        nouns = leaf_nouns[leaf]
        noun = nouns[int(noun_pick[i]) % len(nouns)]
        titles.append(f"{brand} {' '.join(picked)} {noun}")
        brands.append(brand)
        tags.append(picked)

    item_ids = pa.array(_ids("i", n_items), pa.string())
    items_table = pa.Table.from_arrays(
        [
            item_ids,
            pa.array(titles, pa.string()),
            _take(pa.array(tree.leaf_path, pa.string()), item_leaf),
            _take(pa.array(tree.leaf_names, pa.string()), item_leaf),
            pa.array(brands, pa.string()),
            pa.array(tags, schemas.STR_LIST),
            pa.array(price, pa.float64()),
            _list_array(np.arange(n_items + 1) * image_dim, pa.array(emb.ravel(), pa.float32())),
        ],
        schema=schemas.ITEMS,
    )
    return Catalog(
        leaf_names=tree.leaf_names,
        leaf_top=leaf_top,
        leaf_prior_cum=tree.leaf_prior_cum,
        query_text=pa.array(tree.query_text, pa.string()),
        query_leaf=tree.query_leaf,
        leaf_query_start=tree.leaf_query_start,
        leaf_query_count=tree.leaf_query_count,
        item_ids=item_ids,
        item_leaf=item_leaf,
        items_by_leaf=order.astype(np.int64),
        leaf_item_start=leaf_item_start.astype(np.int64),
        leaf_item_count=leaf_item_count.astype(np.int64),
        items_table=items_table,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --- users and their interests ------------------------------------------------------------
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
    rng = _rng(seed, _USERS, shard)
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

    user_ids = pa.array(_ids("u", n_users, first_user, first_user + n), pa.string())
    table = pa.Table.from_arrays(
        [
            user_ids,
            _take(pa.array(GENDERS, pa.string()), gender),
            _take(pa.array(AGE_BUCKETS, pa.string()), age),
            _take(pa.array(CITIES, pa.string()), city),
            _take(pa.array(PURCHASE_LEVELS, pa.string()), level),
        ],
        schema=schemas.USERS,
    )
    return UserShard(shard, first_user, user_ids, group, level, activity, leaf.astype(np.int16),
                     weight.astype(np.float32), table)


def drift_interests(shard: UserShard, catalog: Catalog, seed: int, day_ordinal: int) -> None:
    """One day of interest drift for the shard (in place)."""
    rng = _rng(seed, _DRIFT, day_ordinal, shard.index)
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


def _leaf_weight(shard: UserShard, users: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Mixture weight of ``leaves[i]`` for user ``users[i]`` (0 when not an interest)."""
    hit = shard.leaf[users] == leaves[:, None]
    return (shard.weight[users] * hit).sum(axis=1)


def _item_at(catalog: Catalog, leaves: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The item at popularity rank ``ranks`` (wrapping) of each leaf; meaningless for empty leaves."""
    count = catalog.leaf_item_count[leaves]
    index = catalog.leaf_item_start[leaves] + ranks % np.maximum(count, 1)
    return catalog.items_by_leaf[np.minimum(index, len(catalog.items_by_leaf) - 1)]


# --- one shard, one day -------------------------------------------------------------------
def _gaps_us(rng: np.random.Generator, minimum: np.ndarray, mean: np.ndarray) -> np.ndarray:
    seconds = np.minimum(minimum + rng.exponential(1.0, size=len(minimum)) * mean, GAP_CAP_S)
    return (seconds * 1_000_000).astype(np.int64)


def _expected_capped_sessions(rate: float) -> float:
    """E[min(N, MAX_SESSIONS)] for N ~ Poisson(rate * Gamma(2, 0.5)), a negative binomial."""
    k = np.arange(MAX_SESSIONS)
    q = 2.0 / (2.0 + rate)
    pmf = (k + 1) * q**2 * (1.0 - q) ** k
    return float(np.sum(1.0 - np.cumsum(pmf)))


def session_plan(events_per_user_day: float) -> tuple[float, float]:
    """(Poisson rate of sessions per user-day at activity 1, mean extra searches per session).

    Sessions get longer rather than more numerous beyond ``TARGET_SESSIONS`` a day; the rate
    is corrected for the ``MAX_SESSIONS`` cap so the expected events per user-day hold.
    """
    per_session = EVENTS_OUTSIDE_SEARCHES + EVENTS_PER_SEARCH * (1.0 + BASE_EXTRA_SEARCHES)
    sessions, extra = events_per_user_day / per_session, BASE_EXTRA_SEARCHES
    if sessions > TARGET_SESSIONS:
        sessions = TARGET_SESSIONS
        extra = (events_per_user_day / sessions - EVENTS_OUTSIDE_SEARCHES) / EVENTS_PER_SEARCH - 1.0
    low, high = 0.0, 4.0 * sessions + 1.0
    for _ in range(60):                      # bisection: the capped mean grows with the rate
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _expected_capped_sessions(mid) < sessions else (low, mid)
    return 0.5 * (low + high), extra


def generate_shard_day(
    catalog: Catalog, shard: UserShard, ds: str, seed: int, events_per_user_day: float
) -> dict[str, pa.Table]:
    """All event tables of one day for one shard of users (plus that day's true interests)."""
    day = dt.date.fromisoformat(ds)
    rng = _rng(seed, _EVENTS, day.toordinal(), shard.index)
    day_start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000
    ds_tag = ds.replace("-", "")
    sessions_rate, extra_searches = session_plan(events_per_user_day)
    n_leaves = catalog.n_leaves

    # sessions, ordered by (user, rank)
    n_sess_user = np.minimum(rng.poisson(shard.activity * sessions_rate), MAX_SESSIONS)
    sess_user = np.repeat(np.arange(shard.size), n_sess_user)
    n_sess = len(sess_user)
    has_hintq = rng.random(n_sess) < HINTQ_P
    n_search = np.minimum(1 + rng.poisson(extra_searches, size=n_sess), MAX_SEARCHES)
    has_home = rng.random(n_sess) < HOME_P
    n_home = np.where(has_home, 1 + rng.poisson(HOME_EXTRA_MEAN, size=n_sess), 0)

    # HintQ exposures: 3 distinct queries, shown in ranker-score order
    exp_sess = np.flatnonzero(has_hintq)
    exp_user = sess_user[exp_sess]
    n_exp = len(exp_sess)
    slot_user = np.repeat(exp_user, 3)
    relevant = rng.random(n_exp * 3) < HINTQ_RELEVANT_P
    mix_leaf = shard.leaf[slot_user, _sample_slots(rng, shard.weight[slot_user])]
    slot_leaf = np.where(relevant, mix_leaf, rng.integers(0, n_leaves, size=n_exp * 3))
    head = np.repeat(_head_skewed(rng, np.full(n_exp, 4)), 3) + np.tile(np.arange(3), n_exp)
    slot_query = catalog.leaf_query_start[slot_leaf] + head % catalog.leaf_query_count[slot_leaf]
    slot_w = _leaf_weight(shard, slot_user, slot_leaf)
    score = np.clip(0.45 + 0.3 * (slot_w > 0) + rng.normal(0.0, 0.12, size=n_exp * 3), 0.01, 0.99)
    rank = np.argsort(-score.reshape(n_exp, 3), axis=1, kind="stable")
    reorder = (np.arange(n_exp)[:, None] * 3 + rank).ravel()
    slot_query, slot_w, score = slot_query[reorder], slot_w[reorder], score[reorder]
    pos_factor = np.tile(HINTQ_POS_FACTOR, n_exp)
    p_click = pos_factor * np.where(
        slot_w > 0, HINTQ_CLICK_BASE + HINTQ_CLICK_GAIN * np.minimum(1.0, slot_w / 0.3), HINTQ_CLICK_OTHER
    )
    success = (rng.random(n_exp * 3) < p_click).reshape(n_exp, 3)
    exp_clicked = success.any(axis=1)
    clicked_pos = np.argmax(success, axis=1)
    exp_clicked_query = np.where(exp_clicked, slot_query.reshape(n_exp, 3)[np.arange(n_exp), clicked_pos], -1)
    sess_exposure = np.full(n_sess, -1, dtype=np.int64)
    sess_exposure[exp_sess] = np.arange(n_exp)
    sess_hintq_query = np.full(n_sess, -1, dtype=np.int64)
    sess_hintq_query[exp_sess] = exp_clicked_query

    # searches, ordered by (session, rank)
    srch_sess = np.repeat(np.arange(n_sess), n_search)
    srch_rank = _grouped_arange(n_search)
    srch_user = sess_user[srch_sess]
    n_srch = len(srch_sess)
    srch_hintq = (srch_rank == 0) & (sess_hintq_query[srch_sess] >= 0)
    leaf = shard.leaf[srch_user, _sample_slots(rng, shard.weight[srch_user])]
    leaf = np.where(rng.random(n_srch) < EXPLORE_P, rng.integers(0, n_leaves, size=n_srch), leaf)
    hintq_query = sess_hintq_query[srch_sess]
    leaf = np.where(srch_hintq, catalog.query_leaf[np.maximum(hintq_query, 0)], leaf)
    refine = (srch_rank > 0) & (rng.random(n_srch) < REFINE_SAME_LEAF_P)
    leaf = leaf[np.maximum.accumulate(np.where(refine, 0, np.arange(n_srch)))]   # keep the previous leaf
    srch_query = catalog.leaf_query_start[leaf] + _head_skewed(rng, catalog.leaf_query_count[leaf])
    srch_query = np.where(srch_hintq, hintq_query, srch_query)
    srch_leaf = catalog.query_leaf[srch_query]
    srch_scene = np.where(srch_hintq, SCENE_HINTQ, SCENE_SEARCH)

    # request ids: exposures "h<ds>-<user>-<k>", typed searches "s<ds>-<user>-<k>"
    typed = ~srch_hintq
    typed_user = srch_user[typed]
    exp_req = _request_ids("h", ds_tag, shard.user_ids, exp_user)
    typed_req = _request_ids("s", ds_tag, shard.user_ids, typed_user)
    requests = pa.concat_arrays([exp_req, typed_req])
    srch_req = np.empty(n_srch, dtype=np.int64)
    srch_req[typed] = n_exp + np.arange(int(typed.sum()))
    srch_req[srch_hintq] = sess_exposure[srch_sess[srch_hintq]]

    # views: 4-8 items per search, mostly from the query's leaf
    n_view = rng.integers(VIEWS_MIN, VIEWS_MAX + 1, size=n_srch)
    view_srch = np.repeat(np.arange(n_srch), n_view)
    view_pos = _grouped_arange(n_view)
    view_leaf = srch_leaf[view_srch]
    leaf_count = catalog.leaf_item_count[view_leaf]
    start_rank = np.repeat(_head_skewed(rng, catalog.leaf_item_count[srch_leaf]), n_view)
    in_leaf_item = _item_at(catalog, view_leaf, start_rank + view_pos)
    n_items = len(catalog.item_leaf)
    from_leaf = (rng.random(len(view_srch)) < VIEW_FROM_LEAF_P) & (leaf_count > 0)
    view_item = np.where(from_leaf, in_leaf_item, rng.integers(0, n_items, size=len(view_srch)))
    view_user = srch_user[view_srch]
    match = _leaf_weight(shard, view_user, catalog.item_leaf[view_item]) > 0
    p_view_click = np.where(match, CLICK_MATCH_P, CLICK_OTHER_P) / (1.0 + 0.08 * view_pos)
    clicked = rng.random(len(view_srch)) < p_view_click
    carted = clicked & (rng.random(len(view_srch)) < CART_P)
    buy_mult = BUY_MULTIPLIER[shard.purchase_level[view_user]]
    bought = clicked & (rng.random(len(view_srch)) < np.where(carted, BUY_AFTER_CART_P, BUY_DIRECT_P) * buy_mult)

    # home clicks, from the mixture's leaves
    home_sess = np.repeat(np.arange(n_sess), n_home)
    home_pos = _grouped_arange(n_home)
    home_user = sess_user[home_sess]
    home_leaf = shard.leaf[home_user, _sample_slots(rng, shard.weight[home_user])]
    home_count = catalog.leaf_item_count[home_leaf]
    home_in_leaf = _item_at(catalog, home_leaf, _head_skewed(rng, home_count))
    from_interest = (rng.random(len(home_sess)) < HOME_FROM_INTEREST_P) & (home_count > 0)
    home_item = np.where(from_interest, home_in_leaf, rng.integers(0, n_items, size=len(home_sess)))

    # assemble events; in-session order key: rank(8 bits) phase(2) position(8) sub(2)
    def key(sess, rank, phase, pos, sub):
        return (sess.astype(np.int64) << 20) | (rank << 12) | (phase << 10) | (np.minimum(pos, 255) << 2) | sub

    view_sess = srch_sess[view_srch]
    view_rank = srch_rank[view_srch]
    view_scene = srch_scene[view_srch]
    view_req = srch_req[view_srch]
    home_rank, exit_rank = 254, 255
    parts = [
        # (session, key, type, scene, query, item, request)
        (srch_sess, key(srch_sess, np.minimum(srch_rank, 250), 0, 0, 0), SEARCH, srch_scene, srch_query, -1,
         srch_req),
        (view_sess, key(view_sess, np.minimum(view_rank, 250), 1, view_pos, 0), VIEW, view_scene, -1, view_item,
         view_req),
    ]
    for mask, etype, sub in ((clicked, CLICK, 0), (carted, CART, 1), (bought, BUY, 2)):
        chain_sess = view_sess[mask]
        parts.append((chain_sess, key(chain_sess, np.minimum(view_rank[mask], 250), 2, view_pos[mask], sub), etype,
                      view_scene[mask], -1, view_item[mask], view_req[mask]))
    parts.append((home_sess, key(home_sess, home_rank, 0, home_pos, 0), CLICK, SCENE_HOME, -1, home_item, -1))
    all_sess = np.arange(n_sess)
    parts.append((all_sess, key(all_sess, exit_rank, 0, 0, 0), EXIT, SCENE_OTHER, -1, -1, -1))

    def column(i, dtype):
        return np.concatenate([np.broadcast_to(np.asarray(part[i], dtype=dtype), part[0].shape) for part in parts])

    ev_sess = column(0, np.int64)
    order = np.argsort(column(1, np.int64), kind="stable")
    ev_sess = ev_sess[order]
    ev_type = column(2, np.int8)[order]
    ev_scene = column(3, np.int8)[order]
    ev_query = column(4, np.int64)[order]
    ev_item = column(5, np.int64)[order]
    ev_req = column(6, np.int64)[order]
    n_ev = len(ev_sess)

    # time offsets inside each session (from the session start = exposure time)
    gap_min = np.array([GAP_MIN_S[t] for t in range(len(schemas.EVENT_TYPES))])[ev_type]
    gap_mean = np.array([GAP_MEAN_S[t] for t in range(len(schemas.EVENT_TYPES))])[ev_type]
    hintq_search = (ev_type == SEARCH) & (ev_scene == SCENE_HINTQ)
    gap_min = np.where(hintq_search, HINTQ_SEARCH_GAP[0], gap_min)
    gap_mean = np.where(hintq_search, HINTQ_SEARCH_GAP[1], gap_mean)
    home_click = ev_scene == SCENE_HOME
    gap_min = np.where(home_click, HOME_CLICK_GAP[0], gap_min)
    gap_mean = np.where(home_click, HOME_CLICK_GAP[1], gap_mean)
    gaps = _gaps_us(rng, gap_min, gap_mean)
    events_per_sess = np.bincount(ev_sess, minlength=n_sess)
    sess_first = np.cumsum(events_per_sess) - events_per_sess
    cum = np.cumsum(gaps)
    offset = cum - (cum[sess_first] - gaps[sess_first])[ev_sess]
    duration = offset[sess_first + events_per_sess - 1]

    # lay sessions out in the day: >= 31 min apart, 16 min margins, random slack between them
    avail = DAY_US - 2 * DAY_MARGIN_US - np.maximum(n_sess_user - 1, 0) * SESSION_GAP_US
    busy = np.bincount(sess_user, weights=duration, minlength=shard.size)
    squeeze = np.minimum(1.0, avail / np.maximum(busy, 1.0))
    slack = avail - busy * squeeze
    spacing = rng.exponential(1.0, size=n_sess)
    spacing_total = np.bincount(sess_user, weights=spacing, minlength=shard.size) + rng.exponential(
        1.0, size=shard.size
    )
    sess_len = (duration * squeeze[sess_user]).astype(np.int64)
    user_first = np.cumsum(n_sess_user) - n_sess_user
    before = np.cumsum(sess_len + SESSION_GAP_US) - (sess_len + SESSION_GAP_US)   # sum over earlier sessions
    before -= before[user_first[sess_user]]
    spacing_cum = np.cumsum(spacing)
    first_of_sess = user_first[sess_user]
    spacing_cum -= spacing_cum[first_of_sess] - spacing[first_of_sess]
    sess_start = (day_start_us + DAY_MARGIN_US + before
                  + (slack[sess_user] * spacing_cum / spacing_total[sess_user]).astype(np.int64))
    ev_time = sess_start[ev_sess] + (offset * squeeze[sess_user[ev_sess]]).astype(np.int64)
    if n_ev and not (np.diff(ev_time)[np.diff(ev_sess) == 0] > 0).all():
        raise AssertionError("event times must increase within a session")

    ev_user = sess_user[ev_sess]
    events = pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(ev_user.astype(np.int32))),
            pa.array(ev_time, schemas.TS),
            _take(pa.array(schemas.EVENT_TYPES, pa.string()), ev_type),
            _take(catalog.query_text, ev_query),
            _take(catalog.item_ids, ev_item),
            _take(pa.array(schemas.SCENES, pa.string()), ev_scene),
            _take(requests, ev_req),
        ],
        schema=schemas.BEHAVIOR_EVENTS,
    )

    exp_time = sess_start[exp_sess]
    exp_users = shard.user_ids.take(pa.array(exp_user.astype(np.int32)))
    shown = catalog.query_text.take(pa.array(slot_query.astype(np.int32)))
    exposures = pa.Table.from_arrays(
        [
            exp_req,
            exp_users,
            pa.array(exp_time, schemas.TS),
            _list_array(np.arange(n_exp + 1) * 3, shown),
            _list_array(np.arange(n_exp + 1) * 3, pa.array(score.astype(np.float32), pa.float32())),
            _take(catalog.query_text, exp_clicked_query),
        ],
        schema=schemas.HINTQ_EXPOSURES,
    )
    slot_clicked = np.zeros((n_exp, 3), dtype=bool)
    slot_clicked[np.flatnonzero(exp_clicked), clicked_pos[exp_clicked]] = True
    impressions = pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(slot_user.astype(np.int32))),
            pa.array(np.repeat(exp_time, 3), schemas.TS),
            shown,
            pa.array(np.tile(np.arange(3, dtype=np.int32), n_exp), pa.int32()),
            pa.array(slot_clicked.ravel(), pa.bool_()),
        ],
        schema=schemas.QUERY_IMPRESSIONS,
    )
    return {
        "behavior_events": events,
        "hintq_exposures": exposures,
        "query_impressions": impressions,
        "true_interests": true_interest_table(shard, catalog),
    }


def _request_ids(kind: str, ds_tag: str, user_ids: pa.Array, users: np.ndarray) -> pa.Array:
    """``<kind><yyyymmdd>-<user_id>-<k>``, k counting each user's requests of this kind."""
    if len(users) == 0:
        return pa.array([], pa.string())
    counts = np.bincount(users)
    counts = counts[counts > 0]
    seq = pa.array(_grouped_arange(counts)).cast(pa.string())
    return pc.binary_join_element_wise(
        pa.scalar(f"{kind}{ds_tag}"), user_ids.take(pa.array(users.astype(np.int32))), seq, "-"
    )


def true_interest_table(shard: UserShard, catalog: Catalog) -> pa.Table:
    """The day's interest mixture per user (the day is the partition, not a column)."""
    rows, slots = np.nonzero(shard.leaf >= 0)
    return pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(rows.astype(np.int32))),
            _take(pa.array(catalog.leaf_names, pa.string()), shard.leaf[rows, slots]),
            pa.array(shard.weight[rows, slots].astype(np.float32), pa.float32()),
        ],
        schema=schemas.TRUE_INTERESTS,
    )


# --- writing ------------------------------------------------------------------------------
class PartitionWriter:
    """Streams tables into ``part-NNNNN.parquet`` files: row groups of ~chunk_rows, rolling files."""

    def __init__(self, folder: Path, schema: pa.Schema, chunk_rows: int, rows_per_file: int | None = None):
        self.folder, self.schema, self.chunk_rows = Path(folder), schema, max(1, int(chunk_rows))
        self.rows_per_file = rows_per_file or 8 * self.chunk_rows
        self.rows = 0
        self.files: list[str] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        while table.num_rows:
            if self._writer is None:
                self._open()
            piece = table.slice(0, self.rows_per_file - self._rows_in_file)
            table = table.slice(piece.num_rows)
            self._writer.write_table(piece, row_group_size=self.chunk_rows)
            self.rows += piece.num_rows
            self._rows_in_file += piece.num_rows
            if self._rows_in_file >= self.rows_per_file:
                self._writer.close()
                self._writer = None

    def _open(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        self.files.append(name)
        self._writer = pq.ParquetWriter(self.folder / name, self.schema)
        self._rows_in_file = 0

    def close(self) -> None:
        self._flush()
        if not self.files:                 # an empty partition still carries the schema
            self._open()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


DAY_TABLES = ("behavior_events", "hintq_exposures", "query_impressions", "true_interests")


def _shard_users(events_per_user_day: float) -> int:
    return int(np.clip(SHARD_TARGET_EVENTS // max(events_per_user_day, 1.0), 256, 8192))


def generate(
    data_root: str | Path,
    start_ds: str,
    days: int,
    n_users: int,
    n_items: int,
    events_per_user_day: float,
    seed: int,
    image_dim: int = 16,
    chunk_rows: int = 500_000,
    *,
    only_ds: list[str] | None = None,
    bad_row_rate: float = 0.0,
) -> dict[str, dict[str, int]]:
    """Write the raw partitions for ``days`` days from ``start_ds``; return rows per table per ds.

    ``only_ds`` writes just those dates (and the snapshots), replaying interest drift for the
    others, so a single day can be regenerated exactly. ``bad_row_rate`` > 0 corrupts that share
    of behaviour events (``inject_bad_rows``) so the ETL's quarantine has something to catch.
    """
    check_ds(start_ds)
    if days < 1 or n_users < 1 or n_items < 1 or events_per_user_day < 0 or image_dim < 1:
        raise ValueError("days, n_users, n_items and image_dim must be >= 1; events_per_user_day >= 0")
    all_days = ds_range(start_ds, days)
    wanted = set(all_days if only_ds is None else only_ds)
    if not wanted <= set(all_days):
        raise ValueError(f"only_ds {sorted(wanted - set(all_days))} outside {start_ds} + {days} days")
    params = {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "start_ds": start_ds, "days": days,
        "n_users": n_users, "n_items": n_items, "events_per_user_day": events_per_user_day,
        "image_dim": image_dim, "bad_row_rate": bad_row_rate,
    }
    counts: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    catalog = build_catalog(n_items, seed, image_dim)
    per_shard = _shard_users(events_per_user_day)
    shards = [
        make_user_shard(catalog, seed, i, first, min(per_shard, n_users - first), n_users)
        for i, first in enumerate(range(0, n_users, per_shard))
    ]
    for table, rows in (("items", [catalog.items_table]), ("users", [s.table for s in shards])):
        _write_partition(data_root, table, start_ds, rows, chunk_rows, params, counts)
    for shard in shards:
        shard.table = None

    for day_index, ds in enumerate(all_days):
        ordinal = dt.date.fromisoformat(ds).toordinal()
        if day_index > 0:
            for shard in shards:
                drift_interests(shard, catalog, seed, ordinal)
        if ds not in wanted:
            continue
        t_day = time.perf_counter()
        manifests = {t: {"table": t, "ds": ds, "params": params} for t in DAY_TABLES}
        with contextlib.ExitStack() as stack:
            writers = {}
            for t in DAY_TABLES:
                tmp = stack.enter_context(atomic_partition(partition_path(data_root, "raw", t, ds), manifests[t]))
                writers[t] = PartitionWriter(tmp, schemas.arrow_schema(t), chunk_rows)
            for shard in shards:
                tables = generate_shard_day(catalog, shard, ds, seed, events_per_user_day)
                if bad_row_rate > 0:
                    rng = _rng(seed, _BAD_ROWS, ordinal, shard.index)
                    tables["behavior_events"] = inject_bad_rows(tables["behavior_events"], bad_row_rate, rng)
                for t, tbl in tables.items():
                    writers[t].write(tbl)
                logger.debug("%s shard %d: %d events", ds, shard.index, tables["behavior_events"].num_rows)
            for t, writer in writers.items():
                writer.close()
                manifests[t].update(rows=writer.rows, files=writer.files)
                counts.setdefault(t, {})[ds] = writer.rows
        logger.info(
            "%s: %d events, %d exposures, %d impressions in %.1fs", ds, counts["behavior_events"][ds],
            counts["hintq_exposures"][ds], counts["query_impressions"][ds], time.perf_counter() - t_day,
        )
    total = sum(counts.get("behavior_events", {}).values())
    logger.info("generated %d events for %d users over %d day(s) in %.1fs", total, n_users, len(wanted),
                time.perf_counter() - t0)
    return counts


def _write_partition(data_root, table: str, ds: str, tables: list[pa.Table], chunk_rows: int, params: dict,
                     counts: dict) -> None:
    manifest = {"table": table, "ds": ds, "params": params}
    with atomic_partition(partition_path(data_root, "raw", table, ds), manifest) as tmp:
        writer = PartitionWriter(tmp, schemas.arrow_schema(table), chunk_rows)
        for t in tables:
            writer.write(t)
        writer.close()
        manifest.update(rows=writer.rows, files=writer.files)
    counts.setdefault(table, {})[ds] = writer.rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(prog="python -m sources.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline YAML (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--start-ds", default=None)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--events-per-user-day", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--image-dim", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=None)
    parser.add_argument("--only-ds", action="append", default=None, help="regenerate only this date (repeatable)")
    parser.add_argument("--bad-row-rate", type=float, default=0.0,
                        help="share of behaviour events to corrupt for quarantine drills (default 0)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.profile)
    syn = cfg["synthetic"]

    def pick(value, key):
        return syn[key] if value is None else value

    counts = generate(
        data_root=args.data_root or cfg["data_root"],
        start_ds=str(pick(args.start_ds, "start_ds")),
        days=int(pick(args.days, "days")),
        n_users=int(pick(args.users, "n_users")),
        n_items=int(pick(args.items, "n_items")),
        events_per_user_day=float(pick(args.events_per_user_day, "events_per_user_day")),
        seed=int(pick(args.seed, "seed")),
        image_dim=int(pick(args.image_dim, "image_dim")),
        chunk_rows=int(pick(args.chunk_rows, "chunk_rows")),
        only_ds=args.only_ds,
        bad_row_rate=args.bad_row_rate,
    )
    logger.info("rows per table: %s", {t: sum(v.values()) for t, v in counts.items()})
    return counts


if __name__ == "__main__":
    main()
