//! How a model describes itself to the upsert: its table, columns and conflict key.

use crate::error::InvalidInput;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::QueryResult;
use std::cmp::Ordering;
use std::marker::PhantomData;

/// A row type that can be upserted: its table, the columns it writes, its conflict key.
///
/// Declare it with [`upsert_model!`](crate::upsert_model), which writes this trait and the
/// bind traits from the struct definition. Implement it by hand only for unusual models
/// (fields named differently from their columns); then also implement [`BindRow`] and, for
/// bulk upserts on PostgreSQL, [`BindColumns`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an upsert model",
    note = "declare the struct inside `upsert_kit::upsert_model! {{ table = …, key = (…); struct … }}`"
)]
pub trait UpsertModel {
    /// The Diesel table (`schema::my_table::table`).
    type Table: diesel::Table + Default;
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
    /// Pushes the values, in [`UpsertModel::COLUMNS`] order, separated by commas.
    ///
    /// # Errors
    /// Serialization errors of the values.
    fn walk_row<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;
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
/// Implemented for the common field types. For a type of your own, `impl CheckedValue for
/// MyType {}` accepts every value; override [`CheckedValue::check`] to reject some.
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
accept_all!(
    bool,
    i16,
    i32,
    i64,
    u8,
    Vec<u8>,
    serde_json::Value,
    chrono::NaiveDate
);

impl CheckedValue for String {
    fn check_key(&self, field: &'static str) -> Result<(), InvalidInput> {
        if self.trim().is_empty() {
            return Err(InvalidInput::new(field, "a key must not be empty"));
        }
        Ok(())
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
        if (1..=9999).contains(&self.year()) {
            Ok(())
        } else {
            Err(InvalidInput::new(
                field,
                format!("timestamp {self} is out of range (years 1 to 9999)"),
            ))
        }
    }
}

impl CheckedValue for chrono::DateTime<chrono::Utc> {
    fn check(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.naive_utc().check(field)
    }
}

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

/// Declares an upsert model: a struct whose fields are columns of one table, and its conflict key.
///
/// ```text
/// upsert_kit::upsert_model! {
///     table = schema::my_table, key = (key_column, …), keep = (column, …);
///     #[derive(Debug, Clone)]
///     pub struct MyRow { pub key_column: Type, pub other: Type, … }
/// }
/// ```
///
/// - `table`: the Diesel table module (`table!`'s name); field names must be its column names.
/// - `key`: the conflict target, a unique index or primary key (composite keys list several).
/// - `keep` (optional): columns written on insert and left alone on update (e.g. `created_at`).
///   Every other non-key field is overwritten with the incoming value (`excluded.col`).
///
/// It emits the struct as written and implements [`UpsertModel`], [`BindRow`] for every
/// backend whose types fit, and [`BindColumns`] for bulk upserts on PostgreSQL. Every field type
/// must implement [`CheckedValue`] (the common ones do), key types also [`Ord`].
///
/// # Examples
///
/// ```
/// use upsert_kit::{atomic_upsert, upsert_model, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::{Connection, SqliteConnection};
///
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
#[macro_export]
macro_rules! upsert_model {
    (
        table = $($tp:ident)::+ , key = ( $($key:ident),+ $(,)? ) $(, keep = ( $($keep:ident),* $(,)? ))? $(,)? ;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $fty:ty ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $fty ),+
        }

        const _: () = {
        use $($tp)::+ as __upsert_table;

        impl $crate::UpsertModel for $name {
            type Table = __upsert_table::table;
            const COLUMNS: &'static [&'static str] =
                &[$( <__upsert_table::$field as $crate::__private::diesel::Column>::NAME ),+];
            const KEY: &'static [&'static str] =
                &[$( <__upsert_table::$key as $crate::__private::diesel::Column>::NAME ),+];
            const KEEP: &'static [&'static str] =
                &[$($( <__upsert_table::$keep as $crate::__private::diesel::Column>::NAME ),*)?];

            fn cmp_key(&self, other: &Self) -> ::std::cmp::Ordering {
                ::std::cmp::Ordering::Equal
                    $( .then_with(|| ::std::cmp::Ord::cmp(&self.$key, &other.$key)) )+
            }

            fn validate(&self) -> ::std::result::Result<(), $crate::InvalidInput> {
                $( $crate::CheckedValue::check(&self.$field, stringify!($field))?; )+
                $( $crate::CheckedValue::check_key(&self.$key, stringify!($key))?; )+
                Ok(())
            }
        }

        impl<DB> $crate::BindRow<DB> for $name
        where
            DB: $crate::__private::diesel::backend::Backend,
            $(
                DB: $crate::__private::diesel::sql_types::HasSqlType<
                    $crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>>,
                $fty: $crate::__private::diesel::serialize::ToSql<
                    $crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>, DB>,
            )+
        {
            fn walk_row<'b>(
                &'b self,
                mut out: $crate::__private::diesel::query_builder::AstPass<'_, 'b, DB>,
            ) -> $crate::__private::diesel::QueryResult<()> {
                let mut first = true;
                $(
                    if !::std::mem::take(&mut first) {
                        out.push_sql(", ");
                    }
                    out.push_bind_param::<$crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>, $fty>(&self.$field)?;
                )+
                let _ = first;
                Ok(())
            }
        }

        impl<DB> $crate::BindColumns<DB> for $name
        where
            DB: $crate::__private::diesel::backend::Backend,
            $(
                DB: $crate::__private::ArrayBackend<
                    $crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>>,
                $fty: $crate::__private::diesel::serialize::ToSql<
                    $crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>, DB>,
            )+
        {
            fn bind_columns<'a>(rows: &[&'a Self]) -> $crate::ColumnArrays<'a, DB> {
                ::std::vec![
                    $(
                        ::std::boxed::Box::new($crate::__private::ArrayBind::<
                            $crate::__private::diesel::dsl::SqlTypeOf<__upsert_table::$field>,
                            $fty,
                        >::new(rows.iter().map(|r| &r.$field).collect()))
                    ),+
                ]
            }
        }
        };
    };
}
