-- The crate's single-row upsert (atomic_upsert of a stats row), as pgbench runs it.
-- Variables (pgbench -D): keys, payload (the ~1 KB JSON of `upsert-race --print-payload`), ts.
-- Run with -M prepared: parsed and planned once per connection, like the crate's cached statement.
\set k random(0, :keys - 1)
INSERT INTO strava_stats (stats_type, data, created_at, updated_at)
VALUES ('key-' || :k, :payload, :ts, :ts)
ON CONFLICT (stats_type) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at
RETURNING (xmax = 0);
