-- Day-level (Think) sessions: for each user and day, from the first search-entry interaction
-- (a search, or any event in the search / hintq scene) to the last exit at or after it; when
-- no exit follows, the session ends at the user's last event of the day.
-- Input (a DataFrame passed to spark.sql by keyword): events (clean behavior_events with their
-- partition date as a ds column; one row per user and ds comes out).
WITH entry AS (
  SELECT user_id, ds, MIN(event_time) AS start_time
  FROM {events}
  WHERE event_type = 'search' OR scene IN ('search', 'hintq')
  GROUP BY user_id, ds
),
bounds AS (
  SELECT e.user_id,
         e.ds,
         en.start_time,
         MAX(CASE WHEN e.event_type = 'exit' AND e.event_time >= en.start_time THEN e.event_time END) AS last_exit,
         MAX(e.event_time) AS last_event
  FROM {events} e
  JOIN entry en ON e.user_id = en.user_id AND e.ds = en.ds
  GROUP BY e.user_id, e.ds, en.start_time
)
SELECT b.user_id,
       b.start_time,
       COALESCE(b.last_exit, b.last_event) AS end_time,
       CAST(COUNT(e.event_time) AS INT) AS n_events,
       CAST(COUNT(CASE WHEN e.event_type = 'search' THEN 1 END) AS INT) AS n_searches,
       b.last_exit IS NOT NULL AS ended_by_exit,
       b.ds
FROM bounds b
JOIN {events} e
  ON e.user_id = b.user_id
 AND e.ds = b.ds
 AND e.event_time BETWEEN b.start_time AND COALESCE(b.last_exit, b.last_event)
GROUP BY b.user_id, b.ds, b.start_time, b.last_exit, b.last_event
