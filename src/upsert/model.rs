//! How a model describes itself to the upsert: its table, columns and conflict key.

use crate::error::InvalidInput;
use crate::limits as values;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::QueryResult;
use std::cmp::Ordering;
use std::marker::PhantomData;

/// A row type that can be upserted: its table, the columns it writes, its conflict key.
///
/// Declare it with `#[derive(UpsertModel)]` (the `derive` feature), which writes this trait and
/// the bind traits from the struct definition. Implementing it by hand is possible (then also
/// implement [`BindRow`] and, for bulk upserts on PostgreSQL, [`BindColumns`]) but rarely needed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an upsert model",
    note = "derive it: `#[derive(upsert_kit::UpsertModel)]` and `#[upsert(key(…))]` on the struct"
)]
pub trait UpsertModel {
    /// The Diesel table (`schema::my_table::table`).
    type Table: diesel::Table + Default;

    /// A `'static` type standing for the model's table and key columns, by which Diesel's
    /// prepared-statement cache finds the crate's read by key (`SELECT … WHERE key = …`)
    /// instead of building and hashing its SQL on every call. `#[derive(UpsertModel)]` writes
    /// `(table, (key_column, …))`, e.g. `(users::table, (users::email,))`; by hand, write the
    /// same. Two models may share it only when their table and key columns are the same (their
    /// reads are then the same statement).
    type StatementId: 'static;
    /// Every column the model writes, in field order.
    const COLUMNS: &'static [&'static str];
    /// The conflict target: the columns of a unique index or the primary key.
    const KEY: &'static [&'static str];
    /// Columns written on insert but never overwritten by an update (e.g. `created_at`).
    const KEEP: &'static [&'static str];
    /// Orders two rows by their key (used to collapse and sort bulk input).
    fn cmp_key(&self, other: &Self) -> Ordering;
    /// Rejects values that must never reach the database (an empty key, a NaN, a timestamp
    /// outside years 1–9999). Runs before anything is sent.
    ///
    /// # Errors
    /// The first offending field.
    fn validate(&self) -> Result<(), InvalidInput>;
}

/// Writes one row's values as bind parameters: `$1, $2, …`.
pub trait BindRow<DB: Backend>: UpsertModel {
    /// Whether [`BindRow::walk_row`] pushes exactly one bind parameter per column and nothing
    /// else, so that a statement may refer to the `i`-th column's value by its position
    /// (`?i` on SQLite). The derive's implementations do; a hand-written one that writes SQL of
    /// its own for some column keeps the default, `false`. When it is `true`,
    /// [`BindRow::walk_key`] is implemented too.
    #[doc(hidden)]
    const ONE_BIND_PER_COLUMN: bool = false;

    /// Pushes the key's values alone, in [`UpsertModel::KEY`] order, separated by commas (the
    /// derive's implementations; by default an error).
    ///
    /// # Errors
    /// Serialization errors of the values; by default, that the model binds no key alone.
    #[doc(hidden)]
    fn walk_key<'b>(&'b self, _out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(
            "this model does not bind its key alone".into(),
        ))
    }

    /// Pushes the values, in [`UpsertModel::COLUMNS`] order, separated by commas.
    ///
    /// # Errors
    /// Serialization errors of the values.
    fn walk_row<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;

    /// Pushes the key's columns compared with this row's values, in [`UpsertModel::KEY`]
    /// order: `"k1" = $1 AND "k2" = $2`. A read by key (get-or-create's) names each key column
    /// next to its value, so that a distributed table routes it to one shard.
    ///
    /// # Errors
    /// Serialization errors of the values.
    fn walk_key_match<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

/// One boxed bind parameter per column, holding that column's values of many rows as an array
/// (`unnest($1, $2, …)` on PostgreSQL).
pub type ColumnArrays<'a, DB> = Vec<Box<dyn QueryFragment<DB> + 'a>>;

/// Writes many rows as one array per column, so a bulk statement's text does not depend on
/// how many rows it carries (PostgreSQL).
pub trait BindColumns<DB: Backend>: UpsertModel {
    /// One array bind per column, in [`UpsertModel::COLUMNS`] order.
    fn bind_columns<'a>(rows: &[&'a Self]) -> ColumnArrays<'a, DB>;
}

/// Backends that take a column of values as one array bind parameter (PostgreSQL).
#[doc(hidden)]
pub trait ArrayBackend<ST>: Backend {
    fn push_array<'b, T: ToSql<ST, Self>>(
        out: &mut AstPass<'_, 'b, Self>,
        values: &'b [&T],
    ) -> QueryResult<()>;
}

#[cfg(feature = "postgres")]
impl<ST: 'static> ArrayBackend<ST> for diesel::pg::Pg
where
    diesel::pg::Pg: diesel::sql_types::HasSqlType<ST>,
{
    fn push_array<'b, T: ToSql<ST, Self>>(
        out: &mut AstPass<'_, 'b, Self>,
        values: &'b [&T],
    ) -> QueryResult<()> {
        out.push_bind_param::<diesel::sql_types::Array<ST>, [&T]>(values)
    }
}

/// A bind parameter holding one column's values as an array of SQL type `ST`.
#[doc(hidden)]
#[derive(Debug)]
pub struct ArrayBind<'a, ST, T> {
    values: Vec<&'a T>,
    _sql_type: PhantomData<ST>,
}

impl<'a, ST, T> ArrayBind<'a, ST, T> {
    #[doc(hidden)]
    pub fn new(values: Vec<&'a T>) -> Self {
        Self {
            values,
            _sql_type: PhantomData,
        }
    }
}

impl<ST, T> QueryId for ArrayBind<'_, ST, T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB, ST, T> QueryFragment<DB> for ArrayBind<'_, ST, T>
where
    DB: ArrayBackend<ST>,
    T: ToSql<ST, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        DB::push_array(&mut out, &self.values)
    }
}

/// Values a model may hold, with the checks the upsert runs before writing.
///
/// Implemented for the common field types: a key that is an empty string or `NULL`, a float
/// that is not finite, a timestamp outside years 1–9999 are refused before anything is sent
/// (chrono's timestamps always, the `time` crate's with the `time` feature).
/// A field whose type does not implement it (a foreign type such as `uuid::Uuid`, or a type of
/// your own) is written unchecked, and `#[upsert(unchecked)]` turns the checks of one field off.
/// Implement it for a type of your own to refuse some values: override [`CheckedValue::check`]
/// (and [`CheckedValue::check_key`] for values that may not be a key).
pub trait CheckedValue {
    /// Rejects a value that must not be written.
    ///
    /// # Errors
    /// Why `field` is invalid.
    fn check(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
    /// Rejects a value that must not be a key (by default: what [`CheckedValue::check`] rejects).
    ///
    /// # Errors
    /// Why `field` cannot be a key.
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.check(field)
    }
}

macro_rules! accept_all {
    ($($t:ty),*) => { $(impl CheckedValue for $t {})* };
}
accept_all!(bool, i16, i32, i64, u8, chrono::NaiveDate);

impl CheckedValue for str {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        values::check_text(field, self)
    }
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.check(field)?;
        if self.trim().is_empty() {
            return Err(InvalidInput::new(field, "a key must not be empty"));
        }
        values::check_key_len(field, self.len())
    }
}

impl CheckedValue for String {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.as_str().check(field)
    }
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.as_str().check_key(field)
    }
}

impl CheckedValue for [u8] {
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        values::check_key_len(field, self.len())
    }
}

impl CheckedValue for Vec<u8> {
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.as_slice().check_key(field)
    }
}

impl CheckedValue for serde_json::Value {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        values::check_json(field, self)
    }
}

/// Borrowed rows (`&'a str`) are checked as the values they borrow.
impl<T: CheckedValue + ?Sized> CheckedValue for &T {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        (**self).check(field)
    }
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        (**self).check_key(field)
    }
}

impl<T: CheckedValue + ToOwned + ?Sized> CheckedValue for std::borrow::Cow<'_, T> {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        (**self).check(field)
    }
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        (**self).check_key(field)
    }
}

impl CheckedValue for f64 {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        if self.is_finite() {
            Ok(())
        } else {
            Err(InvalidInput::new(
                field,
                format!("{self} is not a finite number"),
            ))
        }
    }
}

impl CheckedValue for f32 {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        f64::from(*self).check(field)
    }
}

impl CheckedValue for chrono::NaiveDateTime {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        use chrono::Datelike;
        check_year(field, self.year(), self)
    }
}

impl CheckedValue for chrono::DateTime<chrono::Utc> {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.naive_utc().check(field)
    }
}

/// Years 1 to 9999: what every backend stores and gives back alike (SQLite keeps timestamps
/// as text with four-digit years).
fn check_year(
    field: &'static str,
    year: i32,
    value: &dyn std::fmt::Display,
) -> Result<(), InvalidInput> {
    if (1..=9999).contains(&year) {
        Ok(())
    } else {
        Err(InvalidInput::new(
            field,
            format!("timestamp {value} is out of range (years 1 to 9999)"),
        ))
    }
}

#[cfg(feature = "time")]
impl CheckedValue for time::PrimitiveDateTime {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        check_year(field, self.year(), self)
    }
}

#[cfg(feature = "time")]
impl CheckedValue for time::OffsetDateTime {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        let utc = self.to_offset(time::UtcOffset::UTC);
        check_year(field, utc.year(), self)
    }
}

// As chrono's `NaiveDate` and `NaiveTime`: accepted as they are.
#[cfg(feature = "time")]
impl CheckedValue for time::Date {}

#[cfg(feature = "time")]
impl CheckedValue for time::Time {}

impl<T: CheckedValue> CheckedValue for Option<T> {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.as_ref().map_or(Ok(()), |v| v.check(field))
    }
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        match self {
            Some(v) => v.check_key(field),
            None => Err(InvalidInput::new(field, "a key must not be NULL")),
        }
    }
}

/// Declares an upsert model with the syntax of upsert-kit 0.1: a thin wrapper that puts
/// `#[derive(UpsertModel)]` on the struct (the same code, the same checks).
///
/// ```text
/// upsert_kit::upsert_model! {
///     table = schema::my_table, key = (key_column, …), keep = (column, …);
///     #[derive(Debug, Clone)]
///     pub struct MyRow { pub key_column: Type, pub other: Type, … }
/// }
/// ```
///
/// is
///
/// ```text
/// #[derive(Debug, Clone, upsert_kit::UpsertModel)]
/// #[upsert(table = schema::my_table, key(key_column, …), keep(column, …))]
/// pub struct MyRow { pub key_column: Type, pub other: Type, … }
/// ```
///
/// Prefer the derive in new code: rustfmt formats it, and it sits next to Diesel's derives on
/// the struct you already have. Field attributes (`#[diesel(column_name = …)]`,
/// `#[upsert(unchecked)]`) work inside the macro too.
///
/// # Examples
///
/// ```
/// use upsert_kit::{atomic_upsert, upsert_model, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// upsert_model! {
///     table = stats, key = (stats_type), keep = (created_at);
///     #[derive(Debug, Clone)]
///     pub struct StatsRow {
///         pub stats_type: String,
///         pub data: serde_json::Value,
///         pub created_at: chrono::NaiveDateTime,
///         pub updated_at: chrono::NaiveDateTime,
///     }
/// }
///
/// let mut conn = establish_sqlite()?;
/// let now = chrono::Utc::now().naive_utc();
/// let row = StatsRow { stats_type: "ytd".into(), data: serde_json::json!({"count": 1}), created_at: now, updated_at: now };
/// assert_eq!(atomic_upsert(&mut conn, &row)?, UpsertOutcome::Inserted);
/// assert_eq!(atomic_upsert(&mut conn, &row)?, UpsertOutcome::Updated);
/// # Ok(()) }
/// ```
#[cfg(feature = "derive")]
#[macro_export]
macro_rules! upsert_model {
    (
        table = $($tp:ident)::+ , key = ( $($key:ident),+ $(,)? ) $(, keep = ( $($keep:ident),* $(,)? ))? $(,)? ;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident $($body:tt)*
    ) => {
        $(#[$meta])*
        #[derive($crate::UpsertModel)]
        #[upsert(crate = $crate, table = $($tp)::+, key($($key),+) $(, keep($($keep),*))?)]
        $vis struct $name $($body)*
    };
}
