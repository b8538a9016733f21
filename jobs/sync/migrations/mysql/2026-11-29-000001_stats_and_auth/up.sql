-- MySQL/MariaDB twin of migrations/postgres: same tables, same columns, same constraints.
-- JSON for the payload (MySQL has no JSONB; MariaDB's JSON is LONGTEXT with a JSON_VALID check),
-- DATETIME(6) in UTC for the timestamps (PostgreSQL's TIMESTAMP keeps microseconds too), and
-- VARCHAR(64) stats keys (a unique index needs a bounded length). MySQL commits each CREATE by itself, so a
-- run killed in the middle leaves some tables without the migration recorded: IF NOT EXISTS lets the
-- next run finish it.
CREATE TABLE IF NOT EXISTS strava_stats (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    stats_type VARCHAR(64) NOT NULL UNIQUE CHECK (stats_type <> ''),
    data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
);

CREATE TABLE IF NOT EXISTS wakatime_stats (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    stats_type VARCHAR(64) NOT NULL UNIQUE CHECK (stats_type <> ''),
    data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
);

-- OAuth tokens: one row per account (id), monotonic in expires_at.
CREATE TABLE IF NOT EXISTS strava_auth (
    id BIGINT PRIMARY KEY,
    athlete_id BIGINT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
);

CREATE TABLE IF NOT EXISTS wakatime_auth (
    id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
);
