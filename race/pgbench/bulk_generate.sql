-- The same upsert applied to rows the server generates itself: the rate a client library
-- can at best approach for a batch of this size (nothing to send but the batch's start).
-- Variables (pgbench -D): batch, bulk_keys, payload, ts.
\set s random(0, :bulk_keys - :batch)
\set e :s + :batch - 1
INSERT INTO strava_stats (stats_type, data, created_at, updated_at)
SELECT 'key-' || i, :payload::jsonb, :ts::timestamp, :ts::timestamp
FROM generate_series(:s::int, :e::int) AS i
ON CONFLICT (stats_type) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at
RETURNING (xmax = 0);
