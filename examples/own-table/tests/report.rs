//! The adopted table on a real PostgreSQL server.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use own_table_example::{migrate, report, service_status, Report};
use upsert_kit::{ConstraintKind, Error, UpsertOutcome};
use upsert_kit_support::{race, TestDb};

fn at(minute: i64) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(8, 0, 0)
        .unwrap()
        + Duration::minutes(minute)
}

fn status(service: &str, status: &str, minute: i64) -> Report {
    Report {
        service: service.into(),
        status: status.into(),
        reported_at: at(minute),
        first_seen: at(minute),
    }
}

fn stored(conn: &mut PgConnection, service: &str) -> (String, NaiveDateTime, NaiveDateTime) {
    service_status::table
        .find(service)
        .select((
            service_status::status,
            service_status::reported_at,
            service_status::first_seen,
        ))
        .get_result(conn)
        .unwrap()
}

fn database() -> TestDb {
    let db = TestDb::new();
    migrate(&mut db.conn()).unwrap();
    db
}

#[test]
fn a_report_inserts_updates_and_a_late_one_changes_nothing() {
    let db = database();
    let mut conn = db.conn();
    assert_eq!(
        report(&mut conn, &status("api", "up", 0)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        report(&mut conn, &status("api", "down", 5)).unwrap(),
        UpsertOutcome::Updated
    );
    assert_eq!(
        report(&mut conn, &status("api", "up", 3)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(stored(&mut conn, "api"), ("down".into(), at(5), at(0)));
}

#[test]
fn checkers_reporting_a_new_service_at_once_leave_one_row_with_the_newest_report() {
    const CHECKERS: usize = 8;
    let db = database();
    let url = db.url().to_owned();
    let outcomes = race(CHECKERS, move |i| {
        let mut conn = upsert_kit::db::connect_pg(&url).unwrap();
        report(&mut conn, &status("billing", "degraded", i as i64))
    });
    let outcomes: Vec<UpsertOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == UpsertOutcome::Inserted)
            .count(),
        1,
        "{outcomes:?}"
    );
    let mut conn = db.conn();
    let rows: i64 = service_status::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 1);
    assert_eq!(stored(&mut conn, "billing").1, at(CHECKERS as i64 - 1));
}

#[test]
fn bad_reports_are_typed_errors_and_write_nothing() {
    let db = database();
    let mut conn = db.conn();
    let err = report(&mut conn, &status("", "up", 0)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref i) if i.field == "service"),
        "{err:?}"
    );
    let err = report(&mut conn, &status("api", "sideways", 0)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Constraint {
                kind: ConstraintKind::Check,
                ..
            }
        ),
        "{err:?}"
    );
    let rows: i64 = service_status::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0);
}
