//! The part of the declaration macros that every keyed declaration shares: [`Keyed`] and
//! [`BindKey`] from a table path and `key = (column: Type, …)`.
//!
//! [`Keyed`]: crate::conn::Keyed
//! [`BindKey`]: crate::conn::BindKey

/// Implements `Keyed` and `BindKey` (for every backend whose types fit) for `$name`.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyed_impl {
    ($name:ident, $($tp:ident)::+, $( $key:ident : $kty:ty ),+) => {
        const _: () = {
            use $($tp)::+ as __kit_table;

            impl $crate::conn::Keyed for $name {
                type Table = __kit_table::table;
                type Key = $crate::__key_type!($($kty),+);
                const KEY: &'static [&'static str] =
                    &[$( <__kit_table::$key as $crate::__private::diesel::Column>::NAME ),+];

                fn validate_key(
                    key: &Self::Key,
                ) -> ::std::result::Result<(), $crate::InvalidInput> {
                    $crate::__key_destructure!(key; $($key),+);
                    $( $crate::CheckedValue::check_key($key, stringify!($key))?; )+
                    Ok(())
                }
            }

            impl<DB> $crate::conn::BindKey<DB> for $name
            where
                DB: $crate::__private::diesel::backend::Backend,
                __kit_table::table: $crate::__private::diesel::query_builder::QueryFragment<DB>,
                $(
                    DB: $crate::__private::diesel::sql_types::HasSqlType<
                        $crate::__private::diesel::dsl::SqlTypeOf<__kit_table::$key>>,
                    $kty: $crate::__private::diesel::serialize::ToSql<
                        $crate::__private::diesel::dsl::SqlTypeOf<__kit_table::$key>, DB>,
                )+
            {
                fn walk_table(
                    out: $crate::__private::diesel::query_builder::AstPass<'_, '_, DB>,
                ) -> $crate::__private::diesel::QueryResult<()> {
                    $crate::__private::diesel::query_builder::QueryFragment::<DB>::walk_ast(
                        &__kit_table::table,
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
                            <__kit_table::$key as $crate::__private::diesel::Column>::NAME,
                            i,
                        )?;
                        out.push_bind_param::<
                            $crate::__private::diesel::dsl::SqlTypeOf<__kit_table::$key>,
                            $kty,
                        >($key)?;
                        i += 1;
                    )+
                    let _ = i;
                    Ok(())
                }
            }
        };
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
