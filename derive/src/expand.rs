//! The code `#[derive(Upsert)]` writes: the library's model traits, and one compile-time check
//! per field, spanned at that field, so that a mistake is reported where it was made.

use crate::attrs::{mentions, Field, Model};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{DeriveInput, GenericParam, Ident, WherePredicate};

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
    for f in fields {
        let ty = &f.ty;
        let st = sql_type(f);
        row_where.push(syn::parse_quote!(__DB: #diesel::sql_types::HasSqlType<#st>));
        row_where.push(syn::parse_quote!(#ty: #diesel::serialize::ToSql<#st, __DB>));
        columns_where.push(syn::parse_quote!(__DB: #private::ArrayBackend<#st>));
        columns_where.push(syn::parse_quote!(#ty: #diesel::serialize::ToSql<#st, __DB>));
    }
    let binds = fields.iter().enumerate().map(|(i, f)| {
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        let comma = (i > 0).then(|| quote!(out.push_sql(", ");));
        quote! {
            #comma
            out.push_bind_param::<#st, #ty>(&self.#ident)?;
        }
    });
    let key_matches = key.iter().enumerate().map(|(n, &i)| {
        let f = &fields[i];
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        let name = column_name(f);
        let and = (n > 0).then(|| quote!(out.push_sql(" AND ");));
        quote! {
            #and
            out.push_identifier(#name)?;
            out.push_sql(" = ");
            out.push_bind_param::<#st, #ty>(&self.#ident)?;
        }
    });
    let key_binds = key.iter().enumerate().map(|(i, &k)| {
        let f = &fields[k];
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        let comma = (i > 0).then(|| quote!(out.push_sql(", ");));
        quote! {
            #comma
            out.push_bind_param::<#st, #ty>(&self.#ident)?;
        }
    });
    let arrays = fields.iter().map(|f| {
        let ident = &f.ident;
        let ty = &f.ty;
        let st = sql_type(f);
        quote! {
            ::std::boxed::Box::new(#private::ArrayBind::<#st, #ty>::new(
                rows.iter().map(|r| &r.#ident).collect(),
            ))
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

    // Compile-time checks, one per field, each reported at the field with its own message.
    let table_text = table.to_token_stream().to_string().replace(' ', "");
    let struct_text = name.unraw().to_string();
    let mut check_items = Vec::new();
    let mut check_calls = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if generic(f) {
            continue;
        }
        let ty = &f.ty;
        let field = f.ident.unraw().to_string();
        let column = f.column.unraw().to_string();
        let st = sql_type(f);
        let fits = format_ident!("__UpsertFieldFits{}", i);
        let assert_fits = format_ident!("__upsert_field_fits_{}", i);
        let message = format!(
            "the field `{field}` of `{struct_text}` has type `{{T}}`, which cannot be written to its column \
             `{table_text}.{column}` of SQL type `{{ST}}`"
        );
        let note = "a field's type must implement `diesel::serialize::ToSql<{ST}, DB>` for a backend `DB` \
                    that upsert-kit is built with (PostgreSQL, SQLite, MySQL): change the field's type or the \
                    column's SQL type in `table!`";
        check_items.push(quote! {
            #[diagnostic::on_unimplemented(message = #message, label = "cannot be written as `{ST}`", note = #note)]
            trait #fits<T: ?Sized, ST> {}
            impl<T: ?Sized, ST> #fits<T, ST> for #private::Fits {}
            fn #assert_fits<P: #fits<T, ST>, T: ?Sized, ST>(_: P) {}
        });
        check_calls.push(quote_spanned! {ty.span()=>
            #assert_fits::<_, #ty, #st>((&&&&#private::Probe::<#ty, #st>::NEW).fits());
        });
    }
    for &i in key {
        let f = &fields[i];
        if generic(f) {
            continue;
        }
        let ty = &f.ty;
        let field = f.ident.unraw().to_string();
        let ord = format_ident!("__UpsertKeyOrd{}", i);
        let assert_ord = format_ident!("__upsert_key_ord_{}", i);
        let message =
            format!("the key field `{field}` of `{struct_text}` has type `{{T}}`, which does not implement `Ord`");
        check_items.push(quote! {
            #[diagnostic::on_unimplemented(
                message = #message,
                label = "a key's type must implement `Ord`",
                note = "upsert-kit sorts the rows of a bulk upsert by key and collapses rows with equal keys"
            )]
            trait #ord<T: ?Sized> {}
            impl<T: ?Sized> #ord<T> for #private::Fits {}
            fn #assert_ord<P: #ord<T>, T: ?Sized>(_: P) {}
        });
        check_calls.push(quote_spanned! {ty.span()=>
            #assert_ord::<_, #ty>((&&#private::OrdProbe::<#ty>::NEW).ordered());
        });
    }
    // Lifetimes only: the checks of fields that use the struct's type parameters are left to
    // the bounds of the impls above.
    let lifetimes = input.generics.lifetimes();
    let checks = quote! {
        #(#check_items)*
        fn __upsert_field_checks<#(#lifetimes),*>() {
            #[allow(unused_imports)]
            use #private::{FitsMysql as _, FitsNoBackend as _, FitsPg as _, FitsSqlite as _, NotOrdered as _, Ordered as _};
            #(#check_calls)*
        }
    };

    quote! {
        #[allow(non_camel_case_types, non_snake_case, dead_code, clippy::all)]
        const _: () = {
            #model_impl
            #bind_impls
            #checks
        };
    }
}
