//! No import circle among the modules of the workspace's crates (see `circles`): the library's
//! foundation (errors, SQL helpers, redaction) at the bottom, transactions, retries and the
//! SQLite writer gate on it, the primitives above; the race report, the harness and the jobs
//! the same way.

use std::fs;
use std::path::{Path, PathBuf};
use upsert_kit_support::circles::{import_circles, import_graph};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assert_no_circle(src: &str) {
    let circles = import_circles(&workspace().join(src));
    assert!(
        circles.is_empty(),
        "import circles among the modules of {src}: {circles:#?}"
    );
}

#[test]
fn the_library_has_no_import_circle() {
    assert_no_circle("src");
}

#[test]
fn the_race_report_has_no_import_circle() {
    assert_no_circle("race/src");
}

#[test]
fn the_harness_has_no_import_circle() {
    assert_no_circle("support/src");
}

#[test]
fn the_jobs_have_no_import_circle() {
    for job in ["jobs/sync/src", "jobs/usage/src", "jobs/backfill/src"] {
        assert_no_circle(job);
    }
}

#[test]
fn the_library_foundation_imports_nothing_above_it() {
    let graph = import_graph(&workspace().join("src"));
    for ground in ["error", "redact", "sql"] {
        let imports = &graph[&vec![ground.to_owned()]];
        let above: Vec<_> = imports
            .iter()
            .filter(|m| !["error", "redact", "sql"].contains(&m.join("::").as_str()))
            .collect();
        assert!(
            above.is_empty(),
            "the foundation's `{ground}` imports {above:?}"
        );
    }
}

#[test]
fn a_circle_through_a_use_group_a_root_reexport_and_super_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir_all(src.join("c")).unwrap();
    fs::write(
        src.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\npub use a::Thing;\n",
    )
    .unwrap();
    // a -> b through a use group, b -> c::d through a path, c::d -> a through the root's
    // re-export; a comment and a string that name `crate::b` do not count.
    fs::write(
        src.join("a.rs"),
        "use crate::{b::{f, g}};\npub struct Thing;\n",
    )
    .unwrap();
    fs::write(
        src.join("b.rs"),
        "pub fn f() { crate::c::d::h() }\npub fn g() {}\n",
    )
    .unwrap();
    fs::write(src.join("c/mod.rs"), "pub mod d;\n").unwrap();
    fs::write(src.join("c/d.rs"), "// crate::b::f\npub fn h() { let _ = \"crate::b\"; let _t = crate::Thing; super::super::b::g(); }\n").unwrap();
    assert_eq!(
        import_circles(src),
        vec![vec!["a".to_owned(), "b".to_owned(), "c::d".to_owned()]]
    );

    // Without the last arrow (and with the comment and string left in) there is none.
    fs::write(
        src.join("c/d.rs"),
        "// crate::a::Thing\npub fn h() { let _ = \"crate::a\"; }\n",
    )
    .unwrap();
    assert!(import_circles(src).is_empty());
    // A parent and its own child using each other are one unit, not a circle.
    fs::write(src.join("c/mod.rs"), "pub mod d;\npub fn e() { d::h() }\n").unwrap();
    fs::write(src.join("c/d.rs"), "pub fn h() { super::e() }\n").unwrap();
    assert!(import_circles(src).is_empty());
}
