//! The compile errors of `#[derive(UpsertModel)]`, of the declaration macros (`counter!`, `ledger!`,
//! `quota!`) and of the calls the type system refuses, as a user sees them: one case per mistake
//! in `tests/ui/*.rs`, its expected output (the whole of it) in the `.stderr` file beside it
//! (trybuild compares them).
//!
//! Each mistake in a declaration is there twice: the declaration alone (`name.rs`), and the
//! declaration used as an adopter uses it (`name_used.rs`: `atomic_upsert` and `bulk_upsert` of
//! the struct, or the declaration's own calls). Both must give the same output, one error per
//! mistake at the user's tokens: the code that uses a declaration adds no error of its own, and
//! none that points into the library or into Diesel.
//!
//! The expected output is what rustc 1.95 prints. Another compiler version may word or lay
//! out some messages differently: the messages written by the derive itself are stable, the
//! notes rustc adds around them are not. To bring the files up to date after a toolchain
//! change, run `TRYBUILD=overwrite cargo test -p upsert-kit --test compile_fail` and review
//! the diff.
//!
//! The cases need the library's default features (both backends and the derive).

use std::fs;
use std::path::Path;

#[test]
fn mistakes_in_upsert_models_and_refused_calls_are_compile_errors_with_these_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

/// Lines of compiler output a mistake may cost in all: `cargo build` adds four to what the
/// `.stderr` file holds (`Compiling …`, a blank line, `For more information …`, `could not
/// compile …`).
const MOST_LINES: usize = 25 - 4;

#[test]
fn a_declaration_in_use_gives_the_errors_of_the_declaration_alone_all_short_and_at_the_user() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut twins = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(case) = name.strip_suffix("_used.stderr") else {
            continue;
        };
        twins += 1;
        let used = fs::read_to_string(&path).unwrap();
        let alone = fs::read_to_string(dir.join(format!("{case}.stderr"))).unwrap();
        assert_eq!(
            used.replace(&format!("{case}_used.rs"), &format!("{case}.rs")),
            alone,
            "{name}: using the declaration changed the errors"
        );
        let lines: Vec<&str> = alone.lines().collect();
        assert!(
            lines.len() <= MOST_LINES,
            "{case}.stderr: {} lines, more than {MOST_LINES}",
            lines.len()
        );
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("error") {
                let at = lines.get(i + 1).copied().unwrap_or_default();
                assert!(
                    at.contains(&format!("--> tests/ui/{case}.rs:")),
                    "{case}.stderr: an error not located in the case's file: {line} {at}"
                );
            }
        }
    }
    assert!(twins > 0, "no case in use found in {}", dir.display());
}
