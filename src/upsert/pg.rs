//! Upserts on PostgreSQL: one `INSERT … ON CONFLICT … DO UPDATE … RETURNING <inserted>` per
//! row, and bulk upserts as one statement per chunk with one array per column (`unnest`).
//!
//! # Telling an insert from an update
//! On PostgreSQL 18 and later, `<inserted>` is `RETURNING WITH (OLD AS "__upsert_kit_old")
//! ("__upsert_kit_old" IS NULL)`: the row before the statement, null for an inserted row, the
//! documented way. Before 18 it is `RETURNING (xmax = 0)`: a tuple written by an insert has no
//! deleting or locking transaction, one written by `DO UPDATE` carries the updating
//! transaction's id (an implementation detail of PostgreSQL's MVCC that has held since `ON
//! CONFLICT` exists, 9.5; tested on every outcome, and against `RETURNING old` on 18).
//!
//! The server's version is read once per process (`current_setting('server_version_num')`, one
//! round trip on the first upsert outside a transaction), not per connection: Diesel's
//! `PgConnection` keeps no state of a caller's. A statement inside a transaction always uses
//! `xmax`, so a process whose connections reach servers of different versions can never abort
//! a caller's transaction with the other version's syntax; outside a transaction, a statement
//! with `RETURNING old` that fails on a server that turns out to be older (read again after the
//! failure) is sent again with `xmax`, and the process uses `xmax` from then on.

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
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// How a statement tells an inserted row from an updated one (the module's "Telling an insert
/// from an update").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Teller {
    /// `RETURNING WITH (OLD AS o) (o IS NULL)`: PostgreSQL 18 and later.
    Old,
    /// `RETURNING (xmax = 0)`: every version.
    Xmax,
}

/// What the process knows of its server: [`UNKNOWN`], [`TELLS_OLD`] or [`TELLS_XMAX`].
static SERVER: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const TELLS_OLD: u8 = 1;
const TELLS_XMAX: u8 = 2;

/// The first `server_version_num` with `RETURNING old`.
const OLD_SINCE: i32 = 180_000;

/// The name the statements give the row before them.
const OLD: &str = "__upsert_kit_old";

thread_local! {
    /// Set by [`with_xmax_outcomes`]: this thread's upserts tell outcomes by `xmax`.
    static FORCE_XMAX: Cell<bool> = const { Cell::new(false) };
    /// How this thread's last PostgreSQL upsert statement told its outcomes.
    static LAST: Cell<Option<Teller>> = const { Cell::new(None) };
}

diesel::define_sql_function! {
    /// `current_setting(name)`.
    fn current_setting(name: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The server's `server_version_num`.
fn server_version(conn: &mut PgConnection) -> QueryResult<i32> {
    let text: String = diesel::select(current_setting("server_version_num")).get_result(conn)?;
    text.trim().parse().map_err(|_| {
        diesel::result::Error::DeserializationError(
            format!("server_version_num is not a number: {text:?}").into(),
        )
    })
}

/// Reads the server's version into [`SERVER`]; `None` when it cannot be read.
fn learn(conn: &mut PgConnection) -> Option<Teller> {
    let version = server_version(conn).ok()?;
    let (state, teller) = if version >= OLD_SINCE {
        (TELLS_OLD, Teller::Old)
    } else {
        (TELLS_XMAX, Teller::Xmax)
    };
    SERVER.store(state, Ordering::Relaxed);
    Some(teller)
}

/// How the next statement on `conn` tells its outcomes: `xmax` inside a transaction (see the
/// module's docs) or when forced, else what the process knows of its server, read once.
fn teller(conn: &mut PgConnection, in_tx: bool) -> Teller {
    if in_tx || FORCE_XMAX.with(Cell::get) {
        return Teller::Xmax;
    }
    match SERVER.load(Ordering::Relaxed) {
        TELLS_OLD => Teller::Old,
        TELLS_XMAX => Teller::Xmax,
        _ => learn(conn).unwrap_or(Teller::Xmax),
    }
}

/// Runs `statement` as `teller` says, outside a transaction sending it again with `xmax` when
/// its `RETURNING old` failed on a server older than 18 (the failed statement changed nothing).
fn told<T>(
    conn: &mut PgConnection,
    statement: impl Fn(&mut PgConnection, Teller) -> QueryResult<T>,
) -> Result<T> {
    let in_tx = tx::in_transaction(conn);
    let teller = teller(conn, in_tx);
    LAST.with(|last| last.set(Some(teller)));
    match statement(conn, teller) {
        Ok(told) => Ok(told),
        Err(e) if teller == Teller::Old && !in_tx && learn(conn) == Some(Teller::Xmax) => {
            LAST.with(|last| last.set(Some(Teller::Xmax)));
            drop(e);
            statement(conn, Teller::Xmax).map_err(|e| tx::statement_error(in_tx, e))
        }
        Err(e) => Err(tx::statement_error(in_tx, e)),
    }
}

/// Runs `f` with this thread's upserts telling their outcomes by `xmax` whatever the server's
/// version (for a test that compares the two ways on PostgreSQL 18).
#[doc(hidden)]
pub fn with_xmax_outcomes<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_XMAX.with(|force| force.set(self.0));
        }
    }
    let _reset = Reset(FORCE_XMAX.with(|force| force.replace(true)));
    f()
}

/// Makes the process take its server for PostgreSQL 18 or later until a statement says
/// otherwise (for a test of the way back to `xmax` on an older server).
#[doc(hidden)]
pub fn assume_returning_old() {
    SERVER.store(TELLS_OLD, Ordering::Relaxed);
}

/// How this thread's last PostgreSQL upsert statement told its outcomes: `"returning_old"`,
/// `"xmax"`, or `None` before the first.
#[doc(hidden)]
pub fn last_outcome_source() -> Option<&'static str> {
    LAST.with(Cell::get).map(|teller| match teller {
        Teller::Old => "returning_old",
        Teller::Xmax => "xmax",
    })
}

impl Teller {
    /// ` RETURNING [WITH (OLD AS "__upsert_kit_old")] `.
    fn push_returning(self, out: &mut AstPass<'_, '_, Pg>) -> QueryResult<()> {
        out.push_sql(" RETURNING ");
        if self == Teller::Old {
            out.push_sql("WITH (OLD AS ");
            out.push_identifier(OLD)?;
            out.push_sql(") ");
        }
        Ok(())
    }

    /// `("__upsert_kit_old" IS NULL)` or `(xmax = 0)`: true for an inserted row.
    fn push_inserted(self, out: &mut AstPass<'_, '_, Pg>) -> QueryResult<()> {
        match self {
            Teller::Old => {
                out.push_sql("(");
                out.push_identifier(OLD)?;
                out.push_sql(" IS NULL)");
            }
            Teller::Xmax => out.push_sql("(xmax = 0)"),
        }
        Ok(())
    }
}

impl<M, F> Upsertable<PgConnection, F> for M
where
    M: BindRow<Pg> + BindColumns<Pg>,
    M::Table: QueryFragment<Pg>,
    F: QueryFragment<Pg>,
{
    const ROWS_WITHOUT_TRANSACTION: bool = true;
    const KEPT_ROWS_WITHOUT_TRANSACTION: bool = true;

    fn upsert_one(
        conn: &mut PgConnection,
        row: &Self,
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<UpsertOutcome> {
        let flags = told(conn, |conn, teller| {
            UpsertSql::<M, F, _> {
                table: M::Table::default(),
                source: ReportingInsert(Row(row), teller),
                update,
                condition,
                on_conflict: OnConflict::Update,
            }
            .load::<bool>(conn)
        })?;
        Ok(match flags.first() {
            Some(true) => UpsertOutcome::Inserted,
            Some(false) => UpsertOutcome::Updated,
            None => UpsertOutcome::Unchanged,
        })
    }

    fn upsert_rows(
        conn: &mut PgConnection,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<UpsertOutcome>> {
        upsert_columns::<M, F>(conn, M::bind_columns(rows), rows.len(), update, condition)
    }

    fn upsert_rows_keeping(
        conn: &mut PgConnection,
        rows: &[&Self],
        keeping: &[&Self],
        update: &[&'static str],
    ) -> Result<Vec<UpsertOutcome>> {
        // Each column an update keeps comes from `keeping`, every other one from `rows`.
        let mut columns = M::bind_columns(rows);
        let kept = M::bind_columns(keeping);
        for ((name, column), kept) in M::COLUMNS.iter().zip(columns.iter_mut()).zip(kept) {
            if !update.contains(name) && !M::KEY.contains(name) {
                *column = kept;
            }
        }
        upsert_columns::<M, F>(conn, columns, rows.len(), update, None)
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
            let columns = M::bind_columns(chunk);
            let flags = told(conn, |conn, teller| {
                UpsertSql::<M, F, _> {
                    table: M::Table::default(),
                    source: ReportingInsert(Arrays(&columns), teller),
                    update,
                    condition,
                    on_conflict: OnConflict::Update,
                }
                .load::<bool>(conn)
            })?;
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
struct Arrays<'c, 'a>(&'c ColumnArrays<'a, Pg>);

impl Source<Pg> for Arrays<'_, '_> {
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

/// `source`'s rows, and ` RETURNING <inserted>`: one row per inserted or updated row, `true`
/// when inserted (the module's "Telling an insert from an update").
struct ReportingInsert<S>(S, Teller);

impl<S: Source<Pg>> Source<Pg> for ReportingInsert<S> {
    fn walk_rows<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_rows(out)
    }
    fn walk_returning<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.1.push_returning(out)?;
        self.1.push_inserted(out)
    }
}

/// Many rows numbered by their position, each written row told back with its number:
///
/// ```sql
/// WITH "s" AS (SELECT * FROM unnest($1, $2, …) WITH ORDINALITY AS "s"(c1, c2, …, "n")),
/// "w" AS (INSERT INTO t (c1, c2, …) SELECT c1, c2, … FROM "s" ON CONFLICT … DO UPDATE …
///         RETURNING k1, …, <inserted> AS "inserted")
/// SELECT "s"."n", "w"."inserted" FROM "w" JOIN "s" ON "s".k1 = "w".k1 AND …
/// ```
///
/// A row the condition left alone is not written, so it is not told: `Unchanged`. The rows'
/// keys are distinct (one statement may not touch a row twice), so the join on the key finds
/// each written row's number.
struct Numbered<'c, 'a, M>(
    &'c ColumnArrays<'a, Pg>,
    Teller,
    std::marker::PhantomData<M>,
);

/// The names the numbered statement gives its own parts, unlike any column's.
const SOURCE: &str = "__upsert_kit_rows";
const WRITTEN: &str = "__upsert_kit_written";
const NUMBER: &str = "__upsert_kit_n";
const INSERTED: &str = "__upsert_kit_inserted";

impl<M: UpsertModel> Source<Pg> for Numbered<'_, '_, M> {
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
        self.1.push_returning(out)?;
        crate::sql::push_identifiers(out, M::KEY)?;
        out.push_sql(", ");
        self.1.push_inserted(out)?;
        out.push_sql(" AS ");
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

/// One statement writing the `n` rows whose columns are bound as `columns` (one array each),
/// telling each row's outcome in their order.
fn upsert_columns<M, F>(
    conn: &mut PgConnection,
    columns: crate::upsert::ColumnArrays<'_, Pg>,
    n: usize,
    update: &[&'static str],
    condition: Option<&F>,
) -> Result<Vec<UpsertOutcome>>
where
    M: BindRow<Pg> + BindColumns<Pg>,
    M::Table: QueryFragment<Pg>,
    F: QueryFragment<Pg>,
{
    let told = told(conn, |conn, teller| {
        Told(UpsertSql::<M, F, _> {
            table: M::Table::default(),
            source: Numbered::<M>(&columns, teller, std::marker::PhantomData),
            update,
            condition,
            on_conflict: OnConflict::Update,
        })
        .load::<(i64, bool)>(conn)
    })?;
    let mut outcomes = vec![UpsertOutcome::Unchanged; n];
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
