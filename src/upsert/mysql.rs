//! Upserts on MySQL and MariaDB: `INSERT … ON DUPLICATE KEY UPDATE`, with exact outcomes.
//!
//! # Why the affected-rows count is not enough
//! MySQL reports 1 for an inserted row, 2 for an updated one, and for a row found but left
//! as it was 0, or 1 when the connection has the `CLIENT_FOUND_ROWS` flag, which Diesel's
//! `MysqlConnection` always sets. So "inserted" and "unchanged" read the same. And an update
//! whose values equal the stored ones counts as unchanged, where PostgreSQL and SQLite report
//! the row updated (the condition held, the row was written).
//!
//! # What the statement records instead
//! The first assignment of the update clause is a no-op on the first key column whose
//! nested `IF`s (an `IF` evaluates its condition before its branches: a fixed order) store in
//! session variables, once per conflicting row and before any column is assigned:
//! - `@upsert_kit_hit := nonce` (one row) or `@upsert_kit_hits := @upsert_kit_hits + 1`
//!   (bulk): the key existed. The update clause runs only for a row that exists, so a fresh
//!   nonce (a bind parameter) cannot be mistaken for an earlier call's.
//! - `@upsert_kit_own`: the existing row has the incoming key. `ON DUPLICATE KEY` fires on
//!   *any* unique index of the table; a row that collides on another unique index than the
//!   key is another row, which must not be overwritten (see "Another unique index" below).
//! - `@upsert_kit_ok := @upsert_kit_own AND COALESCE(condition, FALSE)`: the update
//!   condition, judged on the stored row. MySQL assigns the columns left to right and an
//!   expression after `c = …` sees the new `c`; evaluated first, the condition sees the row as
//!   it was stored.
//!
//! Every other column is then `c = IF(@upsert_kit_ok, VALUES(c), c)`. After the statement,
//! `SELECT @upsert_kit_hit = nonce, @upsert_kit_own, @upsert_kit_ok` (skipped when the count
//! is 2: a changed row was updated) gives the outcome: no hit is `Inserted`, a hit with the
//! condition holding `Updated`, otherwise `Unchanged`, whatever the `CLIENT_FOUND_ROWS` flag.
//! Session variables belong to the connection, so concurrent sessions cannot see each other's.
//! `VALUES(c)` works on MariaDB and MySQL 8 (which deprecates it since 8.0.20 in favour of row
//! aliases, which MariaDB does not have), and so do assignments to user variables inside
//! expressions (deprecated by MySQL 8.0.13, with a warning).
//!
//! # Another unique index
//! When the incoming key is new but another unique index of the table matches an existing row,
//! that row is left untouched (`@upsert_kit_own` is false) and the row is inserted again with a
//! plain `INSERT`, which fails with the duplicate-key error naming that index
//! ([`Error::Constraint`](crate::Error::Constraint), `Unique`) as PostgreSQL's `ON CONFLICT
//! (key)` does (or inserts, if the other row went away in between). A bulk upsert that meets
//! such a row is rolled back whole and re-run row by row in one transaction, which fails the same
//! way at that row. A coalescing writer's merged upserts, sent with no transaction, learn each
//! such row from a third mask and write it alone after the statement, failing its own caller.

use super::model::{BindRow, UpsertModel};
use super::{BulkOutcome, UpsertOutcome, Upsertable};
use crate::conn::{Dialect, WriteConnection};
use crate::error::{Error, Result};
use crate::tx;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

/// The most bind parameters a MySQL statement may carry.
pub(crate) const MAX_PLACEHOLDERS: usize = 65_535;

/// How the first assignment records what it found.
#[derive(Clone, Copy)]
enum Marks<'a> {
    /// One row: `@upsert_kit_hit := nonce`.
    One(&'a i64),
    /// Many rows: counters `@upsert_kit_hits`, `@upsert_kit_foreign`, `@upsert_kit_updates`.
    Counting,
    /// Many rows, each told apart (at most [`PER_ROW_MAX`]): the bits of `@upsert_kit_hitmask`
    /// (the key existed), `@upsert_kit_okmask` (and was updated) and `@upsert_kit_foreignmask`
    /// (another unique index matched another row) at the row's position, found by comparing the
    /// incoming key with each row's key. The first conflicting row clears the masks, which the
    /// nonce `@upsert_kit_n` then marks as this statement's: no `SET` before the statement.
    /// `cached`: Diesel keeps the statement prepared, one per row count (a coalescing
    /// writer's, on the few connections it holds; not a bulk upsert's, on any connection of a
    /// pool, where up to 60 texts per model and connection could reach the server's
    /// `max_prepared_stmt_count`).
    PerRow { nonce: &'a i64, cached: bool },
    /// No marks (a plain `INSERT` without `ON DUPLICATE KEY`).
    PlainInsert,
}

/// `INSERT INTO t (cols) VALUES (…), (…) ON DUPLICATE KEY UPDATE k1 = IF(…marks…, k1, k1),
/// c = IF(@upsert_kit_ok, VALUES(c), c), …`.
struct MysqlUpsertSql<'a, M: UpsertModel, F> {
    table: M::Table,
    rows: &'a [&'a M],
    update: &'a [&'static str],
    condition: Option<&'a F>,
    marks: Marks<'a>,
}

impl<M, F> QueryFragment<Mysql> for MysqlUpsertSql<'_, M, F>
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        if self.rows.len() > 1 && !matches!(self.marks, Marks::PerRow { cached: true, .. }) {
            // One text per row count: do not fill the statement cache with them.
            out.unsafe_to_cache_prepared();
        }
        out.push_sql("INSERT INTO ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        crate::sql::push_identifiers(&mut out, M::COLUMNS)?;
        out.push_sql(") VALUES ");
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            row.walk_row(out.reborrow())?;
            out.push_sql(")");
        }
        let (nonce, per_row) = match self.marks {
            Marks::PlainInsert => return Ok(()),
            Marks::One(nonce) => (Some(nonce), None),
            Marks::PerRow { nonce, .. } => (None, Some(nonce)),
            Marks::Counting => (None, None),
        };
        out.push_sql(" ON DUPLICATE KEY UPDATE ");
        let first_key = M::KEY[0];
        out.push_identifier(first_key)?;
        out.push_sql(" = ");
        // Each step: `IF((@v := expr) IS NULL, k, <next step>)`; no assignment gives NULL.
        fn step(out: &mut AstPass<'_, '_, Mysql>, steps: &mut usize, var: &str) {
            *steps += 1;
            out.push_sql("IF((@");
            out.push_sql(var);
            out.push_sql(" := ");
        }
        fn close(out: &mut AstPass<'_, '_, Mysql>, first_key: &str) -> QueryResult<()> {
            out.push_sql(") IS NULL, ");
            out.push_identifier(first_key)?;
            out.push_sql(", ");
            Ok(())
        }
        let mut steps = 0;
        match (nonce, per_row) {
            (Some(nonce), _) => {
                step(&mut out, &mut steps, "upsert_kit_hit");
                out.push_bind_param::<diesel::sql_types::BigInt, i64>(nonce)?;
                close(&mut out, first_key)?;
            }
            (None, Some(nonce)) => {
                for mask in MASKS {
                    step(&mut out, &mut steps, mask);
                    out.push_sql("IF(@upsert_kit_n <=> ");
                    out.push_bind_param::<diesel::sql_types::BigInt, i64>(nonce)?;
                    out.push_sql(", @");
                    out.push_sql(mask);
                    out.push_sql(", 0)");
                    close(&mut out, first_key)?;
                }
                step(&mut out, &mut steps, "upsert_kit_n");
                out.push_bind_param::<diesel::sql_types::BigInt, i64>(nonce)?;
                close(&mut out, first_key)?;
            }
            (None, None) => {
                step(&mut out, &mut steps, "upsert_kit_hits");
                out.push_sql("@upsert_kit_hits + 1");
                close(&mut out, first_key)?;
            }
        }
        step(&mut out, &mut steps, "upsert_kit_own");
        out.push_sql("(");
        for (i, k) in M::KEY.iter().enumerate() {
            if i > 0 {
                out.push_sql(" AND ");
            }
            out.push_identifier(k)?;
            out.push_sql(" <=> ");
            Mysql::push_excluded(&mut out, k)?;
        }
        out.push_sql(")");
        close(&mut out, first_key)?;
        let counting = matches!(self.marks, Marks::Counting);
        if counting {
            step(&mut out, &mut steps, "upsert_kit_foreign");
            out.push_sql("@upsert_kit_foreign + 1 - @upsert_kit_own");
            close(&mut out, first_key)?;
        }
        step(&mut out, &mut steps, "upsert_kit_ok");
        match self.condition {
            Some(condition) => {
                out.push_sql("@upsert_kit_own AND COALESCE((");
                condition.walk_ast(out.reborrow())?;
                out.push_sql("), FALSE)");
            }
            None => out.push_sql("@upsert_kit_own"),
        }
        close(&mut out, first_key)?;
        if counting {
            step(&mut out, &mut steps, "upsert_kit_updates");
            out.push_sql("@upsert_kit_updates + @upsert_kit_ok");
            close(&mut out, first_key)?;
        }
        if per_row.is_some() {
            // The incoming row's position: the row whose key it carries.
            step(&mut out, &mut steps, "upsert_kit_at");
            out.push_sql("CASE");
            for (i, row) in self.rows.iter().enumerate() {
                out.push_sql(" WHEN (");
                for (j, k) in M::KEY.iter().enumerate() {
                    if j > 0 {
                        out.push_sql(", ");
                    }
                    Mysql::push_excluded(&mut out, k)?;
                }
                out.push_sql(") <=> (");
                row.walk_key(out.reborrow())?;
                out.push_sql(") THEN ");
                // A position, not a value: the statement's text is made per row count anyway.
                out.push_sql(&i.to_string());
            }
            out.push_sql(" ELSE 63 END");
            close(&mut out, first_key)?;
            step(&mut out, &mut steps, "upsert_kit_hitmask");
            out.push_sql("@upsert_kit_hitmask | (1 << @upsert_kit_at)");
            close(&mut out, first_key)?;
            step(&mut out, &mut steps, "upsert_kit_okmask");
            out.push_sql("@upsert_kit_okmask | (@upsert_kit_ok << @upsert_kit_at)");
            close(&mut out, first_key)?;
            step(&mut out, &mut steps, "upsert_kit_foreignmask");
            out.push_sql("@upsert_kit_foreignmask | ((NOT @upsert_kit_own) << @upsert_kit_at)");
            close(&mut out, first_key)?;
        }
        out.push_identifier(first_key)?;
        for _ in 0..steps {
            out.push_sql(")");
        }
        for column in self.update {
            out.push_sql(", ");
            out.push_identifier(column)?;
            out.push_sql(" = IF(@upsert_kit_ok, ");
            Mysql::push_excluded(&mut out, column)?;
            out.push_sql(", ");
            out.push_identifier(column)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

/// A statement of session-variable plumbing, or a read of the variables.
enum Vars<'a> {
    /// `SET @upsert_kit_hits = 0, @upsert_kit_foreign = 0, @upsert_kit_updates = 0`.
    Reset,
    /// `SELECT hit = nonce, own, ok` as three integers.
    One(&'a i64),
    /// `SELECT hits, foreign, updates`.
    Counts,
    /// `SELECT hitmask, okmask, foreignmask` of the statement of [`Marks::PerRow`] with this
    /// nonce (0 each when no row of it conflicted).
    Masks(&'a i64),
    /// `SELECT @@max_allowed_packet`.
    MaxPacket,
}

impl QueryFragment<Mysql> for Vars<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        match self {
            Vars::Reset => out.push_sql(
                "SET @upsert_kit_hits = 0, @upsert_kit_foreign = 0, @upsert_kit_updates = 0",
            ),
            Vars::One(nonce) => {
                out.push_sql("SELECT CAST(COALESCE(@upsert_kit_hit = ");
                out.push_bind_param::<diesel::sql_types::BigInt, i64>(nonce)?;
                out.push_sql(
                    ", 0) AS SIGNED), CAST(COALESCE(@upsert_kit_own, 0) AS SIGNED), \
                     CAST(COALESCE(@upsert_kit_ok, 0) AS SIGNED)",
                );
            }
            Vars::Counts => out.push_sql(
                "SELECT CAST(@upsert_kit_hits AS SIGNED), CAST(@upsert_kit_foreign AS SIGNED), \
                 CAST(@upsert_kit_updates AS SIGNED)",
            ),
            Vars::Masks(nonce) => {
                for (i, mask) in MASKS.iter().enumerate() {
                    out.push_sql(if i == 0 { "SELECT " } else { ", " });
                    out.push_sql("CAST(IF(@upsert_kit_n <=> ");
                    out.push_bind_param::<diesel::sql_types::BigInt, i64>(nonce)?;
                    out.push_sql(", @");
                    out.push_sql(mask);
                    out.push_sql(", 0) AS SIGNED)");
                }
            }
            Vars::MaxPacket => out.push_sql("SELECT CAST(@@max_allowed_packet AS SIGNED)"),
        }
        Ok(())
    }
}

impl<M, F> Upsertable<MysqlConnection, F> for M
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    const ROWS_WITHOUT_TRANSACTION: bool = true;

    /// One row (validated): the statement, then (unless the count already says "updated")
    /// the variables.
    fn upsert_one(
        conn: &mut MysqlConnection,
        row: &M,
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<UpsertOutcome> {
        crate::conn::retry_deadlocks(conn, |conn| upsert_one_once(conn, row, update, condition))
    }

    /// Rows of distinct keys, each told apart: one statement per [`PER_ROW_MAX`] rows (the
    /// positions of the rows the key existed for, and of those updated, as bits of two session
    /// variables), in the caller's transaction. A row that met another unique index than the
    /// key fails the call with [`ANOTHER_INDEX`], to be run again row by row.
    fn upsert_rows(
        conn: &mut MysqlConnection,
        rows: &[&M],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<UpsertOutcome>> {
        if rows.len() == 1 || !M::ONE_BIND_PER_COLUMN {
            return rows
                .iter()
                .map(|row| upsert_one_once(conn, *row, update, condition))
                .collect();
        }
        let mut told = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(PER_ROW_MAX) {
            told.extend(own_rows(tell_chunk(
                conn, chunk, update, condition, false,
            )?)?);
        }
        Ok(told)
    }

    /// Up to [`PER_ROW_MAX`] rows (or rows whose model binds a column with SQL of its own):
    /// one statement, run again on a deadlock, which writes all of them but those that met
    /// another unique index; each of those then alone, as [`Upsertable::upsert_one`]. More
    /// rows: in one transaction (a savepoint inside the caller's), all or none.
    fn upsert_rows_each(
        conn: &mut MysqlConnection,
        rows: &[&M],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<Result<UpsertOutcome>>> {
        if rows.len() == 1 || !M::ONE_BIND_PER_COLUMN {
            // One statement per row: each row's own.
            return Ok(rows
                .iter()
                .map(|row| Self::upsert_one(conn, row, update, condition))
                .collect());
        }
        if rows.len() > PER_ROW_MAX {
            let told = tx::transaction(conn, |conn: &mut MysqlConnection| {
                Self::upsert_rows(conn, rows, update, condition)
            })?;
            return Ok(told.into_iter().map(Ok).collect());
        }
        let told = crate::conn::retry_deadlocks(conn, |conn| {
            tell_chunk(conn, rows, update, condition, true)
        })?;
        let mut each = Vec::with_capacity(rows.len());
        for (told, row) in told.into_iter().zip(rows) {
            each.push(match told {
                Some(outcome) => Ok(outcome),
                None => Self::upsert_one(conn, row, update, condition),
            });
        }
        Ok(each)
    }

    /// As [`Upsertable::upsert_rows`], in one transaction, in chunks of at most [`PER_ROW_MAX`]
    /// rows cut below the packet limit as the counting chunks are; run again on a deadlock,
    /// and row by row when a row met another unique index (which names it).
    fn upsert_sorted_rows(
        conn: &mut MysqlConnection,
        rows: &[&M],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<Vec<UpsertOutcome>> {
        let result = crate::conn::retry_deadlocks(conn, |conn| {
            tx::transaction(conn, |conn: &mut MysqlConnection| {
                if rows.len() == 1 || !M::ONE_BIND_PER_COLUMN {
                    return Self::upsert_rows(conn, rows, update, condition);
                }
                let max_packet = max_packet(conn)?;
                let mut told = Vec::with_capacity(rows.len());
                for chunk in chunks(rows, chunk_size.min(PER_ROW_MAX), max_packet) {
                    told.extend(own_rows(tell_chunk(
                        conn, &chunk, update, condition, false,
                    )?)?);
                }
                Ok(told)
            })
        });
        match result {
            Err(e) if is_another_index(&e) => {
                tx::transaction(conn, |conn: &mut MysqlConnection| {
                    rows.iter()
                        .map(|row| upsert_one_once(conn, *row, update, condition))
                        .collect()
                })
            }
            other => other,
        }
    }

    fn upsert_sorted(
        conn: &mut MysqlConnection,
        rows: &[&M],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<BulkOutcome> {
        upsert_sorted(conn, rows, update, condition, chunk_size)
    }
}

/// One statement of at most [`PER_ROW_MAX`] rows of distinct keys, each row's outcome read
/// from the session-variable masks: `None` for a row that met another unique index than the
/// key (not written: the row it met was left as it was).
fn tell_chunk<M, F>(
    conn: &mut MysqlConnection,
    chunk: &[&M],
    update: &[&'static str],
    condition: Option<&F>,
    cached: bool,
) -> Result<Vec<Option<UpsertOutcome>>>
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    let nonce = fastrand::i64(1..);
    conn.run_execute(&MysqlUpsertSql {
        table: M::Table::default(),
        rows: chunk,
        update,
        condition,
        marks: Marks::PerRow {
            nonce: &nonce,
            cached,
        },
    })?;
    let (hits, oks, foreign) = conn
        .run_int3(&Vars::Masks(&nonce))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound("the upsert's session variables".into()))?;
    // A conflict at no row's position (bit 63): cannot happen, as each incoming key is `<=>`
    // to its own row's; refused rather than misreported.
    if (hits | oks | foreign) & !((1_i64 << chunk.len()) - 1) != 0 {
        return Err(another_index());
    }
    let told = (0..chunk.len()).map(|i| match (hits >> i & 1, oks >> i & 1, foreign >> i & 1) {
        (_, _, 1) => None,
        (0, _, _) => Some(UpsertOutcome::Inserted),
        (_, 1, _) => Some(UpsertOutcome::Updated),
        _ => Some(UpsertOutcome::Unchanged),
    });
    Ok(told.collect())
}

/// The outcomes of a statement's rows, or [`another_index`] when one of them met another
/// unique index.
fn own_rows(told: Vec<Option<UpsertOutcome>>) -> Result<Vec<UpsertOutcome>> {
    told.into_iter()
        .map(|t| t.ok_or_else(another_index))
        .collect()
}

/// The marker error of a statement that met another unique index than the key.
fn another_index() -> Error {
    Error::Constraint {
        kind: crate::error::ConstraintKind::Unique,
        constraint: None,
        message: ANOTHER_INDEX.into(),
    }
}

/// Whether `e` is the marker of a chunk that met another unique index.
fn is_another_index(e: &Error) -> bool {
    matches!(e, Error::Constraint { constraint: None, message, .. } if message == ANOTHER_INDEX)
}

/// The server's `max_allowed_packet` (4 MiB when it cannot be read as a size).
fn max_packet(conn: &mut MysqlConnection) -> Result<usize> {
    let read = conn.run_ints(&Vars::MaxPacket)?.first().copied();
    Ok(read.map_or(4 << 20, |n| usize::try_from(n).unwrap_or(4 << 20)))
}

fn upsert_one_once<M, F>(
    conn: &mut MysqlConnection,
    row: &M,
    update: &[&'static str],
    condition: Option<&F>,
) -> Result<UpsertOutcome>
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    let nonce = fastrand::i64(1..);
    let rows = [row];
    let sql = MysqlUpsertSql {
        table: M::Table::default(),
        rows: &rows,
        update,
        condition,
        marks: Marks::One(&nonce),
    };
    if conn.run_execute(&sql)? == 2 {
        // 2 only for a row that existed and changed: the condition held.
        return Ok(UpsertOutcome::Updated);
    }
    let (hit, own, ok) = conn
        .run_int3(&Vars::One(&nonce))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound("the upsert's session variables".into()))?;
    Ok(match (hit != 0, own != 0, ok != 0) {
        (false, _, _) => UpsertOutcome::Inserted,
        (true, false, _) => {
            // Another unique index matched another row, left as it was: insert plainly, which
            // fails naming that index (or inserts, if the other row is gone now).
            let plain = MysqlUpsertSql {
                table: M::Table::default(),
                rows: &rows,
                update,
                condition,
                marks: Marks::PlainInsert,
            };
            conn.run_execute(&plain)?;
            UpsertOutcome::Inserted
        }
        (true, true, true) => UpsertOutcome::Updated,
        (true, true, false) => UpsertOutcome::Unchanged,
    })
}

/// Rows per statement: at most `chunk_size`, under the placeholder limit, and with the values'
/// estimated size under half of `max_allowed_packet`.
fn chunks<'r, M>(rows: &[&'r M], chunk_size: usize, max_packet: usize) -> Vec<Vec<&'r M>>
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
{
    let per_row = M::COLUMNS.len().max(1);
    let max_rows = chunk_size.min(MAX_PLACEHOLDERS / per_row).max(1);
    let budget = max_packet / 2;
    let mut out: Vec<Vec<&M>> = Vec::new();
    let mut current: Vec<&M> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let size = estimated_size(*row);
        if !current.is_empty() && (current.len() >= max_rows || bytes + size > budget) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(*row);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An upper estimate of the bytes a row's values take in the protocol: the length of their
/// `Debug` text (quoted and escaped, so never shorter than the text itself) plus 16 bytes per
/// value for type and length headers and fixed-size numbers.
fn estimated_size<M: BindRow<Mysql>>(row: &M) -> usize
where
    M::Table: QueryFragment<Mysql>,
{
    struct RowValues<'a, M>(&'a M);
    impl<M: BindRow<Mysql>> QueryFragment<Mysql> for RowValues<'_, M> {
        fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
            self.0.walk_row(out)
        }
    }
    impl<M> diesel::query_builder::QueryId for RowValues<'_, M> {
        type QueryId = ();
        const HAS_STATIC_QUERY_ID: bool = false;
    }
    diesel::debug_query::<Mysql, _>(&RowValues(row))
        .to_string()
        .len()
        + 16 * M::COLUMNS.len()
}

/// Distinct, key-sorted, validated rows in one transaction.
fn upsert_sorted<M, F>(
    conn: &mut MysqlConnection,
    rows: &[&M],
    update: &[&'static str],
    condition: Option<&F>,
    chunk_size: usize,
) -> Result<BulkOutcome>
where
    M: BindRow<Mysql> + UpsertModel,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    let result = crate::conn::retry_deadlocks(conn, |conn| {
        bulk_once(conn, rows, update, condition, chunk_size)
    });
    match result {
        Err(ref e) if is_another_index(e) => {
            // Rolled back: run the rows one by one, which names the index at the offending row
            // (and rolls back again), or succeeds if that row went away meanwhile.
            tx::transaction(conn, |conn: &mut MysqlConnection| {
                let mut total = BulkOutcome::default();
                for row in rows {
                    total.record(upsert_one_once(conn, *row, update, condition)?);
                }
                Ok(total)
            })
        }
        other => other,
    }
}

fn bulk_once<M, F>(
    conn: &mut MysqlConnection,
    rows: &[&M],
    update: &[&'static str],
    condition: Option<&F>,
    chunk_size: usize,
) -> Result<BulkOutcome>
where
    M: BindRow<Mysql> + UpsertModel,
    M::Table: QueryFragment<Mysql>,
    F: QueryFragment<Mysql>,
{
    tx::transaction(conn, |conn: &mut MysqlConnection| {
        let max_packet = max_packet(conn)?;
        let mut total = BulkOutcome::default();
        for chunk in chunks(rows, chunk_size, max_packet) {
            conn.run_execute(&Vars::Reset)?;
            let sql = MysqlUpsertSql {
                table: M::Table::default(),
                rows: &chunk,
                update,
                condition,
                marks: Marks::Counting,
            };
            conn.run_execute(&sql)?;
            let (hits, foreign, updates) = conn
                .run_int3(&Vars::Counts)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound("the bulk upsert's session variables".into()))?;
            if foreign > 0 {
                return Err(another_index());
            }
            let hits = usize::try_from(hits).unwrap_or(0);
            let updates = usize::try_from(updates).unwrap_or(0);
            total.inserted += chunk.len().saturating_sub(hits);
            total.updated += updates;
            total.unchanged += hits.saturating_sub(updates);
        }
        Ok(total)
    })
}

/// The session variables of [`Marks::PerRow`], one bit per row each.
const MASKS: [&str; 3] = [
    "upsert_kit_hitmask",
    "upsert_kit_okmask",
    "upsert_kit_foreignmask",
];

/// The most rows of one statement told apart (bits of a signed 64-bit session variable).
const PER_ROW_MAX: usize = 60;

/// The marker of a bulk chunk that met another unique index (never returned to the caller).
const ANOTHER_INDEX: &str = "upsert-kit: a row matched another unique index than the key";
