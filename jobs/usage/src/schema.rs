//! Diesel table definitions of the usage-tracking migrations (PostgreSQL and SQLite share them;
//! the migrations' SQL says what each column holds). Instants are UTC.

#![allow(missing_docs)] // the columns of `diesel::table!`

diesel::table! {
    /// Accounts whose usage is tracked, with their limits per period.
    usage_accounts (account) {
        account -> Int8,
        tokens_limit -> Int8,
        reports_limit -> Int8,
        chats_limit -> Int8,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// One row per account and month, unique `(account, period_start)`.
    usage_periods (id) {
        id -> Int8,
        account -> Int8,
        period_start -> Timestamp,
        period_end -> Timestamp,
        tokens_used -> Int8,
        reports_used -> Int8,
        chats_used -> Int8,
        tokens_reserved -> Int8,
        reports_reserved -> Int8,
        chats_reserved -> Int8,
        tokens_limit -> Int8,
        reports_limit -> Int8,
        chats_limit -> Int8,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// The ledger of usage increments, unique `(account, idempotency_key)`: the amounts, their
    /// fingerprint (`request_hash`) and the period's totals right after.
    usage_events (id) {
        id -> Int8,
        account -> Int8,
        idempotency_key -> Text,
        period_id -> Int8,
        tokens -> Int8,
        reports -> Int8,
        chats -> Int8,
        request_hash -> Int8,
        tokens_total -> Int8,
        reports_total -> Int8,
        chats_total -> Int8,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Quota reservations of a period (`account`, `period_id`) and a `metric`.
    usage_reservations (id) {
        id -> Int8,
        period_id -> Int8,
        account -> Int8,
        metric -> Text,
        amount -> Int8,
        expires_at -> Timestamp,
        created_at -> Timestamp,
    }
}
