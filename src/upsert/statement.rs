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
    /// One row, and whether its key exists, read in the same statement before the row is
    /// written (SQLite, where `xmax` does not exist):
    ///
    /// ```text
    /// WITH probe (existed, cols) AS MATERIALIZED (
    ///     SELECT EXISTS (SELECT 1 FROM t WHERE t.key = v.column1), v.* FROM (VALUES (?, ?, …)) AS v)
    /// INSERT INTO t (cols) SELECT cols FROM probe WHERE true ON CONFLICT …
    /// RETURNING NOT (SELECT existed FROM probe)
    /// ```
    ///
    /// The `INSERT` reads its row from `probe`, so the probe is computed (once: it is
    /// materialized, and `RETURNING` reads the same copy) before the row is written;
    /// `RETURNING` gives one row when the statement inserted or updated, `true` when it
    /// inserted. The values are bound once, and the statement takes SQLite's write lock when it
    /// starts, so nothing can come in between.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Probed(&'a M),
}

/// The name of [`Values::Probed`]'s common table expression, and of its flag column.
const PROBE: &str = "__upsert_kit_probe";
const EXISTED: &str = "__upsert_kit_existed";

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
        if let Values::Probed(row) = &self.values {
            out.push_sql("WITH ");
            out.push_identifier(PROBE)?;
            out.push_sql(" (");
            out.push_identifier(EXISTED)?;
            out.push_sql(", ");
            crate::sql::push_identifiers(&mut out, M::COLUMNS)?;
            out.push_sql(") AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM ");
            self.table.walk_ast(out.reborrow())?;
            for (i, key) in M::KEY.iter().enumerate() {
                out.push_sql(if i == 0 { " WHERE " } else { " AND " });
                self.table.walk_ast(out.reborrow())?;
                out.push_sql(".");
                out.push_identifier(key)?;
                out.push_sql(&format!(" = v.column{}", position::<M>(key)?));
            }
            out.push_sql("), v.* FROM (VALUES (");
            row.walk_row(out.reborrow())?;
            out.push_sql(")) AS v) ");
        }
        out.push_sql("INSERT INTO ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        crate::sql::push_identifiers(&mut out, M::COLUMNS)?;
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
            Values::Probed(_) => {
                // `WHERE true`: without it SQLite would read `ON CONFLICT` as a join's `ON`.
                out.push_sql(") SELECT ");
                crate::sql::push_identifiers(&mut out, M::COLUMNS)?;
                out.push_sql(" FROM ");
                out.push_identifier(PROBE)?;
                out.push_sql(" WHERE true");
            }
        }
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
        if self.returning_inserted {
            if let Values::Probed(_) = self.values {
                out.push_sql(" RETURNING NOT (SELECT ");
                out.push_identifier(EXISTED)?;
                out.push_sql(" FROM ");
                out.push_identifier(PROBE)?;
                out.push_sql(")");
            } else {
                out.push_sql(" RETURNING (xmax = 0)");
            }
        }
        Ok(())
    }
}

/// `UPDATE t SET (c2, c4) = (SELECT column2, column4 FROM (VALUES (?, ?, ?, ?))) WHERE
/// t.key = ?1`: the existing row overwritten with the incoming values, which are bound once
/// (SQLite; the key's values are referred to by their position among the row's binds, so the
/// model must bind exactly one parameter per column, [`BindRow::ONE_BIND_PER_COLUMN`]).
/// It affects one row when the key exists, none otherwise.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) struct UpdateByKeySql<'a, M: UpsertModel> {
    pub(crate) table: M::Table,
    pub(crate) row: &'a M,
    pub(crate) update: &'a [&'static str],
}

impl<M: UpsertModel> QueryId for UpdateByKeySql<'_, M> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel, Conn> RunQueryDsl<Conn> for UpdateByKeySql<'_, M> {}

/// The 1-based position of `column` among the model's columns.
fn position<M: UpsertModel>(column: &str) -> QueryResult<usize> {
    M::COLUMNS
        .iter()
        .position(|c| *c == column)
        .map(|i| i + 1)
        .ok_or_else(|| {
            diesel::result::Error::QueryBuilderError(
                format!("column {column} is not among the model's columns").into(),
            )
        })
}

impl<M, DB> QueryFragment<DB> for UpdateByKeySql<'_, M>
where
    DB: Backend,
    M: BindRow<DB>,
    M::Table: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" SET (");
        crate::sql::push_identifiers(&mut out, self.update)?;
        out.push_sql(") = (SELECT ");
        for (i, column) in self.update.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql(&format!("column{}", position::<M>(column)?));
        }
        out.push_sql(" FROM (VALUES (");
        self.row.walk_row(out.reborrow())?;
        out.push_sql(")))");
        for (i, key) in M::KEY.iter().enumerate() {
            out.push_sql(if i == 0 { " WHERE " } else { " AND " });
            self.table.walk_ast(out.reborrow())?;
            out.push_sql(".");
            out.push_identifier(key)?;
            out.push_sql(&format!(" = ?{}", position::<M>(key)?));
        }
        Ok(())
    }
}
