//! The part of the declaration macros that every keyed declaration shares: [`Keyed`] and
//! [`BindKey`] from a table path and `key = (column: Type, …)`, and the paths of columns.
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
    (@table $table:tt, $name:ident, $( $key:ident : $kty:ty ),+) => {
        const _: () = {
            #[allow(unused_imports)]
            use $crate::__private::{
                CheckOption as _, CheckValue as _, NoCheck as _, NotOnMysql as _, NotOnPg as _,
                NotOnSqlite as _,
            };

            impl $crate::conn::Keyed for $name {
                type Table = $crate::__column!($table table);
                type Key = $crate::__key_type!($($kty),+);
                // The key's columns are named as types, as in the bounds below: an unknown one is
                // one error.
                const KEY: &'static [&'static str] = &[$(
                    <$crate::__column!($table $key) as $crate::__private::diesel::Column>::NAME
                ),+];

                fn validate_key(
                    key: &Self::Key,
                ) -> ::std::result::Result<(), $crate::InvalidInput> {
                    $crate::__key_destructure!(key; $($key),+);
                    $( (&&&$crate::__private::Value($key)).check_key_value(stringify!($key))?; )+
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
                )+
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
                    $crate::__key_destructure!(key; $($key),+);
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
                    )+
                    let _ = i;
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
                )+
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
    ($kty:ty) => { $kty };
    ($($kty:ty),+) => { ($($kty,)+) };
}

/// Binds each key column's name to a reference to its value.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_destructure {
    ($v:ident; $key:ident) => {
        let $key = $v;
    };
    ($v:ident; $($key:ident),+) => {
        let ($(ref $key,)+) = *$v;
    };
}
