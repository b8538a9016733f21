//! Get-or-create on a real PostgreSQL server and on SQLite.

mod fixture;

use diesel::prelude::*;
use fixture::stats;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use upsert_kit::get_or_create::{get_or_create, Obtained};
use upsert_kit::retry::Retry;
use upsert_kit::{upsert_model, ConstraintKind, Error};
use upsert_kit_support::race;

upsert_model! {
    table = stats, key = (stats_type);
    #[derive(Debug, Clone)]
    pub struct NewStats {
        pub stats_type: String,
        pub data: serde_json::Value,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = stats)]
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

fn stats_rows(conn: &mut PgConnection) -> i64 {
    stats::table.count().get_result(conn).unwrap()
}

/// The generic helper on any model: concurrent callers share one row, the stored values win,
/// and the row is returned as stored.
#[test]
fn generic_get_or_create_from_8_threads_returns_the_stored_row_and_one_creator() {
    let db = fixture::pg();
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
    let rows: i64 = stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 1);
}

/// A constraint other than the key (here a CHECK on the stats type's length) is reported, not
/// swallowed, and nothing is written; an invalid model never reaches the server.
#[test]
fn get_or_create_reports_other_constraints_and_rejects_invalid_rows() {
    let db = fixture::pg();
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
    let rows: i64 = stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0);
}

/// RELIABILITY 6: under REPEATABLE READ, a row created by another session after this
/// transaction's snapshot makes the get-or-create fail with a serialization failure; the retry
/// helper re-runs the whole transaction, which then finds the row.
#[test]
fn under_repeatable_read_the_loser_gets_a_serialization_failure_and_the_retry_succeeds() {
    let db = fixture::pg();
    let mut conn = db.conn();
    let mut other = db.conn();
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
                        // Another session creates the row and commits.
                        let elsewhere: Obtained<Stats> =
                            get_or_create(&mut other, &new_stats("ytd", 1))?;
                        created_elsewhere = Some(elsewhere.row.id);
                    }
                    get_or_create::<_, _, Stats>(c, &new_stats("ytd", 2))
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
    assert_eq!(got.row.data, serde_json::json!({ "n": 1 }));
    assert_eq!(stats_rows(&mut conn), 1);
}

/// SQLite: 8 connections on one file get-or-create one row: one row, one creator. Each call
/// is one immediate transaction, so the read after a conflicting insert cannot miss.
#[test]
fn sqlite_concurrent_get_or_create_returns_one_row_and_one_creator() {
    let db = fixture::sqlite();
    let pool = db.pool(8);
    let p = Arc::new(pool);
    let generic: Vec<Obtained<Stats>> = race(8, move |i| {
        get_or_create(&mut p.get().unwrap(), &new_stats("ytd", i as i64)).unwrap()
    });
    assert_eq!(generic.iter().filter(|g| g.created).count(), 1);
    assert!(generic.iter().all(|g| g.row == generic[0].row));
    let mut conn = db.conn();
    let stats: i64 = stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(stats, 1);
}

/// SQLite: inside the caller's transaction, get-or-create and upserts run in
/// savepoints of it (not in a transaction of their own, which SQLite would refuse), and the
/// caller's rollback undoes them all.
#[test]
fn sqlite_helpers_run_inside_a_callers_transaction_and_roll_back_with_it() {
    let db = fixture::sqlite();
    let mut conn = db.conn();
    let result: upsert_kit::Result<()> = conn.immediate_transaction(|c| {
        let got: Obtained<Stats> = get_or_create(c, &new_stats("ytd", 1))?;
        assert!(got.created);
        upsert_kit::atomic_upsert(c, &new_stats("all", 2))?;
        let again: Obtained<Stats> = get_or_create(c, &new_stats("ytd", 3))?;
        assert!(!again.created);
        Err(Error::invalid("test", "roll back"))
    });
    assert!(matches!(result, Err(Error::InvalidInput(_))));
    let stats: i64 = stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(stats, 0, "nothing half-written");
}

diesel::table! {
    people (id) {
        id -> BigInt,
        email -> Text,
        handle -> Text,
    }
}

upsert_model! {
    table = people, key = (email);
    #[derive(Debug, Clone)]
    struct PersonByEmail {
        email: String,
        handle: String,
    }
}

upsert_model! {
    table = people, key = (handle);
    #[derive(Debug, Clone)]
    struct PersonByHandle {
        email: String,
        handle: String,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = people)]
struct Person {
    id: i64,
    email: String,
    handle: String,
}

/// Two models of one table with different keys, read into the same row type on one
/// connection: the connection keeps each model's read by key as its own prepared statement
/// (its cache key is the table and the key's columns), so each finds the row by its own key.
macro_rules! two_keys_of_one_table {
    ($conn:expr) => {{
        let conn = $conn;
        let by_email = |email: &str, handle: &str| PersonByEmail {
            email: email.into(),
            handle: handle.into(),
        };
        let by_handle = |email: &str, handle: &str| PersonByHandle {
            email: email.into(),
            handle: handle.into(),
        };
        let ada: Obtained<Person> = get_or_create(conn, &by_email("ada@x", "ada")).unwrap();
        let bob: Obtained<Person> = get_or_create(conn, &by_handle("bob@x", "bob")).unwrap();
        assert!(ada.created && bob.created);
        for _ in 0..3 {
            // The email of one row with the handle of the other: each model reads by its key.
            let a: Obtained<Person> = get_or_create(conn, &by_email("ada@x", "bob")).unwrap();
            let b: Obtained<Person> = get_or_create(conn, &by_handle("ada@x", "bob")).unwrap();
            assert_eq!((a.created, &a.row), (false, &ada.row));
            assert_eq!((b.created, &b.row), (false, &bob.row));
        }
    }};
}

#[test]
fn two_models_of_one_table_with_different_keys_each_read_by_their_own_key() {
    let pg = upsert_kit_support::TestDb::with_sql(
        "CREATE TABLE people (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
         handle TEXT NOT NULL UNIQUE)",
    );
    two_keys_of_one_table!(&mut pg.conn());
    let lite = upsert_kit_support::TestSqlite::with_sql(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
         handle TEXT NOT NULL UNIQUE)",
    );
    two_keys_of_one_table!(&mut lite.conn());
}
