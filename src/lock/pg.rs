//! Advisory locks on PostgreSQL: `pg_advisory_xact_lock` and its siblings (transaction-scoped,
//! shared or exclusive), the session-scoped ones behind [`SessionLock`](super::SessionLock), and
//! the introspection of `pg_locks`.

use super::{
    poison, take, ExclusiveBackend, Held, LockBackend, LockKey, LockMode, LockSession, SessionLock,
    Wait,
};
use crate::error::{Error, Result};
use crate::tx;
use diesel::pg::PgConnection;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel::RunQueryDsl;
use std::time::Duration;

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
/// # include!("../doctest_setup.rs");
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
    crate::observe::call!("postgresql", "xact_lock", || "").run(|call| {
        let start = std::time::Instant::now();
        diesel::select(pg_advisory_xact_lock(key.class, key.object)).execute(conn)?;
        call.waited(start.elapsed());
        Ok(())
    })
}

impl ExclusiveBackend for PgConnection {
    fn exclusive<T, E: From<Error>>(
        &mut self,
        key: LockKey,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        tx::transaction(self, |c| {
            xact_lock(c, key)?;
            f(c)
        })
    }
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
/// # include!("../doctest_setup.rs");
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
/// hold it shared at once, while an exclusive holder ([`xact_lock`], [`lock`](super::lock)) excludes them
/// all. Released by the server when the caller's transaction ends, as [`xact_lock`].
///
/// One round trip.
///
/// # Errors
/// As [`xact_lock`].
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
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
/// # include!("../doctest_setup.rs");
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

impl LockSession for PgConnection {
    type Connection = PgConnection;

    fn connection(&mut self) -> &mut PgConnection {
        self
    }

    fn connection_ref(&self) -> &PgConnection {
        self
    }
}

impl LockBackend for PgConnection {
    fn refuse_session_lock(&mut self, operation: &'static str) -> Result<()> {
        refuse_in_pooler_mode(self, operation)
    }

    fn acquire_lock(&mut self, key: LockKey, mode: LockMode, wait: Wait) -> Result<Option<Held>> {
        let taken = match wait {
            Wait::Forever => {
                acquire(self, key, mode)?;
                true
            }
            Wait::No => try_acquire(self, key, mode)?,
            Wait::For(timeout) => acquire_within(self, key, mode, timeout)?,
        };
        Ok(taken.then_some(Held {
            key,
            mode,
            name: None,
        }))
    }

    fn release_lock(&mut self, held: &Held) -> Result<bool> {
        unlock(self, held.key, held.mode)
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

/// `pg_advisory_lock` under a `lock_timeout` of `timeout`, in a transaction of its own (see
/// [`try_lock_for`]): whether it was granted in time.
fn acquire_within(
    pg: &mut PgConnection,
    key: LockKey,
    mode: LockMode,
    timeout: Duration,
) -> Result<bool> {
    let millis = timeout.as_millis();
    let nested = tx::in_transaction(pg);
    let mut acquired = false;
    let outcome = tx::transaction(pg, |c| {
        let previous: Option<String> = if nested {
            Some(diesel::select(current_setting("lock_timeout")).get_result(c)?)
        } else {
            None
        };
        diesel::select(set_config("lock_timeout", format!("{millis}ms"), true)).execute(c)?;
        acquire(c, key, mode)?;
        acquired = true;
        if let Some(previous) = previous {
            diesel::select(set_config("lock_timeout", previous, true)).execute(c)?;
        }
        Ok(())
    });
    match outcome {
        Ok(()) => Ok(true),
        Err(Error::LockTimeout(_)) if !acquired => Ok(false),
        Err(e) => {
            if acquired {
                // Granted, then the restore or the commit failed: give the lock back, or make
                // sure the session is not reused.
                if !matches!(unlock(pg, key, mode), Ok(true)) {
                    poison(pg);
                }
            }
            Err(e)
        }
    }
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

/// Waits for the shared session-scoped advisory lock `key`: many sessions may hold it shared,
/// none while another holds it exclusively. As [`lock`](super::lock) otherwise. PostgreSQL only (MySQL's
/// named locks have no shared mode: a MySQL connection does not compile here).
///
/// # Errors
/// As [`lock`](super::lock).
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use upsert_kit::lock::{lock_shared, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let guard = lock_shared(&mut conn, LockKey::new("schema", "stats"))?;
/// drop(guard); // released
/// # Ok(()) }
/// ```
pub fn lock_shared<C: LockSession<Connection = PgConnection>>(
    conn: C,
    key: LockKey,
) -> Result<SessionLock<C>> {
    take(
        conn,
        key,
        LockMode::Shared,
        Wait::Forever,
        "lock::lock_shared",
    )?
    .ok_or_else(|| Error::LockTimeout(format!("session lock {key:?} not granted")))
}

/// Takes the shared session-scoped advisory lock `key` unless a session holds it exclusively,
/// without waiting. As [`try_lock`](super::try_lock) otherwise; PostgreSQL only, as [`lock_shared`].
///
/// # Errors
/// The round trip's errors.
///
/// # Examples
/// ```
/// # include!("../doctest_setup.rs");
/// use upsert_kit::lock::{try_lock_shared, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let reader = try_lock_shared(&mut conn, LockKey::new("schema", "stats"))?;
/// assert!(reader.is_some());
/// # Ok(()) }
/// ```
pub fn try_lock_shared<C: LockSession<Connection = PgConnection>>(
    conn: C,
    key: LockKey,
) -> Result<Option<SessionLock<C>>> {
    take(
        conn,
        key,
        LockMode::Shared,
        Wait::No,
        "lock::try_lock_shared",
    )
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
macro_rules! locks_sql {
    ($($rest:literal)?) => {
        concat!(
            "SELECT l.pid, l.classid::int8 AS classid, l.objid::int8 AS objid, \
             l.objsubid::int4 AS objsubid, l.mode, l.granted FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.objsubid IN (1, 2) \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            $(, $rest)?
        )
    };
}
#[cfg(test)]
const LOCKS_SQL: &str = locks_sql!();

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
/// # include!("../doctest_setup.rs");
/// use upsert_kit::lock::{held_locks, lock, AdvisoryKey, LockKey};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// let key = LockKey::new("reports", 1);
/// let mut guard = lock(&mut conn, key)?;
/// assert!(held_locks(&mut guard)?.iter().any(|l| l.key == AdvisoryKey::Pair(key)));
/// # Ok(()) }
/// ```
pub fn held_locks(conn: &mut PgConnection) -> Result<Vec<AdvisoryLock>> {
    let sql = locks_sql!(" AND l.pid = pg_backend_pid() ORDER BY 2, 3, 4");
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
/// # include!("../doctest_setup.rs");
/// use upsert_kit::lock::server_locks;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// for l in server_locks(&mut conn)? {
///     println!("backend {} {} {:?} granted={}", l.pid, l.mode, l.key, l.granted);
/// }
/// # Ok(()) }
/// ```
pub fn server_locks(conn: &mut PgConnection) -> Result<Vec<AdvisoryLock>> {
    let sql = locks_sql!(" ORDER BY 1, 2, 3, 4");
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
/// # include!("../doctest_setup.rs");
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
