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

diesel::table! {
    /// Accounts whose usage is tracked, with their limits per period.
    usage_accounts (account) {
        /// The account.
        account -> Int8,
        /// Tokens allowed per period.
        tokens_limit -> Int8,
        /// Reports allowed per period.
        reports_limit -> Int8,
        /// Chats allowed per period.
        chats_limit -> Int8,
        /// When the limits were last written (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// One row per account and (monthly) period: counters, reservations and limits.
    usage_periods (id) {
        /// Surrogate key.
        id -> Int8,
        /// The account (`usage_accounts.account`).
        account -> Int8,
        /// First instant of the period (UTC, inclusive); unique with `account`.
        period_start -> Timestamp,
        /// End of the period (UTC, exclusive).
        period_end -> Timestamp,
        /// Tokens counted.
        tokens_used -> Int8,
        /// Reports counted.
        reports_used -> Int8,
        /// Chats counted.
        chats_used -> Int8,
        /// Tokens held by live reservations.
        tokens_reserved -> Int8,
        /// Reports held by live reservations.
        reports_reserved -> Int8,
        /// Chats held by live reservations.
        chats_reserved -> Int8,
        /// Tokens allowed in the period.
        tokens_limit -> Int8,
        /// Reports allowed in the period.
        reports_limit -> Int8,
        /// Chats allowed in the period.
        chats_limit -> Int8,
        /// When the period row was created (UTC).
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// The idempotency ledger of usage increments: one row per applied key.
    usage_events (id) {
        /// Surrogate key.
        id -> Int8,
        /// The account; the key is unique per account.
        account -> Int8,
        /// The caller's idempotency key (1 to 128 bytes).
        idempotency_key -> Text,
        /// The period the increment was counted in.
        period_id -> Int8,
        /// Tokens added.
        tokens -> Int8,
        /// Reports added.
        reports -> Int8,
        /// Chats added.
        chats -> Int8,
        /// Fingerprint of the request (its amounts), to recognise a key reused for another request.
        request_hash -> Int8,
        /// The period's tokens right after this increment.
        tokens_total -> Int8,
        /// The period's reports right after this increment.
        reports_total -> Int8,
        /// The period's chats right after this increment.
        chats_total -> Int8,
        /// When the increment was applied (UTC).
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Quota reservations, counted in `usage_periods.*_reserved` until settled or expired.
    usage_reservations (id) {
        /// Surrogate key.
        id -> Int8,
        /// The period the units are reserved in.
        period_id -> Int8,
        /// The account.
        account -> Int8,
        /// `tokens`, `reports` or `chats`.
        metric -> Text,
        /// Units reserved.
        amount -> Int8,
        /// When the reservation stops counting (UTC).
        expires_at -> Timestamp,
        /// When the reservation was made (UTC).
        created_at -> Timestamp,
    }
}
