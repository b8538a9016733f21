//! Session locks on real servers (RELIABILITY.md 11–15 and "MySQL / MariaDB"): PostgreSQL's
//! advisory locks and MySQL/MariaDB's named locks (`GET_LOCK`), through the same calls and guard.
//!
//! Each guarantee both backends give is one test body, generic over the backend ([`Backend`]),
//! run on PostgreSQL (`postgres::…`) and on MySQL/MariaDB (`mysql::…`). A backend's own tests
//! (PostgreSQL's shared and transaction-scoped locks, `server_locks`, `pg_terminate_backend`;
//! MySQL's `GET_LOCK` timeout, lock names, `KILL QUERY`) are in its module.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection, R2D2Connection};
use diesel::sql_types::Integer;
use std::fmt::Debug;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use upsert_kit::lock::{
    exclusive_transaction, lock, try_lock, try_lock_for, with_lock, ExclusiveBackend, LockBackend,
    LockKey, LockSession,
};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDatabase};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = Integer)]
    n: i32,
}

diesel::table! {
    counter (id) {
        id -> Integer,
        n -> Integer,
    }
}

/// The counters the critical sections increment: rows 1 to 4 at 0.
const COUNTER: &str = "CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL);
     INSERT INTO counter VALUES (1, 0), (2, 0), (3, 0), (4, 0);";

/// The tests' own statements: the same Diesel code on each backend's connection (implemented
/// by a macro, as the queries' bounds differ per backend).
trait Counter {
    /// Counter `id`'s value.
    fn read(&mut self, id: i32) -> i32;
    /// Sets counter `id` to `n`.
    fn write(&mut self, id: i32, n: i32);
    /// `SELECT 1`: whether the connection is usable.
    fn read_one(&mut self) -> i32;
}

macro_rules! counter {
    ($($conn:ty),*) => {$(
        impl Counter for $conn {
            fn read(&mut self, id: i32) -> i32 {
                counter::table
                    .find(id)
                    .select(counter::n)
                    .get_result(self)
                    .unwrap()
            }

            fn write(&mut self, id: i32, n: i32) {
                diesel::update(counter::table.find(id))
                    .set(counter::n.eq(n))
                    .execute(self)
                    .unwrap();
            }

            fn read_one(&mut self) -> i32 {
                diesel::sql_query("SELECT 1 AS n")
                    .get_result::<N>(self)
                    .unwrap()
                    .n
            }
        }
    )*};
}

counter!(PgConnection, MysqlConnection, SqliteConnection);

/// What the lock tests need of a backend beyond its test database: how it names sessions and
/// locks, and how it shows who holds one.
trait Backend: 'static {
    /// The backend's test database.
    type Db: TestDatabase<Connection = Self::Conn>;
    /// Its connection, which holds session locks.
    type Conn: LockBackend
        + ExclusiveBackend
        + LockSession<Connection = Self::Conn>
        + R2D2Connection
        + Counter
        + Send
        + 'static;
    /// A session, as the server names it: PostgreSQL's backend pid, MySQL's connection id.
    type Session: Copy + Eq + Debug;

    /// `conn`'s session.
    fn session(conn: &mut Self::Conn) -> Self::Session;

    /// The session holding `key` in `conn`'s database, asked of the server.
    fn holder(conn: &mut Self::Conn, key: LockKey) -> Option<Self::Session>;

    /// The name the server knows `key` by in `db`, as `SessionLock::server_name` gives it.
    fn server_name(db: &Self::Db, key: LockKey) -> Option<String>;

    /// Makes a try that wrongly waited fail after 5 s instead of hanging the test, where the
    /// backend has a session setting for it.
    fn bound_waits(conn: &mut Self::Conn);

    /// Checks, where the server lists locks, that `conn` holds none and neither does any other
    /// session of its database.
    fn assert_no_lock_listed(conn: &mut Self::Conn);

    /// Checks that `other` is refused at once the backend's other kinds of lock on `key`, which
    /// another session holds.
    fn assert_other_kinds_refused(other: &mut Self::Conn, key: LockKey);

    /// Ends session `session` from `admin`, and waits until the server has ended it.
    fn kill(admin: &mut Self::Conn, session: Self::Session);
}

/// The deliberately racy critical section: read, sleep, write the value read plus one.
fn read_sleep_write<C: Counter>(conn: &mut C, id: i32) {
    let n = conn.read(id);
    std::thread::sleep(Duration::from_millis(2));
    conn.write(id, n + 1);
}

/// Whether a new session can take `key` at once (it lets go right after).
fn free_elsewhere<B: Backend>(db: &B::Db, key: LockKey) -> bool {
    let mut other = db.conn();
    let taken = try_lock(&mut other, key).unwrap();
    taken.is_some()
}

/// A pool of one connection that is not pinged at checkout: r2d2's default test would also
/// discard some broken connections, but the guard must not rely on how the pool is configured.
fn unchecked_pool<B: Backend>(db: &B::Db) -> r2d2::Pool<ConnectionManager<B::Conn>> {
    r2d2::Pool::builder()
        .max_size(1)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(10))
        .build(ConnectionManager::<B::Conn>::new(db.url()))
        .unwrap()
}

/// A backend's transaction-scoped lock (PostgreSQL's `xact_lock`).
type TransactionLock<C> = fn(&mut C, LockKey) -> upsert_kit::Result<()>;

/// Row 1: no lock. Row 2: session lock (`with_lock`). Row 3: `transaction_lock`, the backend's
/// transaction-scoped lock where it has one. Row 4: `exclusive_transaction`.
fn mutual_exclusion_keeps_a_read_sleep_write_exact_and_without_the_lock_it_loses_updates<
    B: Backend,
>(
    transaction_lock: Option<TransactionLock<B::Conn>>,
) {
    const THREADS: usize = 8;
    const ROUNDS: i32 = 6;
    let db = B::Db::with_sql(COUNTER);
    let (key, xkey) = (LockKey::new("counter", 2), LockKey::new("counter", 3));
    let ekey = LockKey::new("counter", 4);

    let conns: Vec<_> = (0..THREADS).map(|_| db.conn()).collect();
    let conns = Arc::new(Mutex::new(conns));
    race(THREADS, move |_| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        for _ in 0..ROUNDS {
            read_sleep_write(&mut conn, 1);
            with_lock(&mut conn, key, |c| {
                read_sleep_write(c, 2);
                Ok::<_, Error>(())
            })
            .unwrap();
            if let Some(transaction_lock) = transaction_lock {
                conn.transaction(|c| {
                    transaction_lock(c, xkey)?;
                    read_sleep_write(c, 3);
                    Ok::<_, Error>(())
                })
                .unwrap();
            }
            exclusive_transaction(&mut conn, ekey, |c| {
                read_sleep_write(c, 4);
                Ok::<_, Error>(())
            })
            .unwrap();
        }
    });

    let mut conn = db.conn();
    let expected = THREADS as i32 * ROUNDS;
    let (naive, session, xact) = (conn.read(1), conn.read(2), conn.read(3));
    assert_eq!(
        conn.read(4),
        expected,
        "exclusive_transaction lost increments"
    );
    eprintln!(
        "read-sleep-write x{expected} on {}: no lock lost {} increments; session lock lost {}; \
         transaction lock lost {}",
        B::Db::BACKEND,
        expected - naive,
        expected - session,
        if transaction_lock.is_some() {
            (expected - xact).to_string()
        } else {
            "(none)".into()
        }
    );
    assert_eq!(session, expected);
    if transaction_lock.is_some() {
        assert_eq!(xact, expected);
    }
    assert!(naive < expected, "without the lock no increment was lost");
    assert_eq!(B::holder(&mut conn, key), None);
    assert_eq!(B::holder(&mut conn, xkey), None);
    assert_eq!(B::holder(&mut conn, ekey), None);
    B::assert_no_lock_listed(&mut conn);
}

/// SQLite's exclusive transaction is `BEGIN IMMEDIATE`: threads of one process on one file
/// keep a read-sleep-write exact with it, and lose increments without it.
#[test]
fn sqlite_exclusive_transaction_keeps_a_read_sleep_write_exact_and_without_it_updates_are_lost() {
    const THREADS: usize = 8;
    const ROUNDS: i32 = 6;
    let db = Arc::new(upsert_kit_support::TestSqlite::with_sql(COUNTER));
    let key = LockKey::new("counter", 4);
    let shared = Arc::clone(&db);
    race(THREADS, move |_| {
        let mut conn = shared.conn();
        for _ in 0..ROUNDS {
            read_sleep_write(&mut conn, 1);
            exclusive_transaction(&mut conn, key, |c| {
                read_sleep_write(c, 4);
                Ok::<_, Error>(())
            })
            .unwrap();
        }
    });
    let mut conn = db.conn();
    let expected = THREADS as i32 * ROUNDS;
    let naive = conn.read(1);
    eprintln!(
        "read-sleep-write x{expected} on SQLite: no lock lost {}",
        expected - naive
    );
    assert_eq!(conn.read(4), expected);
    assert!(
        naive < expected,
        "without the exclusive transaction no increment was lost"
    );
    // A failing body rolls back and its error comes back unchanged.
    let failed = exclusive_transaction(&mut conn, key, |c| {
        c.write(4, 0);
        Err::<(), _>(Error::NotFound("changed my mind".into()))
    });
    assert!(matches!(failed, Err(Error::NotFound(_))), "{failed:?}");
    assert_eq!(conn.read(4), expected);
}

fn try_lock_returns_not_acquired_at_once_while_another_session_holds_it<B: Backend>() {
    let db = B::Db::new();
    let key = LockKey::new("nightly", "stats");
    let mut first = db.conn();
    let mut other = db.conn();
    // A try that wrongly waited would fail here instead of hanging the test.
    B::bound_waits(&mut other);
    let first_session = B::session(&mut first);

    let guard = lock(&mut first, key).unwrap();
    assert_eq!(
        guard.server_name(),
        B::server_name(&db, key).as_deref(),
        "the server's name is the documented one"
    );
    assert_eq!(B::holder(&mut other, key), Some(first_session));
    assert!(try_lock(&mut other, key).unwrap().is_none());
    B::assert_other_kinds_refused(&mut other, key);
    // A try that found the lock taken leaves the connection usable.
    assert_eq!(other.read_one(), 1);
    // A different key of the same namespace is free.
    assert!(try_lock(&mut other, LockKey::new("nightly", "other"))
        .unwrap()
        .is_some());
    guard.release().unwrap();

    assert_eq!(B::holder(&mut other, key), None);
    let mine = try_lock(&mut other, key)
        .unwrap()
        .expect("free after the release");
    drop(mine);
    assert_eq!(B::holder(&mut first, key), None);
}

fn dropping_the_guard_releases_the_lock_and_with_lock_releases_it_when_the_closure_fails<
    B: Backend,
>() {
    let db = B::Db::new();
    let key = LockKey::new("drop", 1);
    let mut conn = db.conn();
    {
        let _guard = lock(&mut conn, key).unwrap();
        assert!(!free_elsewhere::<B>(&db, key));
    }
    assert!(free_elsewhere::<B>(&db, key));

    let failed: Result<(), Error> = with_lock(&mut conn, key, |_| Err(Error::invalid("x", "y")));
    assert!(matches!(failed, Err(Error::InvalidInput(_))));
    assert!(free_elsewhere::<B>(&db, key));

    // Nested guards on one session release in their own order.
    let other = LockKey::new("drop", 2);
    let mut outer = lock(&mut conn, key).unwrap();
    let inner = lock(&mut *outer, other).unwrap();
    inner.release().unwrap();
    assert!(free_elsewhere::<B>(&db, other));
    assert!(!free_elsewhere::<B>(&db, key));
    outer.release().unwrap();
    assert!(free_elsewhere::<B>(&db, key));
}

fn a_pooled_guard_holds_its_connection_and_a_panic_while_holding_the_lock_leaves_the_next_checkout_without_it<
    B: Backend,
>()
where
    PooledConnection<ConnectionManager<B::Conn>>: LockSession<Connection = B::Conn>,
{
    let db = B::Db::new();
    let pool = db.pool(1);
    let key = LockKey::new("panic", 1);

    // The guard owns the pooled connection: the pool has none to give meanwhile.
    let mut guard = lock(pool.get().unwrap(), key).unwrap();
    assert!(pool.try_get().is_none());
    guard.batch_execute("SELECT 1").unwrap();
    guard.release().unwrap();

    // A guard owning the pooled connection.
    let p = pool.clone();
    let outcome = std::thread::spawn(move || {
        let _guard = lock(p.get().unwrap(), key).unwrap();
        panic!("the job panics while holding the lock");
    })
    .join();
    assert!(outcome.is_err());
    {
        let mut next = pool.get().unwrap();
        B::assert_no_lock_listed(&mut next);
        assert_eq!(B::holder(&mut next, key), None);
        assert!(try_lock(&mut next, key).unwrap().is_some());
    }
    assert!(try_lock_for(&mut db.conn(), key, Duration::from_secs(5))
        .unwrap()
        .is_some());

    // A guard borrowing the pooled connection.
    let p = pool.clone();
    let outcome = std::thread::spawn(move || {
        let mut conn = p.get().unwrap();
        let _guard = lock(&mut conn, key).unwrap();
        panic!("the job panics while holding the lock");
    })
    .join();
    assert!(outcome.is_err());
    let mut next = pool.get().unwrap();
    B::assert_no_lock_listed(&mut next);
    assert_eq!(B::holder(&mut next, key), None);
    assert!(try_lock_for(&mut next, key, Duration::from_secs(5))
        .unwrap()
        .is_some());
}

fn a_guard_whose_session_is_killed_never_returns_its_connection_to_the_pool<B: Backend>()
where
    PooledConnection<ConnectionManager<B::Conn>>: LockSession<Connection = B::Conn>,
{
    let db = B::Db::new();
    let pool = unchecked_pool::<B>(&db);
    let key = LockKey::new("poison", 1);
    let mut admin = db.conn();

    let mut conn = pool.get().unwrap();
    let first = B::session(&mut conn);
    let guard = lock(conn, key).unwrap();
    // The holder's session is killed under the guard: the release cannot reach the server.
    B::kill(&mut admin, first);
    let released = guard.release();
    assert!(
        matches!(released, Err(Error::ConnectionLost(_))),
        "{released:?}"
    );

    // The pool closed that connection instead of handing it out again, and the server
    // released the killed session's lock.
    let mut next = pool.get().unwrap();
    let second = B::session(&mut next);
    assert_ne!(second, first);
    assert_eq!(B::holder(&mut next, key), None);
    B::assert_no_lock_listed(&mut next);

    // The same through drop, with a borrowed pooled connection.
    {
        let _guard = lock(&mut next, key).unwrap();
        B::kill(&mut admin, second);
    }
    drop(next);
    let mut third = pool.get().unwrap();
    assert_ne!(B::session(&mut third), second);
    assert!(try_lock(&mut third, key).unwrap().is_some());
}

fn opposite_lock_order_fails_a_side_with_a_retryable_deadlock<B: Backend>() {
    let db = B::Db::new();
    let (a, b) = (LockKey::new("order", "a"), LockKey::new("order", "b"));
    // Worker 0 takes a then b; worker 1 b then a.
    let second_names = [B::server_name(&db, b), B::server_name(&db, a)];
    let both_hold_one = Arc::new(Barrier::new(2));
    let conns = Arc::new(Mutex::new(vec![db.conn(), db.conn()]));
    let outcomes = race(2, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let (first, second) = if i == 0 { (a, b) } else { (b, a) };
        let mut outer = lock(&mut conn, first).unwrap();
        both_hold_one.wait();
        // Each now waits for the other's lock. The deadlock's loser lets go of its first lock
        // when `outer` drops, after this result is taken, so the winner proceeds then.
        let result = lock(&mut *outer, second).map(|inner| {
            let name = inner.server_name().map(str::to_owned);
            inner.release().unwrap();
            name
        });
        drop(outer);
        result
    });
    eprintln!("opposite lock order on {}: {outcomes:?}", B::Db::BACKEND);
    let errors: Vec<&Error> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    // PostgreSQL fails one side; MariaDB's detector of named-lock deadlocks may fail both when
    // it finds the cycle from both waits at once (seen once in CI). Never none: no hang.
    let most = if B::Db::BACKEND == "MySQL/MariaDB" {
        2
    } else {
        1
    };
    assert!((1..=most).contains(&errors.len()), "{outcomes:?}");
    for e in &errors {
        assert!(matches!(e, Error::Deadlock(_)), "{e:?}");
        assert!(e.is_retryable());
    }
    // The winner, if any, got its second lock, by the name the server knows it by.
    if let Some((winner, name)) = outcomes
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().ok().map(|name| (i, name)))
    {
        assert_eq!(name, &second_names[winner], "{outcomes:?}");
    }
}

/// The tests above, on backend `$backend`; `$xact` is its transaction-scoped lock, if any.
macro_rules! lock_tests {
    ($backend:ty, transaction_lock = $xact:expr) => {
        upsert_kit_support::tests_on!($backend:
            mutual_exclusion_keeps_a_read_sleep_write_exact_and_without_the_lock_it_loses_updates($xact),
            try_lock_returns_not_acquired_at_once_while_another_session_holds_it(),
            dropping_the_guard_releases_the_lock_and_with_lock_releases_it_when_the_closure_fails(),
            a_pooled_guard_holds_its_connection_and_a_panic_while_holding_the_lock_leaves_the_next_checkout_without_it(),
            a_guard_whose_session_is_killed_never_returns_its_connection_to_the_pool(),
            opposite_lock_order_fails_a_side_with_a_retryable_deadlock(),
        );
    };
}

mod postgres {
    use super::*;
    use diesel::sql_types::Text;
    use std::time::Instant;
    use upsert_kit::lock::{
        backend_pid, held_locks, lock_shared, server_locks, shared_xact_lock, try_lock_shared,
        try_shared_xact_lock, try_xact_lock, xact_lock, AdvisoryKey, LockMode,
    };
    use upsert_kit_support::TestDb;

    /// PostgreSQL's advisory locks.
    pub struct Postgres;

    impl Backend for Postgres {
        type Db = TestDb;
        type Conn = PgConnection;
        type Session = i32;

        fn session(conn: &mut PgConnection) -> i32 {
            backend_pid(conn).unwrap()
        }

        fn holder(conn: &mut PgConnection, key: LockKey) -> Option<i32> {
            server_locks(conn)
                .unwrap()
                .into_iter()
                .find(|l| l.granted && l.key == AdvisoryKey::Pair(key))
                .map(|l| l.pid)
        }

        fn server_name(_: &TestDb, _: LockKey) -> Option<String> {
            None
        }

        fn bound_waits(conn: &mut PgConnection) {
            conn.batch_execute("SET statement_timeout = '5s'").unwrap();
        }

        fn assert_no_lock_listed(conn: &mut PgConnection) {
            assert!(held_locks(conn).unwrap().is_empty());
            assert!(server_locks(conn).unwrap().is_empty());
        }

        fn assert_other_kinds_refused(other: &mut PgConnection, key: LockKey) {
            assert!(try_lock_shared(&mut *other, key).unwrap().is_none());
            other
                .transaction(|c| {
                    assert!(!try_xact_lock(c, key)?);
                    assert!(!try_shared_xact_lock(c, key)?);
                    Ok::<_, Error>(())
                })
                .unwrap();
        }

        fn kill(admin: &mut PgConnection, pid: i32) {
            #[derive(QueryableByName)]
            struct Ended {
                #[diesel(sql_type = diesel::sql_types::Bool)]
                ended: bool,
            }
            // With a timeout, pg_terminate_backend waits until the backend has exited (and so
            // released its locks).
            let ended = diesel::sql_query("SELECT pg_terminate_backend($1, 10000) AS ended")
                .bind::<Integer, _>(pid)
                .get_result::<Ended>(admin)
                .unwrap()
                .ended;
            assert!(ended, "backend {pid} did not end");
        }
    }

    lock_tests!(Postgres, transaction_lock = Some(xact_lock));

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        value: String,
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    fn lock_timeout(conn: &mut PgConnection) -> String {
        diesel::sql_query("SELECT current_setting('lock_timeout') AS value")
            .get_result::<Setting>(conn)
            .unwrap()
            .value
    }

    fn free_elsewhere(db: &TestDb, key: LockKey) -> bool {
        super::free_elsewhere::<Postgres>(db, key)
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
        assert_eq!(waiter.read_one(), 1);
        assert_eq!(lock_timeout(&mut waiter), before);

        // Inside the caller's transaction: the transaction survives the timeout, the setting too.
        waiter
            .transaction(|c| {
                c.batch_execute("SET LOCAL lock_timeout = '7s'")?;
                assert!(try_lock_for(&mut *c, key, Duration::from_millis(50))?.is_none());
                assert_eq!(c.read_one(), 1);
                assert_eq!(lock_timeout(c), "7s");
                Ok::<_, Error>(())
            })
            .unwrap();

        // Released while waiting: the waiter waits in the server (its backend shows an ungranted
        // advisory lock in pg_locks, which a polling loop of try-locks never would) and is
        // granted as soon as the holder lets go, without waiting out its bound.
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
                .bind::<Integer, _>(waiter_pid)
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

    /// The session lives on, but an aborted transaction refuses the unlock.
    #[test]
    fn a_guard_whose_release_fails_never_returns_its_connection_to_the_pool_holding_the_lock() {
        let db = TestDb::new();
        let pool = unchecked_pool::<Postgres>(&db);
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
        assert_eq!(next.read_one(), 1);
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
}

mod mysql {
    use super::*;
    use std::time::Instant;
    use upsert_kit::lock::mysql::{connection_id, holder, lock_name};
    use upsert_kit_support::TestMysql;

    /// MySQL/MariaDB's named locks (`GET_LOCK`).
    pub struct Mysql;

    impl Backend for Mysql {
        type Db = TestMysql;
        type Conn = MysqlConnection;
        type Session = u64;

        fn session(conn: &mut MysqlConnection) -> u64 {
            connection_id(conn).unwrap()
        }

        fn holder(conn: &mut MysqlConnection, key: LockKey) -> Option<u64> {
            holder(conn, key).unwrap()
        }

        fn server_name(db: &TestMysql, key: LockKey) -> Option<String> {
            Some(lock_name(key, db.name()))
        }

        fn bound_waits(_: &mut MysqlConnection) {
            // No session setting bounds a `GET_LOCK` on both MySQL and MariaDB: the try is
            // `GET_LOCK(name, 0)`, which the server itself does not let wait.
        }

        fn assert_no_lock_listed(_: &mut MysqlConnection) {
            // Neither MySQL nor MariaDB lists a session's named locks by default (MariaDB's
            // `metadata_lock_info` is a plugin): the tests ask `holder` key by key.
        }

        fn assert_other_kinds_refused(_: &mut MysqlConnection, _: LockKey) {
            // Named locks are exclusive and session-scoped: there is no other kind.
        }

        fn kill(admin: &mut MysqlConnection, id: u64) {
            diesel::sql_query(format!("KILL CONNECTION {id}"))
                .execute(admin)
                .unwrap();
            // `KILL` only marks the session; it is gone from the process list once it has
            // ended (its named locks released as it cleans up, before it leaves the list).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sessions = diesel::sql_query(
                    "SELECT COUNT(*) AS c FROM information_schema.PROCESSLIST WHERE ID = ?",
                )
                .bind::<diesel::sql_types::BigInt, _>(id as i64)
                .get_result::<Count>(admin)
                .unwrap()
                .c;
                if sessions == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "session {id} did not end");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    lock_tests!(Mysql, transaction_lock = None);

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
            other.read_one(),
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
    fn exclusive_transaction_inside_an_open_transaction_is_refused_and_sends_nothing() {
        let db = TestMysql::with_sql(COUNTER);
        let mut conn = db.conn();
        let key = LockKey::new("counter", 4);
        let refused = conn.transaction(|c| {
            let inner = exclusive_transaction(c, key, |c| {
                c.write(4, 9);
                Ok::<_, Error>(())
            });
            assert!(matches!(inner, Err(Error::InvalidInput(_))), "{inner:?}");
            Ok::<_, Error>(())
        });
        refused.unwrap();
        assert_eq!(conn.read(4), 0);
        assert!(super::free_elsewhere::<Mysql>(&db, key));
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
}
