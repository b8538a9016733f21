//! The compile errors of `#[derive(Upsert)]` and the calls the type system refuses, as a user
//! sees them: one case per mistake in `tests/ui/*.rs`, its expected output in the `.stderr`
//! file beside it (trybuild compares them).
//!
//! The expected output is what rustc 1.95 prints. Another compiler version may word or lay
//! out some messages differently: the messages written by the derive itself are stable, the
//! notes rustc adds around them are not. To bring the files up to date after a toolchain
//! change, run `TRYBUILD=overwrite cargo test -p upsert-kit --test compile_fail` and review
//! the diff.
//!
//! The cases need the library's default features (both backends and the derive).

#[test]
fn mistakes_in_upsert_models_and_refused_calls_are_compile_errors_with_these_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
