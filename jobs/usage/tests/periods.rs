//! Get-or-create of usage periods, on a real PostgreSQL server and on SQLite. (The generic
//! get-or-create tests are the library's own, in the workspace root.)

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use upsert_kit::{ConstraintKind, Error, Retry};
use upsert_kit_support::{race, TestDb, TestSqlite};
use usage_tracking::schema::usage_periods;
use usage_tracking::{
    counter, get_or_create_usage_period, naive, set_usage_limits, Usage, PG_MIGRATIONS,
    SQLITE_MIGRATIONS,
};

fn month(m: u32) -> NaiveDateTime {
    month_of(2026, m)
}

fn month_of(year: i32, m: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(year, m, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

fn period_rows<C>(conn: &mut C) -> i64
where
    C: diesel::Connection,
    diesel::dsl::Count<usage_periods::table>: diesel::query_dsl::LoadQuery<'static, C, i64>,
{
    usage_periods::table.count().get_result(conn).unwrap()
}

/// RELIABILITY 3: 16 threads, released by a barrier, get-or-create one account's period for
/// one month at once, for 6 months in turn: each time one row, every caller gets its id,
/// exactly one says "created". The naive select-then-insert, raced the same way on another
/// account, month after month, fails with duplicate-key errors; the test fails only if it never
/// does in 24 rounds.
#[test]
fn concurrent_get_or_create_usage_period_returns_one_row_and_one_creator_while_select_then_insert_fails(
) {
    const THREADS: usize = 16;
    const ATOMIC_ROUNDS: u32 = 6;
    const NAIVE_ROUNDS: u32 = 24;
    let db = TestDb::migrated(PG_MIGRATIONS);
    let pool = db.pool(THREADS as u32);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), month(1)).unwrap();
    set_usage_limits(&mut conn, 2, Usage::tokens(100), month(1)).unwrap();

    for m in 1..=ATOMIC_ROUNDS {
        let p = pool.clone();
        let got = race(THREADS, move |_| {
            get_or_create_usage_period(&mut p.get().unwrap(), 1, month(m))
        });
        let got: Vec<_> = got
            .into_iter()
            .map(|g| g.unwrap_or_else(|e| panic!("month {m}: get-or-create failed: {e:?}")))
            .collect();
        let id = got[0].row.id;
        assert!(
            got.iter().all(|g| g.row.id == id),
            "month {m}: every caller gets the same row"
        );
        assert_eq!(
            got.iter().filter(|g| g.created).count(),
            1,
            "month {m}: exactly one creator"
        );
        assert!(got.iter().all(|g| g.row.tokens_limit == 100));
    }
    assert_eq!(period_rows(&mut conn), i64::from(ATOMIC_ROUNDS));

    // The naive baseline: a fresh month per round, until a round collides.
    let (mut rounds, mut collisions, mut creators) = (0, 0, 0);
    for round in 0..NAIVE_ROUNDS {
        rounds += 1;
        let at = month_of(2027 + (round / 12) as i32, round % 12 + 1);
        let p = pool.clone();
        let results = race(THREADS, move |_| {
            naive::get_or_create_usage_period_select_then_insert(&mut p.get().unwrap(), 2, at)
        });
        for r in results {
            match r {
                Ok(got) => creators += usize::from(got.created),
                Err(Error::Constraint {
                    kind: ConstraintKind::Unique,
                    ..
                }) => collisions += 1,
                Err(e) => panic!("unexpected error from the naive select-then-insert: {e:?}"),
            }
        }
        if collisions > 0 {
            break;
        }
    }
    eprintln!(
        "get-or-create of one period by {THREADS} threads: atomic 0 errors and 1 creator in each \
         of {ATOMIC_ROUNDS} rounds; naive select-then-insert {collisions} duplicate-key errors \
         in {rounds} round(s)"
    );
    assert!(
        collisions > 0,
        "the naive select-then-insert never collided in {rounds} rounds of {THREADS} threads: \
         {creators} creators, one per round, and no duplicate-key error"
    );
    // The unique index kept the data right even for the naive code: one row per month.
    let naive_rows: i64 = usage_periods::table
        .filter(usage_periods::account.eq(2))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(naive_rows, i64::from(rounds));
}

/// RELIABILITY 21: an unknown account or an instant out of range is a typed error, and no
/// period is written.
#[test]
fn get_or_create_usage_period_rejects_unknown_accounts_and_bad_instants() {
    let db = TestDb::migrated(PG_MIGRATIONS);
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

/// RELIABILITY 6, for usage periods: under REPEATABLE READ, a period created by another session
/// after this transaction's snapshot makes `get_or_create_usage_period` fail with a
/// serialization failure (as its documentation says); the retry helper re-runs the whole
/// transaction, which then finds the row.
#[test]
fn under_repeatable_read_a_period_created_meanwhile_is_a_serialization_failure_and_the_retry_finds_it(
) {
    let db = TestDb::migrated(PG_MIGRATIONS);
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

/// SQLite: 8 connections on one file, released by a barrier, get-or-create one period: one
/// row, one creator. Each call is one immediate transaction, so the read after a conflicting
/// insert cannot miss.
#[test]
fn sqlite_concurrent_get_or_create_usage_period_returns_one_row_and_one_creator() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let pool = db.pool(8);
    set_usage_limits(&mut db.conn(), 1, Usage::tokens(100), month(1)).unwrap();
    let p = pool.clone();
    let got = race(8, move |_| {
        get_or_create_usage_period(&mut p.get().unwrap(), 1, month(1)).unwrap()
    });
    assert_eq!(got.iter().filter(|g| g.created).count(), 1);
    assert!(got.iter().all(|g| g.row.id == got[0].row.id));
    assert_eq!(period_rows(&mut db.conn()), 1);
}

/// SQLite: inside the caller's transaction, period creation and increments run in savepoints
/// of it (not in a transaction of their own, which SQLite would refuse), and the caller's
/// rollback undoes them all.
#[test]
fn sqlite_usage_writes_inside_a_callers_transaction_roll_back_with_it() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), month(1)).unwrap();
    let result: upsert_kit::Result<()> = conn.immediate_transaction(|c| {
        assert!(get_or_create_usage_period(c, 1, month(1))?.created);
        let counted = counter::increment(c, 1, "k", month(1), Usage::tokens(5))?;
        assert_eq!(counted.totals.tokens, 5);
        Err(Error::invalid("test", "roll back"))
    });
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    assert_eq!(period_rows(&mut conn), 0, "nothing half-written");
    // The key was rolled back with the rest: it counts now.
    assert!(
        counter::increment(&mut conn, 1, "k", month(1), Usage::tokens(5))
            .unwrap()
            .applied
    );
}
