//! Locks by a namespace and a key: on every backend a write transaction that no other holder of
//! its key runs beside ([`exclusive_transaction`]); on PostgreSQL and MySQL/MariaDB, advisory and
//! named locks (`GET_LOCK`) behind the same guard.
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
//! # One writer per key, on every backend
//! [`exclusive_transaction`] runs a closure in one write transaction during which no other
//! `exclusive_transaction` of the same key runs, on every backend: the read-decide-write of a
//! token refresh, say, done by one process at a time. PostgreSQL takes the key's
//! transaction-scoped advisory lock first thing in the transaction; MySQL/MariaDB, which has no
//! transaction-scoped named lock, takes the session-scoped named lock before `BEGIN` (so the
//! transaction's snapshot sees what the previous holder committed) and releases it after
//! `COMMIT`; SQLite's `BEGIN IMMEDIATE` takes the database's single write lock, which excludes
//! every other writer of the file, whatever its key.
#![cfg_attr(
    any(feature = "postgres", feature = "mysql"),
    doc = include_str!("named.md")
)]

use crate::conn::WriteConnection;
use crate::error::Error;
use diesel::connection::{AnsiTransactionManager, Connection};

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod session;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "postgres")]
pub use pg::{
    backend_pid, held_locks, lock_shared, server_locks, shared_xact_lock, try_lock_shared,
    try_shared_xact_lock, try_xact_lock, xact_lock, AdvisoryKey, AdvisoryLock,
};
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use session::{
    lock, try_lock, try_lock_for, with_lock, Held, LockBackend, LockMode, LockSession, SessionLock,
    Wait,
};
#[cfg(feature = "postgres")]
use session::{poison, take};
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

/// A connection [`exclusive_transaction`] runs on: `PgConnection`, `MysqlConnection` and
/// `SqliteConnection` (an r2d2 pooled connection reaches it through [`WriteConnection`]).
/// Implemented in each backend's file beside this one; sealed (through [`WriteConnection`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run an exclusive transaction",
    note = "pass `&mut PgConnection`, `&mut MysqlConnection`, `&mut SqliteConnection` or an r2d2 pooled connection of one of them"
)]
pub trait ExclusiveBackend:
    WriteConnection<Raw = Self> + Connection<TransactionManager = AnsiTransactionManager>
{
    /// Runs `f` in a write transaction that holds `key` (see [`exclusive_transaction`]).
    #[doc(hidden)]
    fn exclusive<T, E: From<Error>>(
        &mut self,
        key: LockKey,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>;
}

/// Runs `f` in one write transaction during which no other `exclusive_transaction` of `key`
/// runs, and commits it (or rolls it back when `f` fails): one process at a time reads, decides
/// and writes what `key` names, on every backend.
///
/// - PostgreSQL: `BEGIN`, then the transaction-scoped advisory lock of `key`
///   (as `xact_lock`), released by the server at
///   `COMMIT` or `ROLLBACK`. Holds behind a transaction-mode pooler. Inside a transaction of
///   the caller's it is a savepoint, and the lock is held until the caller's transaction ends.
/// - MySQL/MariaDB: the session-scoped named lock of `key` (`GET_LOCK`), then `BEGIN`, so the
///   transaction's snapshot is taken after the previous holder committed; `RELEASE_LOCK`
///   after `COMMIT`. Refused inside a transaction of the caller's (the lock would be released
///   before the caller commits).
/// - SQLite: `BEGIN IMMEDIATE`, which takes the database's single write lock at once: it
///   excludes every other writer of the file, whatever its key (in a savepoint inside the
///   caller's transaction, which holds or takes that lock).
///
/// `f` is run once; a deadlock or a busy database is returned as it is (retryable, nothing
/// applied) for the caller to run it again.
///
/// # Errors
/// `f`'s error, unchanged; the lock's errors ([`Error::Deadlock`], [`Error::LockTimeout`]);
/// [`Error::Busy`] on SQLite past the busy timeout; [`Error::InvalidInput`] on MySQL inside an
/// open transaction; a connection lost while committing is [`Error::OutcomeUnknown`].
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use diesel::prelude::*;
/// use upsert_kit::lock::{exclusive_transaction, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = establish_sqlite()?;
/// // Read, decide and write with no other run of the same key in between.
/// let sku = exclusive_transaction(&mut conn, LockKey::new("restock", 7), |conn| {
///     let n: i64 = items::table.count().get_result(conn)?;
///     diesel::insert_into(items::table)
///         .values((items::sku.eq(format!("r-{n}")), items::name.eq("restocked")))
///         .execute(conn)?;
///     Ok::<_, upsert_kit::Error>(format!("r-{n}"))
/// })?;
/// assert_eq!(sku, "r-0");
/// # Ok(()) }
/// ```
pub fn exclusive_transaction<C, T, E, F>(
    conn: &mut C,
    key: LockKey,
    f: F,
) -> std::result::Result<T, E>
where
    C: WriteConnection,
    C::Raw: ExclusiveBackend,
    E: From<Error>,
    F: FnOnce(&mut C::Raw) -> std::result::Result<T, E>,
{
    let system = <C::Backend as crate::conn::Dialect>::SYSTEM;
    let call = crate::observe::call!(system, "exclusive_transaction", || "");
    call.run_as(|_| conn.raw().exclusive(key, f))
}
