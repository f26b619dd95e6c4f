-- CTR samples: one row per query impression with its click label and the user's
-- profile. Inputs (DataFrames passed to spark.sql by keyword): impressions (clean query_impressions with
-- their partition date as a ds column), users (clean users of those days).
SELECT i.user_id,
       i.event_time,
       i.query,
       i.position,
       CAST(i.clicked AS INT) AS label,
       u.gender,
       u.age_bucket,
       u.city,
       u.purchase_level,
       i.ds
FROM {impressions} i
LEFT JOIN {users} u ON i.user_id = u.user_id
