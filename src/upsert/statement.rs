//! The `INSERT … ON CONFLICT … DO UPDATE` statement as a Diesel query fragment.
//!
//! Diesel's own upsert builder marks every `DO UPDATE` statement unsafe to cache, so each call
//! is parsed and planned anew. This fragment's text depends only on the model, the update
//! columns and the condition's type, never on the values (they are bind parameters; bulk rows
//! travel as one array per column), so Diesel keeps it in the connection's prepared-statement
//! cache, keyed by its SQL.

// MySQL writes its own statement (`super::mysql`); get-or-create uses this one on PostgreSQL
// and SQLite.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

use super::model::{BindRow, UpsertModel};
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Bool;
use diesel::{QueryResult, RunQueryDsl};

/// Where an upsert's rows come from, what comes before the `INSERT` and what the statement
/// returns: a single row's `VALUES` here; each backend's own ones (PostgreSQL's arrays and
/// `xmax`, SQLite's probe) in its file.
pub(crate) trait Source<DB: Backend> {
    /// What comes before `INSERT` (a `WITH`), if anything.
    fn walk_prefix<'b>(&'b self, _out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Ok(())
    }
    /// What follows `INSERT INTO t (columns…`: `) VALUES (…)`, `) SELECT …`.
    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>;
    /// What follows the conflict clause (a `RETURNING`), if anything.
    fn walk_returning<'b>(&'b self, _out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Ok(())
    }
}

/// One row: `) VALUES ($1, $2, …)`.
pub(crate) struct Row<'a, M>(pub(crate) &'a M);

impl<M: BindRow<DB>, DB: Backend> Source<DB> for Row<'_, M> {
    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(") VALUES (");
        self.0.walk_row(out.reborrow())?;
        out.push_sql(")");
        Ok(())
    }
}

/// What to do with a row whose key exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// `DO UPDATE SET …` (or `DO NOTHING` when there is nothing to update).
    Update,
    /// `DO NOTHING`.
    Nothing,
}

/// `[prefix] INSERT INTO t (columns…) <rows> ON CONFLICT (key) DO UPDATE SET c = excluded.c, …
/// [WHERE condition] [returning]` (PostgreSQL, SQLite).
pub(crate) struct UpsertSql<'a, M: UpsertModel, F, S> {
    pub(crate) table: M::Table,
    pub(crate) source: S,
    pub(crate) update: &'a [&'static str],
    pub(crate) condition: Option<&'a F>,
    pub(crate) on_conflict: OnConflict,
}

impl<M: UpsertModel, F, S> QueryId for UpsertSql<'_, M, F, S> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel, F, S> Query for UpsertSql<'_, M, F, S> {
    type SqlType = Bool;
}

impl<M: UpsertModel, F, S, Conn> RunQueryDsl<Conn> for UpsertSql<'_, M, F, S> {}

impl<M, F, S, DB> QueryFragment<DB> for UpsertSql<'_, M, F, S>
where
    DB: Backend,
    M: UpsertModel,
    M::Table: QueryFragment<DB>,
    F: QueryFragment<DB>,
    S: Source<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.source.walk_prefix(&mut out)?;
        out.push_sql("INSERT INTO ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        crate::sql::push_identifiers(&mut out, M::COLUMNS)?;
        self.source.walk_rows(&mut out)?;
        out.push_sql(" ON CONFLICT (");
        crate::sql::push_identifiers(&mut out, M::KEY)?;
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
        self.source.walk_returning(&mut out)
    }
}
