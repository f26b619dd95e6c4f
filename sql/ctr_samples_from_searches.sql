-- CTR samples of a day whose log has no HintQ impressions (a plain search log): one row per
-- search with label 1 when a click shares its request_id (the query led to a click).
-- Inputs (DataFrames passed to spark.sql by keyword): day_events (clean behavior_events with their
-- partition date as a ds column), users (clean users of those days).
WITH clicked AS (
    SELECT DISTINCT ds, request_id
    FROM {day_events}
    WHERE event_type = 'click' AND request_id IS NOT NULL
)
SELECT s.user_id,
       s.event_time,
       s.query,
       0 AS position,
       CASE WHEN c.request_id IS NULL THEN 0 ELSE 1 END AS label,
       u.gender,
       u.age_bucket,
       u.city,
       u.purchase_level,
       s.ds
FROM {day_events} s
LEFT JOIN clicked c ON s.request_id = c.request_id AND s.ds = c.ds
LEFT JOIN {users} u ON s.user_id = u.user_id
WHERE s.event_type = 'search' AND s.query IS NOT NULL AND trim(s.query) <> ''
