//! MySQL and MariaDB named locks (`GET_LOCK` / `RELEASE_LOCK`) behind the same
//! [`SessionLock`] guard as PostgreSQL's session locks.
//!
//! On a `MysqlConnection` (or a pooled one) [`lock`](super::lock), [`try_lock`](super::try_lock),
//! [`try_lock_for`](super::try_lock_for) and [`with_lock`] are the same calls
//! as on PostgreSQL, with the same guard discipline: the guard owns (or borrows) the
//! connection, its drop releases the lock (also while a panic unwinds), and a connection whose
//! release failed is poisoned so that an r2d2 pool closes it (which makes the server release
//! the lock) instead of handing it out again.
//!
//! ```
//! # include!("../doctest_setup.rs");
//! use diesel::RunQueryDsl;
//! use upsert_kit::lock::{lock, mysql, try_lock, LockKey};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, _) = establish_mysql()?;
//! let pool = upsert_kit::db::mysql_pool(db.url(), 2)?;
//! let key = LockKey::new("token-refresh", 42);
//! // The guard owns the pooled connection: it goes back to the pool only after the unlock.
//! let mut guard = lock(pool.get()?, key)?;
//! diesel::sql_query("SELECT 1").execute(&mut *guard)?;
//! assert!(try_lock(pool.get()?, key)?.is_none()); // another session: not granted
//! assert_eq!(guard.server_name(), Some(mysql::lock_name(key, db.name()).as_str()));
//! guard.release()?;
//! # Ok(()) }
//! ```
//!
//! # What is sent
//! | call | SQL (one round trip) |
//! |---|---|
//! | [`lock`](super::lock) | `SELECT GET_LOCK(<name>, 31536000), <name>` |
//! | [`try_lock`](super::try_lock) | `SELECT GET_LOCK(<name>, 0), <name>` |
//! | [`try_lock_for`](super::try_lock_for) | `SELECT GET_LOCK(<name>, <seconds>), <name>` |
//! | [`SessionLock::release`], drop | `SELECT RELEASE_LOCK(?)` with the name the lock was taken under |
//! | [`holder`] | `SELECT IS_USED_LOCK(<name>)` |
//!
//! where `<name>` is `CONCAT(?, LEFT(MD5(COALESCE(DATABASE(), '')), 12))`, the bind being the
//! key's part of the name (below). Every value is a bind parameter and the statement text is
//! fixed, so Diesel prepares each statement once per connection.
//!
//! `GET_LOCK` returns 1 (granted), 0 (timed out: `Ok(None)`, or [`Error::LockTimeout`] from
//! [`lock`](super::lock) after a year) or `NULL` (the wait was interrupted, e.g. by
//! `KILL QUERY`: [`Error::Cancelled`]). The timeout is `GET_LOCK`'s own argument, in seconds
//! with a fractional part, so the server bounds the wait and no transaction is opened; MariaDB
//! refuses a negative timeout (MySQL 8 reads it as "forever"), hence a year for
//! [`lock`](super::lock). `RELEASE_LOCK` returns 1 (released), 0 (held by another session) or
//! `NULL` (no such lock); the last two are [`Error::NotFound`] from [`SessionLock::release`].
//!
//! # Lock names
//! MySQL names a lock by a string of at most 64 characters (MySQL 5.7+ refuses longer ones;
//! MariaDB accepts them), and the names are **server-wide**, where PostgreSQL's advisory locks
//! are per database. A [`LockKey`] becomes
//!
//! ```text
//! upsert_kit:<class>:<object>@<database>
//! ```
//!
//! with `<class>` and `<object>` the key's two 32-bit halves as 8 lowercase hex digits each
//! (the same FNV-1a hashes as on PostgreSQL, see [`LockKey`]), and `<database>` the first 12
//! hex digits of the MD5 of the connection's current database (`DATABASE()`, `''` when none):
//! 41 characters, whatever the namespace, key or database name, so one key names one lock per
//! database, as on PostgreSQL, and the same lock in every process and build. Two databases
//! whose names share the 48-bit digest would share their locks, which costs concurrency, never
//! correctness. The name is computed by the server when the lock is taken and kept by the
//! guard, which releases exactly that name even if the connection switched databases
//! meanwhile. [`lock_name`] computes it in Rust, [`SessionLock::server_name`] shows it.
//!
//! # Stacking, transactions, deadlocks
//! A session that takes a name it holds takes it again (MySQL 5.7+, MariaDB 10.0.2+) and must
//! release it as often; each guard releases its own level. The lock is not tied to a
//! transaction: commits and rollbacks leave it held. The server detects deadlocks between
//! named locks (two sessions each waiting for the other's): MariaDB fails one `GET_LOCK` (now
//! and then both, when it finds the cycle from both waits at once) with 1213,
//! [`Error::Deadlock`] (retryable; tested), MySQL 8 with `ER_USER_LOCK_DEADLOCK` (3058),
//! also [`Error::Deadlock`] (recognised by its message; the suite has no MySQL 8 server).
//! The server releases a session's named locks when it ends.
//!
//! # Isolation
//! A named lock takes no row locks and reads no table, so it is the same at every isolation
//! level; what the protected code reads is its own business (under REPEATABLE READ a
//! transaction started *before* the lock was granted reads its old snapshot: take the lock
//! first, then start the transaction, as the guard's `Deref` makes natural).

#[allow(unused_imports)] // in the docs' links
use super::SessionLock;
use super::{with_lock, ExclusiveBackend, Held, LockBackend, LockKey, LockMode, LockSession, Wait};
use crate::error::{Error, Result};
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// The wait of [`lock`](super::lock) on MySQL, in seconds (a year).
pub const FOREVER_SECONDS: u32 = 31_536_000;

/// The fixed beginning of every lock name.
pub const NAME_PREFIX: &str = "upsert_kit:";

/// How many hex digits of the database's MD5 a lock name carries.
const DATABASE_DIGITS: usize = 12;

/// The key's part of the name: `upsert_kit:<class>:<object>@`.
fn key_part(key: LockKey) -> String {
    format!(
        "{NAME_PREFIX}{:08x}:{:08x}@",
        key.class as u32, key.object as u32
    )
}

/// The lock name of `key` in the database named `database`, as the server computes it
/// (`upsert_kit:<class>:<object>@<md5(database)[..12]>`, 41 characters).
///
/// ```
/// use upsert_kit::lock::{mysql::lock_name, LockKey};
/// let name = lock_name(LockKey::new("a", 7), "app");
/// // FNV-1a of "a" is 0xe40c292c; MD5 of "app" begins d2a57dc1d883.
/// assert_eq!(name, "upsert_kit:e40c292c:00000007@d2a57dc1d883");
/// assert!(name.len() <= 64);
/// ```
pub fn lock_name(key: LockKey, database: &str) -> String {
    let digest = md5_hex(database.as_bytes());
    format!("{}{}", key_part(key), &digest[..DATABASE_DIGITS])
}

impl LockSession for MysqlConnection {
    type Connection = MysqlConnection;

    fn connection(&mut self) -> &mut MysqlConnection {
        self
    }

    fn connection_ref(&self) -> &MysqlConnection {
        self
    }
}

impl LockBackend for MysqlConnection {
    fn refuse_session_lock(&mut self, _operation: &'static str) -> Result<()> {
        Ok(())
    }

    fn acquire_lock(&mut self, key: LockKey, mode: LockMode, wait: Wait) -> Result<Option<Held>> {
        debug_assert_eq!(mode, LockMode::Exclusive, "MySQL named locks are exclusive");
        let seconds = match wait {
            Wait::Forever => f64::from(FOREVER_SECONDS),
            Wait::No => 0.0,
            Wait::For(timeout) => timeout.as_secs_f64(),
        };
        let prefix = key_part(key);
        let (granted, name): (Option<i64>, String) =
            LockSql::<(Nullable<BigInt>, Text)>::new(Stmt::Get(&prefix, &seconds))
                .get_result(self)?;
        match granted {
            Some(1) => Ok(Some(Held {
                key,
                mode,
                name: Some(name),
            })),
            Some(_) => Ok(None),
            None => Err(Error::Cancelled(format!(
                "GET_LOCK({name:?}) returned NULL: the wait was interrupted (KILL QUERY) or the server failed"
            ))),
        }
    }

    fn release_lock(&mut self, held: &Held) -> Result<bool> {
        let name = held.name.as_deref().unwrap_or_default();
        let released: Option<i64> =
            LockSql::<Nullable<BigInt>>::new(Stmt::Release(name)).get_result(self)?;
        Ok(released == Some(1))
    }
}

/// The connection id of the session holding `key` in this connection's database
/// (`IS_USED_LOCK`), or `None` when it is free. One round trip; for debugging and tests.
///
/// # Errors
/// The round trip's errors.
pub fn holder(conn: &mut MysqlConnection, key: LockKey) -> Result<Option<u64>> {
    let prefix = key_part(key);
    let id: Option<i64> =
        LockSql::<Nullable<BigInt>>::new(Stmt::IsUsed(&prefix)).get_result(conn)?;
    Ok(id.map(|id| id as u64))
}

/// This session's connection id (`CONNECTION_ID()`), as [`holder`] and `KILL` take it. One
/// round trip.
///
/// # Errors
/// The round trip's errors.
pub fn connection_id(conn: &mut MysqlConnection) -> Result<u64> {
    let id: i64 = LockSql::<BigInt>::new(Stmt::ConnectionId).get_result(conn)?;
    Ok(id as u64)
}

/// The named-lock statements; fixed text, values bound.
enum Stmt<'a> {
    /// `GET_LOCK(name, seconds)` and the name.
    Get(&'a str, &'a f64),
    /// `RELEASE_LOCK(name)`.
    Release(&'a str),
    /// `IS_USED_LOCK(name)`.
    IsUsed(&'a str),
    /// `CONNECTION_ID()`.
    ConnectionId,
}

/// A [`Stmt`] whose result has the SQL type `ST`.
struct LockSql<'a, ST> {
    stmt: Stmt<'a>,
    _type: PhantomData<fn() -> ST>,
}

impl<'a, ST> LockSql<'a, ST> {
    fn new(stmt: Stmt<'a>) -> Self {
        LockSql {
            stmt,
            _type: PhantomData,
        }
    }
}

/// `CONCAT(?, LEFT(MD5(COALESCE(DATABASE(), '')), 12))`.
fn push_name<'b>(out: &mut AstPass<'_, 'b, Mysql>, prefix: &'b str) -> QueryResult<()> {
    out.push_sql("CONCAT(");
    out.push_bind_param::<Text, _>(prefix)?;
    out.push_sql(", LEFT(MD5(COALESCE(DATABASE(), '')), 12))");
    Ok(())
}

impl<ST> QueryFragment<Mysql> for LockSql<'_, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        match &self.stmt {
            Stmt::Get(prefix, seconds) => {
                out.push_sql("SELECT GET_LOCK(");
                push_name(&mut out, prefix)?;
                out.push_sql(", ");
                out.push_bind_param::<Double, _>(*seconds)?;
                out.push_sql("), ");
                push_name(&mut out, prefix)?;
            }
            Stmt::Release(name) => {
                out.push_sql("SELECT RELEASE_LOCK(");
                out.push_bind_param::<Text, _>(*name)?;
                out.push_sql(")");
            }
            Stmt::IsUsed(prefix) => {
                out.push_sql("SELECT IS_USED_LOCK(");
                push_name(&mut out, prefix)?;
                out.push_sql(")");
            }
            Stmt::ConnectionId => out.push_sql("SELECT CONNECTION_ID()"),
        }
        Ok(())
    }
}

impl<ST> QueryId for LockSql<'_, ST> {
    type QueryId = ();
    // Four statements share this type: the statement cache keys them by their text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: 'static> Query for LockSql<'_, ST> {
    type SqlType = ST;
}

impl<ST> RunQueryDsl<MysqlConnection> for LockSql<'_, ST> {}

/// MD5 (RFC 1321) as lowercase hex: the digest the server's `MD5()` gives, for [`lock_name`].
fn md5_hex(input: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301_u32,
        0xefcd_ab89_u32,
        0x98ba_dcfe_u32,
        0x1032_5476_u32,
    );
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    [a0, b0, c0, d0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The named lock around the transaction: taken before `BEGIN`, released after `COMMIT`.
impl ExclusiveBackend for MysqlConnection {
    fn exclusive<T, E: From<Error>>(
        &mut self,
        key: LockKey,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if crate::tx::in_transaction(self) {
            return Err(E::from(Error::invalid(
                "conn",
                "has a transaction open: on MySQL/MariaDB exclusive_transaction takes the named \
                 lock before its own BEGIN and releases it after its COMMIT, so it cannot run \
                 inside the caller's transaction",
            )));
        }
        with_lock(&mut *self, key, |c| crate::tx::transaction(c, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_the_rfc_1321_test_suite() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn lock_names_fit_mysqls_64_characters_whatever_the_key() {
        let long = "n".repeat(500);
        for key in [
            LockKey::new(&long, long.as_str()),
            LockKey::new("", 0),
            LockKey::new("x", i64::MAX),
        ] {
            let name = lock_name(key, &"d".repeat(64));
            assert_eq!(name.len(), 41, "{name}");
        }
    }
}
