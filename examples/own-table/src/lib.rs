//! An application crate adopting upsert-kit for a table of its own, as any outside crate
//! would: `upsert-kit = { path = …, default-features = false, features = ["postgres"] }`, so
//! it compiles no SQLite, no r2d2 and none of the workspace's binaries.
//!
//! The table holds the last reported status of each service of a fleet. Health checkers on
//! many hosts report at once: the first reports of a new service must not fail with a
//! duplicate key, and a report that arrives late must never overwrite a newer one.
//! [`report`] is one `INSERT … ON CONFLICT (service) DO UPDATE … WHERE reported_at is newer`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::upsert::excluded;
use diesel::ExpressionMethods;
use upsert_kit::{Upsert, UpsertOutcome};

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
#[derive(Debug, Clone, PartialEq, Eq, diesel::Insertable, Upsert)]
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

/// Creates the table when it is missing.
///
/// # Errors
/// The server's error.
pub fn migrate(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    conn.batch_execute(CREATE_TABLE)
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
