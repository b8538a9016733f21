//! The ready-made tables: created by the library, applied as migrations by diesel's own
//! harness (what the diesel CLI runs), and used through the same declarations as a user's own.

use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use std::time::Duration;
use upsert_kit::idempotency::{run, IdempotencyKey};
use upsert_kit::quota;
use upsert_kit::tables::{create_tables, IdempotencyKeys, Quotas};
use upsert_kit::Error;
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// The same calls on either backend's connection.
macro_rules! exercise {
    ($conn:expr) => {{
        use diesel::RunQueryDsl;
        let conn = $conn;
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let key = IdempotencyKey::new("job-1").unwrap();
        let first = run::<IdempotencyKeys, _, _, _>(conn, &key, "a", now, |_| Ok(5_i64)).unwrap();
        let again = run::<IdempotencyKeys, _, _, _>(conn, &key, "a", now, |_| Ok(6_i64)).unwrap();
        assert_eq!((first.value, again.value, again.applied), (5, 5, false));

        diesel::sql_query(
            "INSERT INTO upsert_kit_quotas (quota_key, quota_limit) VALUES ('tokens:7', 10)",
        )
        .execute(conn)
        .unwrap();
        let q = "tokens:7".to_owned();
        let held = quota::reserve::<Quotas, _>(conn, &q, 8, Duration::from_secs(30), now).unwrap();
        assert!(matches!(
            quota::try_consume::<Quotas, _>(conn, &q, 3, now),
            Err(Error::QuotaExceeded {
                requested: 3,
                available: 2
            })
        ));
        let usage = quota::commit(conn, &held, 8, now).unwrap();
        assert_eq!((usage.used, usage.reserved), (8, 0));

        // The committed reservation was the newest row: the next one gets another id, and the
        // old handle, committed or released again (a retry), settles nothing.
        let next = quota::reserve::<Quotas, _>(conn, &q, 1, Duration::from_secs(30), now).unwrap();
        assert_ne!(
            next.id, held.id,
            "a deleted reservation's id is handed out again"
        );
        assert!(matches!(
            quota::commit(conn, &held, 8, now),
            Err(Error::NotFound(_))
        ));
        assert!(!quota::release(conn, &held).unwrap());
        let usage = quota::commit(conn, &next, 1, now).unwrap();
        assert_eq!((usage.used, usage.reserved), (9, 0));
    }};
}

/// Ready-made SQLite tables made before reservation ids were `AUTOINCREMENT`: `create_tables`
/// (and the migration) rebuild the reservations table, keeping its rows, once.
#[test]
fn create_tables_upgrades_sqlite_reservations_made_without_autoincrement_and_keeps_their_rows() {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    let db = TestSqlite::new();
    let mut conn = db.conn();
    conn.batch_execute(include_str!(
        "../migrations/sqlite/2026-12-01-000010_upsert_kit_tables/up.sql"
    ))
    .unwrap();
    conn.batch_execute(
        "INSERT INTO upsert_kit_quotas (quota_key, quota_limit, reserved) VALUES ('k', 10, 5);
         INSERT INTO upsert_kit_reservations (id, quota_key, amount, expires_at)
             VALUES (41, 'k', 2, '2026-12-01 10:00:00'), (42, 'k', 3, '2026-12-01 10:00:00');",
    )
    .unwrap();
    let autoincrement = |conn: &mut diesel::SqliteConnection| -> i64 {
        diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "SELECT count(*) FROM sqlite_master WHERE name = 'upsert_kit_reservations' \
             AND sql LIKE '%AUTOINCREMENT%'",
        )
        .get_result(conn)
        .unwrap()
    };
    assert_eq!(autoincrement(&mut conn), 0);
    create_tables(&mut conn).unwrap();
    create_tables(&mut conn).unwrap();
    assert_eq!(autoincrement(&mut conn), 1);
    let rows: Vec<(i64, i64)> = diesel::dsl::sql::<(
        diesel::sql_types::BigInt,
        diesel::sql_types::BigInt,
    )>("SELECT id, amount FROM upsert_kit_reservations ORDER BY id")
    .load(&mut conn)
    .unwrap();
    assert_eq!(rows, [(41, 2), (42, 3)]);
    let indexes: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' \
         AND tbl_name = 'upsert_kit_reservations' AND name LIKE 'upsert_kit_reservations_%'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(indexes, 2, "the indexes are rebuilt with the table");
    // The newest row deleted, the next reservation still gets a new id.
    conn.batch_execute("DELETE FROM upsert_kit_reservations WHERE id = 42; UPDATE upsert_kit_quotas SET reserved = 2")
        .unwrap();
    let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(9, 0, 0)
        .unwrap();
    let next =
        quota::reserve::<Quotas, _>(&mut conn, &"k".to_owned(), 1, Duration::from_secs(30), now)
            .unwrap();
    assert_eq!(next.id, 43);
    exercise!(&mut conn);
}

#[test]
fn the_library_creates_the_ready_made_tables_twice_without_error_and_uses_them_on_postgres() {
    let db = TestDb::new();
    let mut conn = db.conn();
    create_tables(&mut conn).unwrap();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}

#[test]
fn the_migrations_apply_with_diesels_harness_and_the_library_accepts_them_on_postgres() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}

#[test]
fn the_migrations_and_the_library_agree_on_sqlite() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let mut conn = db.conn();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
    let fresh = TestSqlite::new();
    let mut conn = fresh.conn();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}

#[test]
fn the_migrations_and_the_library_agree_on_mysql() {
    use diesel_migrations::MigrationHarness;
    let db = TestMysql::new();
    let mut conn = db.conn();
    assert_eq!(
        conn.run_pending_migrations(MYSQL_MIGRATIONS).unwrap().len(),
        1
    );
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
    let fresh = TestMysql::new();
    let mut conn = fresh.conn();
    create_tables(&mut conn).unwrap();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}
