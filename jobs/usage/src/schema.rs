//! Diesel table definitions of the usage-tracking migrations (PostgreSQL and SQLite share them).

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
