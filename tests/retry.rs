//! The retry helper against errors raised for real by a PostgreSQL server.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use upsert_kit::retry::Retry;
use upsert_kit::{ConstraintKind, Error};
use upsert_kit_support::{race, TestDb};

diesel::table! {
    counters (id) {
        id -> Int4,
        n -> Int8,
    }
}

fn setup(db: &TestDb) -> PgConnection {
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0));
         INSERT INTO counters VALUES (1, 0), (2, 0);",
    )
    .unwrap();
    conn
}

fn read_n(conn: &mut PgConnection, id: i32) -> upsert_kit::Result<i64> {
    Ok(counters::table.find(id).select(counters::n).first(conn)?)
}

/// RELIABILITY 6: 8 threads each add 1 twenty times by reading and writing back under
/// SERIALIZABLE: the losers' serialization failures are retried as whole transactions, and the
/// sum is exact.
#[test]
fn serializable_read_modify_write_losers_are_rerun_and_the_sum_is_exact() {
    const THREADS: usize = 8;
    const EACH: u32 = 20;
    let db = TestDb::new();
    let mut conn = setup(&db);
    let pool = db.pool(THREADS as u32);
    let failures = Arc::new(AtomicU32::new(0));
    let (p, f) = (pool.clone(), Arc::clone(&failures));
    race(THREADS, move |_| {
        let mut c = p.get().unwrap();
        let policy = Retry::new()
            .max_attempts(100)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(20));
        for _ in 0..EACH {
            policy
                .run(|_| {
                    let r = c.build_transaction().serializable().run(|c| {
                        let n = read_n(c, 1)?;
                        diesel::update(counters::table.find(1))
                            .set(counters::n.eq(n + 1))
                            .execute(c)?;
                        Ok::<_, Error>(())
                    });
                    if let Err(e) = &r {
                        assert!(matches!(e, Error::SerializationFailure(_)), "{e:?}");
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                })
                .unwrap();
        }
    });
    let n = read_n(&mut conn, 1).unwrap();
    eprintln!(
        "serializable read-modify-write, {THREADS} threads × {EACH}: sum {n}, {} serialization \
         failures retried",
        failures.load(Ordering::SeqCst)
    );
    assert_eq!(n, i64::from(EACH) * THREADS as i64);
}

/// RELIABILITY 15 and 19: two transactions lock two rows in opposite orders; the server aborts
/// one with "deadlock detected", classified retryable; the retry helper re-runs it and both
/// finish.
#[test]
fn a_deadlock_is_classified_retryable_and_the_loser_is_rerun() {
    let db = TestDb::new();
    let mut conn = setup(&db);
    let barrier = Arc::new(Barrier::new(2));
    let deadlocks = Arc::new(AtomicU32::new(0));
    let url = db.url().to_owned();
    let workers: Vec<_> = [(1, 2), (2, 1)]
        .into_iter()
        .map(|(first, second)| {
            let (barrier, deadlocks, url) =
                (Arc::clone(&barrier), Arc::clone(&deadlocks), url.clone());
            std::thread::spawn(move || {
                let mut c = upsert_kit::db::connect_pg(&url).unwrap();
                c.batch_execute("SET deadlock_timeout = '50ms'").unwrap();
                Retry::new()
                    .base_delay(Duration::from_millis(5))
                    .run(|attempt| {
                        let r = c.transaction(|c| {
                            diesel::update(counters::table.find(first))
                                .set(counters::n.eq(counters::n + 1))
                                .execute(c)?;
                            if attempt == 0 {
                                barrier.wait(); // both hold their first row
                            }
                            diesel::update(counters::table.find(second))
                                .set(counters::n.eq(counters::n + 1))
                                .execute(c)?;
                            Ok::<_, Error>(())
                        });
                        if let Err(e) = &r {
                            assert!(matches!(e, Error::Deadlock(_)), "{e:?}");
                            assert!(e.is_retryable());
                            deadlocks.fetch_add(1, Ordering::SeqCst);
                        }
                        r
                    })
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(
        deadlocks.load(Ordering::SeqCst),
        1,
        "exactly one side was aborted"
    );
    assert_eq!(read_n(&mut conn, 1).unwrap(), 2);
    assert_eq!(read_n(&mut conn, 2).unwrap(), 2);
}

/// RELIABILITY 19: unique, check and not-null violations raised by the server are permanent:
/// the retry helper runs the closure once and returns the error, even when it is declared
/// idempotent.
#[test]
fn constraint_violations_from_the_server_are_not_retried() {
    let db = TestDb::new();
    let mut conn = setup(&db);
    let cases: [(&str, ConstraintKind); 3] = [
        ("INSERT INTO counters VALUES (1, 0)", ConstraintKind::Unique),
        (
            "UPDATE counters SET n = -1 WHERE id = 1",
            ConstraintKind::Check,
        ),
        (
            "INSERT INTO counters VALUES (3, NULL)",
            ConstraintKind::NotNull,
        ),
    ];
    for (sql, kind) in cases {
        let mut calls = 0;
        let err = Retry::new()
            .idempotent()
            .run(|_| {
                calls += 1;
                diesel::sql_query(sql).execute(&mut conn)?;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(calls, 1, "{sql}");
        assert!(
            matches!(err, Error::Constraint { kind: k, .. } if k == kind),
            "{sql}: {err:?}"
        );
    }
}

/// RELIABILITY 19: a lock timeout and a statement timeout raised by the server are their own
/// classes, not retried by the helper (waiting again would wait as long), and leave the
/// connection usable.
#[test]
fn lock_and_statement_timeouts_are_their_own_classes_and_not_retried() {
    let db = TestDb::new();
    let mut conn = setup(&db);
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN; SELECT 1 FROM counters WHERE id = 1 FOR UPDATE;")
        .unwrap();
    let mut calls = 0;
    let err = Retry::new()
        .run(|_| {
            calls += 1;
            conn.transaction(|c| {
                c.batch_execute("SET LOCAL lock_timeout = '50ms'")?;
                diesel::update(counters::table.find(1))
                    .set(counters::n.eq(counters::n + 1))
                    .execute(c)?;
                Ok::<_, Error>(())
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::LockTimeout(_)), "{err:?}");
    assert_eq!(calls, 1);
    holder.batch_execute("ROLLBACK").unwrap();

    calls = 0;
    let err = Retry::new()
        .run(|_| {
            calls += 1;
            conn.transaction(|c| {
                c.batch_execute("SET LOCAL statement_timeout = '50ms'; SELECT pg_sleep(5);")?;
                Ok::<_, Error>(())
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::StatementTimeout(_)), "{err:?}");
    assert_eq!(calls, 1);
    assert_eq!(
        read_n(&mut conn, 1).unwrap(),
        0,
        "the connection is still usable"
    );
}
