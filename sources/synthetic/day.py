"""One day of one shard of users: sessions, HintQ exposures, searches, views and their click
chains, home clicks, the exit, then timestamps (see the ``sources.synthetic`` docstring,
**A day**). Each step is a function of the previous steps' arrays; the random draws happen in
one fixed order from the shard-day's generator, so the tables depend only on the seed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import schemas
from sources.synthetic.impressions import item_impressions_table, search_times
from sources.synthetic.sampling import (
    PURPOSE_EVENTS,
    grouped_arange,
    head_skewed,
    list_array,
    sample_slots,
    seeded_rng,
    take_or_null,
)
from sources.synthetic.users import UserShard, true_interest_table
from sources.synthetic.world import BUY_MULTIPLIER, Catalog

# --- behaviour parameters (see the package docstring) ---------------------------------------
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


def expected_capped_sessions(rate: float) -> float:
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
        low, high = (mid, high) if expected_capped_sessions(mid) < sessions else (low, mid)
    return 0.5 * (low + high), extra


# --- the steps of a shard-day, in the order they draw ------------------------------------------
@dataclass
class Sessions:
    """The shard-day's sessions, ordered by (user, rank)."""

    per_user: np.ndarray         # (n_users,) sessions of each user
    user: np.ndarray             # (n_sess,) user row of each session
    has_hintq: np.ndarray        # (n_sess,) starts with a HintQ exposure
    n_search: np.ndarray         # (n_sess,) searches
    n_home: np.ndarray           # (n_sess,) home clicks

    @property
    def size(self) -> int:
        return len(self.user)


@dataclass
class Exposures:
    """HintQ exposures (one per session that has one) and their 3 slots each, in shown order."""

    session: np.ndarray          # (n_exp,)
    user: np.ndarray             # (n_exp,)
    slot_user: np.ndarray        # (n_exp * 3,)
    slot_query: np.ndarray       # (n_exp * 3,) query index, ranker-score order within an exposure
    score: np.ndarray            # (n_exp * 3,)
    clicked: np.ndarray          # (n_exp,) some slot clicked
    clicked_pos: np.ndarray      # (n_exp,) first clicked slot (0 when none)
    clicked_query: np.ndarray    # (n_exp,) query index of the click, -1 when none

    @property
    def size(self) -> int:
        return len(self.session)


@dataclass
class Searches:
    """Searches, ordered by (session, rank); the first search of a clicked exposure is its query."""

    session: np.ndarray
    rank: np.ndarray
    user: np.ndarray
    from_hintq: np.ndarray       # the search is the clicked HintQ query (scene hintq)
    query: np.ndarray
    leaf: np.ndarray
    scene: np.ndarray

    @property
    def size(self) -> int:
        return len(self.session)


@dataclass
class Views:
    """Items shown by each search and their click / cart / buy chain."""

    search: np.ndarray           # search row of each view
    pos: np.ndarray              # position in the search's result list
    item: np.ndarray
    clicked: np.ndarray
    carted: np.ndarray
    bought: np.ndarray


@dataclass
class HomeClicks:
    """Home-feed clicks (no request id), ``pos``-th of their session."""

    session: np.ndarray
    pos: np.ndarray
    item: np.ndarray


@dataclass
class Events:
    """All events of the shard-day, in session order (codes and row indices; -1 = null)."""

    session: np.ndarray
    type: np.ndarray
    scene: np.ndarray
    query: np.ndarray
    item: np.ndarray
    request: np.ndarray


def _leaf_weight(shard: UserShard, users: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Mixture weight of ``leaves[i]`` for user ``users[i]`` (0 when not an interest)."""
    hit = shard.leaf[users] == leaves[:, None]
    return (shard.weight[users] * hit).sum(axis=1)


def _item_at(catalog: Catalog, leaves: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The item at popularity rank ``ranks`` (wrapping) of each leaf; meaningless for empty leaves."""
    count = catalog.leaf_item_count[leaves]
    index = catalog.leaf_item_start[leaves] + ranks % np.maximum(count, 1)
    return catalog.items_by_leaf[np.minimum(index, len(catalog.items_by_leaf) - 1)]


def _gaps_us(rng: np.random.Generator, minimum: np.ndarray, mean: np.ndarray) -> np.ndarray:
    seconds = np.minimum(minimum + rng.exponential(1.0, size=len(minimum)) * mean, GAP_CAP_S)
    return (seconds * 1_000_000).astype(np.int64)


def draw_sessions(rng: np.random.Generator, shard: UserShard, sessions_rate: float, extra_searches: float) -> Sessions:
    """Sessions per user (Poisson in the user's activity, capped) and each session's shape."""
    n_sess_user = np.minimum(rng.poisson(shard.activity * sessions_rate), MAX_SESSIONS)
    sess_user = np.repeat(np.arange(shard.size), n_sess_user)
    n_sess = len(sess_user)
    has_hintq = rng.random(n_sess) < HINTQ_P
    n_search = np.minimum(1 + rng.poisson(extra_searches, size=n_sess), MAX_SEARCHES)
    has_home = rng.random(n_sess) < HOME_P
    n_home = np.where(has_home, 1 + rng.poisson(HOME_EXTRA_MEAN, size=n_sess), 0)
    return Sessions(n_sess_user, sess_user, has_hintq, n_search, n_home)


def draw_exposures(rng: np.random.Generator, catalog: Catalog, shard: UserShard, sessions: Sessions) -> Exposures:
    """HintQ exposures: 3 distinct queries, shown in ranker-score order, and their clicks."""
    exp_sess = np.flatnonzero(sessions.has_hintq)
    exp_user = sessions.user[exp_sess]
    n_exp = len(exp_sess)
    slot_user = np.repeat(exp_user, 3)
    relevant = rng.random(n_exp * 3) < HINTQ_RELEVANT_P
    mix_leaf = shard.leaf[slot_user, sample_slots(rng, shard.weight[slot_user])]
    slot_leaf = np.where(relevant, mix_leaf, rng.integers(0, catalog.n_leaves, size=n_exp * 3))
    head = np.repeat(head_skewed(rng, np.full(n_exp, 4)), 3) + np.tile(np.arange(3), n_exp)
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
    return Exposures(exp_sess, exp_user, slot_user, slot_query, score, exp_clicked, clicked_pos, exp_clicked_query)


def draw_searches(rng: np.random.Generator, catalog: Catalog, shard: UserShard, sessions: Sessions,
                  exposures: Exposures) -> Searches:
    """Searches: the clicked HintQ query first, then typed queries from the mixture (exploration,
    refinements that keep the previous leaf), each skewed to the head of its leaf's vocabulary."""
    n_leaves = catalog.n_leaves
    sess_hintq_query = np.full(sessions.size, -1, dtype=np.int64)
    sess_hintq_query[exposures.session] = exposures.clicked_query
    srch_sess = np.repeat(np.arange(sessions.size), sessions.n_search)
    srch_rank = grouped_arange(sessions.n_search)
    srch_user = sessions.user[srch_sess]
    n_srch = len(srch_sess)
    srch_hintq = (srch_rank == 0) & (sess_hintq_query[srch_sess] >= 0)
    leaf = shard.leaf[srch_user, sample_slots(rng, shard.weight[srch_user])]
    leaf = np.where(rng.random(n_srch) < EXPLORE_P, rng.integers(0, n_leaves, size=n_srch), leaf)
    hintq_query = sess_hintq_query[srch_sess]
    leaf = np.where(srch_hintq, catalog.query_leaf[np.maximum(hintq_query, 0)], leaf)
    refine = (srch_rank > 0) & (rng.random(n_srch) < REFINE_SAME_LEAF_P)
    leaf = leaf[np.maximum.accumulate(np.where(refine, 0, np.arange(n_srch)))]   # keep the previous leaf
    srch_query = catalog.leaf_query_start[leaf] + head_skewed(rng, catalog.leaf_query_count[leaf])
    srch_query = np.where(srch_hintq, hintq_query, srch_query)
    srch_leaf = catalog.query_leaf[srch_query]
    srch_scene = np.where(srch_hintq, SCENE_HINTQ, SCENE_SEARCH)
    return Searches(srch_sess, srch_rank, srch_user, srch_hintq, srch_query, srch_leaf, srch_scene)


def _numbered_requests(kind: str, ds_tag: str, user_ids: pa.Array, users: np.ndarray) -> pa.Array:
    """``<kind><yyyymmdd>-<user_id>-<k>``, k counting each user's requests of this kind."""
    if len(users) == 0:
        return pa.array([], pa.string())
    counts = np.bincount(users)
    counts = counts[counts > 0]
    seq = pa.array(grouped_arange(counts)).cast(pa.string())
    return pc.binary_join_element_wise(
        pa.scalar(f"{kind}{ds_tag}"), user_ids.take(pa.array(users.astype(np.int32))), seq, "-"
    )

def assign_requests(ds: str, shard: UserShard, sessions: Sessions, exposures: Exposures,
                    searches: Searches) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """``(requests, exposure requests, request row of each search)``: exposures are
    ``h<ds>-<user>-<k>``, typed searches ``s<ds>-<user>-<k>``; a search from HintQ shares its
    exposure's request."""
    ds_tag = ds.replace("-", "")
    sess_exposure = np.full(sessions.size, -1, dtype=np.int64)
    sess_exposure[exposures.session] = np.arange(exposures.size)
    typed = ~searches.from_hintq
    typed_user = searches.user[typed]
    exp_req = _numbered_requests("h", ds_tag, shard.user_ids, exposures.user)
    typed_req = _numbered_requests("s", ds_tag, shard.user_ids, typed_user)
    requests = pa.concat_arrays([exp_req, typed_req])
    srch_req = np.empty(searches.size, dtype=np.int64)
    srch_req[typed] = exposures.size + np.arange(int(typed.sum()))
    srch_req[searches.from_hintq] = sess_exposure[searches.session[searches.from_hintq]]
    return requests, exp_req, srch_req


def draw_views(rng: np.random.Generator, catalog: Catalog, shard: UserShard, searches: Searches) -> Views:
    """4-8 items per search, mostly consecutive popularity ranks of the query's leaf, and the
    click / cart / buy chain of each."""
    n_view = rng.integers(VIEWS_MIN, VIEWS_MAX + 1, size=searches.size)
    view_srch = np.repeat(np.arange(searches.size), n_view)
    view_pos = grouped_arange(n_view)
    view_leaf = searches.leaf[view_srch]
    leaf_count = catalog.leaf_item_count[view_leaf]
    start_rank = np.repeat(head_skewed(rng, catalog.leaf_item_count[searches.leaf]), n_view)
    in_leaf_item = _item_at(catalog, view_leaf, start_rank + view_pos)
    n_items = len(catalog.item_leaf)
    from_leaf = (rng.random(len(view_srch)) < VIEW_FROM_LEAF_P) & (leaf_count > 0)
    view_item = np.where(from_leaf, in_leaf_item, rng.integers(0, n_items, size=len(view_srch)))
    view_user = searches.user[view_srch]
    match = _leaf_weight(shard, view_user, catalog.item_leaf[view_item]) > 0
    p_view_click = np.where(match, CLICK_MATCH_P, CLICK_OTHER_P) / (1.0 + 0.08 * view_pos)
    clicked = rng.random(len(view_srch)) < p_view_click
    carted = clicked & (rng.random(len(view_srch)) < CART_P)
    buy_mult = BUY_MULTIPLIER[shard.purchase_level[view_user]]
    bought = clicked & (rng.random(len(view_srch)) < np.where(carted, BUY_AFTER_CART_P, BUY_DIRECT_P) * buy_mult)
    return Views(view_srch, view_pos, view_item, clicked, carted, bought)


def draw_home_clicks(rng: np.random.Generator, catalog: Catalog, shard: UserShard, sessions: Sessions) -> HomeClicks:
    """Home clicks, mostly on items of the mixture's leaves."""
    home_sess = np.repeat(np.arange(sessions.size), sessions.n_home)
    home_pos = grouped_arange(sessions.n_home)
    home_user = sessions.user[home_sess]
    home_leaf = shard.leaf[home_user, sample_slots(rng, shard.weight[home_user])]
    home_count = catalog.leaf_item_count[home_leaf]
    home_in_leaf = _item_at(catalog, home_leaf, head_skewed(rng, home_count))
    n_items = len(catalog.item_leaf)
    from_interest = (rng.random(len(home_sess)) < HOME_FROM_INTEREST_P) & (home_count > 0)
    home_item = np.where(from_interest, home_in_leaf, rng.integers(0, n_items, size=len(home_sess)))
    return HomeClicks(home_sess, home_pos, home_item)


def order_events(n_sess: int, searches: Searches, search_request: np.ndarray, views: Views,
                 home: HomeClicks) -> Events:
    """Every event of the day in session order; in-session key: rank(8 bits) phase(2) position(8) sub(2)."""

    def key(sess, rank, phase, pos, sub):
        return (sess.astype(np.int64) << 20) | (rank << 12) | (phase << 10) | (np.minimum(pos, 255) << 2) | sub

    srch_sess, srch_rank = searches.session, searches.rank
    view_sess = srch_sess[views.search]
    view_rank = srch_rank[views.search]
    view_scene = searches.scene[views.search]
    view_req = search_request[views.search]
    view_pos, view_item = views.pos, views.item
    home_rank, exit_rank = 254, 255
    parts = [
        # (session, key, type, scene, query, item, request)
        (srch_sess, key(srch_sess, np.minimum(srch_rank, 250), 0, 0, 0), SEARCH, searches.scene, searches.query, -1,
         search_request),
        (view_sess, key(view_sess, np.minimum(view_rank, 250), 1, view_pos, 0), VIEW, view_scene, -1, view_item,
         view_req),
    ]
    for mask, etype, sub in ((views.clicked, CLICK, 0), (views.carted, CART, 1), (views.bought, BUY, 2)):
        chain_sess = view_sess[mask]
        parts.append((chain_sess, key(chain_sess, np.minimum(view_rank[mask], 250), 2, view_pos[mask], sub), etype,
                      view_scene[mask], -1, view_item[mask], view_req[mask]))
    parts.append((home.session, key(home.session, home_rank, 0, home.pos, 0), CLICK, SCENE_HOME, -1, home.item, -1))
    all_sess = np.arange(n_sess)
    parts.append((all_sess, key(all_sess, exit_rank, 0, 0, 0), EXIT, SCENE_OTHER, -1, -1, -1))

    def column(i, dtype):
        return np.concatenate([np.broadcast_to(np.asarray(part[i], dtype=dtype), part[0].shape) for part in parts])

    ev_sess = column(0, np.int64)
    order = np.argsort(column(1, np.int64), kind="stable")
    return Events(
        session=ev_sess[order],
        type=column(2, np.int8)[order],
        scene=column(3, np.int8)[order],
        query=column(4, np.int64)[order],
        item=column(5, np.int64)[order],
        request=column(6, np.int64)[order],
    )


def session_offsets(rng: np.random.Generator, events: Events, n_sess: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offset of each event from its session's start, duration of each session)``, in µs, from
    type-dependent gaps."""
    ev_type, ev_scene, ev_sess = events.type, events.scene, events.session
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
    return offset, duration


def session_starts(rng: np.random.Generator, shard: UserShard, sessions: Sessions, duration: np.ndarray,
                   day_start_us: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start of each session in µs, time squeeze of each user)``: sessions >= 31 min apart,
    16 min margins, random slack between them; a too-long day is compressed."""
    n_sess_user, sess_user, n_sess = sessions.per_user, sessions.user, sessions.size
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
    return sess_start, squeeze


# --- the tables ---------------------------------------------------------------------------------
def events_table(catalog: Catalog, shard: UserShard, sessions: Sessions, events: Events, ev_time: np.ndarray,
                 requests: pa.Array) -> pa.Table:
    """The ``behavior_events`` rows (contract ``schemas.BEHAVIOR_EVENTS``)."""
    ev_user = sessions.user[events.session]
    return pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(ev_user.astype(np.int32))),
            pa.array(ev_time, schemas.TS),
            take_or_null(pa.array(schemas.EVENT_TYPES, pa.string()), events.type),
            take_or_null(catalog.query_text, events.query),
            take_or_null(catalog.item_ids, events.item),
            take_or_null(pa.array(schemas.SCENES, pa.string()), events.scene),
            take_or_null(requests, events.request),
        ],
        schema=schemas.BEHAVIOR_EVENTS,
    )


def exposure_tables(catalog: Catalog, shard: UserShard, exposures: Exposures, exp_req: pa.Array,
                    sess_start: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """``(hintq_exposures, query_impressions)``; an exposure is shown at its session's start."""
    n_exp = exposures.size
    exp_time = sess_start[exposures.session]
    exp_users = shard.user_ids.take(pa.array(exposures.user.astype(np.int32)))
    shown = catalog.query_text.take(pa.array(exposures.slot_query.astype(np.int32)))
    hintq = pa.Table.from_arrays(
        [
            exp_req,
            exp_users,
            pa.array(exp_time, schemas.TS),
            list_array(np.arange(n_exp + 1) * 3, shown),
            list_array(np.arange(n_exp + 1) * 3, pa.array(exposures.score.astype(np.float32), pa.float32())),
            take_or_null(catalog.query_text, exposures.clicked_query),
        ],
        schema=schemas.HINTQ_EXPOSURES,
    )
    slot_clicked = np.zeros((n_exp, 3), dtype=bool)
    slot_clicked[np.flatnonzero(exposures.clicked), exposures.clicked_pos[exposures.clicked]] = True
    impressions = pa.Table.from_arrays(
        [
            shard.user_ids.take(pa.array(exposures.slot_user.astype(np.int32))),
            pa.array(np.repeat(exp_time, 3), schemas.TS),
            shown,
            pa.array(np.tile(np.arange(3, dtype=np.int32), n_exp), pa.int32()),
            pa.array(slot_clicked.ravel(), pa.bool_()),
        ],
        schema=schemas.QUERY_IMPRESSIONS,
    )
    return hintq, impressions


def generate_shard_day(
    catalog: Catalog, shard: UserShard, ds: str, seed: int, events_per_user_day: float
) -> dict[str, pa.Table]:
    """All event tables of one day for one shard of users (plus that day's true interests); the
    result pages (``item_impressions``) are the searches' views (:mod:`sources.synthetic.impressions`)."""
    day = dt.date.fromisoformat(ds)
    rng = seeded_rng(seed, PURPOSE_EVENTS, day.toordinal(), shard.index)
    day_start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000
    sessions_rate, extra_searches = session_plan(events_per_user_day)

    sessions = draw_sessions(rng, shard, sessions_rate, extra_searches)
    exposures = draw_exposures(rng, catalog, shard, sessions)
    searches = draw_searches(rng, catalog, shard, sessions, exposures)
    requests, exp_req, search_request = assign_requests(ds, shard, sessions, exposures, searches)
    views = draw_views(rng, catalog, shard, searches)
    home = draw_home_clicks(rng, catalog, shard, sessions)
    events = order_events(sessions.size, searches, search_request, views, home)

    offset, duration = session_offsets(rng, events, sessions.size)
    sess_start, squeeze = session_starts(rng, shard, sessions, duration, day_start_us)
    ev_time = sess_start[events.session] + (offset * squeeze[sessions.user[events.session]]).astype(np.int64)
    if len(ev_time) and not (np.diff(ev_time)[np.diff(events.session) == 0] > 0).all():
        raise AssertionError("event times must increase within a session")

    hintq, impressions = exposure_tables(catalog, shard, exposures, exp_req, sess_start)
    srch_time = search_times(events.type, ev_time, SEARCH, searches.size)
    return {
        "behavior_events": events_table(catalog, shard, sessions, events, ev_time, requests),
        "hintq_exposures": hintq,
        "query_impressions": impressions,
        "item_impressions": item_impressions_table(catalog, shard, searches.user, srch_time, search_request, requests,
                                                   views.search, views.pos, views.item, views.clicked),
        "true_interests": true_interest_table(shard, catalog),
    }
