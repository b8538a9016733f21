-- SQLite twin of migrations/postgres: same tables, same columns, same constraints.
-- JSON is stored in SQLite's binary JSONB form; timestamps are UTC text.
-- Stats ids are plain rowid aliases (no AUTOINCREMENT): AUTOINCREMENT writes sqlite_sequence on
-- every insert attempt, turning an upsert that conflicts into a write that must be synced.
CREATE TABLE strava_stats (
    id INTEGER PRIMARY KEY,
    stats_type TEXT NOT NULL UNIQUE CHECK (stats_type <> '' AND length(stats_type) <= 64),
    data BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE wakatime_stats (
    id INTEGER PRIMARY KEY,
    stats_type TEXT NOT NULL UNIQUE CHECK (stats_type <> '' AND length(stats_type) <= 64),
    data BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE strava_auth (
    id BIGINT PRIMARY KEY NOT NULL,
    athlete_id BIGINT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE wakatime_auth (
    id BIGINT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    access_token TEXT NOT NULL CHECK (access_token <> ''),
    refresh_token TEXT NOT NULL CHECK (refresh_token <> ''),
    expires_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
