//! `#[derive(UpsertModel)]` for upsert-kit. Use it as `upsert_kit::UpsertModel` (the library's `derive`
//! feature, on by default); the attributes are documented there.
//!
//! The derive reads the struct's `#[upsert(…)]` and `#[diesel(…)]` attributes and writes the
//! library's `UpsertModel`, `BindRow` and `BindColumns` impls, and one compile-time check per
//! field that reports a mistake at that field. Each mistake is one error at the user's tokens:
//! the impls are written whatever the mistake, so the calls that use the struct add none. The
//! paths it writes start at `::upsert_kit` (`#[upsert(crate = …)]` to change that).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod attrs;
mod expand;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// The derive's implementation; its attributes and examples are documented as
/// `upsert_kit::UpsertModel`.
#[proc_macro_derive(UpsertModel, attributes(upsert, diesel))]
pub fn derive_upsert(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    // A mistake is reported at its tokens, and the impls of what is left are written all the
    // same: the code that uses the struct then compiles, and adds no error of its own.
    let (model, errors) = attrs::Model::from_input(&input);
    let mut out = errors.map(|e| e.to_compile_error()).unwrap_or_default();
    out.extend(expand::expand(&input, &model));
    out.into()
}
