//! The harness's PgBouncer answers in front of the test server (tests/pooler.rs shows its
//! transaction mode).

use diesel::RunQueryDsl;
use upsert_kit_support::TestDb;

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[test]
fn the_harness_pgbouncer_reaches_the_test_database() {
    let db = TestDb::new();
    let url = db.through_pooler();
    assert_ne!(url, db.url());
    let mut conn = upsert_kit::db::connect_pg(&url).unwrap_or_else(|e| panic!("{e}"));
    let row: Name = diesel::sql_query("SELECT current_database()::text AS name")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(row.name, db.name());
}
