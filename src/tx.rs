//! Transactions that know whether a failure happened before or during `COMMIT`.

use crate::error::{Error, Result};
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::sqlite::SqliteConnection;

/// Runs `f` in a transaction (a savepoint when one is already open). An error raised while
/// committing a lost connection is reported as [`Error::OutcomeUnknown`], since the server may
/// have applied the transaction; errors inside `f` roll it back.
pub(crate) fn transaction<C, T, F>(conn: &mut C, f: F) -> Result<T>
where
    C: Connection,
    F: FnOnce(&mut C) -> Result<T>,
{
    let mut body_done = false;
    let result = conn.transaction::<T, Error, _>(|c| {
        let value = f(c)?;
        body_done = true;
        Ok(value)
    });
    match result {
        Err(e) if body_done => Err(e.at_commit()),
        other => other,
    }
}

/// Whether `conn` has an open transaction.
pub(crate) fn in_transaction<C>(conn: &mut C) -> bool
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
{
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map_or(true, |depth| depth.is_some())
}

/// Classifies the error of a single statement: outside a transaction (`in_transaction` is
/// false, as it was *before* the statement ran) the statement commits on its own, so a
/// connection lost while it ran leaves its outcome unknown.
pub(crate) fn statement_error(in_transaction: bool, e: diesel::result::Error) -> Error {
    let err = Error::from(e);
    if matches!(err, Error::ConnectionLost(_)) && !in_transaction {
        err.at_commit()
    } else {
        err
    }
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction, or, when the caller already has a transaction
/// open (e.g. a whole job run in one `immediate_transaction`), in a savepoint of it: SQLite
/// refuses a nested `BEGIN`, and the caller's transaction already holds (or takes at the first
/// write) the database's single write lock.
pub(crate) fn sqlite_write<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T>,
) -> Result<T> {
    if in_transaction(conn) {
        transaction(conn, f)
    } else {
        conn.immediate_transaction(f)
    }
}
