-- The steady state both sides start from: `:rows` stats rows keyed key-0 … key-(rows-1).
-- psql -v rows=N -v payload=… -v ts=…
TRUNCATE strava_stats;
INSERT INTO strava_stats (stats_type, data, created_at, updated_at)
SELECT 'key-' || i, :'payload'::jsonb, :'ts'::timestamp, :'ts'::timestamp
FROM generate_series(0, :rows - 1) AS i;
