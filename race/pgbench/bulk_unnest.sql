-- The crate's bulk upsert of one batch (bulk_upsert: one array per column, unnest), as
-- pgbench runs it. The arrays are built by the server here (pgbench cannot send a
-- 1,000-element array of 1 KB values); the crate sends them as bind parameters.
-- Variables (pgbench -D): batch, bulk_keys, payload, ts.
\set s random(0, :bulk_keys - :batch)
\set e :s + :batch - 1
INSERT INTO strava_stats (stats_type, data, created_at, updated_at)
SELECT * FROM unnest(
    ARRAY(SELECT 'key-' || i FROM generate_series(:s::int, :e::int) AS i),
    array_fill(:payload::jsonb, ARRAY[:batch::int]),
    array_fill(:ts::timestamp, ARRAY[:batch::int]),
    array_fill(:ts::timestamp, ARRAY[:batch::int]))
ON CONFLICT (stats_type) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at
RETURNING (xmax = 0);
