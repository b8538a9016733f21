-- The stats tables are keyed by stats_type, the upsert's conflict target and the column they
-- are distributed by on Citus (docs/citus.md), which refuses a primary key without it. The
-- surrogate id stays, filled from its sequence, but is no longer a key. (The auth tables are
-- keyed by the account id already.)
ALTER TABLE strava_stats DROP CONSTRAINT strava_stats_pkey;
ALTER TABLE strava_stats DROP CONSTRAINT strava_stats_stats_type_key;
ALTER TABLE strava_stats ADD CONSTRAINT strava_stats_pkey PRIMARY KEY (stats_type);

ALTER TABLE wakatime_stats DROP CONSTRAINT wakatime_stats_pkey;
ALTER TABLE wakatime_stats DROP CONSTRAINT wakatime_stats_stats_type_key;
ALTER TABLE wakatime_stats ADD CONSTRAINT wakatime_stats_pkey PRIMARY KEY (stats_type);
