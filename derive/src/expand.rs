//! The code `#[derive(UpsertModel)]` writes: the library's model traits, and one compile-time check
//! per field, spanned at that field, so that a mistake is reported where it was made.
//!
//! Whether a field's type can be written to its column is a constant, `__UPSERT_FITS_<i>`,
//! that the compiler works out where the struct is declared (see the library's
//! `derive_support`). The check of a field requires it to be `true`, and reports at the field
//! when it is not; the bind impls take the field through `Gate<__UPSERT_FITS_<i>>`, which asks
//! the backend for nothing when the constant is `false`. So a field that fits nowhere is one
//! error, at the field, and the impls still hold where the struct is used.

use crate::attrs::{mentions, Field, Model};
use proc_macro2::{Spacing, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{DeriveInput, GenericParam, Ident, WherePredicate};

/// `tokens` with every lifetime but `'static` made `'static`: a field's type as a constant
/// outside the struct's generics can name it. (Whether a type can be written to a column
/// never depends on its lifetimes.)
fn with_static_lifetimes(tokens: TokenStream) -> TokenStream {
    let mut out = Vec::new();
    let mut after_quote = false;
    for tt in tokens {
        let tt = match tt {
            TokenTree::Ident(ident) if after_quote && ident != "static" => {
                TokenTree::Ident(Ident::new("static", ident.span()))
            }
            TokenTree::Group(group) => {
                let mut new = proc_macro2::Group::new(
                    group.delimiter(),
                    with_static_lifetimes(group.stream()),
                );
                new.set_span(group.span());
                TokenTree::Group(new)
            }
            tt => tt,
        };
        after_quote = matches!(&tt, TokenTree::Punct(p) if p.as_char() == '\'' && p.spacing() == Spacing::Joint);
        out.push(tt);
    }
    out.into_iter().collect()
}

/// Whether `ty` is written `Option<…>` (by any path).
fn is_option(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Option"),
        _ => false,
    }
}

pub(crate) fn expand(input: &DeriveInput, model: &Model) -> TokenStream {
    let Model {
        krate,
        table,
        fields,
        key,
        keep,
    } = model;
    let name = &input.ident;
    let diesel = quote!(#krate::__private::diesel);
    let private = quote!(#krate::__private);
    let type_params: Vec<Ident> = input
        .generics
        .type_params()
        .map(|p| p.ident.clone())
        .chain(input.generics.const_params().map(|p| p.ident.clone()))
        .collect();
    let generic = |f: &Field| mentions(f.ty.to_token_stream(), &type_params);
    let sql_type = |f: &Field| {
        let column = &f.column;
        quote_spanned!(column.span()=> #diesel::dsl::SqlTypeOf<#table::#column>)
    };
    let column_name = |f: &Field| {
        let column = &f.column;
        quote_spanned!(column.span()=> <#table::#column as #diesel::Column>::NAME)
    };

    // Whether each field can be written to its column: a constant the compiler works out here
    // (`true` for a field that depends on the struct's type parameters, whose impls then ask the
    // backend directly).
    let mut fits_consts = Vec::new();
    let fits: Vec<TokenStream> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if generic(f) {
                return quote!(true);
            }
            let name = format_ident!("__UPSERT_FITS_{}", i);
            let ty = with_static_lifetimes(f.ty.to_token_stream());
            let st = sql_type(f);
            fits_consts.push(quote! {
                const #name: bool = <#private::Probe<#ty, #st>>::ON_PG
                    || <#private::Probe<#ty, #st>>::ON_SQLITE
                    || <#private::Probe<#ty, #st>>::ON_MYSQL;
            });
            quote!({ #name })
        })
        .collect();

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let base_where: Vec<WherePredicate> = where_clause
        .map(|w| w.predicates.iter().cloned().collect())
        .unwrap_or_default();

    // UpsertModel.
    let columns = fields.iter().map(column_name);
    let key_columns = key.iter().map(|&i| column_name(&fields[i]));
    let key_column_types = key.iter().map(|&i| {
        let column = &fields[i].column;
        quote_spanned!(column.span()=> #table::#column)
    });
    let keep_columns = keep.iter().map(|&i| column_name(&fields[i]));
    let mut model_where = base_where.clone();
    let cmp_key = key.iter().map(|&i| {
        let f = &fields[i];
        let ident = &f.ident;
        if generic(f) {
            let ty = &f.ty;
            model_where.push(syn::parse_quote!(#ty: ::core::cmp::Ord));
            quote!(.then_with(|| ::core::cmp::Ord::cmp(&self.#ident, &other.#ident)))
        } else {
            quote!(.then_with(|| (&&#private::KeyPair(&self.#ident, &other.#ident)).key_cmp()))
        }
    });
    let cmp_key: Vec<TokenStream> = cmp_key.collect();
    let checks = fields.iter().filter(|f| !f.unchecked).map(|f| {
        let ident = &f.ident;
        let label = ident.unraw().to_string();
        quote!((&&&#private::Value(&self.#ident)).check_value(#label)?;)
    });
    let key_checks = key
        .iter()
        .map(|&i| &fields[i])
        .filter(|f| !f.unchecked)
        .map(|f| {
            let ident = &f.ident;
            let label = ident.unraw().to_string();
            quote!((&&&#private::Value(&self.#ident)).check_key_value(#label)?;)
        });
    let model_impl = quote! {
        impl #impl_generics #krate::UpsertModel for #name #ty_generics where #(#model_where,)* {
            type Table = #table::table;
            type StatementId = (#table::table, (#(#key_column_types,)*));
            const COLUMNS: &'static [&'static str] = &[#(#columns),*];
            const KEY: &'static [&'static str] = &[#(#key_columns),*];
            const KEEP: &'static [&'static str] = &[#(#keep_columns),*];

            fn cmp_key(&self, other: &Self) -> ::core::cmp::Ordering {
                #[allow(unused_imports)]
                use #private::{KeyNotOrd as _, KeyOrd as _};
                ::core::cmp::Ordering::Equal #(#cmp_key)*
            }

            fn validate(&self) -> ::core::result::Result<(), #krate::InvalidInput> {
                #[allow(unused_imports)]
                use #private::{CheckOption as _, CheckValue as _, NoCheck as _};
                #(#checks)*
                #(#key_checks)*
                ::core::result::Result::Ok(())
            }
        }
    };

    // BindRow and BindColumns, for every backend whose types fit.
    let mut generics = input.generics.clone();
    generics
        .params
        .push(GenericParam::Type(syn::parse_quote!(__DB)));
    let (bind_generics, _, _) = generics.split_for_impl();
    let mut row_where = model_where.clone();
    row_where.push(syn::parse_quote!(__DB: #diesel::backend::Backend));
    let mut columns_where = row_where.clone();
    for (f, fits) in fields.iter().zip(&fits) {
        let ty = &f.ty;
        let st = sql_type(f);
        row_where.push(syn::parse_quote!(
            #private::Gate<#fits>: #private::GatedBind<#ty, #st, __DB>
        ));
        columns_where.push(syn::parse_quote!(
            #private::Gate<#fits>: #private::GatedArray<#ty, #st, __DB>
        ));
    }
    let push = |i: usize| {
        let f = &fields[i];
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        let fits = &fits[i];
        quote! {
            <#private::Gate<#fits> as #private::GatedBind<#ty, #st, __DB>>::push(&mut out, &self.#ident)?;
        }
    };
    let binds = (0..fields.len()).map(|i| {
        let comma = (i > 0).then(|| quote!(out.push_sql(", ");));
        let push = push(i);
        quote! {
            #comma
            #push
        }
    });
    let key_matches = key.iter().enumerate().map(|(n, &i)| {
        let name = column_name(&fields[i]);
        let and = (n > 0).then(|| quote!(out.push_sql(" AND ");));
        let push = push(i);
        quote! {
            #and
            out.push_identifier(#name)?;
            out.push_sql(" = ");
            #push
        }
    });
    let key_binds = key.iter().enumerate().map(|(n, &i)| {
        let comma = (n > 0).then(|| quote!(out.push_sql(", ");));
        let push = push(i);
        quote! {
            #comma
            #push
        }
    });
    let arrays = fields.iter().zip(&fits).map(|(f, fits)| {
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        quote! {
            <#private::Gate<#fits> as #private::GatedArray<#ty, #st, __DB>>::array(
                rows.iter().map(|r| &r.#ident).collect(),
            )
        }
    });
    let bind_impls = quote! {
        impl #bind_generics #krate::BindRow<__DB> for #name #ty_generics where #(#row_where,)* {
            const ONE_BIND_PER_COLUMN: bool = true;

            fn walk_key<'__b>(
                &'__b self,
                mut out: #diesel::query_builder::AstPass<'_, '__b, __DB>,
            ) -> #diesel::QueryResult<()> {
                #(#key_binds)*
                ::core::result::Result::Ok(())
            }
            fn walk_row<'__b>(
                &'__b self,
                mut out: #diesel::query_builder::AstPass<'_, '__b, __DB>,
            ) -> #diesel::QueryResult<()> {
                #(#binds)*
                ::core::result::Result::Ok(())
            }

            fn walk_key_match<'__b>(
                &'__b self,
                mut out: #diesel::query_builder::AstPass<'_, '__b, __DB>,
            ) -> #diesel::QueryResult<()> {
                #(#key_matches)*
                ::core::result::Result::Ok(())
            }
        }

        impl #bind_generics #krate::BindColumns<__DB> for #name #ty_generics where #(#columns_where,)* {
            fn bind_columns<'__r>(rows: &[&'__r Self]) -> #krate::ColumnArrays<'__r, __DB> {
                ::std::vec![#(#arrays),*]
            }
        }
    };

    // Compile-time checks, one per field, each reported at the field with its own message: the
    // field's type, projected through a trait implemented only when its constant is `true`.
    let table_text = table.to_token_stream().to_string().replace(' ', "");
    let struct_text = name.unraw().to_string();
    let mut check_items = Vec::new();
    let mut check_lets = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if generic(f) {
            continue;
        }
        let ty = &f.ty;
        let field = f.ident.unraw().to_string();
        let column = f.column.unraw().to_string();
        let st = sql_type(f);
        let fits_trait = format_ident!("__UpsertFieldFits{}", i);
        let fits = &fits[i];
        let message = format!(
            "the field `{field}` of `{struct_text}` has type `{{Self}}`, which cannot be written to its column \
             `{table_text}.{column}` of SQL type `{{ST}}`"
        );
        let note = if is_option(ty) {
            "an `Option` field writes NULL for `None`, so its column must be `Nullable<…>` in `table!` (and \
             the type inside the `Option` must fit the SQL type inside `Nullable`); for a NOT NULL column, \
             make the field's type the one inside the `Option`"
        } else {
            "a field's type must implement `diesel::serialize::ToSql<{ST}, DB>` for a backend `DB` that \
             upsert-kit is built with (PostgreSQL, SQLite, MySQL): change the field's type or the column's \
             SQL type in `table!`"
        };
        check_items.push(quote! {
            #[diagnostic::on_unimplemented(message = #message, label = "cannot be written as `{ST}`", note = #note)]
            trait #fits_trait<O, ST> {
                type Checked;
            }
            impl<T: ?Sized, ST> #fits_trait<#private::Fits, ST> for T {
                type Checked = ();
            }
        });
        check_lets.push(quote_spanned! {ty.span()=>
            let _: ::core::marker::PhantomData<
                <#ty as #fits_trait<<#private::Gate<#fits> as #private::Outcome>::Is, #st>>::Checked,
            >;
        });
    }
    for &i in key {
        let f = &fields[i];
        if generic(f) {
            continue;
        }
        let ty = &f.ty;
        let field = f.ident.unraw().to_string();
        let ord_trait = format_ident!("__UpsertKeyOrd{}", i);
        let ord = format_ident!("__UPSERT_ORD_{}", i);
        let static_ty = with_static_lifetimes(ty.to_token_stream());
        let message =
            format!("the key field `{field}` of `{struct_text}` has type `{{Self}}`, which does not implement `Ord`");
        check_items.push(quote! {
            const #ord: bool = <#private::OrdProbe<#static_ty>>::ORD;
            #[diagnostic::on_unimplemented(
                message = #message,
                label = "a key's type must implement `Ord`",
                note = "upsert-kit sorts the rows of a bulk upsert by key and collapses rows with equal keys"
            )]
            trait #ord_trait<O> {
                type Checked;
            }
            impl<T: ?Sized> #ord_trait<#private::Fits> for T {
                type Checked = ();
            }
        });
        check_lets.push(quote_spanned! {ty.span()=>
            let _: ::core::marker::PhantomData<
                <#ty as #ord_trait<<#private::Gate<{ #ord }> as #private::Outcome>::Is>>::Checked,
            >;
        });
    }
    // Lifetimes only: the checks of fields that use the struct's type parameters are left to
    // the bounds of the impls above.
    let lifetimes = input.generics.lifetimes();
    let checks = quote! {
        #(#check_items)*
        fn __upsert_field_checks<#(#lifetimes),*>() {
            #(#check_lets)*
        }
    };

    quote! {
        #[allow(non_camel_case_types, non_snake_case, dead_code, clippy::all)]
        const _: () = {
            #[allow(unused_imports)]
            use #private::{NotOnMysql as _, NotOnPg as _, NotOnSqlite as _, NotOrd as _};
            #(#fits_consts)*
            #model_impl
            #bind_impls
            #checks
        };
    }
}
