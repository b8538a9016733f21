//! The racy query-then-insert that upsert-kit's upsert replaces, kept as the baseline of the
//! library's tests, its benches and the race report. **Do not use it in application code**: it
//! is wrong under concurrency, and the tests show how. The adopters' own racy baselines live
//! in their crates (`usage_tracking::naive`, `backfill_scheduler::naive`).
//!
//! It is written against the library's public API only, as any outside crate could.

use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::BigInt;
use diesel::{Connection, QueryResult, RunQueryDsl};
use upsert_kit::{BindRow, Result, UpsertModel, UpsertOutcome};

/// Query-then-insert, as the old cron code wrote it: in one transaction, `SELECT` the key; if
/// a row came back `UPDATE` it, otherwise `INSERT`.
///
/// **Racy.** Under PostgreSQL's default READ COMMITTED isolation two callers can both see "no
/// row" and both insert: the second fails with a duplicate-key error (and under a unique index
/// missing, a duplicate row). It also costs four round trips (`BEGIN`, `SELECT`, write,
/// `COMMIT`) where [`atomic_upsert`](upsert_kit::atomic_upsert) needs one.
///
/// # Errors
/// Whatever the statements raise, notably [`Error::Constraint`](upsert_kit::Error::Constraint) with
/// [`ConstraintKind::Unique`](upsert_kit::ConstraintKind::Unique) when it loses the race.
pub fn query_then_upsert<M>(conn: &mut PgConnection, row: &M) -> Result<UpsertOutcome>
where
    M: BindRow<Pg>,
    M::Table: QueryFragment<Pg>,
{
    row.validate()?;
    conn.transaction(|conn| {
        let existing: i64 = NaiveSql::new(row, Kind::Count).get_result(conn)?;
        if existing > 0 {
            NaiveSql::new(row, Kind::Update).execute(conn)?;
            Ok(UpsertOutcome::Updated)
        } else {
            NaiveSql::new(row, Kind::Insert).execute(conn)?;
            Ok(UpsertOutcome::Inserted)
        }
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// `SELECT count(*) FROM t, (VALUES (…)) AS v(cols) WHERE t.key = v.key`
    Count,
    /// `UPDATE t SET col = v.col … FROM (VALUES (…)) AS v(cols) WHERE t.key = v.key`
    Update,
    /// `INSERT INTO t (cols) VALUES (…)`
    Insert,
}

struct NaiveSql<'a, M: UpsertModel> {
    table: M::Table,
    row: &'a M,
    kind: Kind,
}

impl<'a, M: UpsertModel> NaiveSql<'a, M> {
    fn new(row: &'a M, kind: Kind) -> Self {
        NaiveSql {
            table: M::Table::default(),
            row,
            kind,
        }
    }
}

impl<M: UpsertModel> QueryId for NaiveSql<'_, M> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel> Query for NaiveSql<'_, M> {
    type SqlType = BigInt;
}

impl<M: UpsertModel, Conn> RunQueryDsl<Conn> for NaiveSql<'_, M> {}

impl<M> QueryFragment<Pg> for NaiveSql<'_, M>
where
    M: BindRow<Pg>,
    M::Table: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let table = &self.table;
        let values = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            out.push_sql("(VALUES (");
            self.row.walk_row(out.reborrow())?;
            out.push_sql(")) AS v (");
            push_identifiers(out, M::COLUMNS)?;
            out.push_sql(")");
            Ok(())
        };
        let key_match = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            for (i, key) in M::KEY.iter().enumerate() {
                out.push_sql(if i == 0 { " WHERE " } else { " AND " });
                table.walk_ast(out.reborrow())?;
                out.push_sql(".");
                out.push_identifier(key)?;
                out.push_sql(" = v.");
                out.push_identifier(key)?;
            }
            Ok(())
        };
        match self.kind {
            Kind::Count => {
                out.push_sql("SELECT count(*) FROM ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(", ");
                values(&mut out)?;
                key_match(&mut out)?;
            }
            Kind::Update => {
                out.push_sql("UPDATE ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(" SET ");
                let update = M::COLUMNS
                    .iter()
                    .filter(|c| !M::KEY.contains(c) && !M::KEEP.contains(c));
                for (i, column) in update.enumerate() {
                    if i > 0 {
                        out.push_sql(", ");
                    }
                    out.push_identifier(column)?;
                    out.push_sql(" = v.");
                    out.push_identifier(column)?;
                }
                out.push_sql(" FROM ");
                values(&mut out)?;
                key_match(&mut out)?;
            }
            Kind::Insert => {
                out.push_sql("INSERT INTO ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(" (");
                push_identifiers(&mut out, M::COLUMNS)?;
                out.push_sql(") VALUES (");
                self.row.walk_row(out.reborrow())?;
                out.push_sql(")");
            }
        }
        Ok(())
    }
}

/// `"a", "b", …`: the quoted column names.
fn push_identifiers(out: &mut AstPass<'_, '_, Pg>, names: &[&str]) -> QueryResult<()> {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_identifier(name)?;
    }
    Ok(())
}
