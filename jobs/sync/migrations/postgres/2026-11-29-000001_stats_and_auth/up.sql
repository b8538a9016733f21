-- Stats rows of the two sync jobs: one row per stats type, the API's payload as JSON.
CREATE TABLE strava_stats (
    id BIGSERIAL PRIMARY KEY,
    stats_type TEXT NOT NULL UNIQUE CHECK (stats_type <> '' AND length(stats_type) <= 64),
    data JSONB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE TABLE wakatime_stats (
    id BIGSERIAL PRIMARY KEY,
    stats_type TEXT NOT NULL UNIQUE CHECK (stats_type <> '' AND length(stats_type) <= 64),
    data JSONB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- OAuth tokens: one row per account (id), monotonic in expires_at.
CREATE TABLE strava_auth (
    id BIGINT PRIMARY KEY,
    athlete_id BIGINT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE TABLE wakatime_auth (
    id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
