//! Get-or-create, generic and for usage periods, on a real PostgreSQL server and on SQLite.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use common::{race, TestDb, TestSqlite};
use diesel::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use upsert_kit::get_or_create::{get_or_create, Obtained};
use upsert_kit::naive;
use upsert_kit::retry::Retry;
use upsert_kit::schema::{strava_stats, usage_periods};
use upsert_kit::usage::{get_or_create_usage_period, set_usage_limits, Usage};
use upsert_kit::{upsert_model, ConstraintKind, Error};

fn month(m: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, m, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

upsert_model! {
    table = strava_stats, key = (stats_type);
    #[derive(Debug, Clone)]
    pub struct NewStats {
        pub stats_type: String,
        pub data: serde_json::Value,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = strava_stats)]
struct Stats {
    id: i64,
    stats_type: String,
    data: serde_json::Value,
}

fn new_stats(kind: &str, n: i64) -> NewStats {
    NewStats {
        stats_type: kind.to_owned(),
        data: serde_json::json!({ "n": n }),
    }
}

fn period_rows(conn: &mut PgConnection) -> i64 {
    usage_periods::table.count().get_result(conn).unwrap()
}

/// RELIABILITY 3: 16 threads get-or-create one account's period for one month at once: one row,
/// every caller gets its id, exactly one says "created". The naive select-then-insert, raced
/// the same way, fails with duplicate-key errors.
#[test]
fn concurrent_get_or_create_usage_period_returns_one_row_and_one_creator_while_select_then_insert_fails(
) {
    const THREADS: usize = 16;
    let db = TestDb::new();
    let pool = db.pool(THREADS as u32);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), month(1)).unwrap();
    set_usage_limits(&mut conn, 2, Usage::tokens(100), month(1)).unwrap();

    // Several months, so that the race is run more than once.
    let mut created_total = 0;
    for m in 1..=3 {
        let p = pool.clone();
        let got = race(THREADS, move |_| {
            get_or_create_usage_period(&mut p.get().unwrap(), 1, month(m)).unwrap()
        });
        let id = got[0].row.id;
        assert!(
            got.iter().all(|g| g.row.id == id),
            "every caller gets the same row"
        );
        assert_eq!(
            got.iter().filter(|g| g.created).count(),
            1,
            "exactly one creator"
        );
        assert_eq!(got[0].row.tokens_limit, 100);
        created_total += 1;
    }
    assert_eq!(period_rows(&mut conn), created_total);

    let mut naive_failures = 0;
    let mut naive_rounds = 0;
    for m in 1..=12 {
        naive_rounds += 1;
        let p = pool.clone();
        let results = race(THREADS, move |_| {
            naive::get_or_create_usage_period_select_then_insert(&mut p.get().unwrap(), 2, month(m))
        });
        for r in &results {
            match r {
                Ok(_) => {}
                Err(Error::Constraint {
                    kind: ConstraintKind::Unique,
                    ..
                }) => naive_failures += 1,
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        if naive_failures > 0 {
            break;
        }
    }
    eprintln!(
        "get-or-create of one period by {THREADS} threads: atomic 0 errors, 1 creator each time; \
         naive select-then-insert {naive_failures} duplicate-key errors in {naive_rounds} round(s)"
    );
    assert!(
        naive_failures > 0,
        "the naive select-then-insert should have collided"
    );
}

/// The generic helper on any model: concurrent callers share one row, the stored values win,
/// and the row is returned as stored.
#[test]
fn generic_get_or_create_from_8_threads_returns_the_stored_row_and_one_creator() {
    let db = TestDb::new();
    let pool = db.pool(8);
    let p = pool.clone();
    let got: Vec<Obtained<Stats>> = race(8, move |i| {
        get_or_create(&mut p.get().unwrap(), &new_stats("ytd", i as i64)).unwrap()
    });
    assert_eq!(got.iter().filter(|g| g.created).count(), 1);
    let creator = got.iter().find(|g| g.created).unwrap();
    assert!(got.iter().all(|g| g.row == creator.row));
    let mut conn = db.conn();
    let again: Obtained<Stats> = get_or_create(&mut conn, &new_stats("ytd", 99)).unwrap();
    assert!(!again.created);
    assert_eq!(
        again.row, creator.row,
        "an existing row is returned as stored"
    );
    let rows: i64 = strava_stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 1);
}

/// A constraint other than the key (here a CHECK on the stats type's length) is reported, not
/// swallowed, and nothing is written; an invalid model never reaches the server.
#[test]
fn get_or_create_reports_other_constraints_and_rejects_invalid_rows() {
    let db = TestDb::new();
    let mut conn = db.conn();
    let err = get_or_create::<_, _, Stats>(&mut conn, &new_stats(&"x".repeat(65), 1)).unwrap_err();
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
    assert!(!err.is_retryable());
    let err = get_or_create::<_, _, Stats>(&mut conn, &new_stats("  ", 1)).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let rows: i64 = strava_stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0);
}

/// RELIABILITY 6: under REPEATABLE READ, a period created by another session after this
/// transaction's snapshot makes the get-or-create fail with a serialization failure; the retry
/// helper re-runs the whole transaction, which then finds the row.
#[test]
fn under_repeatable_read_the_loser_gets_a_serialization_failure_and_the_retry_succeeds() {
    let db = TestDb::new();
    let mut conn = db.conn();
    let mut other = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), month(1)).unwrap();
    let attempts = AtomicU32::new(0);
    let mut errors = Vec::new();
    let mut created_elsewhere = None;
    let got = Retry::new()
        .run(|attempt| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let r = conn
                .build_transaction()
                .repeatable_read()
                .run(|c| -> upsert_kit::Result<_> {
                    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                        .execute(c)?; // takes the snapshot
                    if attempt == 0 {
                        // Another session creates the period and commits.
                        created_elsewhere =
                            Some(get_or_create_usage_period(&mut other, 1, month(1))?.row.id);
                    }
                    get_or_create_usage_period(c, 1, month(1))
                });
            if let Err(e) = &r {
                errors.push(format!("{e:?}"));
            }
            r
        })
        .unwrap();
    eprintln!("repeatable read: first attempt failed with {errors:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert!(errors[0].starts_with("SerializationFailure"), "{errors:?}");
    assert!(!got.created);
    assert_eq!(Some(got.row.id), created_elsewhere);
    assert_eq!(period_rows(&mut conn), 1);
}

/// RELIABILITY 21: an unknown account or an instant out of range is a typed error, and no
/// period is written.
#[test]
fn get_or_create_usage_period_rejects_unknown_accounts_and_bad_instants() {
    let db = TestDb::new();
    let mut conn = db.conn();
    let err = get_or_create_usage_period(&mut conn, 42, month(1)).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    set_usage_limits(&mut conn, 42, Usage::tokens(1), month(1)).unwrap();
    let december_9999 = NaiveDate::from_ymd_opt(9999, 12, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let err = get_or_create_usage_period(&mut conn, 42, december_9999).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(period_rows(&mut conn), 0);
    // A period holds its month: [first day, first day of the next month).
    let p = get_or_create_usage_period(&mut conn, 42, month(12))
        .unwrap()
        .row;
    assert_eq!(
        p.period_start,
        NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    );
    assert_eq!(
        p.period_end,
        NaiveDate::from_ymd_opt(2027, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    );
}

/// SQLite: 8 connections on one file get-or-create one period: one row, one creator. Each call
/// is one immediate transaction, so the read after a conflicting insert cannot miss.
#[test]
fn sqlite_concurrent_get_or_create_returns_one_row_and_one_creator() {
    let db = TestSqlite::new();
    let pool = db.pool(8);
    set_usage_limits(&mut db.conn(), 1, Usage::tokens(100), month(1)).unwrap();
    let p = pool.clone();
    let got = race(8, move |_| {
        get_or_create_usage_period(&mut p.get().unwrap(), 1, month(1)).unwrap()
    });
    assert_eq!(got.iter().filter(|g| g.created).count(), 1);
    assert!(got.iter().all(|g| g.row.id == got[0].row.id));
    let p = Arc::new(pool);
    let generic: Vec<Obtained<Stats>> = race(8, move |i| {
        get_or_create(&mut p.get().unwrap(), &new_stats("ytd", i as i64)).unwrap()
    });
    assert_eq!(generic.iter().filter(|g| g.created).count(), 1);
    let mut conn = db.conn();
    let periods: i64 = usage_periods::table.count().get_result(&mut conn).unwrap();
    let stats: i64 = strava_stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!((periods, stats), (1, 1));
}

/// SQLite: inside the caller's transaction, get-or-create, upserts and increments run in
/// savepoints of it (not in a transaction of their own, which SQLite would refuse), and the
/// caller's rollback undoes them all.
#[test]
fn sqlite_helpers_run_inside_a_callers_transaction_and_roll_back_with_it() {
    let db = TestSqlite::new();
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), month(1)).unwrap();
    let result: upsert_kit::Result<()> = conn.immediate_transaction(|c| {
        let got: Obtained<Stats> = get_or_create(c, &new_stats("ytd", 1))?;
        assert!(got.created);
        upsert_kit::atomic_upsert(c, &new_stats("all", 2))?;
        upsert_kit::counter::increment(c, 1, "k", month(1), Usage::tokens(5))?;
        Err(Error::invalid("test", "roll back"))
    });
    assert!(matches!(result, Err(Error::InvalidInput(_))));
    let stats: i64 = strava_stats::table.count().get_result(&mut conn).unwrap();
    let periods: i64 = usage_periods::table.count().get_result(&mut conn).unwrap();
    assert_eq!((stats, periods), (0, 0), "nothing half-written");
}
