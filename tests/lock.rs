//! Advisory locks on a real PostgreSQL server (RELIABILITY.md 11–15).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use upsert_kit::lock::{
    backend_pid, held_locks, lock, lock_shared, server_locks, shared_xact_lock, try_lock,
    try_lock_for, try_lock_shared, try_shared_xact_lock, try_xact_lock, with_lock, xact_lock,
    AdvisoryKey, LockKey, LockMode,
};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = Integer)]
    n: i32,
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

fn counter_table(conn: &mut PgConnection) {
    conn.batch_execute(
        "CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL);
         INSERT INTO counter VALUES (1, 0), (2, 0), (3, 0);",
    )
    .unwrap();
}

fn read(conn: &mut PgConnection, id: i32) -> i32 {
    diesel::sql_query("SELECT n FROM counter WHERE id = $1")
        .bind::<Integer, _>(id)
        .get_result::<N>(conn)
        .unwrap()
        .n
}

fn write(conn: &mut PgConnection, id: i32, n: i32) {
    diesel::sql_query("UPDATE counter SET n = $2 WHERE id = $1")
        .bind::<Integer, _>(id)
        .bind::<Integer, _>(n)
        .execute(conn)
        .unwrap();
}

/// The deliberately racy critical section: read, sleep, write the value read plus one.
fn read_sleep_write(conn: &mut PgConnection, id: i32) {
    let n = read(conn, id);
    std::thread::sleep(Duration::from_millis(2));
    write(conn, id, n + 1);
}

/// Whether a new session can take `key` at once (it lets go right after).
fn free_elsewhere(db: &TestDb, key: LockKey) -> bool {
    let mut other = db.conn();
    let taken = try_lock(&mut other, key).unwrap();
    taken.is_some()
}

fn lock_timeout(conn: &mut PgConnection) -> String {
    diesel::sql_query("SELECT current_setting('lock_timeout') AS value")
        .get_result::<Setting>(conn)
        .unwrap()
        .value
}

#[test]
fn mutual_exclusion_keeps_a_read_sleep_write_exact_and_without_the_lock_it_loses_updates() {
    const THREADS: usize = 8;
    const ROUNDS: i32 = 6;
    let db = Arc::new(TestDb::new());
    counter_table(&mut db.conn());

    // Row 1: no lock. Row 2: session lock (with_lock). Row 3: transaction-scoped lock.
    let conns: Vec<_> = (0..THREADS).map(|_| db.conn()).collect();
    let conns = Arc::new(std::sync::Mutex::new(conns));
    race(THREADS, move |_| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let key = LockKey::new("counter", 2);
        let xkey = LockKey::new("counter", 3);
        for _ in 0..ROUNDS {
            read_sleep_write(&mut conn, 1);
            with_lock(&mut conn, key, |c| {
                read_sleep_write(c, 2);
                Ok::<_, Error>(())
            })
            .unwrap();
            conn.transaction(|c| {
                xact_lock(c, xkey)?;
                read_sleep_write(c, 3);
                Ok::<_, Error>(())
            })
            .unwrap();
        }
    });

    let mut conn = db.conn();
    let expected = THREADS as i32 * ROUNDS;
    let (naive, session, xact) = (read(&mut conn, 1), read(&mut conn, 2), read(&mut conn, 3));
    eprintln!(
        "read-sleep-write x{expected}: no lock lost {} increments; session lock lost {}; \
         transaction lock lost {}",
        expected - naive,
        expected - session,
        expected - xact
    );
    assert_eq!(session, expected);
    assert_eq!(xact, expected);
    assert!(naive < expected, "without the lock no increment was lost");
    assert!(held_locks(&mut conn).unwrap().is_empty());
    assert!(server_locks(&mut conn).unwrap().is_empty());
}

#[test]
fn try_lock_returns_not_acquired_at_once_while_another_session_holds_it() {
    let db = TestDb::new();
    let key = LockKey::new("nightly", "stats");
    let mut holder = db.conn();
    let mut other = db.conn();
    // A try that wrongly waited would fail here instead of hanging the test.
    other.batch_execute("SET statement_timeout = '5s'").unwrap();

    let guard = lock(&mut holder, key).unwrap();
    assert!(try_lock(&mut other, key).unwrap().is_none());
    assert!(try_lock_shared(&mut other, key).unwrap().is_none());
    other
        .transaction(|c| {
            assert!(!try_xact_lock(c, key)?);
            assert!(!try_shared_xact_lock(c, key)?);
            Ok::<_, Error>(())
        })
        .unwrap();
    // A different key of the same namespace is free.
    assert!(try_lock(&mut other, LockKey::new("nightly", "other"))
        .unwrap()
        .is_some());

    guard.release().unwrap();
    let again = try_lock(&mut other, key).unwrap();
    assert!(again.is_some());
}

#[test]
fn shared_locks_admit_each_other_and_exclude_an_exclusive_holder() {
    let db = TestDb::new();
    let key = LockKey::new("report", 7);
    let (mut a, mut b, mut c) = (db.conn(), db.conn(), db.conn());
    c.batch_execute("SET statement_timeout = '5s'").unwrap();

    let reader = lock_shared(&mut a, key).unwrap();
    assert_eq!(reader.mode(), LockMode::Shared);
    b.transaction(|b| {
        shared_xact_lock(b, key)?;
        assert!(
            try_lock(&mut c, key)?.is_none(),
            "exclusive despite readers"
        );
        assert!(try_lock_shared(&mut c, key)?.is_some());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert!(try_lock(&mut c, key).unwrap().is_none());
    drop(reader);
    assert!(try_lock(&mut c, key).unwrap().is_some());
}

#[test]
fn try_lock_for_gives_up_within_its_bound_and_leaves_the_connection_usable() {
    let db = TestDb::new();
    let key = LockKey::new("reports", 2026);
    let mut waiter = db.conn();
    let before = lock_timeout(&mut waiter);
    // The guard owns its connection, so it can be released from another thread below.
    let guard = lock(db.conn(), key).unwrap();

    let bound = Duration::from_millis(300);
    let started = Instant::now();
    assert!(try_lock_for(&mut waiter, key, bound).unwrap().is_none());
    let waited = started.elapsed();
    eprintln!("try_lock_for({bound:?}) gave up after {waited:?}");
    assert!(waited >= bound, "gave up before its bound: {waited:?}");
    assert!(
        waited < bound + Duration::from_secs(2),
        "waited far past its bound: {waited:?}"
    );
    // Usable, and its lock_timeout is what it was.
    assert_eq!(read_one(&mut waiter), 1);
    assert_eq!(lock_timeout(&mut waiter), before);

    // Inside the caller's transaction: the transaction survives the timeout, the setting too.
    waiter
        .transaction(|c| {
            c.batch_execute("SET LOCAL lock_timeout = '7s'")?;
            assert!(try_lock_for(&mut *c, key, Duration::from_millis(50))?.is_none());
            assert_eq!(read_one(c), 1);
            assert_eq!(lock_timeout(c), "7s");
            Ok::<_, Error>(())
        })
        .unwrap();

    // Released while waiting: the waiter waits in the server (its backend shows an ungranted
    // advisory lock in pg_locks, which a polling loop of try-locks never would) and is granted
    // as soon as the holder lets go, without waiting out its bound.
    let bound = Duration::from_secs(10);
    let waiter_pid = backend_pid(&mut waiter).unwrap();
    let mut observer = db.conn();
    let releaser = std::thread::spawn(move || {
        let deadline = Instant::now() + bound;
        let seen_waiting = loop {
            let waiting: i64 = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_locks \
                 WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
            )
            .bind::<diesel::sql_types::Integer, _>(waiter_pid)
            .get_result::<Count>(&mut observer)
            .unwrap()
            .n;
            if waiting > 0 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let released_at = Instant::now();
        guard.release().unwrap();
        (seen_waiting, released_at)
    });
    let got = try_lock_for(&mut waiter, key, bound).unwrap();
    let granted_at = Instant::now();
    let (seen_waiting, released_at) = releaser.join().unwrap();
    assert!(
        seen_waiting,
        "the waiter never waited in the server for the lock"
    );
    assert!(
        got.is_some(),
        "not granted after the holder released the lock"
    );
    let after_release = granted_at.duration_since(released_at);
    eprintln!("granted {after_release:?} after the release (bound {bound:?})");
    assert!(
        after_release < bound / 2,
        "granted {after_release:?} after the release: it waited out its bound"
    );
    drop(got);
    assert_eq!(lock_timeout(&mut waiter), before);
    assert!(held_locks(&mut waiter).unwrap().is_empty());

    assert!(matches!(
        try_lock_for(&mut waiter, key, Duration::from_secs(u64::MAX / 2)),
        Err(Error::InvalidInput(_))
    ));
}

fn read_one(conn: &mut PgConnection) -> i32 {
    diesel::sql_query("SELECT 1 AS n")
        .get_result::<N>(conn)
        .unwrap()
        .n
}

#[test]
fn a_session_lock_survives_its_transactions_rollback_unlike_a_transaction_lock() {
    let db = TestDb::new();
    let session_key = LockKey::new("rollback", "session");
    let xact_key = LockKey::new("rollback", "xact");
    let mut conn = db.conn();

    conn.batch_execute("BEGIN").unwrap();
    let mut guard = lock(&mut conn, session_key).unwrap();
    xact_lock(&mut guard, xact_key).unwrap();
    assert!(!free_elsewhere(&db, session_key));
    assert!(!free_elsewhere(&db, xact_key));
    guard.batch_execute("ROLLBACK").unwrap();

    assert!(!free_elsewhere(&db, session_key), "rollback released it");
    assert!(free_elsewhere(&db, xact_key));
    let held = held_locks(&mut guard).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].key, AdvisoryKey::Pair(session_key));
    assert_eq!(held[0].mode, LockMode::Exclusive);
    assert!(held[0].granted);

    drop(guard);
    assert!(free_elsewhere(&db, session_key));
    assert!(held_locks(&mut conn).unwrap().is_empty());
}

#[test]
fn dropping_the_guard_releases_the_lock_and_with_lock_releases_it_when_the_closure_fails() {
    let db = TestDb::new();
    let key = LockKey::new("drop", 1);
    let mut conn = db.conn();
    {
        let _guard = lock(&mut conn, key).unwrap();
        assert!(!free_elsewhere(&db, key));
    }
    assert!(free_elsewhere(&db, key));

    let failed: Result<(), Error> = with_lock(&mut conn, key, |_| Err(Error::invalid("x", "y")));
    assert!(matches!(failed, Err(Error::InvalidInput(_))));
    assert!(free_elsewhere(&db, key));

    // Nested guards on one session release in their own order.
    let other = LockKey::new("drop", 2);
    let mut outer = lock(&mut conn, key).unwrap();
    let inner = lock(&mut *outer, other).unwrap();
    inner.release().unwrap();
    assert!(free_elsewhere(&db, other));
    assert!(!free_elsewhere(&db, key));
    outer.release().unwrap();
    assert!(free_elsewhere(&db, key));
}

#[test]
fn server_locks_shows_holders_and_waiters_by_backend() {
    let db = TestDb::new();
    let key = LockKey::new("introspect", "k");
    let mut holder = db.conn();
    let holder_pid = backend_pid(&mut holder).unwrap();
    let guard = lock(&mut holder, key).unwrap();

    let url = db.url().to_owned();
    let waiter = std::thread::spawn(move || {
        let mut c = upsert_kit::db::connect_pg(&url).unwrap();
        let pid = backend_pid(&mut c).unwrap();
        let g = try_lock_for(&mut c, key, Duration::from_secs(10)).unwrap();
        assert!(g.is_some());
        pid
    });
    let mut observer = db.conn();
    let deadline = Instant::now() + Duration::from_secs(10);
    let locks = loop {
        let locks = server_locks(&mut observer).unwrap();
        if locks.iter().any(|l| !l.granted) || Instant::now() > deadline {
            break locks;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(locks.len(), 2, "{locks:?}");
    let held = locks.iter().find(|l| l.granted).unwrap();
    assert_eq!(
        (held.pid, held.key, held.mode),
        (holder_pid, AdvisoryKey::Pair(key), LockMode::Exclusive)
    );
    let waiting = locks.iter().find(|l| !l.granted).unwrap();
    assert_eq!(waiting.key, AdvisoryKey::Pair(key));
    drop(guard);
    assert_eq!(waiter.join().unwrap(), waiting.pid);

    // Keys taken by other code in the one-bigint form are reported as such.
    observer
        .batch_execute("SELECT pg_advisory_lock(-42::bigint)")
        .unwrap();
    assert_eq!(
        held_locks(&mut observer).unwrap()[0].key,
        AdvisoryKey::Single(-42)
    );
}

#[test]
fn a_panic_while_holding_a_lock_on_a_pool_of_one_leaves_the_next_checkout_without_advisory_locks() {
    let db = TestDb::new();
    let pool = db.pool(1);
    let key = LockKey::new("panic", 1);

    // Guard owning the pooled connection.
    let p = pool.clone();
    let outcome = std::thread::spawn(move || {
        let _guard = lock(p.get().unwrap(), key).unwrap();
        panic!("the job panics while holding the lock");
    })
    .join();
    assert!(outcome.is_err());
    assert!(held_locks(&mut pool.get().unwrap()).unwrap().is_empty());
    assert!(try_lock_for(&mut db.conn(), key, Duration::from_secs(5))
        .unwrap()
        .is_some());

    // Guard borrowing the pooled connection.
    let p = pool.clone();
    let outcome = std::thread::spawn(move || {
        let mut conn = p.get().unwrap();
        let _guard = lock(&mut conn, key).unwrap();
        panic!("the job panics while holding the lock");
    })
    .join();
    assert!(outcome.is_err());
    let mut next = pool.get().unwrap();
    assert!(held_locks(&mut next).unwrap().is_empty());
    assert!(try_lock_for(&mut next, key, Duration::from_secs(5))
        .unwrap()
        .is_some());
}

#[test]
fn a_guard_whose_release_fails_never_returns_its_connection_to_the_pool_holding_the_lock() {
    let db = TestDb::new();
    // No ping at checkout: r2d2's default test would also discard a connection stuck in an
    // aborted transaction, but the guard must not rely on how the pool is configured.
    let pool = r2d2::Pool::builder()
        .max_size(1)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(10))
        .build(diesel::r2d2::ConnectionManager::<PgConnection>::new(
            db.url(),
        ))
        .unwrap();
    let key = LockKey::new("poison", 1);

    let mut conn = pool.get().unwrap();
    let first_pid = backend_pid(&mut conn).unwrap();
    let mut guard = lock(conn, key).unwrap();
    // An aborted transaction refuses every statement until it ends, the unlock included.
    assert!(guard.batch_execute("BEGIN; SELECT 1 / 0").is_err());
    let released = guard.release();
    assert!(matches!(released, Err(Error::Database(_))), "{released:?}");

    // The pool closed that connection instead of handing it out again…
    let mut next = pool.get().unwrap();
    assert_ne!(backend_pid(&mut next).unwrap(), first_pid);
    assert!(held_locks(&mut next).unwrap().is_empty());
    // …and closing it gave the lock back.
    assert!(try_lock_for(&mut next, key, Duration::from_secs(5))
        .unwrap()
        .is_some());

    drop(next);

    // The same through drop, with a borrowed pooled connection.
    let mut conn = pool.get().unwrap();
    let pid = backend_pid(&mut conn).unwrap();
    {
        let mut guard = lock(&mut conn, key).unwrap();
        assert!(guard.batch_execute("BEGIN; SELECT 1 / 0").is_err());
    }
    drop(conn);
    let mut next = pool.get().unwrap();
    assert_ne!(backend_pid(&mut next).unwrap(), pid);
    assert!(try_lock_for(&mut next, key, Duration::from_secs(5))
        .unwrap()
        .is_some());
}

#[test]
fn killing_the_holders_backend_frees_the_lock_and_its_guard_drops_quietly() {
    let db = TestDb::new();
    let pool = db.pool(1);
    let key = LockKey::new("killed", 1);
    let app_name = format!("upsert-kit-holder-{}", std::process::id());

    let mut conn = pool.get().unwrap();
    diesel::sql_query("SELECT set_config('application_name', $1, false)")
        .bind::<Text, _>(&app_name)
        .execute(&mut conn)
        .unwrap();
    let mut guard = lock(conn, key).unwrap();

    let mut admin = db.conn();
    #[derive(QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        killed: i64,
    }
    let killed = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS killed FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind::<Text, _>(&app_name)
    .get_result::<Killed>(&mut admin)
    .unwrap()
    .killed;
    assert_eq!(killed, 1);

    // Another session gets the lock once the server has ended the killed backend.
    let got = try_lock_for(&mut admin, key, Duration::from_secs(5)).unwrap();
    assert!(got.is_some());
    drop(got);

    // The killed side notices on its next statement; the guard's release says so, no panic.
    let noticed = guard.batch_execute("SELECT 1").map_err(Error::from);
    eprintln!("killed holder: next statement {noticed:?}");
    assert!(
        matches!(noticed, Err(Error::ConnectionLost(_))),
        "{noticed:?}"
    );
    let released = guard.release();
    eprintln!("killed holder: release {released:?}");
    assert!(
        matches!(released, Err(Error::ConnectionLost(_))),
        "{released:?}"
    );
    // The pool replaces the dead connection.
    let mut next = pool.get().unwrap();
    assert_eq!(read_one(&mut next), 1);
}

#[test]
fn a_killed_holders_guard_dropped_without_release_does_not_panic() {
    let db = TestDb::new();
    let key = LockKey::new("killed", "drop");
    let mut conn = db.conn();
    let pid = backend_pid(&mut conn).unwrap();
    let guard = lock(&mut conn, key).unwrap();
    db.conn()
        .batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    assert!(try_lock_for(&mut db.conn(), key, Duration::from_secs(5))
        .unwrap()
        .is_some());
    drop(guard);
}

#[test]
fn opposite_lock_order_deadlocks_one_side_with_a_retryable_error() {
    let db = Arc::new(TestDb::new());
    let (a, b) = (LockKey::new("order", "a"), LockKey::new("order", "b"));
    let both_hold_one = Arc::new(Barrier::new(2));
    let conns = Arc::new(std::sync::Mutex::new(vec![db.conn(), db.conn()]));
    let outcomes = race(2, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let (first, second) = if i == 0 { (a, b) } else { (b, a) };
        let mut outer = lock(&mut conn, first).unwrap();
        both_hold_one.wait();
        let result = lock(&mut *outer, second).map(|inner| inner.release());
        // The deadlock's loser lets go of its first lock, so the winner proceeds.
        drop(outer);
        result.map(|r| r.unwrap())
    });
    let errors: Vec<&Error> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!("opposite lock order: {errors:?}");
    assert_eq!(errors.len(), 1, "{outcomes:?}");
    assert!(matches!(errors[0], Error::Deadlock(_)), "{:?}", errors[0]);
    assert!(errors[0].is_retryable());
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
