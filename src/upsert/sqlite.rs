//! Upserts on SQLite: inside the process's writer gate, an `UPDATE` by key for the common
//! case of an existing row, else one statement that probes whether the key exists and writes
//! the row, so each row's outcome is exact; bulk upserts row by row in one `BEGIN IMMEDIATE`
//! transaction.

use super::statement::{OnConflict, Source, UpsertSql};
use super::UpsertModel;
use super::{BindRow, BulkOutcome, UpsertOutcome, Upsertable};
use crate::error::Result;
use crate::tx;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::QueryResult;
use diesel::RunQueryDsl;

/// One row's upsert on SQLite, with the values bound once per statement. Without an update
/// condition, first `UPDATE … WHERE key = …` ([`UpdateByKeySql`]): one changed row means the
/// key existed and was overwritten, the whole work of the common case. Otherwise (a new key,
/// or a condition) one statement that reads whether the key exists and writes the row
/// ([`Probed`]); it is atomic on its own, so whatever happened between the two
/// statements, the outcome it reports is exact.
fn sqlite_upsert_row<M, F>(
    conn: &mut SqliteConnection,
    row: &M,
    update: &[&'static str],
    condition: Option<&F>,
) -> Result<UpsertOutcome>
where
    M: BindRow<Sqlite>,
    M::Table: QueryFragment<Sqlite>,
    F: QueryFragment<Sqlite>,
{
    let in_tx = tx::in_transaction(conn);
    if condition.is_none() && !update.is_empty() && M::ONE_BIND_PER_COLUMN {
        let sql = UpdateByKeySql::<M> {
            table: M::Table::default(),
            row,
            update,
        };
        if sql
            .execute(conn)
            .map_err(|e| tx::statement_error(in_tx, e))?
            == 1
        {
            return Ok(UpsertOutcome::Updated);
        }
    }
    let sql = UpsertSql::<M, F, _> {
        table: M::Table::default(),
        source: Probed {
            table: M::Table::default(),
            row,
        },
        update,
        condition,
        on_conflict: OnConflict::Update,
    };
    match sql.load::<bool>(conn) {
        Ok(flags) => Ok(match flags.first() {
            Some(true) => UpsertOutcome::Inserted,
            Some(false) => UpsertOutcome::Updated,
            None => UpsertOutcome::Unchanged,
        }),
        Err(e) => Err(tx::statement_error(in_tx, e)),
    }
}

impl<M, F> Upsertable<SqliteConnection, F> for M
where
    M: BindRow<Sqlite>,
    M::Table: QueryFragment<Sqlite>,
    F: QueryFragment<Sqlite>,
{
    fn upsert_one(
        conn: &mut SqliteConnection,
        row: &Self,
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<UpsertOutcome> {
        tx::sqlite_single(conn, |conn| sqlite_upsert_row(conn, row, update, condition))
    }

    fn upsert_sorted_rows(
        conn: &mut SqliteConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        _chunk_size: usize,
    ) -> Result<Vec<UpsertOutcome>> {
        // SQLite runs in-process: a statement per row costs no round trip, and with at most one
        // row per statement the bind-parameter limit can never be reached.
        tx::immediate_transaction(conn, |conn| {
            let upsert = |row: &&Self| sqlite_upsert_row(conn, *row, update, condition);
            rows.iter().map(upsert).collect()
        })
    }

    fn upsert_sorted(
        conn: &mut SqliteConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<BulkOutcome> {
        let told = Self::upsert_sorted_rows(conn, rows, update, condition, chunk_size)?;
        let mut total = BulkOutcome::default();
        told.into_iter().for_each(|outcome| total.record(outcome));
        Ok(total)
    }
}

/// One row, and whether its key exists, read in the same statement before the row is written
/// (SQLite has no `xmax`):
///
/// ```text
/// WITH probe (existed, cols) AS MATERIALIZED (
///     SELECT EXISTS (SELECT 1 FROM t WHERE t.key = v.column1), v.* FROM (VALUES (?, ?, …)) AS v)
/// INSERT INTO t (cols) SELECT cols FROM probe WHERE true ON CONFLICT …
/// RETURNING NOT (SELECT existed FROM probe)
/// ```
///
/// The `INSERT` reads its row from `probe`, so the probe is computed (once: it is
/// materialized, and `RETURNING` reads the same copy) before the row is written; `RETURNING`
/// gives one row when the statement inserted or updated, `true` when it inserted. The values
/// are bound once, and the statement takes SQLite's write lock when it starts, so nothing can
/// come in between.
struct Probed<'a, M: UpsertModel> {
    table: M::Table,
    row: &'a M,
}

/// The name of [`Probed`]'s common table expression, and of its flag column.
const PROBE: &str = "__upsert_kit_probe";
const EXISTED: &str = "__upsert_kit_existed";

impl<M> Source<Sqlite> for Probed<'_, M>
where
    M: BindRow<Sqlite>,
    M::Table: QueryFragment<Sqlite>,
{
    fn walk_prefix<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let table = &self.table;
        out.push_sql("WITH ");
        out.push_identifier(PROBE)?;
        out.push_sql(" (");
        out.push_identifier(EXISTED)?;
        out.push_sql(", ");
        crate::sql::push_identifiers(out, M::COLUMNS)?;
        out.push_sql(") AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM ");
        table.walk_ast(out.reborrow())?;
        for (i, key) in M::KEY.iter().enumerate() {
            out.push_sql(if i == 0 { " WHERE " } else { " AND " });
            table.walk_ast(out.reborrow())?;
            out.push_sql(".");
            out.push_identifier(key)?;
            out.push_sql(" = v.column");
            push_position::<M>(out, key)?;
        }
        out.push_sql("), v.* FROM (VALUES (");
        self.row.walk_row(out.reborrow())?;
        out.push_sql(")) AS v) ");
        Ok(())
    }

    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        // `WHERE true`: without it SQLite would read `ON CONFLICT` as a join's `ON`.
        out.push_sql(") SELECT ");
        crate::sql::push_identifiers(out, M::COLUMNS)?;
        out.push_sql(" FROM ");
        out.push_identifier(PROBE)?;
        out.push_sql(" WHERE true");
        Ok(())
    }

    fn walk_returning<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(" RETURNING NOT (SELECT ");
        out.push_identifier(EXISTED)?;
        out.push_sql(" FROM ");
        out.push_identifier(PROBE)?;
        out.push_sql(")");
        Ok(())
    }
}

/// `UPDATE t SET (c2, c4) = (SELECT column2, column4 FROM (VALUES (?, ?, ?, ?))) WHERE
/// t.key = ?1`: the existing row overwritten with the incoming values, which are bound once
/// (SQLite; the key's values are referred to by their position among the row's binds, so the
/// model must bind exactly one parameter per column, [`BindRow::ONE_BIND_PER_COLUMN`]).
/// It affects one row when the key exists, none otherwise.
struct UpdateByKeySql<'a, M: UpsertModel> {
    table: M::Table,
    row: &'a M,
    update: &'a [&'static str],
}

impl<M: UpsertModel> QueryId for UpdateByKeySql<'_, M> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel, Conn> RunQueryDsl<Conn> for UpdateByKeySql<'_, M> {}

/// Writes the 1-based position of `column` among the model's columns (a number of the
/// declaration, never a value): `column3` names the third column of a `VALUES` list, `?3` its
/// bind parameter.
fn push_position<M: UpsertModel>(
    out: &mut AstPass<'_, '_, Sqlite>,
    column: &str,
) -> QueryResult<()> {
    let position = M::COLUMNS
        .iter()
        .position(|c| *c == column)
        .map(|i| i + 1)
        .ok_or_else(|| {
            diesel::result::Error::QueryBuilderError(
                format!("column {column} is not among the model's columns").into(),
            )
        })?;
    out.push_sql(&position.to_string());
    Ok(())
}

impl<M> QueryFragment<Sqlite> for UpdateByKeySql<'_, M>
where
    M: BindRow<Sqlite>,
    M::Table: QueryFragment<Sqlite>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" SET (");
        crate::sql::push_identifiers(&mut out, self.update)?;
        out.push_sql(") = (SELECT ");
        for (i, column) in self.update.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql("column");
            push_position::<M>(&mut out, column)?;
        }
        out.push_sql(" FROM (VALUES (");
        self.row.walk_row(out.reborrow())?;
        out.push_sql(")))");
        for (i, key) in M::KEY.iter().enumerate() {
            out.push_sql(if i == 0 { " WHERE " } else { " AND " });
            self.table.walk_ast(out.reborrow())?;
            out.push_sql(".");
            out.push_identifier(key)?;
            out.push_sql(" = ?");
            push_position::<M>(&mut out, key)?;
        }
        Ok(())
    }
}
