//! The SQL helpers every statement of the crate shares: identifier lists, qualified names, and
//! whether a
//! connection is inside a transaction (which decides how a failed statement is classified and
//! whether the crate may open a transaction of its own).
//!
//! This module is the foundation's: it imports nothing of the crate.

use diesel::backend::Backend;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::query_builder::AstPass;
use diesel::QueryResult;

/// Pushes `names` as quoted identifiers separated by commas: `"a", "b"`.
pub(crate) fn push_identifiers<DB: Backend>(
    out: &mut AstPass<'_, '_, DB>,
    names: &[&str],
) -> QueryResult<()> {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_identifier(name)?;
    }
    Ok(())
}

/// Pushes `qualifier.column` as quoted identifiers: `"t"."c"` (PostgreSQL's statements name
/// their common table expressions' columns so).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn push_qualified<DB: Backend>(
    out: &mut AstPass<'_, '_, DB>,
    qualifier: &str,
    column: &str,
) -> QueryResult<()> {
    out.push_identifier(qualifier)?;
    out.push_sql(".");
    out.push_identifier(column)
}

/// Whether `conn` has an open transaction (or its transaction state is broken, which counts as
/// open: nothing may assume autocommit then).
pub fn in_transaction<C>(conn: &mut C) -> bool
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
{
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map_or(true, |depth| depth.is_some())
}
