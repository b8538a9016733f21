ALTER TABLE wakatime_stats DROP CONSTRAINT wakatime_stats_pkey;
ALTER TABLE wakatime_stats ADD CONSTRAINT wakatime_stats_stats_type_key UNIQUE (stats_type);
ALTER TABLE wakatime_stats ADD CONSTRAINT wakatime_stats_pkey PRIMARY KEY (id);

ALTER TABLE strava_stats DROP CONSTRAINT strava_stats_pkey;
ALTER TABLE strava_stats ADD CONSTRAINT strava_stats_stats_type_key UNIQUE (stats_type);
ALTER TABLE strava_stats ADD CONSTRAINT strava_stats_pkey PRIMARY KEY (id);
