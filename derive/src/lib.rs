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

/// The derive's implementation; its attributes and examples are documented as
/// `upsert_kit::Upsert`.
#[proc_macro_derive(Upsert, attributes(upsert, diesel))]
pub fn derive_upsert(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match attrs::Model::from_input(&input) {
        Ok(model) => expand::expand(&input, &model).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
