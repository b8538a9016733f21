//! Transactions that know whether a failure happened before or during `COMMIT`.
//!
//! A connection lost while a transaction's body runs means the server rolled it back: running
//! it again is safe ([`Error::is_retryable`]). A connection lost while `COMMIT` was in flight
//! means nobody knows whether the server applied it ([`Error::is_outcome_unknown`]): only an
//! idempotent write may be repeated. Diesel's `Connection::transaction` reports both the same
//! way; [`transaction`] tells them apart, and it is what every primitive of this crate uses.

use crate::error::{Error, Result};
use diesel::connection::Connection;

/// The error of a transaction run by [`transaction`]: the body's own, or the database's
/// (`BEGIN`, `COMMIT`, `ROLLBACK`), classified.
enum TxError<E> {
    Body(E),
    Database(Error),
}

impl<E> From<diesel::result::Error> for TxError<E> {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Database(Error::from(e))
    }
}

/// Runs `f` in a transaction (a savepoint when one is already open on `conn`) and commits it,
/// or rolls it back when `f` returns `Err`.
///
/// `f`'s error comes back unchanged. An error of the transaction itself is converted with
/// `E::from(Error)`; a connection lost while committing is then [`Error::OutcomeUnknown`]
/// instead of the [`Error::ConnectionLost`] that Diesel's `Connection::transaction` reports, since
/// the server may have applied the transaction.
///
/// # Errors
/// `f`'s error, or the classified error of `BEGIN`, `COMMIT` or `ROLLBACK`.
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = establish_sqlite()?;
/// let n = upsert_kit::transaction(&mut conn, |conn| {
///     diesel::sql_query("INSERT INTO items (sku, name) VALUES ('a-1', 'first')").execute(conn)?;
///     diesel::sql_query("INSERT INTO items (sku, name) VALUES ('a-2', 'second')").execute(conn)?;
///     Ok::<_, upsert_kit::Error>(2)
/// })?;
/// assert_eq!(n, 2);
/// // A body that fails rolls everything back and returns its own error.
/// let failed: Result<(), upsert_kit::Error> = upsert_kit::transaction(&mut conn, |conn| {
///     diesel::sql_query("DELETE FROM items").execute(conn)?;
///     Err(upsert_kit::Error::invalid("sku", "changed my mind"))
/// });
/// assert!(matches!(failed, Err(upsert_kit::Error::InvalidInput(_))));
/// let left: i64 = items::table.count().get_result(&mut conn)?;
/// assert_eq!(left, 2);
/// # Ok(()) }
/// ```
pub fn transaction<C, T, E, F>(conn: &mut C, f: F) -> Result<T, E>
where
    C: Connection,
    E: From<Error>,
    F: FnOnce(&mut C) -> Result<T, E>,
{
    run(conn, f, |conn, body| conn.transaction(body))
}

/// Runs `f` in SQLite's `BEGIN IMMEDIATE` transaction, which takes the database's single write
/// lock at once (waiting up to the busy timeout) instead of at the first write, so two writers
/// never both read and then fail to upgrade; or, when the caller already has a transaction open
/// (a whole job run in one transaction), in a savepoint of it: SQLite refuses a nested `BEGIN`,
/// and the caller's transaction already holds (or takes at its first write) the lock.
///
/// Errors are reported as by [`transaction`].
///
/// On a connection of [`connect_sqlite`](crate::db::connect_sqlite) or
/// [`sqlite_pool`](crate::db::sqlite_pool), the writers of one process queue for the file
/// before `BEGIN IMMEDIATE` (on a condition variable, not in SQLite's sleeping busy handler),
/// up to the busy timeout; writers in other processes wait in the busy handler as before.
///
/// # Errors
/// `f`'s error, or the classified error of `BEGIN`, `COMMIT` or `ROLLBACK`; a busy database
/// past its timeout is [`Error::Busy`] (retryable: nothing was applied).
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = establish_sqlite()?;
/// upsert_kit::tx::immediate_transaction(&mut conn, |conn| {
///     diesel::sql_query("INSERT INTO items (sku, name) VALUES ('a-1', 'first')").execute(conn)?;
///     Ok::<_, upsert_kit::Error>(())
/// })?;
/// # Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
pub fn immediate_transaction<T, E, F>(conn: &mut diesel::SqliteConnection, f: F) -> Result<T, E>
where
    E: From<Error>,
    F: FnOnce(&mut diesel::SqliteConnection) -> Result<T, E>,
{
    if in_transaction(conn) {
        transaction(conn, f)
    } else {
        let _gate = crate::sqlite_gate::enter(conn).map_err(E::from)?;
        run(conn, f, |conn, body| conn.immediate_transaction(body))
    }
}

/// Runs `f` through `begin` (a Diesel transaction method), keeping `f`'s error apart from the
/// transaction's and classifying a failure after the body succeeded as one of `COMMIT`.
fn run<C, T, E, F>(
    conn: &mut C,
    f: F,
    begin: impl FnOnce(&mut C, &mut dyn FnMut(&mut C) -> Result<T, TxError<E>>) -> Result<T, TxError<E>>,
) -> Result<T, E>
where
    E: From<Error>,
    F: FnOnce(&mut C) -> Result<T, E>,
{
    let mut body_done = false;
    let mut f = Some(f);
    let result = begin(conn, &mut |c| {
        let f = f.take().expect("the transaction body runs once");
        let value = f(c).map_err(TxError::Body)?;
        body_done = true;
        Ok(value)
    });
    match result {
        Ok(value) => Ok(value),
        Err(TxError::Body(e)) => Err(e),
        Err(TxError::Database(e)) if body_done => Err(E::from(e.at_commit())),
        Err(TxError::Database(e)) => Err(E::from(e)),
    }
}

pub use crate::sql::in_transaction;

/// Classifies the error of a single statement. Outside a transaction (`in_transaction` is
/// false, as [`in_transaction`] said *before* the statement ran) the statement commits on its
/// own, so a connection lost while it ran leaves its outcome unknown.
///
/// ```
/// use upsert_kit::tx::statement_error;
/// let lost = || diesel::result::Error::DatabaseError(
///     diesel::result::DatabaseErrorKind::ClosedConnection,
///     Box::new(String::from("server closed the connection unexpectedly")),
/// );
/// assert!(statement_error(false, lost()).is_outcome_unknown());
/// assert!(!statement_error(false, lost()).to_string().contains("COMMIT"));
/// assert!(statement_error(true, lost()).is_retryable());
/// ```
pub fn statement_error(in_transaction: bool, e: diesel::result::Error) -> Error {
    match Error::from(e) {
        // No COMMIT was sent: the statement was its own transaction. Whether the server
        // committed it before the connection went is just as unknown, but the message must not
        // send the reader looking for a COMMIT.
        Error::ConnectionLost(m) if !in_transaction => Error::OutcomeUnknown(format!(
            "connection lost while a statement outside any transaction ran (it commits on its own): {m}"
        )),
        err => err,
    }
}

/// One SQLite statement that writes, atomic by itself: outside a transaction it commits on its
/// own, and since it writes, SQLite takes the write lock when it starts (waiting in the busy
/// handler) and reads nothing before; inside the caller's transaction it is part of it. The
/// writers of one process queue for the file first (see [`immediate_transaction`]).
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_single<T>(
    conn: &mut diesel::SqliteConnection,
    f: impl FnOnce(&mut diesel::SqliteConnection) -> Result<T>,
) -> Result<T> {
    let _gate = crate::sqlite_gate::enter(conn)?;
    f(conn)
}
