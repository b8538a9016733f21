//! Tests of the harness's PostgreSQL 18 server (`upsert_kit_support::pg18`).

use diesel::RunQueryDsl;
use upsert_kit_support::pg18::{self, TestDb};

#[derive(diesel::QueryableByName)]
struct Shown {
    #[diesel(sql_type = diesel::sql_types::Text)]
    server_version_num: String,
}

fn version_of(url: &str) -> u32 {
    let mut conn = upsert_kit::db::connect_pg(url).unwrap();
    diesel::sql_query("SHOW server_version_num")
        .get_result::<Shown>(&mut conn)
        .unwrap()
        .server_version_num
        .parse()
        .unwrap()
}

#[test]
fn the_pg18_server_is_postgresql_18_and_the_same_every_time() {
    let url = pg18::admin_url();
    assert_eq!(url, pg18::admin_url());
    let version = version_of(&url);
    assert!(
        (180_000..190_000).contains(&version),
        "server_version_num {version}"
    );
}

#[test]
fn a_pg18_test_database_is_its_own_and_dropped_with_its_value() {
    let a = TestDb::with_sql("CREATE TABLE notes (body TEXT NOT NULL)");
    let b = TestDb::new();
    assert_ne!(a.name(), b.name());
    assert!(version_of(a.url()) >= 180_000);
    let name = a.name().to_owned();
    assert!(upsert_kit_support::database_exists(
        &pg18::admin_url(),
        &name
    ));
    drop(a);
    assert!(!upsert_kit_support::database_exists(
        &pg18::admin_url(),
        &name
    ));
}

#[test]
fn only_a_postgresql_18_server_passes_the_check() {
    // The machine's server (15 here) is refused; the 18 one passes. Whatever DATABASE_URL
    // names, the check agrees with the server's own version.
    for url in [upsert_kit_support::admin_url(), pg18::admin_url()] {
        let version = version_of(&url);
        let checked = pg18::check_server(&url);
        assert_eq!(
            checked.is_ok(),
            version / 10_000 == 18,
            "server_version_num {version}: {checked:?}"
        );
        if let Err(e) = checked {
            assert!(
                e.contains(&format!("server_version_num is {version}")),
                "{e}"
            );
        }
    }
}
