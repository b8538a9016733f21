//! PostgreSQL advisory locks, named by a namespace and a key.
//!
//! # Lock keys
//! A [`LockKey`] is a pair of 32-bit integers, the form taken by
//! `pg_advisory_lock(int4, int4)` and its relatives:
//! - the namespace (a string) is hashed with 32-bit FNV-1a over its UTF-8 bytes;
//! - an integer key that fits in 32 bits is used as it is, so integer keys of one namespace
//!   never collide; a larger integer is hashed (FNV-1a over its 8 little-endian bytes) and a
//!   string key is hashed (FNV-1a over its UTF-8 bytes).
//!
//! FNV-1a is fully specified (offset basis `0x811c9dc5`, prime `0x01000193`), so a key maps to
//! the same lock in every process, on every machine, with every build and Rust version (unlike
//! `std`'s `DefaultHasher`, whose output may change between releases). Hashed parts can
//! collide: two different names then share a lock, which costs concurrency, never correctness
//! (a collision makes two unrelated holders wait for each other). With 32-bit hashes a
//! collision becomes likely (50 %) around 77,000 distinct names in one namespace.
//!
//! Advisory locks exist per database: the same key in two databases names two locks. They
//! hold across processes and hosts that share one server; on distributed PostgreSQL (Citus)
//! they are per node, so take them on the coordinator only.
//!
//! # Three ways to hold a lock
//! - **Transaction-scoped** ([`xact_lock`], [`try_xact_lock`], [`shared_xact_lock`],
//!   [`try_shared_xact_lock`]): taken inside a transaction the caller runs, released by the
//!   server at its `COMMIT` or `ROLLBACK`. Nothing to release by hand, nothing can leak: prefer
//!   these whenever the protected work fits in one transaction.
//! - **Session-scoped behind a guard** ([`lock`], [`try_lock`], [`try_lock_for`],
//!   [`lock_shared`], [`try_lock_shared`], [`with_lock`]): held across transactions (a
//!   session lock survives the rollback of the transaction it was taken in) until the
//!   [`SessionLock`] guard is released or dropped, or the session ends.
//! - Either way the server releases every advisory lock of a session when the session ends
//!   (connection closed, backend killed), so a crashed process never leaves a lock behind.
//!
//! # Behind a transaction-mode pooler
//! A session lock lives on one server session; behind PgBouncer (or Supabase's pooler, RDS
//! Proxy) in transaction mode the next transaction of the same client may run on another
//! server connection, and the one holding the lock goes to another client, which then holds
//! it too. On a connection in [pooler mode](crate::db#behind-a-transaction-mode-pooler-pooler-mode)
//! the session-scoped functions ([`lock`], [`lock_shared`], [`try_lock`], [`try_lock_shared`],
//! [`try_lock_for`], [`with_lock`]) therefore refuse with
//! [`Error::SessionStateUnavailable`], sending nothing. The transaction-scoped ones hold there
//! (the pooler keeps a transaction on one server connection, and the server releases the lock
//! at its end); for work longer than a transaction use a claim with a lease
//! ([`claim`](crate::claim)).
//!
//! # Pools
//! A session lock belongs to the server session, not to the Rust value: a pooled connection
//! that went back to an r2d2 pool still holding one would hand the lock to whoever checks it
//! out next. The guard therefore owns (or mutably borrows) the connection, unlocks when it is
//! dropped (also while a panic unwinds), and when it *cannot* show that the lock is gone (the
//! unlock failed: aborted transaction, lost connection) it marks the connection broken, so
//! r2d2 closes it instead of reusing it, and closing it makes the server release its locks.
//! See [`PgSession`].
//!
//! Locks and claims take PostgreSQL connections only: `lock(&mut sqlite_conn, key)` does not
//! compile (``the trait `PgSession` is not implemented for `SqliteConnection` ``; the
//! library's compile-fail suite, `tests/ui/lock_on_sqlite.rs`, holds the full message).

use crate::error::{Error, Result};
use crate::tx;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;
#[cfg(feature = "r2d2")]
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel::RunQueryDsl;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// An advisory-lock name: a namespace and a key, mapped to PostgreSQL's `(int4, int4)` space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockKey {
    /// The hashed namespace (first argument of `pg_advisory_lock(int4, int4)`).
    pub class: i32,
    /// The key within the namespace (second argument).
    pub object: i32,
}

/// The part of a [`LockKey`] inside its namespace: an integer or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart<'a> {
    /// An integer (used as it is when it fits in 32 bits).
    Int(i64),
    /// A string (hashed).
    Str(&'a str),
}

impl From<i64> for KeyPart<'_> {
    fn from(v: i64) -> Self {
        KeyPart::Int(v)
    }
}
impl From<i32> for KeyPart<'_> {
    fn from(v: i32) -> Self {
        KeyPart::Int(v.into())
    }
}
impl<'a> From<&'a str> for KeyPart<'a> {
    fn from(v: &'a str) -> Self {
        KeyPart::Str(v)
    }
}
impl<'a> From<&'a String> for KeyPart<'a> {
    fn from(v: &'a String) -> Self {
        KeyPart::Str(v)
    }
}

/// 32-bit FNV-1a.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl LockKey {
    /// The lock `key` in `namespace`.
    ///
    /// ```
    /// use upsert_kit::lock::LockKey;
    /// let a = LockKey::new("token-refresh", 42);
    /// assert_eq!(a.object, 42);
    /// assert_eq!(a, LockKey::new("token-refresh", 42_i64));
    /// assert_ne!(a, LockKey::new("reports", 42));
    /// // Stable across builds: FNV-1a of "a" is 0xe40c292c.
    /// assert_eq!(LockKey::new("a", 0).class, 0xe40c292c_u32 as i32);
    /// ```
    pub fn new<'a>(namespace: &str, key: impl Into<KeyPart<'a>>) -> Self {
        let object = match key.into() {
            KeyPart::Int(v) => {
                i32::try_from(v).unwrap_or_else(|_| fnv1a32(&v.to_le_bytes()) as i32)
            }
            KeyPart::Str(s) => fnv1a32(s.as_bytes()) as i32,
        };
        LockKey {
            class: fnv1a32(namespace.as_bytes()) as i32,
            object,
        }
    }
}

diesel::define_sql_function! {
    /// `pg_advisory_xact_lock(int4, int4)`: waits for the exclusive transaction-scoped lock.
    fn pg_advisory_xact_lock(class: Integer, object: Integer);
}
diesel::define_sql_function! {
    /// `pg_try_advisory_xact_lock(int4, int4)`: takes the exclusive transaction-scoped lock if free.
    fn pg_try_advisory_xact_lock(class: Integer, object: Integer) -> diesel::sql_types::Bool;
}

/// Waits for the exclusive transaction-scoped advisory lock `key`. The server releases it when
/// the caller's transaction commits or rolls back; call it inside
/// [`Connection::transaction`](diesel::Connection::transaction) (outside one, the lock would
/// be released as soon as the statement ends).
///
/// Guarantee: until the transaction ends, no other session holds `key` (exclusively or
/// shared). One round trip (`pg_advisory_xact_lock`); the wait is visible to the deadlock
/// detector.
///
/// # Errors
/// [`Error::Deadlock`] when waiting would deadlock (retryable: re-run the whole transaction),
/// [`Error::LockTimeout`] when `lock_timeout` is set and expires. Either error aborts the
/// caller's transaction.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::Connection;
/// use upsert_kit::lock::{xact_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// conn.transaction(|conn| {
///     xact_lock(conn, LockKey::new("token-refresh", 42))?;
///     // … read, decide, write: no other holder of this key runs meanwhile …
///     Ok::<_, upsert_kit::Error>(())
/// })?; // released here
/// # Ok(()) }
/// ```
pub fn xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<()> {
    diesel::select(pg_advisory_xact_lock(key.class, key.object)).execute(conn)?;
    Ok(())
}

/// Takes the exclusive transaction-scoped advisory lock `key` if no other session holds it;
/// returns whether it did, at once, without waiting. When taken, the server releases it at the
/// end of the caller's transaction. One round trip (`pg_try_advisory_xact_lock`).
///
/// # Errors
/// Database errors of the round trip.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::Connection;
/// use upsert_kit::lock::{try_xact_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// conn.transaction(|conn| {
///     if !try_xact_lock(conn, LockKey::new("nightly", 0))? {
///         return Ok(()); // another run holds it: skip
///     }
///     // … the work …
///     Ok::<_, upsert_kit::Error>(())
/// })?;
/// # Ok(()) }
/// ```
pub fn try_xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<bool> {
    Ok(diesel::select(pg_try_advisory_xact_lock(key.class, key.object)).get_result(conn)?)
}

diesel::define_sql_function! {
    /// `pg_advisory_xact_lock_shared(int4, int4)`: waits for the shared transaction-scoped lock.
    fn pg_advisory_xact_lock_shared(class: Integer, object: Integer);
}
diesel::define_sql_function! {
    /// `pg_try_advisory_xact_lock_shared(int4, int4)`: takes the shared transaction-scoped lock
    /// if no session holds it exclusively.
    fn pg_try_advisory_xact_lock_shared(class: Integer, object: Integer) -> Bool;
}
diesel::define_sql_function! {
    /// `pg_advisory_lock(int4, int4)`: waits for the exclusive session-scoped lock.
    fn pg_advisory_lock(class: Integer, object: Integer);
}
diesel::define_sql_function! {
    /// `pg_advisory_lock_shared(int4, int4)`: waits for the shared session-scoped lock.
    fn pg_advisory_lock_shared(class: Integer, object: Integer);
}
diesel::define_sql_function! {
    /// `pg_try_advisory_lock(int4, int4)`: takes the exclusive session-scoped lock if free.
    fn pg_try_advisory_lock(class: Integer, object: Integer) -> Bool;
}
diesel::define_sql_function! {
    /// `pg_try_advisory_lock_shared(int4, int4)`: takes the shared session-scoped lock if free.
    fn pg_try_advisory_lock_shared(class: Integer, object: Integer) -> Bool;
}
diesel::define_sql_function! {
    /// `pg_advisory_unlock(int4, int4)`: releases one level of the exclusive session lock.
    fn pg_advisory_unlock(class: Integer, object: Integer) -> Bool;
}
diesel::define_sql_function! {
    /// `pg_advisory_unlock_shared(int4, int4)`: releases one level of the shared session lock.
    fn pg_advisory_unlock_shared(class: Integer, object: Integer) -> Bool;
}
diesel::define_sql_function! {
    /// `set_config(name, value, is_local)`.
    fn set_config(name: Text, value: Text, is_local: Bool) -> Text;
}
diesel::define_sql_function! {
    /// `current_setting(name)`.
    fn current_setting(name: Text) -> Text;
}
diesel::define_sql_function! {
    /// `pg_backend_pid()`.
    fn pg_backend_pid() -> Integer;
}

/// Waits for the shared transaction-scoped advisory lock `key`: any number of sessions may
/// hold it shared at once, while an exclusive holder ([`xact_lock`], [`lock`]) excludes them
/// all. Released by the server when the caller's transaction ends, as [`xact_lock`].
///
/// One round trip.
///
/// # Errors
/// As [`xact_lock`].
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::Connection;
/// use upsert_kit::lock::{shared_xact_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// conn.transaction(|conn| {
///     // Readers share the lock; a writer holding it exclusively makes them wait.
///     shared_xact_lock(conn, LockKey::new("report", "2026-11"))?;
///     Ok::<_, upsert_kit::Error>(())
/// })?;
/// # Ok(()) }
/// ```
pub fn shared_xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<()> {
    diesel::select(pg_advisory_xact_lock_shared(key.class, key.object)).execute(conn)?;
    Ok(())
}

/// Takes the shared transaction-scoped advisory lock `key` unless a session holds it
/// exclusively; returns whether it did, at once, without waiting. Released by the server when
/// the caller's transaction ends. One round trip.
///
/// # Errors
/// Database errors of the round trip.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::Connection;
/// use upsert_kit::lock::{try_shared_xact_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let got = conn.transaction(|conn| try_shared_xact_lock(conn, LockKey::new("report", 7)))?;
/// println!("shared lock taken: {got}");
/// # Ok(()) }
/// ```
pub fn try_shared_xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<bool> {
    Ok(diesel::select(pg_try_advisory_xact_lock_shared(key.class, key.object)).get_result(conn)?)
}

/// A PostgreSQL connection a [`SessionLock`] can hold: `&mut PgConnection`, an owned
/// `PgConnection`, an r2d2 `PooledConnection` of PostgreSQL connections, or a `&mut` of any of
/// these (so a second guard can be taken through a first one: `lock(&mut *guard, other)`).
///
/// SQLite connections are not `PgSession`s: advisory locks are PostgreSQL-only, by type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold a PostgreSQL advisory lock",
    note = "advisory locks need a PostgreSQL session: pass `&mut PgConnection`, a `PgConnection`, or a pooled PostgreSQL connection (`pool.get()?`)"
)]
pub trait PgSession {
    /// The connection.
    fn pg(&mut self) -> &mut PgConnection;

    /// The connection, shared.
    fn pg_ref(&self) -> &PgConnection;

    /// Makes sure the session is not reused while it may still hold a lock: marks the
    /// connection's transaction manager broken. An r2d2 pool then closes the connection when it
    /// comes back instead of handing it out again (closing ends the session, and the server
    /// releases its locks); Diesel refuses to open transactions on it. A borrowed
    /// `&mut PgConnection` that is not pooled stays open: drop it.
    fn poison(&mut self) {
        AnsiTransactionManager::transaction_manager_status_mut(self.pg()).set_in_error();
    }
}

impl PgSession for PgConnection {
    fn pg(&mut self) -> &mut PgConnection {
        self
    }

    fn pg_ref(&self) -> &PgConnection {
        self
    }
}

#[cfg(feature = "r2d2")]
impl PgSession for PooledConnection<ConnectionManager<PgConnection>> {
    fn pg(&mut self) -> &mut PgConnection {
        self
    }

    fn pg_ref(&self) -> &PgConnection {
        self
    }
}

impl<T: PgSession + ?Sized> PgSession for &mut T {
    fn pg(&mut self) -> &mut PgConnection {
        (**self).pg()
    }

    fn pg_ref(&self) -> &PgConnection {
        (**self).pg_ref()
    }

    fn poison(&mut self) {
        (**self).poison();
    }
}

/// Exclusive or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One holder at a time (`ExclusiveLock` in `pg_locks`).
    Exclusive,
    /// Many shared holders, no exclusive one (`ShareLock` in `pg_locks`).
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

/// A session-scoped advisory lock, held until this guard is released or dropped (or the session
/// ends). It holds the connection, and derefs to it, so the protected work runs on the same
/// session: `guard.transaction(|conn| …)`, `diesel::insert_into(t).values(v).execute(&mut *guard)`.
///
/// - [`SessionLock::release`] unlocks and reports errors.
/// - Dropping it unlocks too (also while a panic unwinds), ignoring errors.
/// - Either way, when the unlock fails (the session is in an aborted transaction, the connection
///   was lost, …) the connection is [poisoned](PgSession::poison): a pooled connection is then
///   closed by r2d2 instead of being reused with the lock possibly still held, and closing it
///   makes the server release the lock.
///
/// The lock is not tied to a transaction: taking it inside a transaction that then rolls back
/// keeps it. Session locks stack: the same session taking a key twice holds it twice and must
/// release it twice (each guard releases its own level).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SessionLock<C: PgSession> {
    conn: Option<C>,
    key: LockKey,
    mode: LockMode,
}

impl<C: PgSession> fmt::Debug for SessionLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLock")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("held", &self.conn.is_some())
            .finish()
    }
}

impl<C: PgSession> SessionLock<C> {
    /// The lock's key.
    pub fn key(&self) -> LockKey {
        self.key
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Releases the lock now (one round trip: `pg_advisory_unlock`).
    ///
    /// # Errors
    /// - The round trip's error (e.g. [`Error::ConnectionLost`] when the backend is gone, or
    ///   [`Error::Database`] inside an aborted transaction); the connection is then poisoned
    ///   (see [`PgSession::poison`]).
    /// - [`Error::NotFound`] when the server says this session did not hold the lock (someone
    ///   called `pg_advisory_unlock_all()` on it); nothing is held, the connection is kept.
    ///
    /// # Examples
    /// ```
    /// # include!("doctest_setup.rs");
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
        let released = unlock(conn.pg(), self.key, self.mode);
        match released {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound(format!(
                "advisory lock {:?} ({}) was not held by this session",
                self.key, self.mode
            ))),
            Err(e) => {
                conn.poison();
                Err(e)
            }
        }
    }
}

impl<C: PgSession> Deref for SessionLock<C> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // The `Option` is `None` only inside `release` and `drop`.
        let conn = self.conn.as_ref().expect("the guard holds its connection");
        conn.pg_ref()
    }
}

impl<C: PgSession> DerefMut for SessionLock<C> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the guard holds its connection")
            .pg()
    }
}

impl<C: PgSession> Drop for SessionLock<C> {
    fn drop(&mut self) {
        if let Err(e) = self.unlock() {
            tracing::debug!(key = ?self.key, error = %e, "advisory unlock on drop failed; connection poisoned");
        }
    }
}

/// `pg_advisory_unlock(_shared)`: whether this session held the lock.
fn unlock(conn: &mut PgConnection, key: LockKey, mode: LockMode) -> Result<bool> {
    let released = match mode {
        LockMode::Exclusive => {
            diesel::select(pg_advisory_unlock(key.class, key.object)).get_result(conn)
        }
        LockMode::Shared => {
            diesel::select(pg_advisory_unlock_shared(key.class, key.object)).get_result(conn)
        }
    };
    Ok(released?)
}

/// `pg_advisory_lock(_shared)`: waits.
fn acquire(conn: &mut PgConnection, key: LockKey, mode: LockMode) -> Result<()> {
    match mode {
        LockMode::Exclusive => {
            diesel::select(pg_advisory_lock(key.class, key.object)).execute(conn)?
        }
        LockMode::Shared => {
            diesel::select(pg_advisory_lock_shared(key.class, key.object)).execute(conn)?
        }
    };
    Ok(())
}

/// `pg_try_advisory_lock(_shared)`: never waits.
fn try_acquire(conn: &mut PgConnection, key: LockKey, mode: LockMode) -> Result<bool> {
    let taken = match mode {
        LockMode::Exclusive => {
            diesel::select(pg_try_advisory_lock(key.class, key.object)).get_result(conn)
        }
        LockMode::Shared => {
            diesel::select(pg_try_advisory_lock_shared(key.class, key.object)).get_result(conn)
        }
    };
    Ok(taken?)
}

/// [`Error::SessionStateUnavailable`] when `conn` is in pooler mode: a session lock would stay
/// on a server connection the pooler hands to other clients.
fn refuse_in_pooler_mode(conn: &mut PgConnection, operation: &'static str) -> Result<()> {
    if crate::db::is_pooler_mode(conn) {
        Err(Error::SessionStateUnavailable { operation })
    } else {
        Ok(())
    }
}

fn guard<C: PgSession>(conn: C, key: LockKey, mode: LockMode) -> SessionLock<C> {
    SessionLock {
        conn: Some(conn),
        key,
        mode,
    }
}

/// Waits for the exclusive session-scoped advisory lock `key` and returns its guard.
///
/// Guarantee: while the guard lives no other session holds `key` (exclusively or shared).
/// Released when the guard is released or dropped, or when the session ends; *not* at the end
/// of a transaction. One round trip (`pg_advisory_lock`). Waits as long as it takes, bounded
/// only by the session's `lock_timeout` and `statement_timeout` (see [`try_lock_for`] for a
/// bound of its own); the wait is visible to PostgreSQL's deadlock detector.
///
/// # Errors
/// [`Error::Deadlock`] when waiting would deadlock (two sessions taking two locks in opposite
/// orders; retryable), [`Error::LockTimeout`] when the session's `lock_timeout` expires, and
/// the round trip's other errors. No lock is held after an error.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
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
pub fn lock<C: PgSession>(mut conn: C, key: LockKey) -> Result<SessionLock<C>> {
    refuse_in_pooler_mode(conn.pg(), "lock::lock")?;
    acquire(conn.pg(), key, LockMode::Exclusive)?;
    Ok(guard(conn, key, LockMode::Exclusive))
}

/// Waits for the shared session-scoped advisory lock `key`: many sessions may hold it shared,
/// none while another holds it exclusively. As [`lock`] otherwise.
///
/// # Errors
/// As [`lock`].
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use upsert_kit::lock::{lock_shared, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let guard = lock_shared(&mut conn, LockKey::new("schema", "stats"))?;
/// drop(guard); // released
/// # Ok(()) }
/// ```
pub fn lock_shared<C: PgSession>(mut conn: C, key: LockKey) -> Result<SessionLock<C>> {
    refuse_in_pooler_mode(conn.pg(), "lock::lock_shared")?;
    acquire(conn.pg(), key, LockMode::Shared)?;
    Ok(guard(conn, key, LockMode::Shared))
}

/// Takes the exclusive session-scoped advisory lock `key` if no other session holds it, at
/// once, without waiting: `Ok(None)` when it is taken (an owned connection is then dropped,
/// which returns a pooled one to its pool). One round trip (`pg_try_advisory_lock`).
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use upsert_kit::lock::{try_lock, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// match try_lock(&mut conn, LockKey::new("nightly", 0))? {
///     Some(_guard) => println!("this run does the work"),
///     None => println!("another run is at it; exiting"),
/// }
/// # Ok(()) }
/// ```
pub fn try_lock<C: PgSession>(mut conn: C, key: LockKey) -> Result<Option<SessionLock<C>>> {
    refuse_in_pooler_mode(conn.pg(), "lock::try_lock")?;
    Ok(try_acquire(conn.pg(), key, LockMode::Exclusive)?
        .then(|| guard(conn, key, LockMode::Exclusive)))
}

/// Takes the shared session-scoped advisory lock `key` unless a session holds it exclusively,
/// without waiting. As [`try_lock`] otherwise.
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use upsert_kit::lock::{try_lock_shared, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let reader = try_lock_shared(&mut conn, LockKey::new("schema", "stats"))?;
/// assert!(reader.is_some());
/// # Ok(()) }
/// ```
pub fn try_lock_shared<C: PgSession>(mut conn: C, key: LockKey) -> Result<Option<SessionLock<C>>> {
    refuse_in_pooler_mode(conn.pg(), "lock::try_lock_shared")?;
    Ok(try_acquire(conn.pg(), key, LockMode::Shared)?.then(|| guard(conn, key, LockMode::Shared)))
}

/// Waits at most `timeout` for the exclusive session-scoped advisory lock `key`: `Ok(None)`
/// when it was not granted in time (an owned connection is then dropped).
///
/// # Mechanism: `lock_timeout`, not polling
/// It runs, in a short transaction of its own (a savepoint inside the caller's transaction),
/// `SELECT set_config('lock_timeout', '<timeout>ms', true)` then `SELECT pg_advisory_lock(…)`,
/// and commits: the session lock outlives that transaction. The wait happens in the server's
/// lock queue, so the lock is granted the moment its holder lets go (no polling interval,
/// no round trips while waiting, waiters served in order, deadlocks detected), and the server
/// itself bounds the wait. On timeout the transaction (or savepoint) rolls back, which also
/// restores the previous `lock_timeout`, and the connection is usable at once; inside a
/// caller's transaction the previous value is restored explicitly after a success. Polling
/// `pg_try_advisory_lock` would need no transaction but costs a round trip per interval, adds
/// up to one interval of latency, and lets a steady stream of other takers starve the poller.
/// The cost here: 4 round trips (6 inside a transaction), and a transaction (holding a
/// snapshot) open while waiting.
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
/// # include!("doctest_setup.rs");
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
pub fn try_lock_for<C: PgSession>(
    mut conn: C,
    key: LockKey,
    timeout: Duration,
) -> Result<Option<SessionLock<C>>> {
    refuse_in_pooler_mode(conn.pg(), "lock::try_lock_for")?;
    if timeout.is_zero() {
        return try_lock(conn, key);
    }
    let millis = i32::try_from(timeout.as_nanos().div_ceil(1_000_000)).map_err(|_| {
        Error::invalid(
            "timeout",
            "must be at most i32::MAX milliseconds (about 24 days)",
        )
    })?;
    let pg = conn.pg();
    let nested = tx::in_transaction(pg);
    let mut acquired = false;
    let outcome = tx::transaction(pg, |c| {
        let previous: Option<String> = if nested {
            Some(diesel::select(current_setting("lock_timeout")).get_result(c)?)
        } else {
            None
        };
        diesel::select(set_config("lock_timeout", format!("{millis}ms"), true)).execute(c)?;
        acquire(c, key, LockMode::Exclusive)?;
        acquired = true;
        if let Some(previous) = previous {
            diesel::select(set_config("lock_timeout", previous, true)).execute(c)?;
        }
        Ok(())
    });
    match outcome {
        Ok(()) => Ok(Some(guard(conn, key, LockMode::Exclusive))),
        Err(Error::LockTimeout(_)) if !acquired => Ok(None),
        Err(e) => {
            if acquired {
                // Granted, then the restore or the commit failed: give the lock back, or make
                // sure the session is not reused.
                if !matches!(unlock(conn.pg(), key, LockMode::Exclusive), Ok(true)) {
                    conn.poison();
                }
            }
            Err(e)
        }
    }
}

/// Runs `f` on `conn` while holding the exclusive session-scoped advisory lock `key`: waits
/// for the lock (as [`lock`]), runs `f`, releases the lock (also when `f` fails or panics) and
/// returns `f`'s result. Two round trips besides `f`'s.
///
/// # Errors
/// The lock's errors (as [`lock`]), `f`'s error, or else the release's error (as
/// [`SessionLock::release`]).
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
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
    C: PgSession,
    F: FnOnce(&mut PgConnection) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let mut conn = conn;
    refuse_in_pooler_mode(conn.pg(), "lock::with_lock")?;
    let mut guard = lock(conn, key)?;
    let value = f(&mut guard)?;
    guard.release()?;
    Ok(value)
}

/// A key in PostgreSQL's advisory-lock space, as `pg_locks` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdvisoryKey {
    /// A two-part key (`pg_advisory_lock(int4, int4)`): the form this module takes.
    Pair(LockKey),
    /// A one-part key (`pg_advisory_lock(bigint)`), taken by other code.
    Single(i64),
}

/// One advisory lock held or awaited, from `pg_locks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvisoryLock {
    /// The backend holding (or waiting for) it.
    pub pid: i32,
    /// Its key.
    pub key: AdvisoryKey,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// `true` when held, `false` when the backend is waiting for it.
    pub granted: bool,
}

#[derive(diesel::QueryableByName)]
struct LockRow {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = BigInt)]
    classid: i64,
    #[diesel(sql_type = BigInt)]
    objid: i64,
    #[diesel(sql_type = Integer)]
    objsubid: i32,
    #[diesel(sql_type = Text)]
    mode: String,
    #[diesel(sql_type = Bool)]
    granted: bool,
}

impl From<LockRow> for AdvisoryLock {
    fn from(r: LockRow) -> Self {
        // classid and objid are `oid`s (unsigned 32-bit); the functions took signed values.
        let key = if r.objsubid == 2 {
            AdvisoryKey::Pair(LockKey {
                class: r.classid as u32 as i32,
                object: r.objid as u32 as i32,
            })
        } else {
            AdvisoryKey::Single((r.classid << 32) | (r.objid & 0xffff_ffff))
        };
        AdvisoryLock {
            pid: r.pid,
            key,
            mode: if r.mode == "ShareLock" {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            },
            granted: r.granted,
        }
    }
}

/// `pg_locks`' advisory rows of this database whose `objsubid` is 1 (a one-part key,
/// `pg_advisory_lock(bigint)`) or 2 (a two-part key): the two spaces SQL can take. Extensions
/// take advisory locks of their own with other `objsubid`s (Citus: 4 to 12, e.g. 5 and 8 for
/// its shard and colocation locks); they are not the user's and are left out.
const LOCKS_SQL: &str = "SELECT l.pid, l.classid::int8 AS classid, l.objid::int8 AS objid, \
     l.objsubid::int4 AS objsubid, l.mode, l.granted FROM pg_locks l \
     WHERE l.locktype = 'advisory' AND l.objsubid IN (1, 2) \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The advisory locks this connection's session holds or waits for, in this database, session-
/// and transaction-scoped alike (a key held several times is listed once). Only the locks SQL
/// can take are listed (`pg_locks.objsubid` 1 and 2): an extension's internal advisory locks
/// (Citus's, `objsubid` 4 and up) are not the user's. One round trip; reads
/// `pg_locks`, a snapshot of the lock manager that takes no lock of its own. For debugging and
/// tests.
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use upsert_kit::lock::{held_locks, lock, AdvisoryKey, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let key = LockKey::new("reports", 1);
/// let mut guard = lock(&mut conn, key)?;
/// assert!(held_locks(&mut guard)?.iter().any(|l| l.key == AdvisoryKey::Pair(key)));
/// # Ok(()) }
/// ```
pub fn held_locks(conn: &mut PgConnection) -> Result<Vec<AdvisoryLock>> {
    let sql = format!("{LOCKS_SQL} AND l.pid = pg_backend_pid() ORDER BY 2, 3, 4");
    let rows: Vec<LockRow> = diesel::sql_query(sql).load(conn)?;
    Ok(rows.into_iter().map(AdvisoryLock::from).collect())
}

/// Every advisory lock held or awaited in this database, by any session (including this one);
/// as [`held_locks`], only `objsubid` 1 and 2 (an extension's internal locks are left out). On
/// Citus this is one node's lock manager: locks taken through another node are not listed.
/// One round trip on `pg_locks`; for debugging and tests. Seeing other sessions' locks needs no
/// privilege, but on a managed server `pg_locks` may be restricted.
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use upsert_kit::lock::server_locks;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// for l in server_locks(&mut conn)? {
///     println!("backend {} {} {:?} granted={}", l.pid, l.mode, l.key, l.granted);
/// }
/// # Ok(()) }
/// ```
pub fn server_locks(conn: &mut PgConnection) -> Result<Vec<AdvisoryLock>> {
    let sql = format!("{LOCKS_SQL} ORDER BY 1, 2, 3, 4");
    let rows: Vec<LockRow> = diesel::sql_query(sql).load(conn)?;
    Ok(rows.into_iter().map(AdvisoryLock::from).collect())
}

/// This connection's backend process id (`pg_backend_pid()`), as `pg_locks` and
/// `pg_stat_activity` show it. One round trip.
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// println!("backend {}", upsert_kit::lock::backend_pid(&mut conn)?);
/// # Ok(()) }
/// ```
pub fn backend_pid(conn: &mut PgConnection) -> Result<i32> {
    Ok(diesel::select(pg_backend_pid()).get_result(conn)?)
}

#[cfg(test)]
mod tests {
    use super::LOCKS_SQL;

    #[test]
    fn lock_introspection_lists_only_the_key_spaces_sql_can_take() {
        // Citus's internal advisory locks (objsubid 4 to 12) must not show up as the user's;
        // plain PostgreSQL cannot take one, so the filter is checked on the statement.
        assert!(LOCKS_SQL.contains("l.locktype = 'advisory' AND l.objsubid IN (1, 2)"));
    }
}
