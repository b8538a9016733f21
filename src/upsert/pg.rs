//! Upserts on PostgreSQL: one `INSERT … ON CONFLICT … DO UPDATE … RETURNING (xmax = 0)` per
//! row, and bulk upserts as one statement per chunk with one array per column (`unnest`).

use super::model::ColumnArrays;
use super::statement::{OnConflict, Row, Source, UpsertSql};
use super::{BindColumns, BindRow, BulkOutcome, UpsertOutcome, Upsertable};
use crate::error::Result;
use crate::tx;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;
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
        let sql = UpsertSql::<M, F, _> {
            table: M::Table::default(),
            source: ReportingInsert(Row(row)),
            update,
            condition,
            on_conflict: OnConflict::Update,
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
            let sql = UpsertSql::<M, F, _> {
                table: M::Table::default(),
                source: ReportingInsert(Arrays(M::bind_columns(chunk))),
                update,
                condition,
                on_conflict: OnConflict::Update,
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

/// Many rows, one array per column: `) SELECT * FROM unnest($1, $2, …)`.
struct Arrays<'a>(ColumnArrays<'a, Pg>);

impl Source<Pg> for Arrays<'_> {
    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(") SELECT * FROM unnest(");
        for (i, column) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            column.walk_ast(out.reborrow())?;
        }
        out.push_sql(")");
        Ok(())
    }
}

/// `source`'s rows, and ` RETURNING (xmax = 0)`: one row per inserted or updated row, `true`
/// when inserted (a freshly inserted tuple has no deleting or locking transaction; an
/// implementation detail of PostgreSQL, tested on every outcome).
struct ReportingInsert<S>(S);

impl<S: Source<Pg>> Source<Pg> for ReportingInsert<S> {
    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_rows(out)
    }
    fn walk_returning<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(" RETURNING (xmax = 0)");
        Ok(())
    }
}
