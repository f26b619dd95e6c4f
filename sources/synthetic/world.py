"""The fixed world: the category tree, its query vocabulary, the user profile priors, and the
seeded item catalogue (see the ``sources.synthetic`` docstring, **Catalogue** and **Items**)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common import schemas
from sources.synthetic.sampling import (
    PURPOSE_ITEMS,
    list_array,
    padded_ids,
    seeded_rng,
    take_or_null,
    unit_rows,
)

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
    rng = seeded_rng(seed, PURPOSE_ITEMS)
    first = np.arange(min(n_items, n_leaves))
    rest = rng.integers(0, n_leaves, size=max(n_items - n_leaves, 0))
    item_leaf = np.concatenate([first, rest]).astype(np.int64)[rng.permutation(n_items)]
    order = np.lexsort((rng.random(n_items), item_leaf))          # by leaf, random popularity rank
    leaf_item_count = np.bincount(item_leaf, minlength=n_leaves)
    leaf_item_start = np.cumsum(leaf_item_count) - leaf_item_count

    top_c = unit_rows(rng.standard_normal((len(tops), image_dim)))
    sub_c = unit_rows(rng.standard_normal((tree.n_subs, image_dim)))
    leaf_c = unit_rows(rng.standard_normal((n_leaves, image_dim)))
    noise = unit_rows(rng.standard_normal((n_items, image_dim)))
    emb = (0.5 * top_c[leaf_top[item_leaf]] + 0.7 * sub_c[tree.leaf_sub[item_leaf]]
           + 0.9 * leaf_c[item_leaf] + 0.6 * noise)
    emb = unit_rows(emb).astype(np.float32)
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

    item_ids = pa.array(padded_ids("i", n_items), pa.string())
    items_table = pa.Table.from_arrays(
        [
            item_ids,
            pa.array(titles, pa.string()),
            take_or_null(pa.array(tree.leaf_path, pa.string()), item_leaf),
            take_or_null(pa.array(tree.leaf_names, pa.string()), item_leaf),
            pa.array(brands, pa.string()),
            pa.array(tags, schemas.STR_LIST),
            pa.array(price, pa.float64()),
            list_array(np.arange(n_items + 1) * image_dim, pa.array(emb.ravel(), pa.float32())),
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

