//! Get-or-create: return the row with a given unique key, inserting it if it is missing, and
//! say whether this call created it, under any concurrency.
//!
//! # Which path is taken, and why
//! - **PostgreSQL**: `INSERT … ON CONFLICT (key) DO NOTHING RETURNING <row>`. When it returns a
//!   row, this call created it (one round trip). When it returns nothing the key exists, and a
//!   second statement reads it: `SELECT <row> FROM t WHERE key = …` (two round trips). Under READ
//!   COMMITTED each statement takes a new snapshot, and `ON CONFLICT` waits for a concurrent
//!   inserter of the key to commit or roll back before deciding, so the `SELECT` sees the row
//!   the `INSERT` collided with. The two statements need no transaction of their own (which would
//!   cost a `BEGIN` and a `COMMIT`): inside the caller's transaction they run in it. The one gap
//!   is a row deleted between the two statements: the pair is then retried, up to
//!   [`GET_OR_CREATE_ATTEMPTS`] times, after which [`Error::NotFound`] is returned.
//!   One statement cannot do both: a `SELECT` in the same statement as the `INSERT` uses the
//!   statement's snapshot, which does not contain a row committed by the transaction the
//!   `INSERT` waited for.
//! - **SQLite**: first the `SELECT` (in-process, no round trip: a row that exists is returned
//!   by one read, as the naive read-then-insert would), and on a miss the same two statements
//!   as on PostgreSQL, with no transaction of their own either (a transaction would cost a
//!   `BEGIN IMMEDIATE` and a `COMMIT`). The `INSERT` takes SQLite's
//!   single write lock when it starts, so it cannot miss a committed row; the `SELECT` reads
//!   the newest committed state. Writers of the same process are kept out of the gap by the
//!   file's writer gate ([`tx::immediate_transaction`]); a
//!   row deleted in between by another process is handled as on PostgreSQL (retried, then
//!   [`Error::NotFound`]).
//! - **MySQL / MariaDB**: `INSERT … ON DUPLICATE KEY UPDATE k = IF((@upsert_kit_hit := nonce)
//!   IS NULL, k, k)`, which changes nothing but records whether the key existed (not
//!   `INSERT IGNORE`, which would turn unrelated errors into warnings), then `SELECT … FOR
//!   UPDATE` of the row by key. The locking read sees the newest committed row even inside a
//!   REPEATABLE READ transaction whose snapshot predates it, so there is no serialization
//!   failure to retry on MySQL. A row colliding on another unique index than the key fails with
//!   that index's duplicate-key error (see [`crate::upsert`]).
//!
//! No advisory lock is taken: the unique index is the lock. A second creator blocks on the
//! first one's uncommitted index entry until it commits, so even rows that creation
//! initialises in the same transaction are complete when the loser reads them. An advisory
//! transaction lock ([`crate::lock::xact_lock`]) is only needed when "the same row" is not a
//! unique key (e.g. "an open period overlapping this instant"), which this helper does not
//! serve.
//!
//! # Isolation levels
//! Under REPEATABLE READ or SERIALIZABLE, PostgreSQL raises a serialization failure when the
//! conflicting row is not visible to the transaction's snapshot
//! ([`Error::SerializationFailure`]); re-run the whole transaction with
//! [`Retry`](crate::retry::Retry).
//!
//! # Costs
//! Each `INSERT … ON CONFLICT DO NOTHING` that finds the key takes a value from the table's
//! sequence (a `BIGSERIAL` id) without using it. When most calls find the row, read first and
//! call `get_or_create` only on a miss (a plain `SELECT` by key first).

use crate::conn::WriteConnection;
use crate::error::{Error, Result};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::tx;
use crate::upsert::statement::{OnConflict, Row, UpsertSql};
use crate::upsert::{BindRow, NoCondition, UpsertModel};
use diesel::backend::Backend;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use diesel::connection::Connection;
use diesel::expression::Expression;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use diesel::expression::SelectableHelper;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use diesel::query_dsl::methods::LoadQuery;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use diesel::Selectable;
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;
/// How many times [`get_or_create`] runs its insert-then-read pair before giving
/// up, when the row keeps being deleted between the two statements.
pub const GET_OR_CREATE_ATTEMPTS: u32 = 3;

/// The row [`get_or_create`] returned, and whether this call created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained<R> {
    /// The row, as stored.
    pub row: R,
    /// `true` when this call inserted the row, `false` when it existed.
    pub created: bool,
}

/// The backend's half of [`get_or_create`] of `Self`, returning rows of type `R`, on the
/// backend's own connection `C`: implemented in the backend's file (`pg.rs`, `sqlite.rs`,
/// `mysql.rs` beside this one) for [`diesel::PgConnection`], [`diesel::SqliteConnection`] and
/// `diesel::MysqlConnection`, for every model declared with
/// [`#[derive(UpsertModel)]`](derive@crate::UpsertModel) and every `R` that derives `Queryable` and
/// `Selectable` for the model's table. [`get_or_create`] takes any [`WriteConnection`] (a
/// pooled one too) and reaches this through [`WriteConnection::raw`].
#[diagnostic::on_unimplemented(
    message = "cannot get-or-create `{Self}` as `{R}` over a `{C}`",
    note = "derive the model with `#[derive(upsert_kit::UpsertModel)]`, and derive `Queryable` and `Selectable` (with `#[diesel(table_name = …)]` of the same table) on the row type"
)]
pub trait GetOrCreate<C, R>: UpsertModel + Sized {
    /// Runs the get-or-create of a validated row.
    #[doc(hidden)]
    fn get_or_create_validated(conn: &mut C, row: &Self) -> Result<Obtained<R>>;
}

/// Returns the row whose unique key ([`UpsertModel::KEY`]) is `row`'s, inserting `row` when
/// there is none, and whether this call inserted it.
///
/// **Guarantee**: concurrent calls for one key, from any number of sessions, all return the
/// same row, exactly one of them reports `created`, and none fails with a duplicate-key
/// error. An existing row is returned as stored: `row`'s other values are used only to create.
///
/// **Cost**: PostgreSQL, one round trip when the row is created, two when it exists (see the
/// [module documentation](self) for the statements and why no transaction is opened); SQLite,
/// one read when the row exists, else the same statements, no transaction either.
///
/// # Errors
/// - [`Error::InvalidInput`] when [`UpsertModel::validate`] rejects `row`; nothing is sent.
/// - [`Error::Constraint`] when another constraint than the key rejects the insert (a foreign
///   key, a check, a second unique index): not retryable.
/// - [`Error::NotFound`] when the row was deleted between the insert and the read
///   [`GET_OR_CREATE_ATTEMPTS`] times in a row.
/// - [`Error::SerializationFailure`] under REPEATABLE READ or SERIALIZABLE when the row was
///   committed after the transaction's snapshot.
/// - [`Error::OutcomeUnknown`] when the connection drops while an insert outside a transaction
///   commits; get-or-create is idempotent, so calling it again is safe.
///
/// # Examples
///
/// ```
/// use diesel::prelude::*;
/// use upsert_kit::get_or_create::get_or_create;
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use upsert_kit::UpsertModel;
///
/// #[derive(Insertable, UpsertModel)]
/// #[diesel(table_name = stats)]
/// #[upsert(key(stats_type))]
/// pub struct NewStats {
///     pub stats_type: String,
///     pub data: serde_json::Value,
/// }
///
/// #[derive(Debug, Queryable, Selectable)]
/// #[diesel(table_name = stats)]
/// struct Stats {
///     id: i64,
///     stats_type: String,
///     data: serde_json::Value,
/// }
///
/// let mut conn = establish_sqlite()?;
/// let first = get_or_create::<_, _, Stats>(&mut conn, &NewStats { stats_type: "ytd".into(), data: serde_json::json!(1) })?;
/// let again = get_or_create::<_, _, Stats>(&mut conn, &NewStats { stats_type: "ytd".into(), data: serde_json::json!(2) })?;
/// assert!(first.created && !again.created);
/// assert_eq!(first.row.id, again.row.id);
/// assert_eq!(again.row.data, serde_json::json!(1)); // the stored row, not the new values
/// # Ok(()) }
/// ```
pub fn get_or_create<C, M, R>(conn: &mut C, row: &M) -> Result<Obtained<R>>
where
    C: WriteConnection,
    M: GetOrCreate<C::Raw, R>,
{
    let table = crate::observe::table_name::<M::Table>;
    crate::observe::call!(
        <C::Backend as crate::conn::Dialect>::SYSTEM,
        "get_or_create",
        table
    )
    .run(|call| {
        row.validate()?;
        let obtained = M::get_or_create_validated(conn.raw(), row)?;
        call.outcome(if obtained.created { "created" } else { "found" });
        Ok(obtained)
    })
}

/// `INSERT … ON CONFLICT (key) DO NOTHING RETURNING <selection>`.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
struct InsertReturning<'a, M: UpsertModel, S, DB: Backend> {
    insert: UpsertSql<'a, M, NoCondition, Row<'a, M>>,
    _backend: PhantomData<DB>,
    selection: S,
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
impl<'a, M: UpsertModel, S, DB: Backend> InsertReturning<'a, M, S, DB> {
    fn new(row: &'a M, selection: S) -> Self {
        InsertReturning {
            insert: UpsertSql {
                table: M::Table::default(),
                source: Row(row),
                update: &[],
                condition: None,
                on_conflict: OnConflict::Nothing,
            },
            selection,
            _backend: PhantomData,
        }
    }
}

impl<M: UpsertModel, S, DB: Backend> QueryId for InsertReturning<'_, M, S, DB> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel, S: Expression, DB: Backend> Query for InsertReturning<'_, M, S, DB> {
    type SqlType = S::SqlType;
}

impl<M: UpsertModel, S, DB: Backend, Conn> RunQueryDsl<Conn> for InsertReturning<'_, M, S, DB> {}

impl<M, S, DB> QueryFragment<DB> for InsertReturning<'_, M, S, DB>
where
    DB: Backend,
    M: BindRow<DB>,
    M::Table: QueryFragment<DB>,
    S: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.insert.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING ");
        self.selection.walk_ast(out.reborrow())
    }
}

/// `SELECT <selection> FROM t WHERE k1 = $1 AND k2 = $2`: the row with `row`'s key, each key
/// column compared with its value (so that a distributed table routes the read to one shard).
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
struct SelectByKey<'a, M: UpsertModel, S> {
    table: M::Table,
    row: &'a M,
    selection: S,
}

/// [`SelectByKey`]'s query id: its text depends only on the model's table and key columns
/// ([`UpsertModel::StatementId`]) and on the selection, so the connection's statement cache
/// finds it by type.
struct SelectByKeyId<K, S>(PhantomData<(K, S)>);

impl<M: UpsertModel, S: QueryId> QueryId for SelectByKey<'_, M, S> {
    type QueryId = SelectByKeyId<M::StatementId, S::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = S::HAS_STATIC_QUERY_ID;
}

impl<M: UpsertModel, S: Expression> Query for SelectByKey<'_, M, S> {
    type SqlType = S::SqlType;
}

impl<M: UpsertModel, S, Conn> RunQueryDsl<Conn> for SelectByKey<'_, M, S> {}

impl<M, S, DB> QueryFragment<DB> for SelectByKey<'_, M, S>
where
    DB: Backend,
    M: BindRow<DB>,
    M::Table: QueryFragment<DB>,
    S: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        self.selection.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.row.walk_key_match(out.reborrow())
    }
}

/// One insert-then-read pair: `Ok(None)` when the row vanished in between.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn attempt<C, M, R, DB>(conn: &mut C, row: &M) -> Result<Option<Obtained<R>>>
where
    DB: Backend,
    C: Connection<Backend = DB, TransactionManager = diesel::connection::AnsiTransactionManager>,
    M: UpsertModel,
    R: Selectable<DB>,
    for<'a> InsertReturning<'a, M, diesel::dsl::AsSelect<R, DB>, DB>: LoadQuery<'a, C, R>,
    for<'a> SelectByKey<'a, M, diesel::dsl::AsSelect<R, DB>>: LoadQuery<'a, C, R>,
{
    let in_tx = tx::in_transaction(conn);
    let inserted = InsertReturning::<M, _, DB>::new(row, R::as_select())
        .load::<R>(conn)
        .map_err(|e| tx::statement_error(in_tx, e))?;
    if let Some(created) = inserted.into_iter().next() {
        return Ok(Some(Obtained {
            row: created,
            created: true,
        }));
    }
    let found = SelectByKey {
        table: M::Table::default(),
        row,
        selection: R::as_select(),
    }
    .load::<R>(conn)?;
    Ok(found.into_iter().next().map(|existing| Obtained {
        row: existing,
        created: false,
    }))
}

fn vanished() -> Error {
    Error::NotFound(format!(
        "get-or-create: the row was deleted between the insert and the read \
         {GET_OR_CREATE_ATTEMPTS} times in a row"
    ))
}
