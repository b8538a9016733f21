-- As bulk_generate.sql, but every row carries its own JSON document, which the server parses
-- (the payload with a "row" member added): the work the server does for a client's batch of
-- distinct documents, without the transfer. bulk_generate.sql parses its one payload once.
-- Variables (pgbench -D): batch, bulk_keys, payload, ts.
\set s random(0, :bulk_keys - :batch)
\set e :s + :batch - 1
INSERT INTO strava_stats (stats_type, data, created_at, updated_at)
SELECT 'key-' || i, (left(:payload::text, -1) || ',"row":' || i || '}')::jsonb,
       :ts::timestamp, :ts::timestamp
FROM generate_series(:s::int, :e::int) AS i
ON CONFLICT (stats_type) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at
RETURNING (xmax = 0);
