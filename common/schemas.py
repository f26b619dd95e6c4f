"""Every raw and derived table's schema, defined once as a pyarrow schema.

``arrow_schema(name)`` serves pyarrow writers (the synthetic source, the adapters);
``spark_schema(name)`` converts the same definition for Spark readers and writers, so the two
sides can never drift. Raw columns are all nullable on purpose: a null id is a data-quality
problem for ``jobs.validate`` to quarantine with a reason, not a reader crash.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
STR_LIST = pa.list_(pa.string())
FLOAT_LIST = pa.list_(pa.float32())

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
        ("ds", pa.string()),
        ("category", pa.string()),
        ("weight", pa.float32()),
    ]
)

RAW_TABLES = {
    "behavior_events": BEHAVIOR_EVENTS,
    "hintq_exposures": HINTQ_EXPOSURES,
    "query_impressions": QUERY_IMPRESSIONS,
    "items": ITEMS,
    "users": USERS,
}
#: Tables with one partition per day of activity; the others are snapshots read "as of" ds.
EVENT_TABLES = ("behavior_events", "hintq_exposures", "query_impressions")
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
        ("ds", pa.string()),
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
#: u2q (AIGQ-Direct): user -> ranked queries; each user's most recent runs (``ds`` = the run's date).
U2Q = pa.schema(
    [
        ("user_id", pa.string()),
        ("ds", pa.string()),
        ("run_id", pa.string()),
        ("rank", pa.int32()),
        ("query", pa.string()),
        ("source", pa.string()),  # model | fallback
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
        ("ds", pa.string()),
        ("run_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("ctr_model_version", pa.string()),
        ("generated_at", TS),
    ]
)
#: u2i (KARMA): user -> top-K items from the faiss index, history items filtered.
U2I = pa.schema(
    [
        ("user_id", pa.string()),
        ("ds", pa.string()),
        ("run_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("index_version", pa.string()),
        ("generated_at", TS),
    ]
)
USER_INTEREST_EMBEDDING = pa.schema(
    [
        ("user_id", pa.string()),
        ("ds", pa.string()),
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
