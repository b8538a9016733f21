#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
// The front page links every primitive; with a backend, r2d2 or the derive left out, some do not
// exist. Links are checked in full by the build with every feature (CI builds each set).
#![cfg_attr(
    not(all(
        feature = "postgres",
        feature = "sqlite",
        feature = "mysql",
        feature = "r2d2",
        feature = "derive"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod claim;
#[cfg(feature = "r2d2")]
pub mod coalesce;
pub mod conn;
pub mod counter;
pub mod db;
mod declare;
mod error;
pub mod get_or_create;
pub mod idempotency;
pub mod limits;
pub mod lock;
mod observe;
pub mod period;
pub mod quota;
pub mod redact;
pub mod retry;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite_gate;
pub mod tables;
pub mod tx;
pub mod upsert;

pub use crate::{
    get_or_create::{get_or_create, GetOrCreate, Obtained},
    retry::Retry,
    tx::transaction,
};
pub use error::{BoundKind, ConstraintKind, Error, InvalidInput, Result};
pub use upsert::{
    atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, bulk_upsert_rows,
    AuthModel, BindColumns, BindRow, BulkOutcome, CheckedValue, ColumnArrays, RowOutcome,
    StatsModel, Upsert, UpsertMany, UpsertModel, UpsertOutcome, Upsertable,
};

/// Declares a struct as an upsert model of a Diesel table: writes [`UpsertModel`], [`BindRow`]
/// for every backend whose types fit and [`BindColumns`] (bulk upserts on PostgreSQL).
///
/// ```text
/// #[derive(Insertable, UpsertModel)]
/// #[diesel(table_name = products)]              // or #[upsert(table = products)]
/// #[upsert(key(sku), keep(created_at))]
/// struct NewProduct<'a> {
///     sku: &'a str,
///     #[diesel(column_name = name)]             // the field `title` is the column `name`
///     title: std::borrow::Cow<'a, str>,
///     #[upsert(unchecked)]                      // no value check for this field
///     note: Option<String>,
///     created_at: chrono::NaiveDateTime,        // or #[upsert(keep)] here
/// }
/// ```
///
/// Struct attributes, in `#[upsert(…)]`:
/// - `key(a, b)` (required): the conflict target, the fields of a unique index or of the
///   primary key, in any order. A name may be a field or the column a field is renamed to.
/// - `keep(c, …)`: columns written on insert and never overwritten on update (`created_at`).
///   Every other non-key field is overwritten with the incoming value (`excluded.col`).
/// - `table = path`: the `table!` module, when no `#[diesel(table_name = …)]` says it. Without
///   either, Diesel's default: the struct's name in snake case plus `s`.
/// - `crate = path`: where upsert-kit is, when the dependency is renamed (default `::upsert_kit`).
///
/// Field attributes: `#[upsert(keep)]` (as `keep(…)`), `#[upsert(unchecked)]` (no
/// [`CheckedValue`] check of the value), and Diesel's `#[diesel(column_name = …)]` and
/// `#[diesel(skip_insertion)]` (the field is not written).
///
/// Field types: anything Diesel can write to the column (`ToSql<SqlType, DB>`), borrowed
/// (`&'a str`, `Cow<'a, str>`, `&'a [u8]`) or owned, foreign types included (`uuid::Uuid` with
/// diesel's `uuid` feature): a type that implements [`CheckedValue`] is checked before writing,
/// any other is written as it is. The struct may have lifetime and type parameters; fields whose
/// type uses a type parameter get their bounds on the impls instead of a check at the field.
///
/// # Compile errors
/// Each mistake is reported at the field or attribute that makes it:
/// - a field whose type cannot be written to its column's SQL type on any backend upsert-kit is
///   built with (names the field, its type, the column and the SQL type);
/// - a field that is not a column of the table (`cannot find type … in module …`);
/// - a key or keep name that is not a field, a kept key column, an empty or missing key, a key
///   column listed twice, a key whose type is not `Ord` (bulk upserts sort by key).
///
/// # Examples
///
/// ```
/// use diesel::prelude::*;
/// use std::borrow::Cow;
/// use upsert_kit::{atomic_upsert, bulk_upsert, UpsertModel, UpsertOutcome};
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
///
/// #[derive(Insertable, UpsertModel)]
/// #[diesel(table_name = items)]
/// #[upsert(key(sku))]
/// struct NewItem<'a> {
///     sku: &'a str,
///     #[diesel(column_name = name)]
///     title: Cow<'a, str>,
/// }
///
/// let mut conn = establish_sqlite()?;
/// let item = NewItem { sku: "a-1", title: "anvil".into() };
/// assert_eq!(atomic_upsert(&mut conn, &item)?, UpsertOutcome::Inserted);
/// let renamed = NewItem { title: Cow::Owned(format!("{} (large)", item.title)), ..item };
/// assert_eq!(atomic_upsert(&mut conn, &renamed)?, UpsertOutcome::Updated);
///
/// // An empty key is refused before anything is sent.
/// let empty = NewItem { sku: " ", title: "nothing".into() };
/// assert!(matches!(atomic_upsert(&mut conn, &empty), Err(upsert_kit::Error::InvalidInput(_))));
///
/// let outcome = bulk_upsert(&mut conn, &[NewItem { sku: "b-2", title: "bolt".into() }])?;
/// assert_eq!(outcome.inserted, 1);
/// let names: Vec<String> = items::table.select(items::name).order(items::sku).load(&mut conn)?;
/// assert_eq!(names, ["anvil (large)", "bolt"]);
/// # Ok(()) }
/// ```
#[cfg(feature = "derive")]
pub use upsert_kit_derive::UpsertModel;

#[cfg(not(any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
compile_error!(
    "upsert-kit needs at least one backend: enable the `postgres`, `sqlite` or `mysql` feature"
);

#[doc(hidden)]
pub mod __private {
    pub use crate::upsert::derive_support::*;
    pub use crate::upsert::model::{ArrayBackend, ArrayBind};
    #[cfg(feature = "postgres")]
    pub use crate::upsert::pg::{assume_returning_old, last_outcome_source, with_xmax_outcomes};
    pub use diesel;
}
