//! Each error class raised for real by the server, and how the crate classifies it.

mod fixture;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use fixture::Stats;
use serde_json::json;
use std::time::Duration;
use upsert_kit::{atomic_upsert, ConstraintKind, Error, UpsertMany};
use upsert_kit_support::race;

fn stats(kind: &str) -> Stats {
    let now = chrono::Utc::now().naive_utc();
    Stats {
        stats_type: kind.to_owned(),
        data: json!({"n": 1}),
        created_at: now,
        updated_at: now,
    }
}

fn err(r: diesel::QueryResult<usize>) -> Error {
    Error::from(r.expect_err("the statement should fail"))
}

fn backend_pid(conn: &mut PgConnection) -> i32 {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .unwrap()
        .pid
}

fn terminate(conn: &mut PgConnection, pid: i32) {
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(pid)
        .execute(conn)
        .unwrap();
}

/// Waits until backend `pid` runs a statement containing `needle`.
fn wait_for_query(conn: &mut PgConnection, pid: i32, needle: &str) {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    for _ in 0..500 {
        let n: N = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND position($2 in query) > 0",
        )
        .bind::<Integer, _>(pid)
        .bind::<Text, _>(needle)
        .get_result(conn)
        .unwrap();
        if n.n > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backend {pid} never ran {needle:?}");
}

#[test]
fn constraint_violations_are_permanent_and_named() {
    let db = fixture::pg();
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE TABLE parent (id INT PRIMARY KEY);
         CREATE TABLE child (id INT PRIMARY KEY, parent INT NOT NULL REFERENCES parent (id), n INT CHECK (n > 0));
         INSERT INTO parent VALUES (1);
         INSERT INTO child VALUES (1, 1, 1);",
    )
    .unwrap();
    let cases = [
        (
            "INSERT INTO child VALUES (1, 1, 1)",
            ConstraintKind::Unique,
            "child_pkey",
        ),
        (
            "INSERT INTO child VALUES (2, 9, 1)",
            ConstraintKind::ForeignKey,
            "child_parent_fkey",
        ),
        (
            "INSERT INTO child VALUES (3, 1, 0)",
            ConstraintKind::Check,
            "child_n_check",
        ),
    ];
    for (sql, kind, name) in cases {
        let e = err(diesel::sql_query(sql).execute(&mut conn));
        assert!(
            matches!(&e, Error::Constraint { kind: k, .. } if *k == kind),
            "{sql}: {e:?}"
        );
        assert_eq!(e.constraint_name(), Some(name));
        assert!(!e.is_retryable() && !e.is_outcome_unknown());
    }
    let e = err(
        diesel::sql_query("INSERT INTO child (id, parent) VALUES (4, NULL)").execute(&mut conn),
    );
    assert!(
        matches!(
            e,
            Error::Constraint {
                kind: ConstraintKind::NotNull,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

#[test]
fn a_serialization_failure_is_retryable() {
    let db = fixture::pg();
    let mut setup = db.conn();
    setup
        .batch_execute("CREATE TABLE t (id INT PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 0);")
        .unwrap();
    let mut t1 = db.conn();
    t1.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM t;")
        .unwrap();
    setup.batch_execute("UPDATE t SET n = n + 1").unwrap();
    let e = err(diesel::sql_query("UPDATE t SET n = n + 1").execute(&mut t1));
    assert!(matches!(e, Error::SerializationFailure(_)), "{e:?}");
    assert!(e.is_retryable());
}

#[test]
fn a_deadlock_is_detected_and_retryable() {
    let db = fixture::pg();
    let mut setup = db.conn();
    setup
        .batch_execute(
            "CREATE TABLE t (id INT PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 0), (2, 0);",
        )
        .unwrap();
    let url = db.url().to_owned();
    let results = race(2, move |i| {
        let mut conn = PgConnection::establish(&url).unwrap();
        let (first, second) = if i == 0 { (1, 2) } else { (2, 1) };
        conn.batch_execute("SET deadlock_timeout = '50ms'; BEGIN")
            .unwrap();
        diesel::sql_query("UPDATE t SET n = n + 1 WHERE id = $1")
            .bind::<Integer, _>(first)
            .execute(&mut conn)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let r = diesel::sql_query("UPDATE t SET n = n + 1 WHERE id = $1")
            .bind::<Integer, _>(second)
            .execute(&mut conn);
        let _ = conn.batch_execute("ROLLBACK");
        r.map_err(Error::from)
    });
    let errors: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one side is chosen as the victim: {results:?}"
    );
    assert!(matches!(errors[0], Error::Deadlock(_)), "{:?}", errors[0]);
    assert!(errors[0].is_retryable());
}

#[test]
fn lock_and_statement_timeouts_and_cancels_have_their_own_classes() {
    let db = fixture::pg();
    let mut holder = db.conn();
    holder
        .batch_execute("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    holder
        .batch_execute("BEGIN; SELECT * FROM t FOR UPDATE;")
        .unwrap();

    let mut waiter = db.conn();
    waiter.batch_execute("SET lock_timeout = '100ms'").unwrap();
    let e = err(diesel::sql_query("UPDATE t SET id = 1").execute(&mut waiter));
    assert!(matches!(e, Error::LockTimeout(_)), "{e:?}");
    assert!(!e.is_retryable());

    waiter
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = '100ms'")
        .unwrap();
    let e = err(diesel::sql_query("SELECT pg_sleep(5)").execute(&mut waiter));
    assert!(matches!(e, Error::StatementTimeout(_)), "{e:?}");
    assert!(!e.is_retryable());
    waiter.batch_execute("SET statement_timeout = 0").unwrap();

    let pid = backend_pid(&mut waiter);
    let canceller = std::thread::spawn({
        let url = db.url().to_owned();
        move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            wait_for_query(&mut conn, pid, "pg_sleep");
            diesel::sql_query("SELECT pg_cancel_backend($1)")
                .bind::<Integer, _>(pid)
                .execute(&mut conn)
                .unwrap();
        }
    });
    let e = err(diesel::sql_query("SELECT pg_sleep(10)").execute(&mut waiter));
    canceller.join().unwrap();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(!e.is_retryable());
    holder.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_connection_terminated_inside_a_transaction_is_lost_before_commit() {
    let db = fixture::pg();
    let mut victim = db.conn();
    let mut admin = db.conn();
    victim.batch_execute("BEGIN").unwrap();
    let pid = backend_pid(&mut victim);
    terminate(&mut admin, pid);
    let e = err(diesel::sql_query("SELECT 1").execute(&mut victim));
    assert!(matches!(e, Error::ConnectionLost(_)), "{e:?}");
    assert!(e.is_retryable() && !e.is_outcome_unknown());
}

/// A trigger that sleeps lets the test terminate the backend while the write is in flight.
fn slow_writes(conn: &mut PgConnection, deferred: bool) {
    let timing = if deferred {
        "CREATE CONSTRAINT TRIGGER slow AFTER INSERT OR UPDATE ON stats DEFERRABLE INITIALLY DEFERRED"
    } else {
        "CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON stats"
    };
    conn.batch_execute(&format!(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
         {timing} FOR EACH ROW EXECUTE FUNCTION slow();"
    ))
    .unwrap();
}

#[test]
fn a_connection_lost_while_an_autocommit_upsert_runs_leaves_the_outcome_unknown() {
    let db = fixture::pg();
    let mut conn = db.conn();
    slow_writes(&mut conn, false);
    let pid = backend_pid(&mut conn);
    let killer = std::thread::spawn({
        let url = db.url().to_owned();
        move || {
            let mut admin = PgConnection::establish(&url).unwrap();
            wait_for_query(&mut admin, pid, "INSERT INTO");
            terminate(&mut admin, pid);
        }
    });
    let e = atomic_upsert(&mut conn, &stats("ytd")).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(e, Error::OutcomeUnknown(_)), "{e:?}");
    assert!(e.is_outcome_unknown() && !e.is_retryable());
    // No COMMIT was in flight: the message says what was.
    let message = e.to_string();
    assert!(
        message.contains("while a statement outside any transaction ran")
            && !message.to_lowercase().contains("commit:"),
        "{message}"
    );
}

#[test]
fn a_connection_lost_during_commit_leaves_the_outcome_unknown() {
    let db = fixture::pg();
    let mut conn = db.conn();
    slow_writes(&mut conn, true);
    let pid = backend_pid(&mut conn);
    let killer = std::thread::spawn({
        let url = db.url().to_owned();
        move || {
            let mut admin = PgConnection::establish(&url).unwrap();
            wait_for_query(&mut admin, pid, "COMMIT");
            terminate(&mut admin, pid);
        }
    });
    // Two chunks: the bulk upsert runs in a transaction, and the deferred trigger runs at COMMIT.
    let rows = vec![stats("a"), stats("b")];
    let e = UpsertMany::new(&rows)
        .chunk_size(1)
        .execute(&mut conn)
        .unwrap_err();
    killer.join().unwrap();
    assert!(matches!(e, Error::OutcomeUnknown(_)), "{e:?}");
    assert!(e.is_outcome_unknown() && !e.is_retryable());
    assert!(
        e.to_string().contains("connection lost during COMMIT: "),
        "{e}"
    );
}
