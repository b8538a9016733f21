//! Tests of the test harness itself (`tests/common`).

mod common;

use common::{admin_url, database_exists, race, with_database, TestDb, TestSqlite};
use diesel::dsl::sql;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{PgConnection, RunQueryDsl, SqliteConnection};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pg_has_table(conn: &mut PgConnection, table: &str) -> bool {
    diesel::select(
        sql::<Bool>("to_regclass(")
            .bind::<Text, _>(table)
            .sql(") IS NOT NULL"),
    )
    .get_result(conn)
    .expect("query to_regclass")
}

fn pg_count(conn: &mut PgConnection, query: &str) -> i64 {
    diesel::select(sql::<BigInt>(&format!("({query})")))
        .get_result(conn)
        .expect(query)
}

fn sqlite_has_table(conn: &mut SqliteConnection, table: &str) -> bool {
    diesel::select(
        sql::<BigInt>("(SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ")
            .bind::<Text, _>(table)
            .sql(")"),
    )
    .get_result::<i64>(conn)
    .expect("query sqlite_master")
        == 1
}

#[test]
fn admin_url_answers_and_is_the_same_every_time() {
    let url = admin_url();
    assert_eq!(url, admin_url());
    upsert_kit::db::connect_pg(&url).expect("the admin URL answers");
}

#[test]
fn two_test_databases_are_different_and_both_migrated() {
    let a = TestDb::new();
    let b = TestDb::new();
    assert_ne!(a.name(), b.name());
    assert_ne!(a.url(), b.url());
    assert!(a
        .name()
        .starts_with(&format!("upsert_kit_t_{}_", std::process::id())));

    let (mut ca, mut cb) = (a.conn(), b.conn());
    for (db, conn) in [(&a, &mut ca), (&b, &mut cb)] {
        let current: String = diesel::select(sql::<Text>("current_database()"))
            .get_result(conn)
            .unwrap();
        assert_eq!(current, db.name());
        for table in [
            "strava_stats",
            "wakatime_stats",
            "strava_auth",
            "wakatime_auth",
        ] {
            assert!(
                pg_has_table(conn, table),
                "{table} missing in {}",
                db.name()
            );
        }
    }

    diesel::sql_query("INSERT INTO strava_stats (stats_type, data) VALUES ('all', '{}')")
        .execute(&mut ca)
        .unwrap();
    assert_eq!(pg_count(&mut ca, "SELECT count(*) FROM strava_stats"), 1);
    assert_eq!(pg_count(&mut cb, "SELECT count(*) FROM strava_stats"), 0);
}

#[test]
fn an_empty_test_database_has_no_tables_until_migrated() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    assert!(!pg_has_table(&mut conn, "strava_stats"));
    assert!(upsert_kit::db::run_migrations(&mut conn).unwrap() > 0);
    assert!(pg_has_table(&mut conn, "strava_stats"));
}

#[test]
fn a_dropped_test_database_is_gone_even_with_open_connections() {
    let db = TestDb::new();
    let name = db.name().to_owned();
    let admin = admin_url();
    assert!(database_exists(&admin, &name));

    let mut open = db.conn();
    let pool = db.pool(2);
    let _held = pool.get().unwrap();
    drop(db);

    assert!(!database_exists(&admin, &name));
    assert!(
        upsert_kit::db::ping(&mut open).is_err(),
        "the connection was ended"
    );
}

#[test]
fn a_pool_of_a_test_database_serves_its_size() {
    let db = TestDb::new();
    let pool = db.pool(3);
    let conns: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
    assert_eq!(conns.len(), 3);
    assert_eq!(pool.state().connections, 3);
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/postgres?sslmode=require", "t1"),
        "postgres://u:p@h:5432/t1?sslmode=require"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    assert_eq!(
        with_database("postgresql:///postgres?host=/run/postgresql", "t1"),
        "postgresql:///t1?host=/run/postgresql"
    );
}

#[test]
fn test_sqlite_databases_are_different_files_with_the_tables() {
    let a = TestSqlite::new();
    let b = TestSqlite::new();
    assert_ne!(a.url(), b.url());
    let mut ca = a.conn();
    for table in [
        "strava_stats",
        "wakatime_stats",
        "strava_auth",
        "wakatime_auth",
    ] {
        assert!(sqlite_has_table(&mut ca, table), "{table} missing");
    }
    diesel::sql_query("INSERT INTO strava_stats (stats_type, data) VALUES ('all', '{}')")
        .execute(&mut ca)
        .unwrap();
    let mut cb = b.pool(2).get().unwrap();
    assert!(sqlite_has_table(&mut cb, "strava_stats"));
    let rows: i64 = diesel::select(sql::<BigInt>("(SELECT count(*) FROM strava_stats)"))
        .get_result(&mut *cb)
        .unwrap();
    assert_eq!(rows, 0);

    let path = a.path().to_owned();
    assert!(path.exists());
    drop(ca);
    drop(a);
    assert!(!path.exists());
}

#[test]
fn an_empty_test_sqlite_database_has_no_tables() {
    let db = TestSqlite::empty();
    assert!(!sqlite_has_table(&mut db.conn(), "strava_stats"));
}

#[test]
fn race_runs_every_thread_at_once_and_returns_results_in_index_order() {
    const THREADS: usize = 8;
    let passed = Arc::new(AtomicUsize::new(0));
    let results = {
        let passed = Arc::clone(&passed);
        race(THREADS, move |i| {
            // Every thread has passed the barrier before any returns: each waits here for all.
            passed.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while passed.load(Ordering::SeqCst) < THREADS {
                assert!(Instant::now() < deadline, "thread {i} ran alone");
                std::thread::yield_now();
            }
            // Finish in reverse order, so order by completion would differ from index order.
            std::thread::sleep(Duration::from_millis(10 * (THREADS - i) as u64));
            (i, std::thread::current().name().map(str::to_owned))
        })
    };
    assert_eq!(passed.load(Ordering::SeqCst), THREADS);
    let expected: Vec<_> = (0..THREADS)
        .map(|i| (i, Some(format!("race-{i}"))))
        .collect();
    assert_eq!(results, expected);
}

#[test]
#[should_panic(expected = "thread 5 failed")]
fn race_propagates_a_thread_panic() {
    race(8, |i| {
        if i == 5 {
            panic!("thread {i} failed");
        }
    });
}
