"""Every raw and derived table's schema, defined once as a pyarrow schema.

``arrow_schema(name)`` serves pyarrow writers (the synthetic source, the adapters);
``spark_schema(name)`` converts the same definition for Spark readers and writers, so the two
sides can never drift. Raw columns are all nullable on purpose: a null id is a data-quality
problem for ``jobs.validate`` to quarantine with a reason, not a reader crash.

Every table is stored as ``<area>/<table>/ds=YYYY-MM-DD/`` (:mod:`common.paths`): the date is
the Hive partition column :data:`PARTITION_COLUMN`, so no schema here may have a column of that
name (pandas, pyarrow.dataset, DuckDB and Spark add it from the folder; a column of the same name
in the files would clash with it). A table that needs another date inside its rows names it
differently (u2q's ``run_ds``). :data:`UNIQUE_KEYS` gives each table's key within a partition
and :data:`COLUMN_DOCS` the meaning of each export column (``export.docs`` renders both).
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
STR_LIST = pa.list_(pa.string())
FLOAT_LIST = pa.list_(pa.float32())

#: The Hive partition column of every table (``ds=YYYY-MM-DD`` folders); never a file column.
PARTITION_COLUMN = "ds"

EVENT_TYPES = ("search", "click", "cart", "buy", "view", "exit")
ITEM_EVENT_TYPES = ("click", "cart", "buy", "view")
SCENES = ("search", "hintq", "home", "other")

# --- raw contract ------------------------------------------------------------------------
BEHAVIOR_EVENTS = pa.schema(
    [
        ("user_id", pa.string()),
        ("event_time", TS),
        ("event_type", pa.string()),
        ("query", pa.string()),
        ("item_id", pa.string()),
        ("scene", pa.string()),
        ("request_id", pa.string()),
    ]
)
HINTQ_EXPOSURES = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("event_time", TS),
        ("shown_queries", STR_LIST),
        ("ranker_scores", FLOAT_LIST),
        ("clicked_query", pa.string()),
    ]
)
QUERY_IMPRESSIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("event_time", TS),
        ("query", pa.string()),
        ("position", pa.int32()),
        ("clicked", pa.bool_()),
    ]
)
#: A search result page: one row per item shown by a request, at its 0-based ``position``;
#: ``clicked`` whether the user clicked it. Sources without result pages write no partition (an
#: absent partition means "no impressions" to every consumer).
ITEM_IMPRESSIONS = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("event_time", TS),
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("clicked", pa.bool_()),
    ]
)
ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category_path", pa.string()),
        ("leaf_category", pa.string()),
        ("brand", pa.string()),
        ("tags", STR_LIST),
        ("price", pa.float64()),
        ("image_embedding", FLOAT_LIST),
    ]
)
USERS = pa.schema(
    [
        ("user_id", pa.string()),
        ("gender", pa.string()),
        ("age_bucket", pa.string()),
        ("city", pa.string()),
        ("purchase_level", pa.string()),
    ]
)
# Ground truth written by the synthetic source only (never read by the ETL).
TRUE_INTERESTS = pa.schema(
    [
        ("user_id", pa.string()),
        ("category", pa.string()),
        ("weight", pa.float32()),
    ]
)

RAW_TABLES = {
    "behavior_events": BEHAVIOR_EVENTS,
    "hintq_exposures": HINTQ_EXPOSURES,
    "query_impressions": QUERY_IMPRESSIONS,
    "item_impressions": ITEM_IMPRESSIONS,
    "items": ITEMS,
    "users": USERS,
}
#: Tables with one partition per day of activity; the others are snapshots read "as of" ds.
EVENT_TABLES = ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions")
SNAPSHOT_TABLES = ("items", "users")

# --- derived ------------------------------------------------------------------------------
HISTORY_ITEM = pa.struct(
    [
        ("event_time", TS),
        ("event_type", pa.string()),
        ("time_bucket", pa.string()),
        ("text", pa.string()),
        ("item_id", pa.string()),
        ("category", pa.string()),
    ]
)
HISTORY = pa.list_(HISTORY_ITEM)
PROFILE_FIELDS = [
    ("gender", pa.string()),
    ("age_bucket", pa.string()),
    ("city", pa.string()),
    ("purchase_level", pa.string()),
]

BEHAVIOR_SESSIONS = pa.schema(
    list(BEHAVIOR_EVENTS) + [pa.field("session_id", pa.string()), pa.field("session_seq", pa.int32())]
)
HINTQ_SESSIONS = HINTQ_EXPOSURES
DAY_SESSIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("n_events", pa.int32()),
        ("n_searches", pa.int32()),
        ("ended_by_exit", pa.bool_()),
    ]
)
KARMA_SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.string()),
        ("event_time", TS),
        ("target_item_id", pa.string()),
        ("target_event_type", pa.string()),
        ("history", HISTORY),
        ("hard_negative_ids", STR_LIST),
        ("split", pa.string()),
    ]
)
AIGQ_DIRECT_SFT = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.string()),
        ("request_id", pa.string()),
        ("event_time", TS),
        *PROFILE_FIELDS,
        ("history", HISTORY),
        ("target_queries", STR_LIST),
        ("label_source", pa.string()),
        ("split", pa.string()),
    ]
)
THINK_TARGET = pa.struct(
    [
        ("query", pa.string()),
        ("source", pa.string()),
        ("triggers", pa.list_(pa.int32())),
    ]
)
AIGQ_THINK_SFT = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.string()),
        ("event_time", TS),
        *PROFILE_FIELDS,
        ("history", HISTORY),
        ("targets", pa.list_(THINK_TARGET)),
        ("split", pa.string()),
    ]
)
CTR_SAMPLES = pa.schema(
    [
        ("user_id", pa.string()),
        ("event_time", TS),
        ("query", pa.string()),
        ("position", pa.int32()),
        ("label", pa.int32()),
        *PROFILE_FIELDS,
        ("recent_queries", STR_LIST),
        ("split", pa.string()),
    ]
)
ITEM_CORPUS = pa.schema(
    [
        ("item_id", pa.string()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("leaf_category", pa.string()),
        ("brand", pa.string()),
        ("image_embedding", FLOAT_LIST),
    ]
)

SESSION_TABLES = {
    "behavior_sessions": BEHAVIOR_SESSIONS,
    "hintq_sessions": HINTQ_SESSIONS,
    "day_sessions": DAY_SESSIONS,
}
SAMPLE_TABLES = {
    "karma_samples": KARMA_SAMPLES,
    "aigq_direct_sft": AIGQ_DIRECT_SFT,
    "aigq_think_sft": AIGQ_THINK_SFT,
    "ctr_samples": CTR_SAMPLES,
    "item_corpus": ITEM_CORPUS,
}
QUARANTINE_REASON = pa.field("reason", pa.string())

# --- nightly exports (export/; what serving reads) ---------------------------------------------
#: u2q (AIGQ-Direct): user -> ranked queries; each user's most recent runs (``run_ds`` = the run's
#: date, which differs from the partition's ``ds`` for runs carried from earlier partitions).
U2Q = pa.schema(
    [
        ("user_id", pa.string()),
        ("run_ds", pa.string()),
        ("run_id", pa.string()),
        ("rank", pa.int32()),
        ("query", pa.string()),
        ("source", pa.string()),  # model | history | heuristic | fallback
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("generated_at", TS),
    ]
)
#: x2q (AIGQ-Think): trigger (an item id or a query) -> ranked queries.
X2Q = pa.schema(
    [
        ("trigger_key", pa.string()),  # "item:<item_id>" | "query:<normalised query>"
        ("trigger_type", pa.string()),  # item | query
        ("trigger_value", pa.string()),
        ("rank", pa.int32()),
        ("query", pa.string()),
        ("score", pa.float64()),  # alpha * s_rel + (1 - alpha) * s_eff
        ("s_rel", pa.float64()),
        ("s_eff", pa.float64()),
        ("popularity", pa.float64()),
        ("ctr", pa.float64()),  # mean predicted CTR; null without a CTR model
        ("support", pa.int32()),  # users whose Think output linked the trigger to the query
        ("attribution", pa.string()),  # model | overlap
        ("run_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("ctr_model_version", pa.string()),
        ("generated_at", TS),
    ]
)
#: u2i: user -> top-K items of the fused channels (KARMA ANN when registered, co-occurrence,
#: MiniLM text, popularity), history items filtered.
U2I = pa.schema(
    [
        ("user_id", pa.string()),
        ("run_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("channel", pa.string()),  # karma | cooccurrence | text | popularity
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("index_version", pa.string()),
        ("generated_at", TS),
    ]
)
USER_INTEREST_EMBEDDING = pa.schema(
    [
        ("user_id", pa.string()),
        ("model_version", pa.string()),
        ("embedding", FLOAT_LIST),
    ]
)
EXPORT_TABLES = {
    "u2q": U2Q,
    "x2q": X2Q,
    "u2i": U2I,
    "user_interest_embedding": USER_INTEREST_EMBEDDING,
}

ALL_TABLES: dict[str, pa.Schema] = {
    **RAW_TABLES,
    "true_interests": TRUE_INTERESTS,
    **SESSION_TABLES,
    **SAMPLE_TABLES,
    **EXPORT_TABLES,
}

#: Columns unique within one partition of each table (``None``: only whole rows are unique, as
#: for the event logs, whose exact duplicates ``jobs.validate`` quarantines). Across a table the
#: key is ``(ds, *key)``.
UNIQUE_KEYS: dict[str, tuple[str, ...] | None] = {
    "behavior_events": None,
    "hintq_exposures": ("request_id",),
    "query_impressions": None,
    "item_impressions": ("request_id", "position"),  # one item per slot of a page (an item may fill two)
    "items": ("item_id",),
    "users": ("user_id",),
    "true_interests": ("user_id", "category"),
    "behavior_sessions": None,
    "hintq_sessions": ("request_id",),
    "day_sessions": ("user_id",),
    "karma_samples": ("sample_id",),
    "aigq_direct_sft": ("sample_id",),
    "aigq_think_sft": ("sample_id",),
    "ctr_samples": None,
    "item_corpus": ("item_id",),
    "u2q": ("user_id", "run_ds", "rank"),
    "x2q": ("trigger_key", "rank"),
    "u2i": ("user_id", "rank"),
    "user_interest_embedding": ("user_id",),
}

#: What each export column means (the README's "Reading the outputs" tables, ``export.docs``).
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "u2q": {
        "user_id": "the user the list is for",
        "run_ds": "date of the export run that wrote this list: the partition's ds for today's run, "
                  "an earlier date for a run carried from the previous partition",
        "run_id": "id of that run (the Airflow run id)",
        "rank": "1-based position in the list",
        "query": "suggested query",
        "source": "`model` (generated by the policy), `history` (the user's own recent search, merged in), "
                  "`heuristic` (the heuristic list: merged in, or the whole list when no policy beat it) or "
                  "`fallback` (popularity top-up, cold-start users)",
        "model_name": "registered AIGQ-Direct policy (`aigq_direct_grpo`, else `aigq_direct`), or "
                      "`heuristic:<name>` when u2q serves the best heuristic list (no policy beat it)",
        "model_version": "version of that policy (the run's ds for a heuristic list)",
        "generated_at": "data cut-off of the run: the end of `run_ds` (UTC)",
    },
    "x2q": {
        "trigger_key": "`item:<item_id>` or `query:<normalised query>`",
        "trigger_type": "`item` or `query`",
        "trigger_value": "the item id or the normalised query",
        "rank": "1-based position among the trigger's queries (by score)",
        "query": "suggested query",
        "score": "S = alpha * s_rel + (1 - alpha) * s_eff, in [0, 1]",
        "s_rel": "link strength over the trigger's strongest link, in [0, 1]",
        "s_eff": "(1 - w) * popularity + w * ctr (w = `export.x2q_ctr_weight`, 0 without a CTR model)",
        "popularity": "log1p(searches of the query in the window) / log1p(max), in [0, 1]",
        "ctr": "mean CTR the CTR model predicts for the query; null without a CTR model",
        "support": "users whose Think output linked the trigger to the query",
        "attribution": "`model` (the policy named the trigger) or `overlap` (shared words)",
        "run_id": "id of the export run (the Airflow run id)",
        "model_name": "registered AIGQ-Think policy (`aigq_think_grpo`, else `aigq_think`)",
        "model_version": "version of that policy",
        "ctr_model_version": "version of `aigq_ctr` used for `ctr`; null without one",
        "generated_at": "data cut-off of the run: the end of ds (UTC)",
    },
    "u2i": {
        "user_id": "the user the list is for",
        "run_id": "id of the export run (the Airflow run id)",
        "rank": "1-based position in the list",
        "item_id": "retrieved item (items of the user's history are filtered out)",
        "score": "fused score sum_c w_c / (k0 + rank in channel c), weights fitted on the valid split, in (0, 1]",
        "channel": "channel that contributed most to the item: `karma`, `cooccurrence`, `text` or `popularity`",
        "model_name": "`karma` when the fused list includes the registered KARMA model, `heuristics` when "
                      "KARMA's gate refused it (the list fuses the other channels; the manifest says why)",
        "model_version": "KARMA version whose fitted channels and fusion weights served",
        "index_version": "version of the faiss item index searched; null without KARMA",
        "generated_at": "data cut-off of the run: the end of ds (UTC)",
    },
    "user_interest_embedding": {
        "user_id": "an active user of the window",
        "model_version": "KARMA version that encoded the history",
        "embedding": "the user's interest vector e_u as the model outputs it (not normalised)",
    },
}


def arrow_schema(name: str) -> pa.Schema:
    try:
        return ALL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table '{name}' (known: {sorted(ALL_TABLES)})") from None


def quarantine_arrow_schema(name: str) -> pa.Schema:
    return arrow_schema(name).append(QUARANTINE_REASON)


def spark_schema(name: str):
    """The same schema as a Spark ``StructType`` (imports pyspark lazily)."""
    return to_spark(arrow_schema(name))


def to_spark(schema: pa.Schema):
    # lazy: only the Spark jobs need pyspark; every non-Spark process imports common.schemas
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def type_matches(expected: pa.DataType, actual: pa.DataType) -> bool:
    """Whether a file's column type is acceptable for the contract's type.

    Strict except for harmless physical variants: large_string/string_view for string,
    large_list for list, any timestamp unit/zone for timestamps (normalised on read).
    """
    if expected.equals(actual):
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_list(expected):
        if pa.types.is_list(actual) or pa.types.is_large_list(actual):
            return type_matches(expected.value_type, actual.value_type)
        return False
    if pa.types.is_struct(expected) and pa.types.is_struct(actual):
        exp = {f.name: f.type for f in expected}
        act = {f.name: f.type for f in actual}
        return exp.keys() == act.keys() and all(type_matches(exp[k], act[k]) for k in exp)
    return False
