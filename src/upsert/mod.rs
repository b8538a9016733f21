//! Atomic upserts: one `INSERT … ON CONFLICT (key) DO UPDATE` (MySQL: `INSERT … ON DUPLICATE KEY
//! UPDATE`) per row or per chunk of rows.
//!
//! # Outcomes
//! Each row is reported [`UpsertOutcome::Inserted`], [`UpsertOutcome::Updated`] or
//! [`UpsertOutcome::Unchanged`] (the row exists and the update's condition left it alone).
//! - PostgreSQL: one statement. On PostgreSQL 18 and later `RETURNING WITH (OLD AS o) (o IS
//!   NULL)`: the row before the statement is null for an insert (the documented way; the
//!   server's version read once per process, and statements inside a transaction use `xmax`).
//!   Before 18, `RETURNING (xmax = 0)`: a tuple written by an insert has no `xmax`; one written
//!   by `DO UPDATE` carries the updating transaction's id, an implementation detail of
//!   PostgreSQL's MVCC that has held since `ON CONFLICT` exists (9.5). A row filtered out by
//!   the condition returns nothing.
//! - SQLite: no transaction of its own, and the values bound once per statement. An upsert
//!   without an update condition first runs `UPDATE … WHERE key = …`: one changed row is
//!   `Updated`, the whole work when the key exists (the common case of a sync job). Otherwise
//!   (a new key, or an `update_if` condition) one `INSERT … ON CONFLICT` statement reads
//!   whether the key exists (a materialized common table expression that the insert's `SELECT`
//!   reads, so it is computed before the row is written) and then inserts or updates,
//!   `RETURNING NOT existed`. Each statement is atomic by itself: a writing statement takes
//!   SQLite's single write lock when it starts, so nothing slips in between its read and its
//!   write, and the outcome reported is that of the statement that wrote. Outside a
//!   transaction each statement commits on its own, inside the caller's it is part of it.
//!   Writers of one process queue for the file before they ask SQLite for the lock
//!   ([`tx::immediate_transaction`](crate::tx::immediate_transaction)).
//! - MySQL and MariaDB: one `INSERT … ON DUPLICATE KEY UPDATE` whose first assignment records
//!   in session variables whether the key existed (a fresh nonce), whether the existing row is
//!   the key's own and whether the condition held (judged once, on the stored row, before any
//!   column is assigned); `SELECT` of those variables follows unless the affected-rows count
//!   (2) already says "updated". Exact whatever the connection's `CLIENT_FOUND_ROWS` flag (which
//!   Diesel sets, making "inserted" and "unchanged" both read 1). An update whose values equal
//!   the stored ones is `Updated`, as on the other backends. Write conditions with
//!   [`incoming`] (Diesel's `excluded` has no MySQL form); it is `VALUES(c)` there, which
//!   MySQL 8.0.20+ deprecates in favour of row aliases that MariaDB lacks, and the variables are
//!   assigned inside expressions, which MySQL 8.0.13+ deprecates (a warning; both still work on
//!   MySQL 8.4).
//!
//! # Another unique index (MySQL)
//! `ON DUPLICATE KEY` fires on *any* unique index, not on a chosen conflict target. When the
//! incoming key is new but another unique index matches an existing row, that row is left as
//! it was and the upsert fails with the duplicate-key error naming that index
//! ([`Error::Constraint`], `Unique`), as PostgreSQL's `ON CONFLICT (key)` does; a bulk upsert
//! then writes nothing. Tested in `tests/upsert/mysql.rs`.
//!
//! # Concurrency
//! The statement is atomic on every backend: concurrent upserts of one new key never raise a
//! duplicate-key error and leave exactly one row; the last writer's values win. The update's
//! condition is evaluated against the newest committed version of the row (PostgreSQL re-checks
//! it after waiting for a concurrent writer; InnoDB's `ON DUPLICATE KEY UPDATE` locks the row and
//! reads its newest version, also under REPEATABLE READ), so "only if newer" conditions cannot
//! regress. On MySQL a concurrent first insert of one key can be picked as a deadlock victim
//! (InnoDB's gap locks); outside a transaction of the caller's the upsert then runs again (five
//! attempts in all), inside one the caller gets [`Error::Deadlock`], retryable.
//!
//! # Isolation
//! Any level: the statement's own row lock decides, not the snapshot (tested at PostgreSQL's
//! READ COMMITTED and MySQL's default REPEATABLE READ).

pub(crate) mod derive_support;
mod helpers;
pub(crate) mod model;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod statement;
mod stream;

pub use helpers::{
    atomic_upsert_auth, atomic_upsert_stats, incoming, AuthModel, Changed, Incoming, Newer,
    StatsModel,
};
pub use model::{BindColumns, BindRow, CheckedValue, ColumnArrays, UpsertModel};
pub use stream::{bulk_upsert_stream, bulk_upsert_stream_rows, Commit};

use crate::conn::{Dialect, WriteConnection};
use crate::error::{Error, InvalidInput, Result};
use crate::observe;
use diesel::expression::{AppearsOnTable, Expression};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::{Column, QueryResult};
use std::fmt;
/// What an upsert did to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpsertOutcome {
    /// The key was new: the row was inserted.
    Inserted,
    /// The key existed: the row was overwritten.
    Updated,
    /// The key existed and the update's condition left the row as it was.
    Unchanged,
}

impl UpsertOutcome {
    /// `"inserted"`, `"updated"` or `"unchanged"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpsertOutcome::Inserted => "inserted",
            UpsertOutcome::Updated => "updated",
            UpsertOutcome::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for UpsertOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a bulk upsert did: counts over the distinct keys it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BulkOutcome {
    /// Rows inserted.
    pub inserted: usize,
    /// Rows overwritten.
    pub updated: usize,
    /// Existing rows the update's condition left alone.
    pub unchanged: usize,
    /// Input rows dropped because a later row in the same call had the same key.
    pub collapsed: usize,
}

impl BulkOutcome {
    /// Adds one row's outcome.
    pub fn record(&mut self, outcome: UpsertOutcome) {
        match outcome {
            UpsertOutcome::Inserted => self.inserted += 1,
            UpsertOutcome::Updated => self.updated += 1,
            UpsertOutcome::Unchanged => self.unchanged += 1,
        }
    }

    /// Distinct keys written or checked: `inserted + updated + unchanged`.
    pub fn rows(&self) -> usize {
        self.inserted + self.updated + self.unchanged
    }

    /// The counts of per-row outcomes (as [`UpsertMany::execute_rows`] gives them).
    ///
    /// ```
    /// use upsert_kit::{BulkOutcome, RowOutcome};
    /// let rows = [RowOutcome::Inserted, RowOutcome::Superseded { by: 2 }, RowOutcome::Unchanged];
    /// let counts = BulkOutcome::tally(&rows);
    /// assert_eq!((counts.inserted, counts.unchanged, counts.collapsed), (1, 1, 1));
    /// ```
    pub fn tally(rows: &[RowOutcome]) -> BulkOutcome {
        let mut counts = BulkOutcome::default();
        for row in rows {
            match row.outcome() {
                Some(outcome) => counts.record(outcome),
                None => counts.collapsed += 1,
            }
        }
        counts
    }
}

/// What a bulk upsert did with one input row: its key's outcome, or that a later row of the
/// same key in the same call took its place (rows that share a key are collapsed, the last one
/// wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOutcome {
    /// The key was new: the row was inserted.
    Inserted,
    /// The key existed: the row was overwritten.
    Updated,
    /// The key existed and the update's condition left the row as it was.
    Unchanged,
    /// Not written: the input row at index `by` (the last of this key) was written instead.
    Superseded {
        /// The index, in the input, of the row that was written for this key.
        by: usize,
    },
}

impl RowOutcome {
    /// The outcome of the row's key, unless the row was superseded.
    pub fn outcome(self) -> Option<UpsertOutcome> {
        match self {
            RowOutcome::Inserted => Some(UpsertOutcome::Inserted),
            RowOutcome::Updated => Some(UpsertOutcome::Updated),
            RowOutcome::Unchanged => Some(UpsertOutcome::Unchanged),
            RowOutcome::Superseded { .. } => None,
        }
    }
}

impl From<UpsertOutcome> for RowOutcome {
    fn from(outcome: UpsertOutcome) -> Self {
        match outcome {
            UpsertOutcome::Inserted => RowOutcome::Inserted,
            UpsertOutcome::Updated => RowOutcome::Updated,
            UpsertOutcome::Unchanged => RowOutcome::Unchanged,
        }
    }
}

/// The absence of an update condition: every existing row is overwritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCondition;

impl QueryId for NoCondition {
    type QueryId = NoCondition;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB: diesel::backend::Backend> QueryFragment<DB> for NoCondition {
    fn walk_ast<'b>(&'b self, _out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Ok(())
    }
}

/// The backend's half of an upsert of `Self` with update condition `F`, on the backend's own
/// connection `C`: implemented in the backend's file (`pg.rs`, `sqlite.rs`, `mysql.rs` beside
/// this one) for [`diesel::PgConnection`], [`diesel::SqliteConnection`] and
/// `diesel::MysqlConnection`, for every model declared with
/// [`#[derive(UpsertModel)]`](derive@crate::UpsertModel) whose field types the backend can store.
/// [`atomic_upsert`] and friends take any [`WriteConnection`] (a pooled one too) and reach this
/// through [`WriteConnection::raw`]. Upserts run on all three backends (locks and claims on
/// PostgreSQL and MySQL only).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be upserted over a `{C}`",
    note = "derive the model with `#[derive(upsert_kit::UpsertModel)]` and check that each field's Rust type maps to its column's SQL type on this backend"
)]
pub trait Upsertable<C, F = NoCondition>: UpsertModel + Sized {
    /// Whether [`Upsertable::upsert_rows_each`] may go with no transaction around it, as a
    /// direct call (a coalescing writer's merged upserts alone in their batch): each row is
    /// written by one statement and told its own result, and a failure of the whole call wrote
    /// nothing. PostgreSQL: one statement of all the rows; MySQL: one statement of up to 60 rows,
    /// then alone each row that met another unique index than the key.
    #[doc(hidden)]
    const ROWS_WITHOUT_TRANSACTION: bool = false;

    /// Whether [`Upsertable::upsert_rows_keeping`] is one statement, which writes all its rows
    /// or none (PostgreSQL), so that it may go with no transaction around it.
    #[doc(hidden)]
    const KEPT_ROWS_WITHOUT_TRANSACTION: bool = false;

    /// Upserts one validated row.
    #[doc(hidden)]
    fn upsert_one(
        conn: &mut C,
        row: &Self,
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<UpsertOutcome>;

    /// Upserts validated rows of distinct keys, without a condition, each written with the
    /// columns the update keeps (neither updated nor key) taken from the row of the same
    /// position in `keeping` (the same keys): the last and the first upsert of each key in a
    /// coalescing writer's batch written as one row. Tells each row's outcome (an `Inserted`
    /// means the key was new). By default the `keeping` rows, then those of `rows` that are not
    /// their own `keeping` row (the same reference), two statements inside the caller's
    /// transaction; PostgreSQL writes the mixed rows in one.
    #[doc(hidden)]
    fn upsert_rows_keeping(
        conn: &mut C,
        rows: &[&Self],
        keeping: &[&Self],
        update: &[&'static str],
    ) -> Result<Vec<UpsertOutcome>> {
        let told = Self::upsert_rows(conn, keeping, update, None)?;
        let later: Vec<&Self> = (rows.iter().zip(keeping))
            .filter(|(row, first)| !std::ptr::eq(**row, **first))
            .map(|(row, _)| *row)
            .collect();
        if !later.is_empty() {
            Self::upsert_rows(conn, &later, update, None)?;
        }
        Ok(told)
    }

    /// Upserts validated rows of distinct keys, telling each row's outcome in input order;
    /// runs inside the caller's transaction. By default one statement per row; PostgreSQL
    /// writes them in one statement.
    #[doc(hidden)]
    fn upsert_rows(
        conn: &mut C,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<UpsertOutcome>> {
        rows.iter()
            .map(|row| Self::upsert_one(conn, row, update, condition))
            .collect()
    }

    /// Upserts validated rows of distinct keys as [`Upsertable::upsert_rows`] does, each row
    /// told its own result: the `Err` of the whole call means that it wrote nothing, and a
    /// row's own `Err` is that row's alone (the others were written). By default
    /// [`Upsertable::upsert_rows`]'s result for every row; MySQL writes alone, after the
    /// others, a row that met another unique index than the key.
    #[doc(hidden)]
    fn upsert_rows_each(
        conn: &mut C,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
    ) -> Result<Vec<Result<UpsertOutcome>>> {
        Ok(Self::upsert_rows(conn, rows, update, condition)?
            .into_iter()
            .map(Ok)
            .collect())
    }

    /// Upserts distinct, key-sorted, validated rows in one transaction, telling each row's
    /// outcome in their order.
    #[doc(hidden)]
    fn upsert_sorted_rows(
        conn: &mut C,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<Vec<UpsertOutcome>>;

    /// Upserts distinct, key-sorted, validated rows in one transaction.
    #[doc(hidden)]
    fn upsert_sorted(
        conn: &mut C,
        rows: &[&Self],
        update: &[&'static str],
        condition: Option<&F>,
        chunk_size: usize,
    ) -> Result<BulkOutcome>;
}

/// The columns an existing row takes from the incoming one: every written column but the key,
/// the model's `keep` columns and `extra_keep`.
pub(crate) fn update_columns<M: UpsertModel>(extra_keep: &[&'static str]) -> Vec<&'static str> {
    M::COLUMNS
        .iter()
        .copied()
        .filter(|c| !M::KEY.contains(c) && !M::KEEP.contains(c) && !extra_keep.contains(c))
        .collect()
}

/// An upsert of one row, configured before it runs. Start with [`Upsert::new`] or call
/// [`atomic_upsert`] for the defaults.
///
/// # Examples
///
/// Overwrite only when the incoming row is newer, and never touch `updated_at` on conflict:
///
/// ```
/// # use upsert_kit::{Upsert, UpsertModel, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use diesel::{Connection, SqliteConnection, ExpressionMethods};
/// use diesel::upsert::excluded;
/// #[derive(UpsertModel)]
/// #[upsert(table = tokens, key(id))]
/// pub struct Token {
///     pub id: i64,
///     pub user_id: i64,
///     pub access_token: String,
///     pub refresh_token: String,
///     pub expires_at: chrono::NaiveDateTime,
///     pub updated_at: chrono::NaiveDateTime,
/// }
/// # let mut conn = establish_sqlite()?;
/// # let t = |h: u32| chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(h, 0, 0).unwrap();
/// let newer = Token { id: 1, user_id: 7, access_token: "a2".into(), refresh_token: "r2".into(), expires_at: t(12), updated_at: t(6) };
/// let older = Token { expires_at: t(11), ..newer.clone() };
/// # impl Clone for Token { fn clone(&self) -> Self { Token { id: self.id, user_id: self.user_id, access_token: self.access_token.clone(), refresh_token: self.refresh_token.clone(), expires_at: self.expires_at, updated_at: self.updated_at } } }
/// let only_newer = |row| {
///     Upsert::new(row)
///         .keep(tokens::updated_at)
///         .update_if(excluded(tokens::expires_at).gt(tokens::expires_at))
/// };
/// assert_eq!(only_newer(&newer).execute(&mut conn)?, UpsertOutcome::Inserted);
/// assert_eq!(only_newer(&older).execute(&mut conn)?, UpsertOutcome::Unchanged);
/// # Ok(()) }
/// ```
#[must_use = "an upsert does nothing until `.execute(conn)`"]
pub struct Upsert<'a, M, F = NoCondition> {
    row: &'a M,
    keep: Vec<&'static str>,
    condition: Option<F>,
}

impl<M, F> fmt::Debug for Upsert<'_, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rows may hold secrets (tokens): show the shape, never the values.
        f.debug_struct("Upsert")
            .field("model", &std::any::type_name::<M>())
            .field("keep", &self.keep)
            .field("conditional", &self.condition.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, M: UpsertModel> Upsert<'a, M> {
    /// An upsert of `row` that, on conflict, overwrites every non-key column but the model's
    /// `keep` columns, unconditionally.
    pub fn new(row: &'a M) -> Self {
        Upsert {
            row,
            keep: Vec::new(),
            condition: None,
        }
    }
}

impl<'a, M: UpsertModel, F> Upsert<'a, M, F> {
    /// Leaves `column` as it is when the row exists (it is still written on insert).
    pub fn keep<C>(mut self, _column: C) -> Self
    where
        C: Column<Table = M::Table>,
    {
        self.keep.push(C::NAME);
        self
    }

    /// Updates an existing row only where `condition` holds; otherwise the row is reported
    /// [`UpsertOutcome::Unchanged`]. Refer to the stored row through the table's columns and to
    /// the incoming one through [`diesel::upsert::excluded`].
    pub fn update_if<G>(self, condition: G) -> Upsert<'a, M, G>
    where
        G: Expression + AppearsOnTable<M::Table>,
        G::SqlType: diesel::sql_types::BoolOrNullableBool,
    {
        Upsert {
            row: self.row,
            keep: self.keep,
            condition: Some(condition),
        }
    }

    /// Runs the upsert: one statement on PostgreSQL (one round trip); on SQLite an `UPDATE` by
    /// key, then, for a new key or with `update_if`, the one statement that probes the key and
    /// writes the row; on MySQL one statement and (unless it updated) a read of its session
    /// variables.
    ///
    /// # Errors
    /// - [`Error::InvalidInput`] before anything is sent, when [`UpsertModel::validate`] rejects
    ///   the row.
    /// - [`Error::Constraint`] when another constraint than the conflict key rejects the row
    ///   (e.g. a second unique index): it names the constraint and is not retryable.
    /// - [`Error::OutcomeUnknown`] when the connection drops while the statement commits on its
    ///   own (outside a transaction). An upsert is idempotent, so running it again is safe.
    pub fn execute<C>(&self, conn: &mut C) -> Result<UpsertOutcome>
    where
        C: WriteConnection,
        M: Upsertable<C::Raw, F>,
    {
        let table = observe::table_name::<M::Table>;
        observe::call!(<C::Backend as Dialect>::SYSTEM, "upsert", table).run(|call| {
            self.row.validate()?;
            let update = update_columns::<M>(&self.keep);
            let outcome = M::upsert_one(conn.raw(), self.row, &update, self.condition.as_ref())?;
            call.outcome(outcome.as_str());
            Ok(outcome)
        })
    }
}

/// Upserts `row`: inserts it, or overwrites every non-key column of the existing row (but the
/// model's `keep` columns). Shorthand for `Upsert::new(row).execute(conn)`.
///
/// # Errors
/// As [`Upsert::execute`].
pub fn atomic_upsert<C, M>(conn: &mut C, row: &M) -> Result<UpsertOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
{
    Upsert::new(row).execute(conn)
}

/// Rows per statement of a bulk upsert on PostgreSQL, unless set with
/// [`UpsertMany::chunk_size`].
pub const DEFAULT_CHUNK_SIZE: usize = 5_000;

/// A bulk upsert, configured before it runs. Start with [`UpsertMany::new`] or call
/// [`bulk_upsert`] for the defaults.
///
/// Before anything is sent, the rows are validated, rows that share a key are collapsed (the
/// last one wins: a single statement must not touch one row twice, which PostgreSQL refuses
/// with "ON CONFLICT DO UPDATE command cannot affect row a second time") and sorted by key, so
/// that two bulk upserts running at once lock their rows in the same order and cannot
/// deadlock. On PostgreSQL each chunk is one statement carrying one array per column (its text
/// is the same whatever the row count, so the prepared statement is reused, and the
/// bind-parameter limit of 65,535 is never approached). On MySQL each chunk is one multi-row
/// `VALUES` statement, cut below 65,535 placeholders and below half of the server's
/// `max_allowed_packet` (the values' size estimated from above), with its counts read from
/// session variables. The whole call is one transaction: all rows or none.
#[must_use = "a bulk upsert does nothing until `.execute(conn)`"]
pub struct UpsertMany<'a, M, F = NoCondition> {
    rows: &'a [M],
    keep: Vec<&'static str>,
    condition: Option<F>,
    chunk_size: usize,
}

impl<M, F> fmt::Debug for UpsertMany<'_, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpsertMany")
            .field("model", &std::any::type_name::<M>())
            .field("rows", &self.rows.len())
            .field("keep", &self.keep)
            .field("conditional", &self.condition.is_some())
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

impl<'a, M: UpsertModel> UpsertMany<'a, M> {
    /// A bulk upsert of `rows` with the defaults of [`Upsert::new`] and chunks of
    /// [`DEFAULT_CHUNK_SIZE`] rows.
    pub fn new(rows: &'a [M]) -> Self {
        UpsertMany {
            rows,
            keep: Vec::new(),
            condition: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

impl<'a, M: UpsertModel, F> UpsertMany<'a, M, F> {
    /// As [`Upsert::keep`].
    pub fn keep<C>(mut self, _column: C) -> Self
    where
        C: Column<Table = M::Table>,
    {
        self.keep.push(C::NAME);
        self
    }

    /// As [`Upsert::update_if`].
    pub fn update_if<G>(self, condition: G) -> UpsertMany<'a, M, G>
    where
        G: Expression + AppearsOnTable<M::Table>,
        G::SqlType: diesel::sql_types::BoolOrNullableBool,
    {
        UpsertMany {
            rows: self.rows,
            keep: self.keep,
            condition: Some(condition),
            chunk_size: self.chunk_size,
        }
    }

    /// Rows per statement on PostgreSQL and MySQL (defaults to [`DEFAULT_CHUNK_SIZE`]; MySQL
    /// also cuts below its placeholder and packet limits).
    ///
    /// # Panics
    /// When `rows` is 0.
    pub fn chunk_size(mut self, rows: usize) -> Self {
        assert!(rows > 0, "a chunk holds at least one row");
        self.chunk_size = rows;
        self
    }

    /// Runs the bulk upsert. An empty input returns at once without touching the database.
    ///
    /// # Errors
    /// - [`Error::InvalidInput`] naming the first invalid row (`rows[i].field`); nothing is
    ///   written.
    /// - Any database error; the whole call is rolled back.
    pub fn execute<C>(&self, conn: &mut C) -> Result<BulkOutcome>
    where
        C: WriteConnection,
        M: Upsertable<C::Raw, F>,
    {
        let table = observe::table_name::<M::Table>;
        observe::call!(<C::Backend as Dialect>::SYSTEM, "bulk_upsert", table).run(|call| {
            validate_all(self.rows)?;
            let (sorted, _) = collapse_and_sort(self.rows);
            if sorted.is_empty() {
                return Ok(BulkOutcome::default());
            }
            let update = update_columns::<M>(&self.keep);
            let rows: Vec<&M> = sorted.iter().map(|&i| &self.rows[i]).collect();
            let condition = self.condition.as_ref();
            let mut outcome =
                M::upsert_sorted(conn.raw(), &rows, &update, condition, self.chunk_size)?;
            outcome.collapsed = self.rows.len() - sorted.len();
            call.counts(outcome.inserted, outcome.updated, outcome.unchanged);
            Ok(outcome)
        })
    }

    /// Runs the bulk upsert as [`execute`](Self::execute) does (validated, collapsed, sorted,
    /// all or nothing) and tells what happened to each input row, in input order: its key's
    /// [`UpsertOutcome`], or [`RowOutcome::Superseded`] naming the later row of the same key
    /// that was written instead.
    ///
    /// - PostgreSQL: one statement per chunk, as [`execute`](Self::execute) sends, each row's
    ///   outcome returned with its position (`WITH ORDINALITY`).
    /// - MySQL/MariaDB: one multi-row `ON DUPLICATE KEY UPDATE` per 60 rows, each row's outcome
    ///   read as a bit of two session variables: three round trips per 60 rows (the variables'
    ///   reset, the statement, their read), where [`execute`](Self::execute) sends three per
    ///   chunk of up to its chunk size.
    /// - SQLite: the rows one by one in one transaction, as [`execute`](Self::execute).
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::{atomic_upsert, RowOutcome, UpsertMany, UpsertModel};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// #[derive(UpsertModel)]
    /// #[upsert(table = items, key(sku))]
    /// struct Item<'a> {
    ///     sku: &'a str,
    ///     name: &'a str,
    /// }
    /// let mut conn = establish_sqlite()?;
    /// atomic_upsert(&mut conn, &Item { sku: "a", name: "anvil" })?;
    /// let rows = [
    ///     Item { sku: "b", name: "bolt" },
    ///     Item { sku: "a", name: "anvil, large" },
    ///     Item { sku: "b", name: "bolt, long" },
    /// ];
    /// let told = UpsertMany::new(&rows).execute_rows(&mut conn)?;
    /// assert_eq!(told, [RowOutcome::Superseded { by: 2 }, RowOutcome::Updated, RowOutcome::Inserted]);
    /// # Ok(()) }
    /// ```
    pub fn execute_rows<C>(&self, conn: &mut C) -> Result<Vec<RowOutcome>>
    where
        C: WriteConnection,
        M: Upsertable<C::Raw, F>,
    {
        let table = observe::table_name::<M::Table>;
        let call = observe::call!(<C::Backend as Dialect>::SYSTEM, "bulk_upsert_rows", table);
        call.run(|call| {
            let told = self.rows_unobserved(conn)?;
            let counts = BulkOutcome::tally(&told);
            call.counts(counts.inserted, counts.updated, counts.unchanged);
            Ok(told)
        })
    }

    fn rows_unobserved<C>(&self, conn: &mut C) -> Result<Vec<RowOutcome>>
    where
        C: WriteConnection,
        M: Upsertable<C::Raw, F>,
    {
        validate_all(self.rows)?;
        let (sorted, winner) = collapse_and_sort(self.rows);
        let mut told: Vec<RowOutcome> = winner
            .into_iter()
            .map(|by| RowOutcome::Superseded { by })
            .collect();
        if sorted.is_empty() {
            return Ok(told);
        }
        let update = update_columns::<M>(&self.keep);
        let rows: Vec<&M> = sorted.iter().map(|&i| &self.rows[i]).collect();
        let condition = self.condition.as_ref();
        let outcomes =
            M::upsert_sorted_rows(conn.raw(), &rows, &update, condition, self.chunk_size)?;
        for (&i, outcome) in sorted.iter().zip(outcomes) {
            told[i] = outcome.into();
        }
        Ok(told)
    }
}

/// Validates every row; the first invalid one is named by its index.
fn validate_all<M: UpsertModel>(rows: &[M]) -> Result<()> {
    for (i, row) in rows.iter().enumerate() {
        row.validate().map_err(|e| {
            Error::InvalidInput(InvalidInput::new(
                format!("rows[{i}].{}", e.field),
                e.reason,
            ))
        })?;
    }
    Ok(())
}

/// The input rows in key order, the last row of each key kept: `(written, winner)`, the kept
/// rows' indexes in key order and, for every input row, the index of its key's kept row.
fn collapse_and_sort<M: UpsertModel>(rows: &[M]) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].cmp_key(&rows[b]).then(a.cmp(&b)));
    let (mut written, mut winner) = (Vec::with_capacity(rows.len()), vec![0; rows.len()]);
    let mut start = 0;
    for k in 0..order.len() {
        let next = order.get(k + 1).map(|&n| &rows[n]);
        if next.is_none_or(|next| rows[order[k]].cmp_key(next).is_ne()) {
            written.push(order[k]);
            for &i in &order[start..=k] {
                winner[i] = order[k];
            }
            start = k + 1;
        }
    }
    (written, winner)
}

/// Upserts many rows with the defaults of [`atomic_upsert`], all or nothing, and tells what
/// happened to each, in input order. Shorthand for `UpsertMany::new(rows).execute_rows(conn)`;
/// see [`UpsertMany::execute_rows`].
///
/// # Errors
/// As [`UpsertMany::execute`].
pub fn bulk_upsert_rows<C, M>(conn: &mut C, rows: &[M]) -> Result<Vec<RowOutcome>>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
{
    UpsertMany::new(rows).execute_rows(conn)
}

/// Upserts many rows with the defaults of [`atomic_upsert`], all or nothing. Shorthand for
/// `UpsertMany::new(rows).execute(conn)`; see [`UpsertMany`] for how rows are collapsed,
/// sorted and chunked.
///
/// # Errors
/// As [`UpsertMany::execute`].
pub fn bulk_upsert<C, M>(conn: &mut C, rows: &[M]) -> Result<BulkOutcome>
where
    C: WriteConnection,
    M: Upsertable<C::Raw>,
{
    UpsertMany::new(rows).execute(conn)
}
