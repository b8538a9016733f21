//! Tests of the test harness itself.

use diesel::dsl::sql;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upsert_kit_support::{admin_url, database_exists, race, with_database, TestDb, TestSqlite};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations/sqlite");

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
    let a = TestDb::migrated(PG_MIGRATIONS);
    let b = TestDb::migrated(PG_MIGRATIONS);
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
        assert!(
            pg_has_table(conn, "notes"),
            "notes missing in {}",
            db.name()
        );
    }

    diesel::sql_query("INSERT INTO notes (body) VALUES ('a')")
        .execute(&mut ca)
        .unwrap();
    assert_eq!(pg_count(&mut ca, "SELECT count(*) FROM notes"), 1);
    assert_eq!(pg_count(&mut cb, "SELECT count(*) FROM notes"), 0);
}

#[test]
fn with_sql_runs_every_statement_of_the_setup() {
    let db = TestDb::with_sql(
        "CREATE TABLE a (n INT); CREATE TABLE b (n INT); INSERT INTO a VALUES (1), (2);",
    );
    let mut conn = db.conn();
    assert!(pg_has_table(&mut conn, "a") && pg_has_table(&mut conn, "b"));
    assert_eq!(pg_count(&mut conn, "SELECT count(*) FROM a"), 2);
    let lite = TestSqlite::with_sql("CREATE TABLE a (n INT); INSERT INTO a VALUES (1);");
    assert!(sqlite_has_table(&mut lite.conn(), "a"));
}

#[test]
fn on_names_the_server_in_its_error_without_the_password() {
    let err = TestDb::on("postgres://u:s3cret@127.0.0.1:1/postgres?connect_timeout=2").unwrap_err();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn an_empty_test_database_has_no_tables_until_migrated() {
    use diesel_migrations::MigrationHarness;
    let db = TestDb::new();
    let mut conn = db.conn();
    assert!(!pg_has_table(&mut conn, "notes"));
    assert_eq!(
        pg_count(
            &mut conn,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0
    );
    assert_eq!(conn.run_pending_migrations(PG_MIGRATIONS).unwrap().len(), 1);
    assert!(pg_has_table(&mut conn, "notes"));
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
fn a_pool_of_a_test_database_serves_its_size_and_no_more() {
    let db = TestDb::new();
    let pool = db.pool(3);
    let mut held: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
    // Three distinct server sessions, all open at once, on the test database.
    let mut pids: Vec<i32> = held
        .iter_mut()
        .map(|c| {
            diesel::select(sql::<diesel::sql_types::Integer>("pg_backend_pid()"))
                .get_result(&mut **c)
                .unwrap()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "three checkouts share a session: {pids:?}");
    assert_eq!(
        pg_count(
            &mut held[0],
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                db.name()
            )
        ),
        3
    );
    // A fourth checkout finds nothing idle; returning one makes it available again.
    assert!(
        pool.try_get().is_none(),
        "the pool handed out a fourth connection"
    );
    held.pop();
    assert!(pool.try_get().is_some());
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
    let a = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let b = TestSqlite::migrated(SQLITE_MIGRATIONS);
    assert_ne!(a.url(), b.url());
    let mut ca = a.conn();
    assert!(sqlite_has_table(&mut ca, "notes"), "notes missing");
    diesel::sql_query("INSERT INTO notes (body) VALUES ('a')")
        .execute(&mut ca)
        .unwrap();
    let mut cb = b.pool(2).get().unwrap();
    assert!(sqlite_has_table(&mut cb, "notes"));
    let rows: i64 = diesel::select(sql::<BigInt>("(SELECT count(*) FROM notes)"))
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
    let db = TestSqlite::new();
    assert!(!sqlite_has_table(&mut db.conn(), "notes"));
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
