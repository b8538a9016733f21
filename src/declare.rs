//! The part of the declaration macros that every keyed declaration shares: [`Keyed`] and
//! [`BindKey`] from a table path and `key = (column: Type, …)`, and the paths of columns; and
//! the rows a primitive's write gives back as the caller's own struct ([`ReturnRow`]).
//!
//! A mistake in a declaration is one error at the user's tokens: an unknown table or column is
//! named as the user wrote it (the macros write `schema::table::column`, never an alias), and a
//! key type that cannot be written to its column is reported at that type, once; the impls
//! then hold whatever the key type (see `derive_support`'s gates), so the calls that use the
//! declaration add no error of their own.
//!
//! [`Keyed`]: crate::conn::Keyed
//! [`BindKey`]: crate::conn::BindKey

/// Implements `Keyed` and `BindKey` (for every backend whose types fit) for `$name`.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyed_impl {
    (@table $table:tt, $name:ident, $( $key:ident : $kty:ty ),*) => {
        const _: () = {
            #[allow(unused_imports)]
            use $crate::__private::{
                CheckOption as _, CheckValue as _, NoCheck as _, NotOnMysql as _, NotOnPg as _,
                NotOnSqlite as _,
            };

            impl $crate::conn::Keyed for $name {
                type Table = $crate::__column!($table table);
                type Key = $crate::__key_type!($($kty),*);
                // The key's columns are named as types, as in the bounds below: an unknown one is
                // one error.
                const KEY: &'static [&'static str] = &[$(
                    <$crate::__column!($table $key) as $crate::__private::diesel::Column>::NAME
                ),*];

                fn validate_key(
                    key: &Self::Key,
                ) -> ::std::result::Result<(), $crate::InvalidInput> {
                    $crate::__key_destructure!(key; $($key),*);
                    $( (&&&$crate::__private::Value($key)).check_key_value(stringify!($key))?; )*
                    Ok(())
                }
            }

            impl<DB> $crate::conn::BindKey<DB> for $name
            where
                DB: $crate::__private::diesel::backend::Backend,
                $crate::__column!($table table):
                    $crate::__private::diesel::query_builder::QueryFragment<DB>,
                $(
                    $crate::__private::Gate<{ $crate::__fits!($kty, $crate::__sql_type!($table $key)) }>:
                        $crate::__private::GatedBind<$kty, $crate::__sql_type!($table $key), DB>,
                )*
            {
                fn walk_table(
                    out: $crate::__private::diesel::query_builder::AstPass<'_, '_, DB>,
                ) -> $crate::__private::diesel::QueryResult<()> {
                    $crate::__private::diesel::query_builder::QueryFragment::<DB>::walk_ast(
                        &$crate::__column!($table table),
                        out,
                    )
                }

                fn walk_key<'b>(
                    key: &'b Self::Key,
                    style: $crate::conn::KeyStyle,
                    mut out: $crate::__private::diesel::query_builder::AstPass<'_, 'b, DB>,
                ) -> $crate::__private::diesel::QueryResult<()> {
                    $crate::__key_destructure!(key; $($key),*);
                    #[allow(unused_mut)]
                    let mut i = 0usize;
                    $(
                        style.before(
                            &mut out,
                            <$crate::__column!($table $key) as $crate::__private::diesel::Column>::NAME,
                            i,
                        )?;
                        <$crate::__private::Gate<{ $crate::__fits!($kty, $crate::__sql_type!($table $key)) }>
                            as $crate::__private::GatedBind<$kty, $crate::__sql_type!($table $key), DB>>
                            ::push(&mut out, $key)?;
                        i += 1;
                    )*
                    let _ = (i, style);
                    Ok(())
                }
            }

            // Each key type can be written to its column: else one error, at the key's type.
            fn __key_checks() {
                $(
                    let _: ::core::marker::PhantomData<
                        <$kty as $crate::__private::KeyFits<
                            <$crate::__private::Gate<{ $crate::__fits!($kty, $crate::__sql_type!($table $key)) }>
                                as $crate::__private::Outcome>::Is,
                            $name,
                            $crate::__column!($table $key),
                            $crate::__sql_type!($table $key),
                        >>::Checked,
                    >;
                )*
            }
        };
    };
    ($name:ident, $($tp:ident)::+, $( $key:ident : $kty:ty ),+) => {
        $crate::__keyed_impl!(@table [$($tp)::+], $name, $($key : $kty),+);
    };
}

/// A column's path, `schema::table::column`, from the table's path as one group
/// (`[schema::table]`) and the column's name; `table` is the table itself. An unknown table or
/// column is reported as the user wrote it.
#[doc(hidden)]
#[macro_export]
macro_rules! __column {
    ([$($tp:ident)::+] $column:ident) => {
        $($tp)::+::$column
    };
}

/// A column's SQL type, from the table's path as one group and the column's name.
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_type {
    ($table:tt $column:ident) => {
        $crate::__private::diesel::dsl::SqlTypeOf<$crate::__column!($table $column)>
    };
}

/// The names of columns, `&[column_name(&schema::table::column), …]`, from the table's path
/// as one group and the columns' names.
#[doc(hidden)]
#[macro_export]
macro_rules! __column_names {
    ($table:tt $($column:ident),*) => {
        &[$( $crate::__private::column_name(&$crate::__column!($table $column)) ),*]
    };
}

/// Requires a quota's reservation table to have a column of the name of each key column.
///
/// For each key, in a block of its own: `__QuotaColumn` is the quota table's column, named
/// before anything else is in scope; then the key's name is a type found first among the
/// reservation table's columns (a glob import), else a stand-in
/// ([`NotAColumn`](crate::__private::NotAColumn)) that the check refuses. A key column that the
/// quota table lacks is reported once, where the key is declared: its `__QuotaColumn` is then
/// unknown, and the check on it is left out.
#[doc(hidden)]
#[macro_export]
macro_rules! __reservation_keys {
    ($table:tt $reservations:tt $($key:ident),+) => {
        #[allow(dead_code, non_camel_case_types)]
        fn __reservation_keys() {
            $({
                type __QuotaColumn = $crate::__column!($table $key);
                {
                    type $key = $crate::__private::NotAColumn;
                    {
                        $crate::__use_columns!($reservations);
                        let _: ::core::marker::PhantomData<
                            <$key as $crate::__private::ReservationColumn<
                                <$key as $crate::__private::ColumnOutcome>::Is,
                                __QuotaColumn,
                            >>::Checked,
                        >;
                    }
                }
            })+
        }
    };
}

/// `use schema::table::*;`, from the table's path as one group.
#[doc(hidden)]
#[macro_export]
macro_rules! __use_columns {
    ([$($tp:ident)::+]) => {
        #[allow(unused_imports)]
        use $($tp)::+::*;
    };
}

/// `true` when `$ty` can be written as `$st` on a backend upsert-kit is built with: a constant
/// expression for concrete types, with `NotOnPg`, `NotOnSqlite` and `NotOnMysql` of
/// `__private` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __fits {
    ($ty:ty, $st:ty) => {
        <$crate::__private::Probe<$ty, $st>>::ON_PG
            || <$crate::__private::Probe<$ty, $st>>::ON_SQLITE
            || <$crate::__private::Probe<$ty, $st>>::ON_MYSQL
    };
}

/// The key's Rust type: the column's type for one column, a tuple for several.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_type {
    () => { () };
    ($kty:ty) => { $kty };
    ($($kty:ty),+) => { ($($kty,)+) };
}

/// Binds each key column's name to a reference to its value.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_destructure {
    ($v:ident;) => {
        let _ = $v;
    };
    ($v:ident; $key:ident) => {
        let $key = $v;
    };
    ($v:ident; $($key:ident),+) => {
        let ($(ref $key,)+) = *$v;
    };
}

/// A key component written on its own: `$crate::__key_column!(key, i, out; col: Type, …)`
/// pushes the bind of the `i`-th component (in the declaration's order) of `key`, with its
/// column's SQL type, into `out`; an `i` past the key is an error. For statements that compare
/// one key column of another table (a reservation's) with its value.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_column {
    ($table:tt $keyv:ident, $want:ident, $out:ident; $( $key:ident : $kty:ty ),+) => {{
        $crate::__key_destructure!($keyv; $($key),+);
        let mut i = 0usize;
        $(
            if i == $want {
                return <$crate::__private::Gate<{ $crate::__fits!($kty, $crate::__sql_type!($table $key)) }>
                    as $crate::__private::GatedBind<$kty, $crate::__sql_type!($table $key), DB>>
                    ::push(&mut $out, $key);
            }
            i += 1;
        )+
        let _ = i;
        Err($crate::__private::diesel::result::Error::QueryBuilderError(
            "no such key column".into(),
        ))
    }};
}

use crate::conn::{Typed, WriteConnection};
use crate::error::Result;
use diesel::connection::{Connection, LoadConnection};
use diesel::dsl::AsSelect;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::LoadQuery;
use diesel::sql_types::BigInt;
use diesel::{RunQueryDsl, SelectableHelper};

/// A row a primitive's write gives back as the caller's own struct: any
/// `#[derive(Queryable, Selectable)]` struct of the table the write changes (a subset of its
/// columns, in any order). Implemented for every such struct on every connection; its methods
/// are the crate's plumbing.
///
/// The write names the struct's columns in its `RETURNING` clause (PostgreSQL, SQLite), so the
/// row comes back in the same round trip; on MySQL and MariaDB, which have no `RETURNING`, the
/// row is read back in the write's transaction. See [`try_consume_returning`] and
/// [`Record::run`] for examples.
///
/// [`try_consume_returning`]: crate::quota::try_consume_returning
/// [`Record::run`]: crate::idempotency::Record::run
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a row upsert-kit can return from `{Conn}`",
    note = "derive `Queryable` and `Selectable` on it, with `#[diesel(table_name = …)]` naming the table the write changes"
)]
pub trait ReturnRow<Conn: Connection>: Sized {
    /// The struct's columns, as a select clause.
    #[doc(hidden)]
    type Columns: QueryFragment<Conn::Backend>;
    /// The struct's columns.
    #[doc(hidden)]
    fn columns() -> Self::Columns;
    /// Loads the rows of `q`, which returns [`ReturnRow::columns`].
    #[doc(hidden)]
    fn load(conn: &mut Conn, q: &dyn QueryFragment<Conn::Backend>) -> Result<Vec<Self>>;
    /// Loads the rows of `q`, which returns a `BIGINT` and then [`ReturnRow::columns`].
    #[doc(hidden)]
    fn load_with_id(
        conn: &mut Conn,
        q: &dyn QueryFragment<Conn::Backend>,
    ) -> Result<Vec<(i64, Self)>>;
}

impl<R, Conn> ReturnRow<Conn> for R
where
    Conn: LoadConnection
        + Connection<TransactionManager = diesel::connection::AnsiTransactionManager>,
    R: SelectableHelper<Conn::Backend> + 'static,
    AsSelect<R, Conn::Backend>: QueryFragment<Conn::Backend>,
    for<'q> Typed<'q, Conn::Backend, diesel::dsl::SqlTypeOf<R::SelectExpression>>:
        LoadQuery<'q, Conn, R>,
    for<'q> Typed<'q, Conn::Backend, (BigInt, diesel::dsl::SqlTypeOf<R::SelectExpression>)>:
        LoadQuery<'q, Conn, (i64, R)>,
{
    type Columns = AsSelect<R, Conn::Backend>;

    fn columns() -> Self::Columns {
        R::as_select()
    }

    fn load(conn: &mut Conn, q: &dyn QueryFragment<Conn::Backend>) -> Result<Vec<Self>> {
        let in_tx = crate::tx::in_transaction(conn);
        Typed::<_, diesel::dsl::SqlTypeOf<R::SelectExpression>>::of(q)
            .load(conn)
            .map_err(|e| crate::tx::statement_error(in_tx, e))
    }

    fn load_with_id(
        conn: &mut Conn,
        q: &dyn QueryFragment<Conn::Backend>,
    ) -> Result<Vec<(i64, Self)>> {
        let in_tx = crate::tx::in_transaction(conn);
        Typed::<_, (BigInt, diesel::dsl::SqlTypeOf<R::SelectExpression>)>::of(q)
            .load(conn)
            .map_err(|e| crate::tx::statement_error(in_tx, e))
    }
}

/// What a statement of a primitive gives back, and how it is loaded: the columns it names
/// (after ` RETURNING `, or in the read that follows a write on MySQL) and the rows it loads.
/// Implemented for the primitives' own results (a quota's usage, a reservation's id) and, by
/// [`Returned`], for the caller's [`ReturnRow`] structs.
#[doc(hidden)]
pub trait Output<C: WriteConnection> {
    /// One row.
    type Row;
    /// The columns the statement returns.
    fn columns(&self) -> &dyn QueryFragment<C::Backend>;
    /// The rows of `q`, which returns [`Output::columns`].
    ///
    /// # Errors
    /// Database errors.
    fn load(&self, c: &mut C, q: &dyn QueryFragment<C::Backend>) -> Result<Vec<Self::Row>>;

    /// The row made of three integers (a quota's limit, used and reserved), when that is all
    /// this output is: a backend may then read them from where its statement left them.
    fn ints_row(&self) -> Option<IntsRow<Self::Row>> {
        None
    }
}

/// A row made of three integers.
pub(crate) type IntsRow<R> = fn((i64, i64, i64)) -> R;

/// The caller's struct `R` as what a statement gives back.
pub(crate) struct Returned<R: ReturnRow<C>, C: Connection> {
    columns: R::Columns,
}

impl<R: ReturnRow<C>, C: Connection> Returned<R, C> {
    /// `R`'s columns.
    pub(crate) fn new() -> Self {
        Returned {
            columns: R::columns(),
        }
    }
}

impl<R, C> Output<C> for Returned<R, C>
where
    C: WriteConnection + Connection<Backend = <C as WriteConnection>::Backend>,
    R: ReturnRow<C>,
{
    type Row = R;

    fn columns(&self) -> &dyn QueryFragment<<C as WriteConnection>::Backend> {
        &self.columns
    }

    fn load(
        &self,
        c: &mut C,
        q: &dyn QueryFragment<<C as WriteConnection>::Backend>,
    ) -> Result<Vec<R>> {
        R::load(c, q)
    }
}
