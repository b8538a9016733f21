//! Session-scoped locks behind a guard, on PostgreSQL and MySQL/MariaDB: the API and its
//! contract (see the [module docs](super)); each backend's statements are in its own file
//! beside this one.

use super::LockKey;
use crate::conn::{Dialect, WriteConnection};
use crate::error::{Error, Result};
use crate::observe;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// A connection a [`SessionLock`] can hold: a PostgreSQL or MySQL/MariaDB connection
/// (`&mut PgConnection`, `&mut MysqlConnection`, an owned one), an r2d2 `PooledConnection` of
/// either, or a `&mut` of any of these (so a second guard can be taken through a first one:
/// `lock(&mut *guard, other)`).
///
/// SQLite connections are not `LockSession`s: SQLite has no named locks, by type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold a session lock",
    note = "session locks need a PostgreSQL or MySQL/MariaDB session: pass `&mut PgConnection`, `&mut MysqlConnection`, an owned connection, or a pooled one (`pool.get()?`)"
)]
pub trait LockSession {
    /// The connection: `PgConnection` or `MysqlConnection`.
    type Connection: LockBackend;

    /// The connection.
    fn connection(&mut self) -> &mut Self::Connection;

    /// The connection, shared.
    fn connection_ref(&self) -> &Self::Connection;

    /// Makes sure the session is not reused while it may still hold a lock: marks the
    /// connection's transaction manager broken. An r2d2 pool then closes the connection when it
    /// comes back instead of handing it out again (closing ends the session, and the server
    /// releases its locks); Diesel refuses to open transactions on it. A borrowed
    /// `&mut PgConnection` (or `&mut MysqlConnection`) that is not pooled stays open: drop it.
    fn poison(&mut self) {
        poison(self.connection());
    }
}

/// Marks `conn`'s transaction manager broken (see [`LockSession::poison`]).
pub(super) fn poison<C: LockBackend>(conn: &mut C) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// A backend with session-scoped named locks: PostgreSQL (advisory locks) and MySQL/MariaDB
/// (`GET_LOCK`). Implemented for `PgConnection` and `MysqlConnection` in the backend's file
/// (`pg.rs`, `mysql.rs` beside this one); sealed (through [`WriteConnection`]).
pub trait LockBackend:
    WriteConnection<Raw = Self> + diesel::Connection<TransactionManager = AnsiTransactionManager>
{
    /// Refuses session-scoped locks where the session is not kept (PostgreSQL in pooler mode).
    #[doc(hidden)]
    fn refuse_session_lock(&mut self, operation: &'static str) -> Result<()>;

    /// Takes the session lock `key`, waiting as `wait` says: `Ok(None)` when not granted.
    /// On an error no lock is held, or the connection is poisoned.
    #[doc(hidden)]
    fn acquire_lock(&mut self, key: LockKey, mode: LockMode, wait: Wait) -> Result<Option<Held>>;

    /// Releases one level of a lock taken by [`LockBackend::acquire_lock`]: whether this
    /// session held it.
    #[doc(hidden)]
    fn release_lock(&mut self, held: &Held) -> Result<bool>;
}

/// How long [`LockBackend::acquire_lock`] waits.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until granted (or a server-side timeout).
    Forever,
    /// Not at all.
    No,
    /// At most this long (whole milliseconds, at least 1).
    For(Duration),
}

/// A lock a guard holds: its key and mode, and the name the server knows it by where locks are
/// named by strings (MySQL).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub(super) key: LockKey,
    pub(super) mode: LockMode,
    pub(super) name: Option<String>,
}

/// A pooled connection holds its session as long as it is checked out: a guard that owns one
/// keeps the lock, and a poisoned one is closed by the pool when it comes back.
#[cfg(feature = "r2d2")]
impl<C> LockSession for diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>
where
    C: LockBackend + diesel::r2d2::R2D2Connection + 'static,
{
    type Connection = C;

    fn connection(&mut self) -> &mut C {
        self
    }

    fn connection_ref(&self) -> &C {
        self
    }
}

impl<T: LockSession + ?Sized> LockSession for &mut T {
    type Connection = T::Connection;

    fn connection(&mut self) -> &mut T::Connection {
        (**self).connection()
    }

    fn connection_ref(&self) -> &T::Connection {
        (**self).connection_ref()
    }

    fn poison(&mut self) {
        (**self).poison();
    }
}

/// Exclusive or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One holder at a time (`ExclusiveLock` in `pg_locks`; every MySQL named lock).
    Exclusive,
    /// Many shared holders, no exclusive one (`ShareLock` in `pg_locks`; PostgreSQL only).
    Shared,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

/// A session-scoped lock (a PostgreSQL advisory lock, a MySQL named lock), held until this
/// guard is released or dropped (or the session ends). It holds the connection, and derefs to
/// it, so the protected work runs on the same session: `guard.transaction(|conn| …)`,
/// `diesel::insert_into(t).values(v).execute(&mut *guard)`.
///
/// - [`SessionLock::release`] unlocks and reports errors.
/// - Dropping it unlocks too (also while a panic unwinds), ignoring errors.
/// - Either way, when the unlock fails (the session is in an aborted transaction, the connection
///   was lost, …) the connection is [poisoned](LockSession::poison): a pooled connection is then
///   closed by r2d2 instead of being reused with the lock possibly still held, and closing it
///   makes the server release the lock.
///
/// The lock is not tied to a transaction: taking it inside a transaction that then rolls back
/// keeps it. Session locks stack: the same session taking a key twice holds it twice and must
/// release it twice (each guard releases its own level); MySQL's named locks (5.7+, MariaDB
/// 10.0.2+) stack the same way.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SessionLock<C: LockSession> {
    conn: Option<C>,
    held: Held,
}

impl<C: LockSession> fmt::Debug for SessionLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SessionLock");
        d.field("key", &self.held.key)
            .field("mode", &self.held.mode);
        if let Some(name) = &self.held.name {
            d.field("name", name);
        }
        d.field("held", &self.conn.is_some()).finish()
    }
}

impl<C: LockSession> SessionLock<C> {
    /// The lock's key.
    pub fn key(&self) -> LockKey {
        self.held.key
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.held.mode
    }

    /// The name the server knows the lock by, where locks are named by strings: on MySQL the
    /// `GET_LOCK` name ([`mysql`](crate::lock::mysql#lock-names)); `None` on PostgreSQL.
    pub fn server_name(&self) -> Option<&str> {
        self.held.name.as_deref()
    }

    /// Releases the lock now (one round trip: `pg_advisory_unlock`, MySQL's `RELEASE_LOCK`).
    ///
    /// # Errors
    /// - The round trip's error (e.g. [`Error::ConnectionLost`] when the backend is gone, or
    ///   [`Error::Database`] inside an aborted transaction); the connection is then poisoned
    ///   (see [`LockSession::poison`]).
    /// - [`Error::NotFound`] when the server says this session did not hold the lock (someone
    ///   called `pg_advisory_unlock_all()` or `RELEASE_ALL_LOCKS()` on it); nothing is held,
    ///   the connection is kept.
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::lock::{lock, LockKey};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// let guard = lock(&mut conn, LockKey::new("reports", 2026))?;
    /// guard.release()?;
    /// # Ok(()) }
    /// ```
    pub fn release(mut self) -> Result<()> {
        self.unlock()
    }

    fn unlock(&mut self) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let released = conn.connection().release_lock(&self.held);
        match released {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!(
                "session lock {:?} ({}) was not held by this session",
                self.held.key, self.held.mode
            ))),
            Err(e) => {
                conn.poison();
                Err(e)
            }
        }
    }
}

impl<C: LockSession> Deref for SessionLock<C> {
    type Target = C::Connection;

    fn deref(&self) -> &C::Connection {
        // The `Option` is `None` only inside `release` and `drop`.
        let conn = self.conn.as_ref().expect("the guard holds its connection");
        conn.connection_ref()
    }
}

impl<C: LockSession> DerefMut for SessionLock<C> {
    fn deref_mut(&mut self) -> &mut C::Connection {
        self.conn
            .as_mut()
            .expect("the guard holds its connection")
            .connection()
    }
}

impl<C: LockSession> Drop for SessionLock<C> {
    fn drop(&mut self) {
        if let Err(e) = self.unlock() {
            tracing::debug!(error.type = e.class(), "session unlock on drop failed; connection poisoned");
        }
    }
}

/// Takes the lock through `conn`'s backend and wraps it in a guard.
pub(super) fn take<C: LockSession>(
    mut conn: C,
    key: LockKey,
    mode: LockMode,
    wait: Wait,
    operation: &'static str,
) -> Result<Option<SessionLock<C>>> {
    let system = <<C::Connection as WriteConnection>::Backend as Dialect>::SYSTEM;
    observe::call!(system, "lock", || "").run(|call| {
        conn.connection().refuse_session_lock(operation)?;
        let start = std::time::Instant::now();
        let held = conn.connection().acquire_lock(key, mode, wait)?;
        call.waited(start.elapsed());
        call.outcome(if held.is_some() {
            "acquired"
        } else {
            "not_granted"
        });
        Ok(held.map(|held| SessionLock {
            conn: Some(conn),
            held,
        }))
    })
}

/// Waits for the exclusive session-scoped lock `key` and returns its guard.
///
/// Guarantee: while the guard lives no other session holds `key` (exclusively or shared).
/// Released when the guard is released or dropped, or when the session ends; *not* at the end
/// of a transaction. One round trip:
/// - PostgreSQL: `pg_advisory_lock`. Waits as long as it takes, bounded only by the session's
///   `lock_timeout` and `statement_timeout` (see [`try_lock_for`] for a bound of its own); the
///   wait is visible to PostgreSQL's deadlock detector.
/// - MySQL/MariaDB: `GET_LOCK(name, 31536000)` (a year: MariaDB refuses the negative timeout
///   MySQL 8 reads as "forever"). See [`mysql`](super::mysql) for the name.
///
/// # Errors
/// [`Error::Deadlock`] when waiting would deadlock (two sessions taking two locks in opposite
/// orders; retryable), [`Error::LockTimeout`] when the session's `lock_timeout` expires, and
/// the round trip's other errors. No lock is held after an error.
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use diesel::RunQueryDsl;
/// use upsert_kit::lock::{lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, _) = establish_pg()?;
/// let pool = upsert_kit::db::pg_pool(db.url(), 4)?;
/// // The guard owns the pooled connection: it goes back to the pool only after the unlock.
/// let mut guard = lock(pool.get()?, LockKey::new("token-refresh", 42))?;
/// diesel::sql_query("SELECT 1").execute(&mut *guard)?;
/// guard.release()?;
/// # Ok(()) }
/// ```
pub fn lock<C: LockSession>(conn: C, key: LockKey) -> Result<SessionLock<C>> {
    take(conn, key, LockMode::Exclusive, Wait::Forever, "lock::lock")?
        .ok_or_else(|| Error::LockTimeout(format!("session lock {key:?} not granted")))
}

/// Takes the exclusive session-scoped lock `key` if no other session holds it, at once,
/// without waiting: `Ok(None)` when it is taken (an owned connection is then dropped, which
/// returns a pooled one to its pool). One round trip (`pg_try_advisory_lock`; MySQL:
/// `GET_LOCK(name, 0)`).
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use upsert_kit::lock::{try_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// match try_lock(&mut conn, LockKey::new("nightly", 0))? {
///     Some(_guard) => println!("this run does the work"),
///     None => println!("another run is at it; exiting"),
/// }
/// # Ok(()) }
/// ```
pub fn try_lock<C: LockSession>(conn: C, key: LockKey) -> Result<Option<SessionLock<C>>> {
    take(conn, key, LockMode::Exclusive, Wait::No, "lock::try_lock")
}

/// Waits at most `timeout` for the exclusive session-scoped lock `key`: `Ok(None)` when it was
/// not granted in time (an owned connection is then dropped).
///
/// # Mechanism: the server's own timeout, not polling
/// On PostgreSQL it runs, in a short transaction of its own (a savepoint inside the caller's
/// transaction), `SELECT set_config('lock_timeout', '<timeout>ms', true)` then
/// `SELECT pg_advisory_lock(…)`, and commits: the session lock outlives that transaction. The
/// wait happens in the server's lock queue, so the lock is granted the moment its holder lets
/// go (no polling interval, no round trips while waiting, waiters served in order, deadlocks
/// detected), and the server itself bounds the wait. On timeout the transaction (or savepoint)
/// rolls back, which also restores the previous `lock_timeout`, and the connection is usable at
/// once; inside a caller's transaction the previous value is restored explicitly after a
/// success. Polling `pg_try_advisory_lock` would need no transaction but costs a round trip per
/// interval, adds up to one interval of latency, and lets a steady stream of other takers
/// starve the poller. The cost here: 4 round trips (6 inside a transaction), and a transaction
/// (holding a snapshot) open while waiting.
///
/// On MySQL/MariaDB it is one round trip, `GET_LOCK(name, <timeout in seconds>)`: the timeout
/// is `GET_LOCK`'s own argument (fractional seconds), the server bounds the wait, and no
/// transaction is opened.
///
/// `timeout` is rounded up to whole milliseconds; `Duration::ZERO` behaves as [`try_lock`].
///
/// # Errors
/// [`Error::InvalidInput`] when `timeout` exceeds `i32::MAX` milliseconds (about 24 days);
/// [`Error::Deadlock`] when waiting would deadlock; the round trips' other errors. No lock is
/// held after an error.
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use std::time::Duration;
/// use upsert_kit::lock::{try_lock_for, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let Some(guard) = try_lock_for(&mut conn, LockKey::new("reports", 2026), Duration::from_secs(2))? else {
///     return Ok(()); // still busy after 2 s
/// };
/// guard.release()?;
/// # Ok(()) }
/// ```
pub fn try_lock_for<C: LockSession>(
    mut conn: C,
    key: LockKey,
    timeout: Duration,
) -> Result<Option<SessionLock<C>>> {
    conn.connection()
        .refuse_session_lock("lock::try_lock_for")?;
    if timeout.is_zero() {
        return try_lock(conn, key);
    }
    let millis = i32::try_from(timeout.as_nanos().div_ceil(1_000_000)).map_err(|_| {
        Error::invalid(
            "timeout",
            "must be at most i32::MAX milliseconds (about 24 days)",
        )
    })?;
    let wait = Wait::For(Duration::from_millis(millis as u64));
    take(conn, key, LockMode::Exclusive, wait, "lock::try_lock_for")
}

/// Runs `f` on `conn` while holding the exclusive session-scoped lock `key`: waits for the
/// lock (as [`lock`]), runs `f`, releases the lock (also when `f` fails or panics) and returns
/// `f`'s result. Two round trips besides `f`'s.
///
/// # Errors
/// The lock's errors (as [`lock`]), `f`'s error, or else the release's error (as
/// [`SessionLock::release`]).
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use diesel::RunQueryDsl;
/// use upsert_kit::lock::{with_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let n = with_lock(&mut conn, LockKey::new("token-refresh", 42), |conn| {
///     // Only one process at a time gets here for account 42.
///     Ok::<_, upsert_kit::Error>(diesel::sql_query("SELECT 1").execute(conn)?)
/// })?;
/// # Ok(()) }
/// ```
pub fn with_lock<C, T, E, F>(conn: C, key: LockKey, f: F) -> std::result::Result<T, E>
where
    C: LockSession,
    F: FnOnce(&mut C::Connection) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let mut guard = take(
        conn,
        key,
        LockMode::Exclusive,
        Wait::Forever,
        "lock::with_lock",
    )?
    .ok_or_else(|| Error::LockTimeout(format!("session lock {key:?} not granted")))?;
    let value = f(&mut guard)?;
    guard.release()?;
    Ok(value)
}
