//! Upserts on PostgreSQL: one `INSERT … ON CONFLICT … DO UPDATE … RETURNING (xmax = 0)` per
//! row, and bulk upserts as one statement per chunk with one array per column (`unnest`).

use super::model::ColumnArrays;
use super::statement::{OnConflict, Row, Source, UpsertSql};
use super::{BindColumns, BindRow, BulkOutcome, UpsertModel, UpsertOutcome, Upsertable};
use crate::error::Result;
use crate::sql::push_qualified;
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

    fn upsert_rows(
        conn: &mut PgConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<UpsertOutcome>> {
        let sql = Told(UpsertSql::<M, F, _> {
            table: M::Table::default(),
            source: Numbered::<M>(M::bind_columns(rows), std::marker::PhantomData),
            update,
            condition,
            on_conflict: OnConflict::Update,
        });
        let in_tx = tx::in_transaction(conn);
        let told = sql
            .load::<(i64, bool)>(conn)
            .map_err(|e| tx::statement_error(in_tx, e))?;
        let mut outcomes = vec![UpsertOutcome::Unchanged; rows.len()];
        for (ord, inserted) in told {
            let slot = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| outcomes.get_mut(i))
                .ok_or_else(|| {
                    crate::error::Error::Database(diesel::result::Error::QueryBuilderError(
                        "an upsert told the outcome of a row it was not given".into(),
                    ))
                })?;
            *slot = if inserted {
                UpsertOutcome::Inserted
            } else {
                UpsertOutcome::Updated
            };
        }
        Ok(outcomes)
    }

    fn upsert_sorted_rows(
        conn: &mut PgConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<Vec<UpsertOutcome>> {
        if rows.len() <= chunk_size {
            // One statement is atomic on its own: no transaction round trips needed.
            return Self::upsert_rows(conn, rows, update, condition);
        }
        tx::transaction(conn, |conn| {
            let mut told = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(chunk_size) {
                told.extend(Self::upsert_rows(conn, chunk, update, condition)?);
            }
            Ok(told)
        })
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

/// Many rows numbered by their position, each written row told back with its number:
///
/// ```sql
/// WITH "s" AS (SELECT * FROM unnest($1, $2, …) WITH ORDINALITY AS "s"(c1, c2, …, "n")),
/// "w" AS (INSERT INTO t (c1, c2, …) SELECT c1, c2, … FROM "s" ON CONFLICT … DO UPDATE …
///         RETURNING k1, …, (xmax = 0) AS "inserted")
/// SELECT "s"."n", "w"."inserted" FROM "w" JOIN "s" ON "s".k1 = "w".k1 AND …
/// ```
///
/// A row the condition left alone is not written, so it is not told: `Unchanged`. The rows'
/// keys are distinct (one statement may not touch a row twice), so the join on the key finds
/// each written row's number.
struct Numbered<'a, M>(ColumnArrays<'a, Pg>, std::marker::PhantomData<M>);

/// The names the numbered statement gives its own parts, unlike any column's.
const SOURCE: &str = "__upsert_kit_rows";
const WRITTEN: &str = "__upsert_kit_written";
const NUMBER: &str = "__upsert_kit_n";
const INSERTED: &str = "__upsert_kit_inserted";

impl<M: UpsertModel> Source<Pg> for Numbered<'_, M> {
    fn walk_prefix<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH ");
        out.push_identifier(SOURCE)?;
        out.push_sql(" AS (SELECT * FROM unnest(");
        for (i, column) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            column.walk_ast(out.reborrow())?;
        }
        out.push_sql(") WITH ORDINALITY AS ");
        out.push_identifier(SOURCE)?;
        out.push_sql("(");
        crate::sql::push_identifiers(out, M::COLUMNS)?;
        out.push_sql(", ");
        out.push_identifier(NUMBER)?;
        out.push_sql(")), ");
        out.push_identifier(WRITTEN)?;
        out.push_sql(" AS (");
        Ok(())
    }

    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(") SELECT ");
        crate::sql::push_identifiers(out, M::COLUMNS)?;
        out.push_sql(" FROM ");
        out.push_identifier(SOURCE)
    }

    fn walk_returning<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(" RETURNING ");
        crate::sql::push_identifiers(out, M::KEY)?;
        out.push_sql(", (xmax = 0) AS ");
        out.push_identifier(INSERTED)?;
        out.push_sql(") SELECT ");
        push_qualified(out, SOURCE, NUMBER)?;
        out.push_sql(", ");
        push_qualified(out, WRITTEN, INSERTED)?;
        out.push_sql(" FROM ");
        out.push_identifier(WRITTEN)?;
        out.push_sql(" JOIN ");
        out.push_identifier(SOURCE)?;
        out.push_sql(" ON ");
        for (i, key) in M::KEY.iter().enumerate() {
            if i > 0 {
                out.push_sql(" AND ");
            }
            push_qualified(out, SOURCE, key)?;
            out.push_sql(" = ");
            push_qualified(out, WRITTEN, key)?;
        }
        Ok(())
    }
}

/// An upsert whose rows are told back as `(number, inserted)`.
struct Told<S>(S);

impl<S> diesel::query_builder::QueryId for Told<S> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<S> diesel::query_builder::Query for Told<S> {
    type SqlType = (diesel::sql_types::BigInt, diesel::sql_types::Bool);
}

impl<S, Conn> RunQueryDsl<Conn> for Told<S> {}

impl<S: QueryFragment<Pg>> QueryFragment<Pg> for Told<S> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}
