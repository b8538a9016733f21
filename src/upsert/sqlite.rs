//! Upserts on SQLite: inside the process's writer gate, an `UPDATE` by key for the common
//! case of an existing row, else one statement that probes whether the key exists and writes
//! the row, so each row's outcome is exact; bulk upserts row by row in one `BEGIN IMMEDIATE`
//! transaction.

use super::statement::{OnConflict, UpdateByKeySql, UpsertSql, Values};
use super::{BindRow, BulkOutcome, UpsertOutcome, Upsertable};
use crate::error::Result;
use crate::tx;
use diesel::query_builder::QueryFragment;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::RunQueryDsl;

/// One row's upsert on SQLite, with the values bound once per statement. Without an update
/// condition, first `UPDATE … WHERE key = …` ([`UpdateByKeySql`]): one changed row means the
/// key existed and was overwritten, the whole work of the common case. Otherwise (a new key,
/// or a condition) one statement that reads whether the key exists and writes the row
/// ([`Values::Probed`]); it is atomic on its own, so whatever happened between the two
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
    let sql = UpsertSql::<M, F, Sqlite> {
        table: M::Table::default(),
        values: Values::Probed(row),
        update,
        condition,
        on_conflict: OnConflict::Update,
        returning_inserted: true,
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

    fn upsert_sorted(
        conn: &mut SqliteConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        _chunk_size: usize,
    ) -> Result<BulkOutcome> {
        // SQLite runs in-process: a statement per row costs no round trip, and with at most one
        // row per statement the bind-parameter limit can never be reached.
        tx::sqlite_write(conn, |conn| {
            let mut total = BulkOutcome::default();
            for row in rows {
                total.record(sqlite_upsert_row(conn, *row, update, condition)?);
            }
            Ok(total)
        })
    }
}
