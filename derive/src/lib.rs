//! `#[derive(Upsert)]` for upsert-kit. Use it as `upsert_kit::Upsert` (the library's `derive`
//! feature, on by default); the attributes are documented there.
//!
//! The derive reads the struct's `#[upsert(…)]` and `#[diesel(…)]` attributes and writes the
//! library's `UpsertModel`, `BindRow` and `BindColumns` impls, and one compile-time check per
//! field that reports a mistake at that field. The paths it writes start at `::upsert_kit`
//! (`#[upsert(crate = …)]` to change that).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod attrs;
mod expand;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Declares a struct as an upsert model of a Diesel table.
///
/// ```text
/// #[derive(Insertable, Upsert)]
/// #[diesel(table_name = products)]
/// #[upsert(key(sku), keep(created_at))]
/// struct NewProduct<'a> {
///     sku: &'a str,
///     #[diesel(column_name = name)]
///     title: Cow<'a, str>,
///     created_at: NaiveDateTime,
/// }
/// ```
///
/// See `upsert_kit::Upsert` for the attributes and examples.
#[proc_macro_derive(Upsert, attributes(upsert, diesel))]
pub fn derive_upsert(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match attrs::Model::from_input(&input) {
        Ok(model) => expand::expand(&input, &model).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
