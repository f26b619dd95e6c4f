"""The ``item_impressions`` of a shard-day: every search's result page, as its ``view`` events show it.

A search shows 4-8 items (``day.draw_views``): mostly consecutive popularity ranks of the query's
leaf, the rest uniform; each is clicked with probability ``0.28 / (1 + 0.08 * position)`` when
its leaf is in the user's true interest mixture of the day, else ``0.04 / (1 + 0.08 * position)``.
That page *is* the result page: one ``item_impressions`` row per view, at the view's 0-based
``position``, with ``clicked`` true exactly when the view has a ``click`` event of the same
request. The row's ``event_time`` is the search's (the page is served with the request), its
``request_id`` the search's (``s…`` typed, ``h…`` from a clicked HintQ exposure).

Nothing here draws a random number: the table is a function of arrays the day already drew, so
every other table of the day is unchanged by its presence (same seed, same bytes).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from common import schemas
from sources.synthetic.users import UserShard
from sources.synthetic.world import Catalog


def search_times(ev_type: np.ndarray, ev_time: np.ndarray, search_code: int, n_searches: int) -> np.ndarray:
    """The time of each search, in the searches' order (session, rank): the day's events are
    sorted by (session, rank, phase, ...) and a search is its rank's phase 0, so the search events
    appear in the order of the searches.

    >>> search_times(np.array([0, 4, 0, 4]), np.array([10, 11, 20, 21]), 0, 2).tolist()
    [10, 20]
    """
    times = ev_time[ev_type == search_code]
    if len(times) != n_searches:
        raise AssertionError(f"{len(times)} search events for {n_searches} searches")
    return times


def item_impressions_table(catalog: Catalog, shard: UserShard, search_user: np.ndarray, search_time: np.ndarray,
                           search_request: np.ndarray, requests: pa.Array, view_search: np.ndarray,
                           view_pos: np.ndarray, view_item: np.ndarray, view_clicked: np.ndarray) -> pa.Table:
    """One row per view: ``(request of its search, user, search time, item, position, clicked)``."""
    user = search_user[view_search]
    return pa.Table.from_arrays(
        [
            requests.take(pa.array(search_request[view_search].astype(np.int32))),
            shard.user_ids.take(pa.array(user.astype(np.int32))),
            pa.array(search_time[view_search], schemas.TS),
            catalog.item_ids.take(pa.array(view_item.astype(np.int32))),
            pa.array(view_pos.astype(np.int32), pa.int32()),
            pa.array(np.asarray(view_clicked, dtype=bool), pa.bool_()),
        ],
        schema=schemas.ITEM_IMPRESSIONS,
    )
