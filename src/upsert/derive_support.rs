//! What the code of `#[derive(UpsertModel)]` and of the declaration macros (`counter!`, `ledger!`,
//! `quota!`) calls. Not public API: reached through `upsert_kit::__private`, may change in any
//! release.
//!
//! The derive cannot know, where the struct is declared, which backends upsert-kit is built
//! with, nor whether a field's type can be written to its column. It asks the compiler where
//! the types are concrete: `Probe::<T, ST>::ON_PG` is the inherent constant (`true`) when
//! `T: ToSql<ST, Pg>` holds and PostgreSQL is built in, else the constant of the fallback trait
//! [`NotOnPg`] (`false`); the same for SQLite and MySQL. A field that fits on no backend is
//! reported once, at the field, and its [`Gate`] is closed: the model's impls then hold for
//! every backend whatever the field's type, so that the calls that use the model compile and
//! add no error of their own. An open gate binds the value and asks of the backend exactly
//! what a direct bind would (`T: ToSql<ST, DB>`), so a type that fits on another backend only
//! is still refused at the call that uses that backend.

#![allow(missing_debug_implementations)] // markers the generated code names, never printed

use crate::error::InvalidInput;
use crate::upsert::model::{ArrayBackend, ArrayBind, CheckedValue};
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::QueryResult;
use std::cmp::Ordering;
use std::marker::PhantomData;

/// The outcome of a check that passed.
#[derive(Debug)]
pub struct Fits;

/// The outcome of a check that failed: the generated check reports it at the user's tokens.
#[derive(Debug)]
pub struct DoesNotFit;

/// Whether a Rust type `T` can be written to a column of SQL type `ST`, on each backend:
/// `Probe::<T, ST>::ON_PG`, `ON_SQLITE`, `ON_MYSQL`, read where `T` and `ST` are concrete.
pub struct Probe<T: ?Sized, ST>(PhantomData<fn() -> (*const T, ST)>);

#[cfg(feature = "postgres")]
impl<T: ?Sized + ToSql<ST, diesel::pg::Pg>, ST> Probe<T, ST> {
    /// `T: ToSql<ST, Pg>`.
    pub const ON_PG: bool = true;
}

/// `Probe::ON_PG` where the inherent constant does not apply.
pub trait NotOnPg {
    /// Not writable on PostgreSQL, or PostgreSQL not built in.
    const ON_PG: bool = false;
}

impl<T: ?Sized, ST> NotOnPg for Probe<T, ST> {}

#[cfg(feature = "sqlite")]
impl<T: ?Sized + ToSql<ST, diesel::sqlite::Sqlite>, ST> Probe<T, ST> {
    /// `T: ToSql<ST, Sqlite>`.
    pub const ON_SQLITE: bool = true;
}

/// `Probe::ON_SQLITE` where the inherent constant does not apply.
pub trait NotOnSqlite {
    /// Not writable on SQLite, or SQLite not built in.
    const ON_SQLITE: bool = false;
}

impl<T: ?Sized, ST> NotOnSqlite for Probe<T, ST> {}

#[cfg(feature = "mysql")]
impl<T: ?Sized + ToSql<ST, diesel::mysql::Mysql>, ST> Probe<T, ST> {
    /// `T: ToSql<ST, Mysql>`.
    pub const ON_MYSQL: bool = true;
}

/// `Probe::ON_MYSQL` where the inherent constant does not apply.
pub trait NotOnMysql {
    /// Not writable on MySQL, or MySQL not built in.
    const ON_MYSQL: bool = false;
}

impl<T: ?Sized, ST> NotOnMysql for Probe<T, ST> {}

/// Whether a key type `T` is `Ord`: `OrdProbe::<T>::ORD`, read where `T` is concrete.
pub struct OrdProbe<T: ?Sized>(PhantomData<fn() -> *const T>);

impl<T: ?Sized + Ord> OrdProbe<T> {
    /// `T: Ord`.
    pub const ORD: bool = true;
}

/// `OrdProbe::ORD` where the inherent constant does not apply.
pub trait NotOrd {
    /// `T` is not `Ord`.
    const ORD: bool = false;
}

impl<T: ?Sized> NotOrd for OrdProbe<T> {}

/// A check's outcome as a type: `Gate<true>` is open (the value is bound as it is), `Gate<false>`
/// closed (a check has already failed at the user's tokens, and nothing is bound).
pub struct Gate<const FITS: bool>;

/// [`Fits`] for an open gate, [`DoesNotFit`] for a closed one: the generated checks require
/// the outcome to be [`Fits`], so their error names the type that did not fit.
pub trait Outcome {
    /// [`Fits`] or [`DoesNotFit`].
    type Is;
}

impl Outcome for Gate<true> {
    type Is = Fits;
}

impl Outcome for Gate<false> {
    type Is = DoesNotFit;
}

/// Binds one value of Rust type `T` as SQL type `ST` on backend `DB`.
#[diagnostic::on_unimplemented(
    message = "a value of type `{T}` cannot be written as `{ST}` on `{DB}`",
    note = "`{T}` does not implement `diesel::serialize::ToSql<{ST}, {DB}>`: use the model or declaration with a connection of a backend that takes it, or change the field's or key's type"
)]
pub trait GatedBind<T: ?Sized, ST, DB: Backend> {
    /// Pushes `value` as a bind parameter.
    ///
    /// # Errors
    /// Serialization errors; always an error through a closed gate (never reached: a program
    /// with a closed gate does not compile).
    fn push<'b>(out: &mut AstPass<'_, 'b, DB>, value: &'b T) -> QueryResult<()>;
}

// `do_not_recommend`: a call that uses the model on a backend that does not take a field's type
// is one error, the trait's own, not one per unmet bound of this impl.
#[diagnostic::do_not_recommend]
impl<T, ST, DB> GatedBind<T, ST, DB> for Gate<true>
where
    T: ?Sized + ToSql<ST, DB>,
    DB: Backend + HasSqlType<ST>,
{
    fn push<'b>(out: &mut AstPass<'_, 'b, DB>, value: &'b T) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(value)
    }
}

impl<T: ?Sized, ST, DB: Backend> GatedBind<T, ST, DB> for Gate<false> {
    fn push<'b>(_out: &mut AstPass<'_, 'b, DB>, _value: &'b T) -> QueryResult<()> {
        Err(refused())
    }
}

/// Binds one column's values of many rows as one array parameter (see [`ArrayBackend`]).
#[diagnostic::on_unimplemented(
    message = "a value of type `{T}` cannot be written as an array of `{ST}` on `{DB}`",
    note = "`{T}` does not implement `diesel::serialize::ToSql<{ST}, {DB}>`, or `{DB}` takes no array of `{ST}`: use the model with a connection of a backend that takes it, or change the field's type"
)]
pub trait GatedArray<T, ST, DB: Backend> {
    /// One bind parameter holding `values` as an array.
    fn array<'r>(values: Vec<&'r T>) -> Box<dyn QueryFragment<DB> + 'r>
    where
        T: 'r;
}

#[diagnostic::do_not_recommend]
impl<T, ST, DB> GatedArray<T, ST, DB> for Gate<true>
where
    T: ToSql<ST, DB>,
    ST: 'static,
    DB: ArrayBackend<ST>,
{
    fn array<'r>(values: Vec<&'r T>) -> Box<dyn QueryFragment<DB> + 'r>
    where
        T: 'r,
    {
        Box::new(ArrayBind::<ST, T>::new(values))
    }
}

impl<T, ST, DB: Backend> GatedArray<T, ST, DB> for Gate<false> {
    fn array<'r>(_values: Vec<&'r T>) -> Box<dyn QueryFragment<DB> + 'r>
    where
        T: 'r,
    {
        Box::new(Refused)
    }
}

/// What a closed gate writes: an error.
struct Refused;

impl<DB: Backend> QueryFragment<DB> for Refused {
    fn walk_ast<'b>(&'b self, _out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Err(refused())
    }
}

fn refused() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        "a value whose type was refused at compile time cannot be bound".into(),
    )
}

/// The SQL name of `column`. The declaration macros name a column that they need only the
/// name of by its path, `column_name(&schema::table::column)`, never through an alias of the
/// table: an unknown one is then reported as "cannot find … in module `table`", at the name.
pub const fn column_name<C: diesel::Column>(_column: &C) -> &'static str {
    C::NAME
}

/// What a quota's key column names in its reservation table when that table has no such
/// column (see `__reservation_keys!`).
pub struct NotAColumn;

/// [`Fits`] for a column, [`DoesNotFit`] for [`NotAColumn`].
pub trait ColumnOutcome {
    /// [`Fits`] or [`DoesNotFit`].
    type Is;
}

impl<C: diesel::Column> ColumnOutcome for C {
    type Is = Fits;
}

impl ColumnOutcome for NotAColumn {
    type Is = DoesNotFit;
}

/// The reservation table has a column for the quota table's key column `K`: implemented for
/// every type when the outcome `O` is [`Fits`].
#[diagnostic::on_unimplemented(
    message = "the reservation table has no column named as the quota's key column `{K}`",
    label = "not a column of the reservation table",
    note = "a quota's reservation table carries the quota's key columns, under the same names"
)]
pub trait ReservationColumn<O, K> {
    /// `()`.
    type Checked;
}

impl<T: ?Sized, K> ReservationColumn<Fits, K> for T {
    type Checked = ();
}

/// The key of a declaration (`counter!`, `quota!`) can be written to its column: implemented
/// for every key type when the outcome `O` is [`Fits`]. `D` is the declaration, `C` the column.
#[diagnostic::on_unimplemented(
    message = "the key of `{D}` has type `{Self}`, which cannot be written to its column `{C}` of SQL type `{ST}`",
    label = "cannot be written as `{ST}`",
    note = "a key's type must implement `diesel::serialize::ToSql<{ST}, DB>` for a backend `DB` that upsert-kit is built with (PostgreSQL, SQLite, MySQL): change the key's type or the column's SQL type in `table!`"
)]
pub trait KeyFits<O, D, C, ST> {
    /// `()`.
    type Checked;
}

impl<T: ?Sized, D, C, ST> KeyFits<Fits, D, C, ST> for T {
    type Checked = ();
}

/// The key values of two rows, compared.
pub struct KeyPair<'v, T: ?Sized>(pub &'v T, pub &'v T);

/// Compares `Ord` keys.
pub trait KeyOrd {
    /// `Ord::cmp`.
    fn key_cmp(&self) -> Ordering;
}

impl<T: ?Sized + Ord> KeyOrd for &KeyPair<'_, T> {
    fn key_cmp(&self) -> Ordering {
        self.0.cmp(self.1)
    }
}

/// A key that is not `Ord`: never reached by a program that compiles, since the derive's
/// check refuses such a key at the field.
pub trait KeyNotOrd {
    /// Equal.
    fn key_cmp(&self) -> Ordering {
        Ordering::Equal
    }
}

impl<T: ?Sized> KeyNotOrd for KeyPair<'_, T> {}

/// A field's value, checked before it is written.
pub struct Value<'v, T: ?Sized>(pub &'v T);

/// Values whose type implements [`CheckedValue`]: its checks.
pub trait CheckValue {
    /// [`CheckedValue::check`].
    ///
    /// # Errors
    /// As [`CheckedValue::check`].
    fn check_value(&self, field: &'static str) -> Result<(), InvalidInput>;
    /// [`CheckedValue::check_key`].
    ///
    /// # Errors
    /// As [`CheckedValue::check_key`].
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput>;
}

impl<T: ?Sized + CheckedValue> CheckValue for &&Value<'_, T> {
    fn check_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.0.check(field)
    }
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.0.check_key(field)
    }
}

/// An `Option` of a type without [`CheckedValue`]: a key must not be `None`.
pub trait CheckOption {
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
    /// Refuses `None`.
    ///
    /// # Errors
    /// When the key is `None`.
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput>;
}

impl<T> CheckOption for &Value<'_, Option<T>> {
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        match self.0 {
            Some(_) => Ok(()),
            None => Err(InvalidInput::new(field, "a key must not be NULL")),
        }
    }
}

/// A type without [`CheckedValue`] (a foreign type such as `uuid::Uuid`): every value is
/// accepted, the database has the last word.
pub trait NoCheck {
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_key_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
}

impl<T: ?Sized> NoCheck for Value<'_, T> {}
