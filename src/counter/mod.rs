//! Counters on the user's own tables: `SET c = c + d` in one statement, optionally creating the
//! row, optionally bounded.
//!
//! A counter table has a key (one or several columns, a unique index or the primary key) and
//! one or more integer amount columns, and optionally one limit column per amount. Declare it
//! once with [`counter!`](crate::counter!):
//!
//! ```text
//! upsert_kit::counter! {
//!     table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
//!     pub struct ApiCalls;
//! }
//! ```
//!
//! # The statements
//! - [`increment`]: `UPDATE t SET a = a + $1, b = b + $2 WHERE key = … [AND bounds]
//!   RETURNING <a, b>`. Concurrent increments queue on the row lock and each adds to the value
//!   the previous one committed: none is lost. A missing row is `Ok(None)` (nothing there is
//!   not an error), and nothing is written.
//! - [`upsert_increment`]: `INSERT INTO t (key…, a, b) VALUES (…) ON CONFLICT (key) DO UPDATE SET
//!   a = t.a + excluded.a, … [WHERE bounds] RETURNING <a, b>`: the first increments of a new
//!   key from many sessions create the row once and none fails or loses a count.
//! - Bounds ([`Increment::at_least`], [`Increment::at_most`], [`Increment::within_limits`]) are
//!   conditions of the same statement, judged on the newest committed row (PostgreSQL re-checks
//!   them after waiting for a concurrent writer), so they hold under any concurrency. A bound
//!   refuses only a move towards it: with `at_least(0)`, a positive amount is never refused.
//!   A refused increment writes nothing (no column is changed, not even the ones within their
//!   bounds); a second statement then reads the row to say which bound
//!   ([`Error::CounterBound`]).
//!
//! The totals come back as one JSON array text (`json_build_array(…)::text` on PostgreSQL,
//! `json_array(…)` on SQLite), so that one statement shape serves any number of amount
//! columns. Amounts are bound as `BIGINT`; amount columns may be `INTEGER` or `BIGINT`
//! (PostgreSQL refuses a total past an `INTEGER` column's range with an error, nothing written).
//!
//! On SQLite each statement runs alone, after the process's writer gate of the file
//! (`BEGIN IMMEDIATE`'s queue): a writing statement takes the write lock when it starts, so it
//! reads nothing stale.
//!
//! On MySQL and MariaDB (no `RETURNING`) an increment is two round trips and no transaction: one
//! statement that leaves the row's new totals in session variables (`UPDATE t SET a =
//! (@upsert_kit_t0 := a + ?) … WHERE key [AND bounds]`), then a `SELECT` of them, or of the row
//! when a bounded increment matched nothing (to tell a refusal from a missing row). The
//! creating form is `INSERT … ON DUPLICATE KEY UPDATE`; with bounds, which `ON DUPLICATE KEY`
//! cannot put in a `WHERE`, the first assignment stores a nonce and the bounds' verdict (judged
//! once, before any column changes) in session variables, and every column is assigned only if
//! the bounds held. A counter of more than eight amount columns, or a creating increment whose
//! fresh row would itself break the bounds, runs the write and a read of the row in one
//! transaction instead. Any isolation level, REPEATABLE READ included (tested); the statements
//! are in `src/counter/mysql.rs`.
//! Under REPEATABLE READ or SERIALIZABLE on PostgreSQL, concurrent increments of one row fail
//! with [`Error::SerializationFailure`] instead of waiting: retry them with
//! [`Retry`](crate::Retry).
//!
//! This file holds the API, its contract and the statements every backend shares; how each
//! backend runs an increment ([`CounterBackend`]) is in a file of its own beside it: `pg.rs`,
//! `sqlite.rs`, `mysql.rs` (with MySQL's own statements).

use crate::conn::{BindKey, Dialect, KeyStyle, Keyed, WriteConnection};
use crate::error::{BoundKind, Error, Result};
use crate::observe;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;
use std::fmt::Debug;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;

/// How many times in all a refused increment is tried when the read that explains the refusal
/// finds the row within its bounds (a concurrent change made room in between).
pub const BOUND_ATTEMPTS: u32 = 3;

/// A counter table's amounts: `[i64; N]`, one per amount column, in declaration order.
pub trait Amounts: Copy + Debug + PartialEq + Send + Sync + 'static {
    /// The amounts in column order.
    fn as_slice(&self) -> &[i64];
    /// Amounts from a slice of the right length.
    fn from_slice(values: &[i64]) -> Option<Self>;
}

impl<const N: usize> Amounts for [i64; N] {
    fn as_slice(&self) -> &[i64] {
        self
    }
    fn from_slice(values: &[i64]) -> Option<Self> {
        values.try_into().ok()
    }
}

/// A counter table: its key, its amount columns and, optionally, a limit column per amount.
///
/// Declare it with [`counter!`](crate::counter!). A derive can implement it the same way: the
/// trait holds only names and types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a counter table declaration",
    note = "declare it with `upsert_kit::counter! {{ table = …, key = (col: Type, …), amounts = (col, …); pub struct Name; }}`"
)]
pub trait Counter: Keyed {
    /// `[i64; N]`: one value per amount column.
    type Amounts: Amounts;
    /// The amount columns.
    const AMOUNTS: &'static [&'static str];
    /// The limit column of each amount column, in the same order, or none at all (`&[]`).
    const LIMITS: &'static [&'static str];
}

/// Declares a counter table: its key columns (with their Rust types), its amount columns and,
/// optionally, one limit column per amount.
///
/// ```text
/// upsert_kit::counter! {
///     table = schema::api_calls, key = (user_id: i64, day: chrono::NaiveDate),
///     amounts = (calls, bytes), limits = (max_calls, max_bytes);
///     pub struct ApiCalls;
/// }
/// ```
///
/// It emits the (empty) struct and implements [`Counter`], [`Keyed`] and [`BindKey`] for every
/// backend whose types fit. The key is the column's type for a one-column key, a tuple for
/// several. Column names are checked by the compiler against the Diesel `table!`.
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// upsert_kit::counter! {
///     table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
///     pub struct ApiCalls;
/// }
///
/// let mut conn = establish_sqlite()?;
/// let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
/// let totals = upsert_kit::counter::upsert_increment::<ApiCalls, _>(&mut conn, &(7, day), [1, 512])?;
/// assert_eq!(totals, [1, 512]);
/// let totals = upsert_kit::counter::upsert_increment::<ApiCalls, _>(&mut conn, &(7, day), [1, 100])?;
/// assert_eq!(totals, [2, 612]);
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! counter {
    (
        table = $($tp:ident)::+ ,
        key = ( $( $key:ident : $kty:ty ),+ $(,)? ) ,
        amounts = ( $( $amount:ident ),+ $(,)? )
        $(, limits = ( $( $limit:ident ),+ $(,)? ) )? $(,)? ;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident;
    ) => {
        $(#[$meta])*
        $vis struct $name;

        $crate::__keyed_impl!($name, $($tp)::+, $($key : $kty),+);

        const _: () = {
            impl $crate::counter::Counter for $name {
                type Amounts = [i64; [$(stringify!($amount)),+].len()];
                const AMOUNTS: &'static [&'static str] =
                    $crate::__column_names!([$($tp)::+] $($amount),+);
                const LIMITS: &'static [&'static str] =
                    $crate::__column_names!([$($tp)::+] $($($limit),+)?);
            }
            assert!(
                <$name as $crate::counter::Counter>::LIMITS.is_empty()
                    || <$name as $crate::counter::Counter>::LIMITS.len()
                        == <$name as $crate::counter::Counter>::AMOUNTS.len(),
                "a counter declares one limit column per amount column, or none"
            );
        };
    };
}

/// Adds `amounts` to the row with `key`, in one `UPDATE … RETURNING`, and returns the new
/// totals; `Ok(None)` when there is no such row (nothing is written then).
///
/// Shorthand for `Increment::new(key, amounts).run(conn)`; see [`Increment`] for bounds.
///
/// **Guarantee**: concurrent increments of one row never lose a count. **Cost**: one round
/// trip on PostgreSQL (its own transaction, or part of the caller's).
///
/// # Errors
/// - [`Error::InvalidInput`] when the key is rejected (an empty string); nothing is sent.
/// - [`Error::OutcomeUnknown`] when the connection drops while the statement commits on its
///   own: the amounts may have been added. Make increments that are retried after such an
///   error idempotent ([`crate::idempotency`]).
/// - Database errors (a total past the column's range).
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # upsert_kit::counter! {
/// #     table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
/// #     pub struct ApiCalls;
/// # }
/// use diesel::RunQueryDsl;
/// use upsert_kit::counter::increment;
/// let mut conn = establish_sqlite()?;
/// let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
/// assert_eq!(increment::<ApiCalls, _>(&mut conn, &(7, day), [1, 10])?, None); // no row yet
/// diesel::sql_query("INSERT INTO api_calls (user_id, day) VALUES (7, '2026-12-01')").execute(&mut conn)?;
/// assert_eq!(increment::<ApiCalls, _>(&mut conn, &(7, day), [1, 10])?, Some([1, 10]));
/// # Ok(()) }
/// ```
pub fn increment<T, C>(
    conn: &mut C,
    key: &T::Key,
    amounts: T::Amounts,
) -> Result<Option<T::Amounts>>
where
    T: Counter + BindKey<C::Backend>,
    C: WriteConnection,
    C::Backend: CounterBackend,
{
    Increment::<T>::new(key, amounts).run(conn)
}

/// Adds `amounts` to the row with `key`, creating the row with `amounts` when it is missing, in
/// one `INSERT … ON CONFLICT (key) DO UPDATE SET c = t.c + excluded.c RETURNING`; returns the
/// new totals.
///
/// The row is created from the key and the amounts alone: its other columns take their
/// defaults. Shorthand for `Increment::new(key, amounts).creating().run(conn)`.
///
/// **Guarantee**: the first increments of a new key from many sessions create one row, none
/// fails with a duplicate key, none loses a count. **Cost**: one round trip on PostgreSQL.
///
/// # Errors
/// As [`increment`]; also [`Error::Constraint`] when another constraint (a `NOT NULL` column
/// without a default, a foreign key) refuses the new row.
///
/// # Examples
/// See [`counter!`](crate::counter!).
pub fn upsert_increment<T, C>(conn: &mut C, key: &T::Key, amounts: T::Amounts) -> Result<T::Amounts>
where
    T: Counter + BindKey<C::Backend>,
    C: WriteConnection,
    C::Backend: CounterBackend,
{
    Increment::<T>::new(key, amounts)
        .creating()
        .run(conn)?
        .ok_or_else(|| Error::NotFound("the upserted counter row returned nothing".into()))
}

/// An increment, configured before it runs: bounds, and whether to create a missing row.
///
/// Defaults: no bounds, a missing row is not created (`run` returns `Ok(None)`).
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # upsert_kit::counter! {
/// #     table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
/// #     pub struct ApiCalls;
/// # }
/// use upsert_kit::counter::Increment;
/// use upsert_kit::{BoundKind, Error};
/// let mut conn = establish_sqlite()?;
/// let key = (7, chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
/// Increment::<ApiCalls>::new(&key, [3, 0]).creating().run(&mut conn)?;
/// // Never below 0: taking 5 of 3 calls is refused, and nothing is written.
/// let refused = Increment::<ApiCalls>::new(&key, [-5, 0]).at_least(0).run(&mut conn);
/// assert!(matches!(refused, Err(Error::CounterBound { bound: BoundKind::Floor, current: 3, delta: -5, .. })));
/// let left = Increment::<ApiCalls>::new(&key, [-3, 0]).at_least(0).run(&mut conn)?;
/// assert_eq!(left, Some([0, 0]));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "an increment does nothing until it is `run`"]
pub struct Increment<'k, T: Counter> {
    key: &'k T::Key,
    amounts: T::Amounts,
    floor: Option<i64>,
    ceiling: Option<i64>,
    limits: bool,
    create: bool,
}

impl<'k, T: Counter> Increment<'k, T> {
    /// Adds `amounts` (one per amount column) to the row with `key`.
    pub fn new(key: &'k T::Key, amounts: T::Amounts) -> Self {
        Increment {
            key,
            amounts,
            floor: None,
            ceiling: None,
            limits: false,
            create: false,
        }
    }

    /// Refuses a decrement that would take any amount column below `floor` (often 0).
    /// Default: no floor.
    pub fn at_least(mut self, floor: i64) -> Self {
        self.floor = Some(floor);
        self
    }

    /// Refuses an increment that would take any amount column above `ceiling`.
    /// Default: no ceiling.
    pub fn at_most(mut self, ceiling: i64) -> Self {
        self.ceiling = Some(ceiling);
        self
    }

    /// Refuses an increment that would take an amount column above its row's limit column
    /// (declared with `limits = (…)`). Default: limit columns are not checked. A row is never
    /// created by a limited increment (its limits would be defaults nobody chose): combined
    /// with [`Increment::creating`], `run` fails with [`Error::InvalidInput`].
    pub fn within_limits(mut self) -> Self {
        self.limits = true;
        self
    }

    /// Creates the row (key and amounts, other columns at their defaults) when it is missing,
    /// in the same statement. Default: a missing row is not created. A new row must itself be
    /// within the constant bounds (`floor <= amount <= ceiling`); when it would not be, the row is
    /// not created and the increment behaves as without `creating`.
    pub fn creating(mut self) -> Self {
        self.create = true;
        self
    }

    /// Runs the increment: the new totals, or `Ok(None)` when the row does not exist (and was
    /// not created).
    ///
    /// # Errors
    /// - [`Error::CounterBound`] when a bound refused the increment; nothing was written.
    /// - [`Error::InvalidInput`] for a rejected key, `within_limits` on a counter without limit
    ///   columns, or `within_limits` with `creating`; nothing is sent.
    /// - As [`increment`] otherwise.
    pub fn run<C>(self, conn: &mut C) -> Result<Option<T::Amounts>>
    where
        T: BindKey<C::Backend>,
        C: WriteConnection,
        C::Backend: CounterBackend,
    {
        let table = observe::table_name::<T::Table>;
        let operation = if self.create {
            "upsert_increment"
        } else {
            "increment"
        };
        let call = match operation {
            "upsert_increment" => observe::call!(C::Backend::SYSTEM, "upsert_increment", table),
            _ => observe::call!(C::Backend::SYSTEM, "increment", table),
        };
        call.run(|call| {
            let totals = self.run_unobserved(conn)?;
            call.outcome(if totals.is_some() {
                "applied"
            } else {
                "missing"
            });
            Ok(totals)
        })
    }

    /// [`Increment::run`] without a span of its own (inside another primitive's).
    pub(crate) fn run_unobserved<C>(&self, conn: &mut C) -> Result<Option<T::Amounts>>
    where
        T: BindKey<C::Backend>,
        C: WriteConnection,
        C::Backend: CounterBackend,
    {
        T::validate_key(self.key)?;
        if self.limits && T::LIMITS.is_empty() {
            return Err(Error::invalid(
                "within_limits",
                "this counter declares no limit columns",
            ));
        }
        if self.limits && self.create {
            return Err(Error::invalid(
                "within_limits",
                "a limited increment never creates its row: create it with its limits first",
            ));
        }
        for _ in 0..BOUND_ATTEMPTS {
            match C::Backend::increment_once(conn, self)? {
                Step::Done(totals) => return Ok(totals),
                Step::Refused(row) => {
                    if let Some(e) = self.refusal(&row) {
                        return Err(e);
                    }
                    tracing::debug!(
                        counter = std::any::type_name::<T>(),
                        "a refused increment now fits its bounds; trying again"
                    );
                }
            }
        }
        Err(Error::SerializationFailure(format!(
            "the counter row kept changing under a bounded increment {BOUND_ATTEMPTS} times"
        )))
    }

    /// The bounds, as the statements write them.
    fn bounds(&self) -> Bounds<'_> {
        Bounds {
            floor: self.floor.as_ref(),
            ceiling: self.ceiling.as_ref(),
            limits: self.limits,
        }
    }

    /// Whether a row created from the amounts alone is within the constant bounds.
    fn fresh_row_fits(&self) -> bool {
        self.amounts
            .as_slice()
            .iter()
            .all(|&d| self.floor.is_none_or(|f| d >= f) && self.ceiling.is_none_or(|c| d <= c))
    }

    /// The bound the increment crosses on `row` (amounts, then limits), if any.
    fn refusal(&self, row: &[i64]) -> Option<Error> {
        let n = T::AMOUNTS.len();
        for (i, (&d, column)) in self.amounts.as_slice().iter().zip(T::AMOUNTS).enumerate() {
            let current = *row.get(i)?;
            let new = current.checked_add(d)?;
            let crossed = if d < 0 {
                self.floor
                    .filter(|&f| new < f)
                    .map(|f| (BoundKind::Floor, f))
            } else if d > 0 {
                self.ceiling
                    .filter(|&c| new > c)
                    .map(|c| (BoundKind::Ceiling, c))
                    .or_else(|| {
                        let limit = if self.limits {
                            row.get(n + i).copied()
                        } else {
                            None
                        };
                        limit.filter(|&l| new > l).map(|l| (BoundKind::Limit, l))
                    })
            } else {
                None
            };
            if let Some((bound, limit)) = crossed {
                return Some(Error::CounterBound {
                    column: (*column).to_owned(),
                    bound,
                    current,
                    delta: d,
                    limit,
                });
            }
        }
        None
    }
}

/// How a backend runs one try of an increment: implemented for each backend in a file of its
/// own beside this one (`pg.rs`, `sqlite.rs`, `mysql.rs`). Sealed (through [`Dialect`]); its
/// method is the crate's plumbing.
pub trait CounterBackend: Dialect {
    /// One try of `increment`: its totals, no row, or the row a bound refused it on.
    #[doc(hidden)]
    fn increment_once<T, C>(conn: &mut C, increment: &Increment<'_, T>) -> Result<Step<T::Amounts>>
    where
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>;
}

/// One try of an increment where a write returns its row (PostgreSQL, SQLite): the increment
/// returns the totals in the same statement; when it returns nothing with bounds set, a read
/// says whether the row is missing or a bound refused it.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn increment_returning<T, C>(conn: &mut C, inc: &Increment<'_, T>) -> Result<Step<T::Amounts>>
where
    T: Counter + BindKey<C::Backend>,
    C: WriteConnection,
{
    let (amounts, bounds) = (inc.amounts.as_slice(), inc.bounds());
    let texts = if inc.create && inc.fresh_row_fits() {
        let sql = UpsertIncrementSql::<T> {
            key: inc.key,
            amounts,
            bounds,
            columns: None,
        };
        conn.single(|c| c.run_texts(&sql))?
    } else {
        let sql = IncrementSql::<T> {
            key: inc.key,
            amounts,
            bounds,
            columns: None,
        };
        conn.single(|c| c.run_texts(&sql))?
    };
    if let Some(text) = texts.first() {
        return totals_of::<T>(&crate::conn::parse_ints(text)?).map(|t| Step::Done(Some(t)));
    }
    if !bounds.any() {
        return Ok(Step::Done(None));
    }
    // Refused or missing: read the row to say which.
    let read = ReadSql::<T> {
        key: inc.key,
        limits: inc.limits,
    };
    match conn.raw().run_texts(&read)?.into_iter().next() {
        None => Ok(Step::Done(None)),
        Some(text) => Ok(Step::Refused(crate::conn::parse_ints(&text)?)),
    }
}

/// What one try of an increment found.
#[doc(hidden)]
#[derive(Debug)]
pub enum Step<A> {
    /// The totals (or no row).
    Done(Option<A>),
    /// A bound refused it; the row's amounts (and limits, for a limited increment).
    Refused(Vec<i64>),
}

fn totals_of<T: Counter>(values: &[i64]) -> Result<T::Amounts> {
    T::Amounts::from_slice(values).ok_or_else(|| {
        Error::Database(diesel::result::Error::DeserializationError(
            format!("expected {} totals, got {}", T::AMOUNTS.len(), values.len()).into(),
        ))
    })
}

/// The bounds of one increment, written as conditions on `target.amount + delta`.
#[derive(Clone, Copy, Default)]
struct Bounds<'a> {
    floor: Option<&'a i64>,
    ceiling: Option<&'a i64>,
    limits: bool,
}

impl Bounds<'_> {
    fn any(&self) -> bool {
        self.floor.is_some() || self.ceiling.is_some() || self.limits
    }
}

impl<'a> Bounds<'a> {
    /// ` AND (col + d >= $floor OR d >= 0) AND …` for each amount column: `new(i, out)` writes
    /// the new value of column `i`, `delta(i, out)` its delta.
    fn walk<T: Counter + BindKey<DB>, DB: Dialect>(
        self,
        out: &mut AstPass<'_, 'a, DB>,
        amounts: &'a [i64],
        qualify: bool,
        excluded: bool,
        first: &mut bool,
    ) -> QueryResult<()> {
        let mut condition = |out: &mut AstPass<'_, 'a, DB>,
                             i: usize,
                             op: &str,
                             bound: Bound<'a>|
         -> QueryResult<()> {
            out.push_sql(if std::mem::take(first) { " " } else { " AND " });
            out.push_sql("(");
            walk_new::<T, DB>(out, i, amounts, qualify, excluded)?;
            out.push_sql(op);
            match bound {
                Bound::Value(v) => DB::push_int(out, v)?,
                Bound::Column(c) => {
                    if qualify {
                        T::walk_table(out.reborrow())?;
                        out.push_sql(".");
                    }
                    out.push_identifier(c)?;
                }
            }
            out.push_sql(" OR ");
            walk_delta::<T, DB>(out, i, amounts, excluded)?;
            out.push_sql(if op == " >= " { " >= 0)" } else { " <= 0)" });
            Ok(())
        };
        for i in 0..T::AMOUNTS.len() {
            if let Some(f) = self.floor {
                condition(out, i, " >= ", Bound::Value(f))?;
            }
            if let Some(c) = self.ceiling {
                condition(out, i, " <= ", Bound::Value(c))?;
            }
            if self.limits {
                condition(out, i, " <= ", Bound::Column(T::LIMITS[i]))?;
            }
        }
        Ok(())
    }
}

enum Bound<'b> {
    Value(&'b i64),
    Column(&'static str),
}

/// `[t.]col + delta`.
fn walk_new<'b, T: Counter + BindKey<DB>, DB: Dialect>(
    out: &mut AstPass<'_, 'b, DB>,
    i: usize,
    amounts: &'b [i64],
    qualify: bool,
    excluded: bool,
) -> QueryResult<()> {
    if qualify {
        T::walk_table(out.reborrow())?;
        out.push_sql(".");
    }
    out.push_identifier(T::AMOUNTS[i])?;
    out.push_sql(" + ");
    walk_delta::<T, DB>(out, i, amounts, excluded)
}

/// The delta of column `i`: `excluded.col` in an upsert's update, else its bind parameter.
fn walk_delta<'b, T: Counter, DB: Dialect>(
    out: &mut AstPass<'_, 'b, DB>,
    i: usize,
    amounts: &'b [i64],
    excluded: bool,
) -> QueryResult<()> {
    if excluded {
        DB::push_excluded(out, T::AMOUNTS[i])
    } else {
        DB::push_int(out, &amounts[i])
    }
}

/// `UPDATE t SET a = a + $1, … WHERE key [AND bounds] RETURNING <a, …>` (or `RETURNING
/// <columns>`).
struct IncrementSql<'a, T: Counter> {
    key: &'a T::Key,
    amounts: &'a [i64],
    bounds: Bounds<'a>,
    /// The columns to return by name instead of the totals as one JSON array.
    columns: Option<&'a [&'a str]>,
}

impl<T, DB> QueryFragment<DB> for IncrementSql<'_, T>
where
    T: Counter + BindKey<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let this = IncrementSql::<T> {
            key: self.key,
            amounts: self.amounts,
            bounds: self.bounds,
            columns: self.columns,
        };
        this.walk_into(&mut out)
    }
}

impl<'a, T: Counter> IncrementSql<'a, T> {
    /// Writes the statement into `out`, with binds borrowed for `'a`.
    fn walk_into<DB: Dialect>(&self, out: &mut AstPass<'_, 'a, DB>) -> QueryResult<()>
    where
        T: BindKey<DB>,
    {
        out.push_sql("UPDATE ");
        T::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        for (i, column) in T::AMOUNTS.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(column)?;
            out.push_sql(" = ");
            walk_new::<T, DB>(out, i, self.amounts, false, false)?;
        }
        out.push_sql(" WHERE ");
        T::walk_key(self.key, KeyStyle::Match, out.reborrow())?;
        let mut first = false;
        let bounds = self.bounds;
        bounds.walk::<T, DB>(out, self.amounts, false, false, &mut first)?;
        push_totals::<T, DB>(out, self.columns)
    }
}

/// ` RETURNING <the totals as one JSON array>`, or ` RETURNING <columns>` by name; nothing on
/// MySQL.
fn push_totals<T: Counter, DB: Dialect>(
    out: &mut AstPass<'_, '_, DB>,
    columns: Option<&[&str]>,
) -> QueryResult<()> {
    match columns {
        None => DB::push_returning_ints(out, T::AMOUNTS),
        Some(columns) => DB::push_returning(out, columns),
    }
}

/// `INSERT INTO t (key…, a, …) VALUES (…) ON CONFLICT (key) DO UPDATE SET a = t.a + excluded.a, …
/// [WHERE bounds] RETURNING <a, …>` (or `RETURNING <columns>`).
struct UpsertIncrementSql<'a, T: Counter> {
    key: &'a T::Key,
    amounts: &'a [i64],
    bounds: Bounds<'a>,
    /// As [`IncrementSql::columns`].
    columns: Option<&'a [&'a str]>,
}

impl<T, DB> QueryFragment<DB> for UpsertIncrementSql<'_, T>
where
    T: Counter + BindKey<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let this = UpsertIncrementSql::<T> {
            key: self.key,
            amounts: self.amounts,
            bounds: self.bounds,
            columns: self.columns,
        };
        this.walk_into(&mut out)
    }
}

/// The unbounded increment (creating the row when `create`), for statements that embed it
/// (PostgreSQL's keyed increments): it returns the totals as one JSON array, or `columns` by
/// name.
pub(crate) fn walk_increment<'b, T: Counter + BindKey<DB>, DB: Dialect>(
    out: &mut AstPass<'_, 'b, DB>,
    key: &'b T::Key,
    amounts: &'b [i64],
    create: bool,
    columns: Option<&'b [&'b str]>,
) -> QueryResult<()> {
    // The fragments borrow nothing of their own: every bind points into `key` and `amounts`.
    let bounds = Bounds {
        floor: None,
        ceiling: None,
        limits: false,
    };
    if create {
        let sql = UpsertIncrementSql::<T> {
            key,
            amounts,
            bounds,
            columns,
        };
        sql.walk_into(out)
    } else {
        let sql = IncrementSql::<T> {
            key,
            amounts,
            bounds,
            columns,
        };
        sql.walk_into(out)
    }
}

impl<'a, T: Counter> UpsertIncrementSql<'a, T> {
    /// Writes `INSERT INTO t (key…, a, …) VALUES (…)` and what starts the update of a
    /// conflicting key (` ON CONFLICT (key) DO UPDATE SET ` or ` ON DUPLICATE KEY UPDATE `).
    fn walk_insert<DB: Dialect>(&self, out: &mut AstPass<'_, 'a, DB>) -> QueryResult<()>
    where
        T: BindKey<DB>,
    {
        out.push_sql("INSERT INTO ");
        T::walk_table(out.reborrow())?;
        out.push_sql(" (");
        crate::sql::push_identifiers(out, T::KEY)?;
        out.push_sql(", ");
        crate::sql::push_identifiers(out, T::AMOUNTS)?;
        out.push_sql(") VALUES (");
        T::walk_key(self.key, KeyStyle::Values, out.reborrow())?;
        for amount in self.amounts {
            out.push_sql(", ");
            DB::push_int(out, amount)?;
        }
        out.push_sql(")");
        DB::push_on_conflict_update(out, T::KEY)
    }

    /// Writes the statement into `out`, with binds borrowed for `'a`.
    fn walk_into<DB: Dialect>(&self, out: &mut AstPass<'_, 'a, DB>) -> QueryResult<()>
    where
        T: BindKey<DB>,
    {
        self.walk_insert(out)?;
        for (i, column) in T::AMOUNTS.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(column)?;
            out.push_sql(" = ");
            walk_new::<T, DB>(out, i, self.amounts, true, true)?;
        }
        if self.bounds.any() {
            out.push_sql(" WHERE");
            let mut first = true;
            let bounds = self.bounds;
            bounds.walk::<T, DB>(out, self.amounts, true, true, &mut first)?;
        }
        push_totals::<T, DB>(out, self.columns)
    }
}

/// `SELECT <amounts…[, limits…]> FROM t WHERE key`.
struct ReadSql<'a, T: Counter> {
    key: &'a T::Key,
    limits: bool,
}

impl<T, DB> QueryFragment<DB> for ReadSql<'_, T>
where
    T: Counter + BindKey<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        if self.limits {
            let columns: Vec<&str> = T::AMOUNTS.iter().chain(T::LIMITS).copied().collect();
            DB::push_int_array(&mut out, &columns)?;
        } else {
            DB::push_int_array(&mut out, T::AMOUNTS)?;
        }
        out.push_sql(" FROM ");
        T::walk_table(out.reborrow())?;
        out.push_sql(" WHERE ");
        T::walk_key(self.key, KeyStyle::Match, out.reborrow())
    }
}
