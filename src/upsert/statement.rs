//! The `INSERT … ON CONFLICT … DO UPDATE` statement as a Diesel query fragment.
//!
//! Diesel's own upsert builder marks every `DO UPDATE` statement unsafe to cache, so each call
//! is parsed and planned anew. This fragment's text depends only on the model, the update
//! columns and the condition's type, never on the values (they are bind parameters; bulk rows
//! travel as one array per column), so Diesel keeps it in the connection's prepared-statement
//! cache, keyed by its SQL.

// MySQL writes its own statement (`super::mysql`); a MySQL-only build uses only
// `push_identifiers` from here.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

use super::model::{BindRow, ColumnArrays, UpsertModel};
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Bool;
use diesel::{QueryResult, RunQueryDsl};

/// Where the inserted values come from.
pub(crate) enum Values<'a, M, DB: Backend> {
    /// One row: `VALUES ($1, $2, …)`.
    Row(&'a M),
    /// Many rows, one array per column: `SELECT * FROM unnest($1, $2, …)` (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Arrays(ColumnArrays<'a, DB>),
}

/// What to do with a row whose key exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// `DO UPDATE SET …` (or `DO NOTHING` when there is nothing to update).
    Update,
    /// `DO NOTHING`.
    Nothing,
}

pub(crate) struct UpsertSql<'a, M: UpsertModel, F, DB: Backend> {
    pub(crate) table: M::Table,
    pub(crate) values: Values<'a, M, DB>,
    pub(crate) update: &'a [&'static str],
    pub(crate) condition: Option<&'a F>,
    pub(crate) on_conflict: OnConflict,
    /// `RETURNING (xmax = 0)`: one row per inserted or updated row, `true` when inserted
    /// (PostgreSQL: a freshly inserted tuple has no deleting/locking transaction).
    pub(crate) returning_inserted: bool,
}

impl<M: UpsertModel, F, DB: Backend> QueryId for UpsertSql<'_, M, F, DB> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel, F, DB: Backend> Query for UpsertSql<'_, M, F, DB> {
    type SqlType = Bool;
}

impl<M: UpsertModel, F, DB: Backend, Conn> RunQueryDsl<Conn> for UpsertSql<'_, M, F, DB> {}

impl<M, F, DB> QueryFragment<DB> for UpsertSql<'_, M, F, DB>
where
    DB: Backend,
    M: BindRow<DB>,
    M::Table: QueryFragment<DB>,
    F: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("INSERT INTO ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        push_identifiers(&mut out, M::COLUMNS)?;
        match &self.values {
            Values::Row(row) => {
                out.push_sql(") VALUES (");
                row.walk_row(out.reborrow())?;
                out.push_sql(")");
            }
            Values::Arrays(columns) => {
                out.push_sql(") SELECT * FROM unnest(");
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        out.push_sql(", ");
                    }
                    column.walk_ast(out.reborrow())?;
                }
                out.push_sql(")");
            }
        }
        out.push_sql(" ON CONFLICT (");
        push_identifiers(&mut out, M::KEY)?;
        out.push_sql(")");
        if self.on_conflict == OnConflict::Nothing || self.update.is_empty() {
            out.push_sql(" DO NOTHING");
        } else {
            out.push_sql(" DO UPDATE SET ");
            for (i, column) in self.update.iter().enumerate() {
                if i > 0 {
                    out.push_sql(", ");
                }
                out.push_identifier(column)?;
                out.push_sql(" = excluded.");
                out.push_identifier(column)?;
            }
            if let Some(condition) = self.condition {
                out.push_sql(" WHERE ");
                condition.walk_ast(out.reborrow())?;
            }
        }
        if self.returning_inserted {
            out.push_sql(" RETURNING (xmax = 0)");
        }
        Ok(())
    }
}

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
