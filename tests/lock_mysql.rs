//! Named locks on MySQL/MariaDB (`GET_LOCK`): the same calls and guard as PostgreSQL's session
//! locks, on a real server (RELIABILITY.md 11–14 and "MySQL / MariaDB").

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Integer;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use upsert_kit::lock::mysql::{connection_id, holder, lock_name};
use upsert_kit::lock::{lock, try_lock, try_lock_for, with_lock, LockKey};
use upsert_kit::Error;
use upsert_kit_support::{race, TestMysql};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = Integer)]
    n: i32,
}

fn counter_db() -> TestMysql {
    TestMysql::with_sql(
        "CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL);
         INSERT INTO counter VALUES (1, 0), (2, 0);",
    )
}

fn read(conn: &mut MysqlConnection, id: i32) -> i32 {
    diesel::sql_query("SELECT n FROM counter WHERE id = ?")
        .bind::<Integer, _>(id)
        .get_result::<N>(conn)
        .unwrap()
        .n
}

fn write(conn: &mut MysqlConnection, id: i32, n: i32) {
    diesel::sql_query("UPDATE counter SET n = ? WHERE id = ?")
        .bind::<Integer, _>(n)
        .bind::<Integer, _>(id)
        .execute(conn)
        .unwrap();
}

/// The deliberately racy critical section: read, sleep, write the value read plus one.
fn read_sleep_write(conn: &mut MysqlConnection, id: i32) {
    let n = read(conn, id);
    std::thread::sleep(Duration::from_millis(2));
    write(conn, id, n + 1);
}

#[test]
fn mutual_exclusion_keeps_a_read_sleep_write_exact_and_without_the_lock_it_loses_updates() {
    const THREADS: usize = 8;
    const ROUNDS: i32 = 6;
    let db = counter_db();
    // Row 1: no lock. Row 2: the named lock (with_lock).
    let conns: Vec<_> = (0..THREADS).map(|_| db.conn()).collect();
    let conns = Arc::new(Mutex::new(conns));
    race(THREADS, move |_| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let key = LockKey::new("counter", 2);
        for _ in 0..ROUNDS {
            read_sleep_write(&mut conn, 1);
            with_lock(&mut conn, key, |c| {
                read_sleep_write(c, 2);
                Ok::<_, Error>(())
            })
            .unwrap();
        }
    });

    let mut conn = db.conn();
    let expected = THREADS as i32 * ROUNDS;
    let (naive, locked) = (read(&mut conn, 1), read(&mut conn, 2));
    eprintln!(
        "read-sleep-write x{expected} on MariaDB: no lock lost {} increments; GET_LOCK lost {}",
        expected - naive,
        expected - locked
    );
    assert_eq!(locked, expected);
    assert!(naive < expected, "without the lock no increment was lost");
    assert_eq!(holder(&mut conn, LockKey::new("counter", 2)).unwrap(), None);
}

#[test]
fn try_lock_returns_not_acquired_at_once_while_another_session_holds_it() {
    let db = TestMysql::new();
    let key = LockKey::new("nightly", "stats");
    let mut first = db.conn();
    let mut other = db.conn();
    let first_id = connection_id(&mut first).unwrap();

    let guard = lock(&mut first, key).unwrap();
    assert_eq!(
        guard.server_name(),
        Some(lock_name(key, db.name()).as_str()),
        "the server's name is the documented one"
    );
    assert_eq!(holder(&mut other, key).unwrap(), Some(first_id));
    assert!(try_lock(&mut other, key).unwrap().is_none());
    // A try that found the lock taken leaves the connection usable.
    assert_eq!(read_one(&mut other), 1);
    guard.release().unwrap();

    assert_eq!(holder(&mut other, key).unwrap(), None);
    let mine = try_lock(&mut other, key)
        .unwrap()
        .expect("free after the release");
    drop(mine);
    assert_eq!(holder(&mut first, key).unwrap(), None);
}

fn read_one(conn: &mut MysqlConnection) -> i32 {
    diesel::sql_query("SELECT 1 AS n")
        .get_result::<N>(conn)
        .unwrap()
        .n
}

#[test]
fn try_lock_for_waits_with_get_locks_own_timeout_and_is_granted_when_the_holder_lets_go() {
    let db = TestMysql::new();
    let key = LockKey::new("reports", 2026);
    let mut first = db.conn();
    let mut other = db.conn();

    let guard = lock(&mut first, key).unwrap();
    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    assert!(try_lock_for(&mut other, key, timeout).unwrap().is_none());
    // The server waited (a lower bound only: the wait was GET_LOCK's, not a client's poll).
    assert!(started.elapsed() >= timeout);
    assert_eq!(
        read_one(&mut other),
        1,
        "the connection is usable after a timeout"
    );

    // A waiter is granted the lock as soon as the holder releases it.
    let barrier = Arc::new(Barrier::new(2));
    let b = Arc::clone(&barrier);
    let url = db.url().to_owned();
    let waiter = std::thread::spawn(move || {
        let conn = upsert_kit::db::connect_mysql(&url).unwrap();
        b.wait();
        try_lock_for(conn, key, Duration::from_secs(60))
            .unwrap()
            .is_some()
    });
    barrier.wait();
    // Wait until the waiter is inside GET_LOCK, seen from the server.
    let mut observer = db.conn();
    while !waiting_for_lock(&mut observer) {
        std::thread::sleep(Duration::from_millis(5));
    }
    guard.release().unwrap();
    assert!(waiter.join().unwrap());

    // Zero is a try; more than i32::MAX milliseconds is refused before anything is sent.
    assert!(try_lock_for(&mut other, key, Duration::ZERO)
        .unwrap()
        .is_some());
    let too_long = try_lock_for(&mut other, key, Duration::from_secs(30 * 86_400));
    assert!(
        matches!(too_long, Err(Error::InvalidInput(_))),
        "{too_long:?}"
    );
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    c: i64,
}

fn waiting_for_lock(conn: &mut MysqlConnection) -> bool {
    diesel::sql_query(
        "SELECT COUNT(*) AS c FROM information_schema.PROCESSLIST \
         WHERE INFO LIKE 'SELECT GET_LOCK(%' AND ID <> CONNECTION_ID()",
    )
    .get_result::<Count>(conn)
    .unwrap()
    .c > 0
}

#[test]
fn one_key_names_one_lock_per_database_as_on_postgresql() {
    let (a, b) = (TestMysql::new(), TestMysql::new());
    let key = LockKey::new("token-refresh", 42);
    let (mut in_a, mut in_b, mut other_a) = (a.conn(), b.conn(), a.conn());
    let guard_a = lock(&mut in_a, key).unwrap();
    let guard_b = try_lock(&mut in_b, key).unwrap();
    assert!(
        guard_b.is_some(),
        "another database's lock of the same key is another lock"
    );
    assert_ne!(
        guard_a.server_name(),
        guard_b.as_ref().unwrap().server_name()
    );
    assert!(try_lock(&mut other_a, key).unwrap().is_none());
}

#[test]
fn named_locks_stack_and_survive_a_rollback() {
    let db = TestMysql::new();
    let key = LockKey::new("stack", 1);
    let mut conn = db.conn();
    let mut observer = db.conn();
    let me = connection_id(&mut conn).unwrap();

    let mut outer = lock(&mut conn, key).unwrap();
    // Taken inside a transaction that rolls back: still held.
    let rolled_back = outer.transaction(|c| {
        let inner = lock(&mut *c, key)?;
        inner.release()?;
        Err::<(), _>(Error::NotFound("roll back".into()))
    });
    assert!(rolled_back.is_err());
    assert_eq!(holder(&mut observer, key).unwrap(), Some(me));
    let inner = lock(&mut *outer, key).unwrap();
    inner.release().unwrap();
    assert_eq!(
        holder(&mut observer, key).unwrap(),
        Some(me),
        "the outer level is still held"
    );
    outer.release().unwrap();
    assert_eq!(holder(&mut observer, key).unwrap(), None);
}

#[test]
fn a_pooled_guard_holds_its_connection_and_a_panic_releases_the_lock() {
    let db = TestMysql::new();
    let pool = db.pool(1);
    let key = LockKey::new("panic", 1);

    // The guard owns the pooled connection: the pool has none to give meanwhile.
    let mut guard = lock(pool.get().unwrap(), key).unwrap();
    assert!(pool.try_get().is_none());
    guard.batch_execute("SELECT 1").unwrap();
    guard.release().unwrap();

    let p = pool.clone();
    let outcome = std::thread::spawn(move || {
        let _guard = lock(p.get().unwrap(), key).unwrap();
        panic!("the job panics while holding the lock");
    })
    .join();
    assert!(outcome.is_err());
    let mut next = pool.get().unwrap();
    assert_eq!(holder(&mut next, key).unwrap(), None);
    assert!(try_lock(&mut next, key).unwrap().is_some());
}

#[test]
fn a_guard_whose_release_fails_never_returns_its_connection_to_the_pool() {
    let db = TestMysql::new();
    // No ping at checkout: the guard must not rely on how the pool is configured.
    let pool = r2d2::Pool::builder()
        .max_size(1)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(10))
        .build(diesel::r2d2::ConnectionManager::<MysqlConnection>::new(
            db.url(),
        ))
        .unwrap();
    let key = LockKey::new("poison", 1);
    let mut admin = db.conn();

    let mut conn = pool.get().unwrap();
    let first_id = connection_id(&mut conn).unwrap();
    let guard = lock(conn, key).unwrap();
    // The holder's session is killed under the guard: the release cannot reach the server.
    diesel::sql_query(format!("KILL CONNECTION {first_id}"))
        .execute(&mut admin)
        .unwrap();
    let released = guard.release();
    assert!(released.is_err(), "{released:?}");

    // The pool closed that connection instead of handing it out again, and the server
    // released the killed session's lock.
    let mut next = pool.get().unwrap();
    let next_id = connection_id(&mut next).unwrap();
    assert_ne!(next_id, first_id);
    assert_eq!(holder(&mut next, key).unwrap(), None);

    // The same through drop, with a borrowed pooled connection.
    {
        let _guard = lock(&mut next, key).unwrap();
        diesel::sql_query(format!("KILL CONNECTION {next_id}"))
            .execute(&mut admin)
            .unwrap();
    }
    drop(next);
    let mut third = pool.get().unwrap();
    assert_ne!(connection_id(&mut third).unwrap(), next_id);
    assert!(try_lock(&mut third, key).unwrap().is_some());
}

#[test]
fn killing_a_waiting_get_lock_is_a_cancelled_error_and_holds_nothing() {
    let db = TestMysql::new();
    let key = LockKey::new("kill-query", 1);
    let mut first = db.conn();
    let first_id = connection_id(&mut first).unwrap();
    let _guard = lock(&mut first, key).unwrap();
    let url = db.url().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut conn = upsert_kit::db::connect_mysql(&url).unwrap();
        tx.send(connection_id(&mut conn).unwrap()).unwrap();
        let got = lock(&mut conn, key).map(|g| g.server_name().map(str::to_owned));
        (got, holder(&mut conn, key).unwrap())
    });
    let waiter_id = rx.recv().unwrap();
    let mut admin = db.conn();
    while !waiting_for_lock(&mut admin) {
        std::thread::sleep(Duration::from_millis(5));
    }
    diesel::sql_query(format!("KILL QUERY {waiter_id}"))
        .execute(&mut admin)
        .unwrap();
    let (got, holder_seen) = waiter.join().unwrap();
    assert!(matches!(got, Err(Error::Cancelled(_))), "{got:?}");
    assert_eq!(holder_seen, Some(first_id));
}

#[test]
fn opposite_lock_order_deadlocks_one_side_with_a_retryable_error() {
    let db = TestMysql::new();
    let (a, b) = (LockKey::new("order", 1), LockKey::new("order", 2));
    let conns = Arc::new(Mutex::new(vec![db.conn(), db.conn()]));
    let both_hold_one = Arc::new(Barrier::new(2));
    let outcomes = race(2, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let (first, second) = if i == 0 { (a, b) } else { (b, a) };
        let mut held = lock(&mut conn, first).unwrap();
        both_hold_one.wait();
        // Each now waits for the other's lock; the first lock is released when `held` drops,
        // after this result is taken, so the survivor is granted its second lock then.
        let second = lock(&mut *held, second).map(|g| g.server_name().is_some());
        second
    });
    let deadlocks = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::Deadlock(_))))
        .count();
    assert_eq!(deadlocks, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| matches!(o, Ok(true))),
        "{outcomes:?}"
    );
    assert!(outcomes
        .iter()
        .filter_map(|o| o.as_ref().err())
        .all(Error::is_retryable));
}
