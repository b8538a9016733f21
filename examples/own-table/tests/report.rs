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

#[test]
fn sixteen_checkers_times_five_hundred_checks_count_exactly() {
    const THREADS: usize = 16;
    const CHECKS: usize = 500;
    let db = database();
    let day = at(0).date();
    let url = db.url().to_owned();
    race(THREADS, move |i| {
        let mut conn = upsert_kit::db::connect_pg(&url).unwrap();
        for n in 0..CHECKS {
            own_table_example::count_check(&mut conn, "api", day, (i + n) % 10 == 0).unwrap();
        }
    });
    let totals = own_table_example::count_check(&mut db.conn(), "api", day, false).unwrap();
    assert_eq!(
        totals,
        [
            (THREADS * CHECKS) as i64 + 1,
            (THREADS * CHECKS / 10) as i64
        ]
    );
}

#[test]
fn a_report_delivered_eleven_times_is_counted_once() {
    let db = database();
    let day = at(0).date();
    let url = db.url().to_owned();
    let concurrent = race(8, move |_| {
        let mut conn = upsert_kit::db::connect_pg(&url).unwrap();
        own_table_example::count_check_once(&mut conn, "report-1", "api", day, true).unwrap()
    });
    let mut conn = db.conn();
    let sequential: Vec<_> = (0..3)
        .map(|_| {
            own_table_example::count_check_once(&mut conn, "report-1", "api", day, true).unwrap()
        })
        .collect();
    let all: Vec<_> = concurrent.iter().chain(&sequential).collect();
    assert_eq!(all.iter().filter(|r| r.applied).count(), 1, "{all:?}");
    assert!(all.iter().all(|r| r.value == [1, 1]), "{all:?}");
    let changed = own_table_example::count_check_once(&mut conn, "report-1", "api", day, false);
    assert!(
        matches!(changed, Err(Error::IdempotencyConflict { .. })),
        "{changed:?}"
    );
}

#[test]
fn pages_are_never_sent_past_the_budget() {
    let db = database();
    diesel::sql_query("INSERT INTO page_budgets (team, page_limit) VALUES ('ops', 50)")
        .execute(&mut db.conn())
        .unwrap();
    let url = db.url().to_owned();
    let sent = race(16, move |_| {
        let mut conn = upsert_kit::db::connect_pg(&url).unwrap();
        let mut sent = 0;
        for _ in 0..10 {
            match own_table_example::spend_page(&mut conn, "ops") {
                Ok(()) => sent += 1,
                Err(Error::QuotaExceeded { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        sent
    });
    // 160 pages asked for, 50 allowed: exactly the budget is spent, never more.
    assert_eq!(sent.iter().sum::<i64>(), 50);
    let used: i64 = diesel::sql_query("SELECT used AS n FROM page_budgets")
        .get_result::<N>(&mut db.conn())
        .unwrap()
        .n;
    assert_eq!(used, 50);
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
