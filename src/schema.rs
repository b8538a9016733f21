//! Diesel table definitions of the crate's migrations (PostgreSQL and SQLite share them).

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

diesel::table! {
    /// The backfill scheduler's queue (PostgreSQL only): one row per month, claimed with a lease.
    backfill_log (id) {
        /// Surrogate key (claim order).
        id -> Int8,
        /// Year of the month to process.
        year -> Int4,
        /// Month, 1–12.
        month -> Int4,
        /// `pending`, `retry`, `processing`, `done` or `failed` (parked).
        status -> Text,
        /// Claims so far.
        attempts -> Int4,
        /// Lease expiry while `processing`; "not before" while `retry`.
        locked_until -> Nullable<Timestamptz>,
        /// Who holds the lease while `processing`.
        holder -> Nullable<Text>,
        /// The last failure's message.
        last_error -> Nullable<Text>,
        /// When the month was scheduled.
        created_at -> Timestamptz,
    }
}
