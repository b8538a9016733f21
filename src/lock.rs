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
//! Advisory locks exist per database: the same key in two databases names two locks.

use crate::error::Result;
use diesel::pg::PgConnection;
use diesel::sql_types::Integer;
use diesel::RunQueryDsl;

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
    /// assert_ne!(a, LockKey::new("backfill", 42));
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
/// # Errors
/// [`Error::Deadlock`](crate::Error::Deadlock) when waiting would deadlock,
/// [`Error::LockTimeout`](crate::Error::LockTimeout) when `lock_timeout` is set and expires.
pub fn xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<()> {
    diesel::select(pg_advisory_xact_lock(key.class, key.object)).execute(conn)?;
    Ok(())
}

/// Takes the exclusive transaction-scoped advisory lock `key` if no other session holds it;
/// returns whether it did, at once, without waiting.
///
/// # Errors
/// Database errors of the round trip.
pub fn try_xact_lock(conn: &mut PgConnection, key: LockKey) -> Result<bool> {
    Ok(diesel::select(pg_try_advisory_xact_lock(key.class, key.object)).get_result(conn)?)
}
