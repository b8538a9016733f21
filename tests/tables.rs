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
    }};
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
