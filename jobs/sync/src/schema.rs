//! Diesel table definitions of the sync jobs' migrations (PostgreSQL and SQLite share them).

diesel::table! {
    /// Strava stats: one row per `stats_type`.
    strava_stats (id) {
        /// Surrogate key.
        id -> Int8,
        /// Unique stats kind: `ytd`, `all_time`, `recent`.
        stats_type -> Text,
        /// The API's payload.
        data -> Jsonb,
        /// When the row was first written (UTC).
        created_at -> Timestamp,
        /// When the row's data last changed (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// WakaTime stats: one row per `stats_type` (a stats range such as `last_7_days`).
    wakatime_stats (id) {
        /// Surrogate key.
        id -> Int8,
        /// Unique stats kind.
        stats_type -> Text,
        /// The API's payload.
        data -> Jsonb,
        /// When the row was first written (UTC).
        created_at -> Timestamp,
        /// When the row's data last changed (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// Strava OAuth tokens, one row per account.
    strava_auth (id) {
        /// The account.
        id -> Int8,
        /// Strava's athlete id.
        athlete_id -> Int8,
        /// OAuth access token (secret).
        access_token -> Text,
        /// OAuth refresh token (secret).
        refresh_token -> Text,
        /// When the access token expires (UTC).
        expires_at -> Timestamp,
        /// When the row was last written (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// WakaTime OAuth tokens, one row per account.
    wakatime_auth (id) {
        /// The account.
        id -> Int8,
        /// WakaTime's user id.
        user_id -> Text,
        /// OAuth access token (secret).
        access_token -> Text,
        /// OAuth refresh token (secret).
        refresh_token -> Text,
        /// When the access token expires (UTC).
        expires_at -> Timestamp,
        /// When the row was last written (UTC).
        updated_at -> Timestamp,
    }
}
