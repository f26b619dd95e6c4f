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
   0.04 without, times a purchase-level multiplier). The views of a search are its result page:
   one ``item_impressions`` row each (the search's request and time, the view's position,
   ``clicked`` = the view was clicked); no new draw, so the other tables do not change.
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

Modules: ``world`` (category tree, query vocabulary, catalogue), ``users`` (profiles, interests,
drift), ``day`` (one shard-day of events), ``impressions`` (its result pages), ``writer``
(streaming Parquet), ``generator`` (``generate`` and the ``python -m sources.synthetic`` entry
point), ``sampling`` (seeded generators and array helpers).
"""

from sources.synthetic.day import (
    EVENTS_OUTSIDE_SEARCHES,
    EVENTS_PER_SEARCH,
    MAX_SESSIONS,
    TARGET_SESSIONS,
    expected_capped_sessions,
    generate_shard_day,
    session_plan,
)
from sources.synthetic.generator import (
    BAD_ROW_KINDS,
    DAY_TABLES,
    GENERATOR,
    GENERATOR_VERSION,
    generate,
    inject_bad_rows,
    main,
)
from sources.synthetic.users import UserShard, drift_interests, make_user_shard, true_interest_table
from sources.synthetic.world import Catalog, CategoryTree, build_catalog, category_tree, query_vocabulary
from sources.synthetic.writer import PartitionWriter

__all__ = [
    "BAD_ROW_KINDS", "DAY_TABLES", "EVENTS_OUTSIDE_SEARCHES", "EVENTS_PER_SEARCH", "GENERATOR", "GENERATOR_VERSION",
    "MAX_SESSIONS", "TARGET_SESSIONS", "Catalog", "CategoryTree", "PartitionWriter", "UserShard", "build_catalog",
    "category_tree", "drift_interests", "expected_capped_sessions", "generate", "generate_shard_day",
    "inject_bad_rows", "main", "make_user_shard", "query_vocabulary", "session_plan", "true_interest_table",
]
