//! An application crate adopting upsert-kit for a table of its own, as any outside crate
//! would: `upsert-kit = { path = …, default-features = false, features = ["postgres"] }`, so
//! it compiles no SQLite, no r2d2 and none of the workspace's binaries.
//!
//! The table holds the last reported status of each service of a fleet. Health checkers on
//! many hosts report at once: the first reports of a new service must not fail with a
//! duplicate key, and a report that arrives late must never overwrite a newer one.
//! [`report`] is one `INSERT … ON CONFLICT (service) DO UPDATE … WHERE reported_at is newer`.
//!
//! It also counts checks per service and day ([`count_check`], a counter created on first
//! use), once per report id ([`count_check_once`], an idempotency ledger), and spends paging
//! budgets that must never be overspent ([`spend_page`], a quota): each table its own, each
//! declared in a few lines.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::upsert::excluded;
use diesel::ExpressionMethods;
use upsert_kit::{Upsert, UpsertModel, UpsertOutcome};

diesel::table! {
    /// The last reported status of each service.
    service_status (service) {
        /// The service's name.
        service -> Text,
        /// `up`, `degraded` or `down`.
        status -> Text,
        /// When the reporting check ran (its own clock).
        reported_at -> Timestamp,
        /// When the service was first reported.
        first_seen -> Timestamp,
    }
}

/// The table, as the application's migration creates it.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS service_status (
    service TEXT PRIMARY KEY CHECK (service <> ''),
    status TEXT NOT NULL CHECK (status IN ('up', 'degraded', 'down')),
    reported_at TIMESTAMP NOT NULL,
    first_seen TIMESTAMP NOT NULL
)";

/// One health check's report.
#[derive(Debug, Clone, PartialEq, Eq, diesel::Insertable, UpsertModel)]
#[diesel(table_name = service_status)]
#[upsert(key(service), keep(first_seen))]
pub struct Report {
    /// The service.
    pub service: String,
    /// Its status.
    pub status: String,
    /// When the check ran.
    pub reported_at: NaiveDateTime,
    /// Written on insert only.
    pub first_seen: NaiveDateTime,
}

diesel::table! {
    /// Health checks run per service and day.
    check_counts (service, day) {
        /// The service.
        service -> Text,
        /// The day (UTC).
        day -> Date,
        /// Checks run.
        checks -> BigInt,
        /// Checks that failed.
        failures -> BigInt,
    }
}

diesel::table! {
    /// The checkers' idempotency keys: a report delivered twice is counted once.
    check_keys (key) {
        /// The report's id.
        key -> Text,
        /// Fingerprint of the request.
        hash -> Text,
        /// The stored result.
        result -> Nullable<Text>,
        /// When the key was first used.
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Paging budget per team: pages sent may never pass the team's limit.
    page_budgets (team) {
        /// The team.
        team -> Text,
        /// Pages allowed.
        page_limit -> BigInt,
        /// Pages sent.
        used -> BigInt,
        /// Pages held by reservations.
        reserved -> BigInt,
    }
}

diesel::table! {
    /// Reservations against a team's paging budget.
    page_holds (id) {
        /// The reservation.
        id -> BigInt,
        /// The team.
        team -> Text,
        /// Pages held.
        amount -> BigInt,
        /// When the hold lapses.
        expires_at -> Timestamp,
    }
}

upsert_kit::counter! {
    table = check_counts, key = (service: String, day: chrono::NaiveDate), amounts = (checks, failures);
    /// Checks per service and day.
    pub struct CheckCounts;
}

upsert_kit::ledger! {
    table = check_keys, key = key, fingerprint = hash, result = result, created_at = created_at;
    /// The checkers' idempotency keys.
    pub struct CheckKeys;
}

upsert_kit::quota! {
    table = page_budgets, key = (team: String), limit = page_limit, used = used, reserved = reserved;
    reservations = page_holds(id, amount, expires_at);
    /// Paging budgets.
    pub struct PageBudgets;
}

/// The tables of the counter, the ledger and the quota.
pub const CREATE_COUNTER_TABLES: &str = "
CREATE TABLE IF NOT EXISTS check_counts (
    service TEXT NOT NULL, day DATE NOT NULL,
    checks BIGINT NOT NULL DEFAULT 0, failures BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (service, day));
CREATE TABLE IF NOT EXISTS check_keys (
    key TEXT PRIMARY KEY, hash TEXT NOT NULL, result TEXT, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS page_budgets (
    team TEXT PRIMARY KEY, page_limit BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0, reserved BIGINT NOT NULL DEFAULT 0,
    CHECK (used + reserved <= page_limit));
CREATE TABLE IF NOT EXISTS page_holds (
    id BIGSERIAL PRIMARY KEY, team TEXT NOT NULL, amount BIGINT NOT NULL,
    expires_at TIMESTAMP NOT NULL);";

/// Counts one check of `service` on `day` (and one failure when `failed`), creating the day's
/// row on first use, in one statement; returns the day's totals `[checks, failures]`.
///
/// # Errors
/// The statement's classified errors.
pub fn count_check(
    conn: &mut PgConnection,
    service: &str,
    day: chrono::NaiveDate,
    failed: bool,
) -> upsert_kit::Result<[i64; 2]> {
    upsert_kit::counter::upsert_increment::<CheckCounts, _>(
        conn,
        &(service.to_owned(), day),
        [1, i64::from(failed)],
    )
}

/// As [`count_check`], once per `report_id`: a report delivered again returns the first
/// delivery's totals and counts nothing (`applied == false`).
///
/// # Errors
/// [`upsert_kit::Error::IdempotencyConflict`] when `report_id` was used for another check; the
/// statement's classified errors.
pub fn count_check_once(
    conn: &mut PgConnection,
    report_id: &str,
    service: &str,
    day: chrono::NaiveDate,
    failed: bool,
) -> upsert_kit::Result<upsert_kit::idempotency::Idempotent<[i64; 2]>> {
    let key = upsert_kit::idempotency::IdempotencyKey::new(report_id)?;
    upsert_kit::idempotency::increment_once::<CheckKeys, CheckCounts, _>(
        conn,
        &key,
        &(service.to_owned(), day),
        [1, i64::from(failed)],
        chrono::Utc::now().naive_utc(),
    )
}

/// Sends one page of `team`'s budget, or refuses with
/// [`upsert_kit::Error::QuotaExceeded`] when the budget is spent; never past the limit.
///
/// # Errors
/// `QuotaExceeded`, or the statement's classified errors.
pub fn spend_page(conn: &mut PgConnection, team: &str) -> upsert_kit::Result<()> {
    upsert_kit::quota::try_consume::<PageBudgets, _>(
        conn,
        &team.to_owned(),
        1,
        chrono::Utc::now().naive_utc(),
    )
    .map(|_| ())
}

/// Creates the table when it is missing.
///
/// # Errors
/// The server's error.
pub fn migrate(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    conn.batch_execute(CREATE_TABLE)?;
    conn.batch_execute(CREATE_COUNTER_TABLES)
}

/// Stores `report` unless a newer report of the service is already stored: `Inserted` for a
/// new service, `Updated`, or `Unchanged` for a late (or repeated) report. Safe from any number
/// of connections at once.
///
/// # Errors
/// [`upsert_kit::Error::InvalidInput`] for an empty service name (nothing is sent);
/// [`upsert_kit::Error::Constraint`] for a status the table refuses; the statement's other
/// classified errors.
pub fn report(conn: &mut PgConnection, report: &Report) -> upsert_kit::Result<UpsertOutcome> {
    Upsert::new(report)
        .update_if(excluded(service_status::reported_at).gt(service_status::reported_at))
        .execute(conn)
}
