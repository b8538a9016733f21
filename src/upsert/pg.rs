//! Upserts on PostgreSQL: one `INSERT … ON CONFLICT … DO UPDATE … RETURNING (xmax = 0)` per
//! row, and bulk upserts as one statement per chunk with one array per column (`unnest`).

use super::statement::{OnConflict, UpsertSql, Values};
use super::{BindColumns, BindRow, BulkOutcome, UpsertOutcome, Upsertable};
use crate::error::Result;
use crate::tx;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::QueryFragment;
use diesel::RunQueryDsl;

impl<M, F> Upsertable<PgConnection, F> for M
where
    M: BindRow<Pg> + BindColumns<Pg>,
    M::Table: QueryFragment<Pg>,
    F: QueryFragment<Pg>,
{
    fn upsert_one(
        conn: &mut PgConnection,
        row: &Self,
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<UpsertOutcome> {
        let sql = UpsertSql::<M, F, Pg> {
            table: M::Table::default(),
            values: Values::Row(row),
            update,
            condition,
            on_conflict: OnConflict::Update,
            returning_inserted: true,
        };
        let in_tx = tx::in_transaction(conn);
        match sql.load::<bool>(conn) {
            Ok(flags) => Ok(match flags.first() {
                Some(true) => UpsertOutcome::Inserted,
                Some(false) => UpsertOutcome::Updated,
                None => UpsertOutcome::Unchanged,
            }),
            Err(e) => Err(tx::statement_error(in_tx, e)),
        }
    }

    fn upsert_sorted(
        conn: &mut PgConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<BulkOutcome> {
        let run_chunk = |conn: &mut PgConnection, chunk: &[&M]| -> Result<BulkOutcome> {
            let sql = UpsertSql::<M, F, Pg> {
                table: M::Table::default(),
                values: Values::Arrays(M::bind_columns(chunk)),
                update,
                condition,
                on_conflict: OnConflict::Update,
                returning_inserted: true,
            };
            let in_tx = tx::in_transaction(conn);
            let flags = sql
                .load::<bool>(conn)
                .map_err(|e| tx::statement_error(in_tx, e))?;
            let inserted = flags.iter().filter(|inserted| **inserted).count();
            Ok(BulkOutcome {
                inserted,
                updated: flags.len() - inserted,
                unchanged: chunk.len() - flags.len(),
                collapsed: 0,
            })
        };
        if rows.len() <= chunk_size {
            // One statement is atomic on its own: no transaction round trips needed.
            return run_chunk(conn, rows);
        }
        tx::transaction(conn, |conn| {
            let mut total = BulkOutcome::default();
            for chunk in rows.chunks(chunk_size) {
                let part = run_chunk(conn, chunk)?;
                total.inserted += part.inserted;
                total.updated += part.updated;
                total.unchanged += part.unchanged;
            }
            Ok(total)
        })
    }
}
