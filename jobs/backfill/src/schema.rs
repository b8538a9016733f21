//! Diesel table definition of the backfill scheduler's migration (PostgreSQL only).

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
