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
        2
    );
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
    let fresh = TestMysql::new();
    let mut conn = fresh.conn();
    create_tables(&mut conn).unwrap();
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}

/// The ready-made MySQL tables as their first migration made them: keys in `utf8mb4_bin`, a
/// PAD SPACE collation.
const MYSQL_TABLES_IN_UTF8MB4_BIN: &str = r"
CREATE TABLE IF NOT EXISTS upsert_kit_idempotency_keys (
    `key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result LONGTEXT,
    created_at DATETIME(6) NOT NULL,
    INDEX upsert_kit_idempotency_keys_created_at (created_at),
    CHECK (`key` <> '')
);

CREATE TABLE IF NOT EXISTS upsert_kit_quotas (
    quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    quota_limit BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0,
    CHECK (quota_key <> ''),
    CHECK (quota_limit >= 0),
    CHECK (used >= 0),
    CHECK (reserved >= 0)
);

CREATE TABLE IF NOT EXISTS upsert_kit_reservations (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    amount BIGINT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    INDEX upsert_kit_reservations_expiry (expires_at),
    INDEX upsert_kit_reservations_quota_key (quota_key),
    CHECK (amount > 0),
    FOREIGN KEY (quota_key) REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE
);
";

/// The key collations of the ready-made MySQL tables.
fn mysql_key_collations(conn: &mut diesel::MysqlConnection) -> Vec<(String, String)> {
    use diesel::RunQueryDsl;
    diesel::dsl::sql::<(diesel::sql_types::Text, diesel::sql_types::Text)>(
        "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME IN ('key', 'quota_key') \
         AND TABLE_NAME LIKE 'upsert_kit_%' ORDER BY 1",
    )
    .load(conn)
    .unwrap()
}

/// Ready-made MySQL tables made before their keys were NO PAD: `create_tables` (and migration
/// 000166) change the three key columns once, keeping the rows, the foreign key and the
/// reservations' id counter; a reservation whose key was spelled otherwise than its quota's
/// (which PAD SPACE matched) gets its quota's key; afterwards 'a' and 'a ' are two keys.
#[test]
fn create_tables_upgrades_mysql_keys_made_in_a_pad_space_collation_and_keeps_their_rows() {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    let db = TestMysql::with_sql(MYSQL_TABLES_IN_UTF8MB4_BIN);
    let mut conn = db.conn();
    conn.batch_execute(
        "INSERT INTO upsert_kit_quotas (quota_key, quota_limit, reserved) VALUES ('k ', 10, 5);
         INSERT INTO upsert_kit_reservations (id, quota_key, amount, expires_at)
             VALUES (41, 'k', 2, '2026-12-01 10:00:00'), (42, 'k ', 3, '2026-12-01 10:00:00'),
                    (43, 'k', 1, '2026-12-01 10:00:00');
         DELETE FROM upsert_kit_reservations WHERE id = 43;
         INSERT INTO upsert_kit_idempotency_keys (`key`, fingerprint, result, created_at)
             VALUES ('job ', 'f', '7', '2026-12-01 09:00:00');",
    )
    .unwrap();
    let pad = |table: &str| (table.to_owned(), "utf8mb4_bin".to_owned());
    let no_pad = |table: &str| (table.to_owned(), "utf8mb4_nopad_bin".to_owned());
    let tables = [
        "upsert_kit_idempotency_keys.key",
        "upsert_kit_quotas.quota_key",
        "upsert_kit_reservations.quota_key",
    ];
    assert_eq!(mysql_key_collations(&mut conn), tables.map(pad));
    create_tables(&mut conn).unwrap();
    create_tables(&mut conn).unwrap();
    assert_eq!(mysql_key_collations(&mut conn), tables.map(no_pad));

    let rows: Vec<(i64, String, i64)> =
        diesel::dsl::sql::<(
            diesel::sql_types::BigInt,
            diesel::sql_types::Text,
            diesel::sql_types::BigInt,
        )>("SELECT id, quota_key, amount FROM upsert_kit_reservations ORDER BY id")
        .load(&mut conn)
        .unwrap();
    assert_eq!(rows, [(41, "k ".to_owned(), 2), (42, "k ".to_owned(), 3)]);
    let foreign_keys: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = 'upsert_kit_reservations' \
         AND REFERENCED_TABLE_NAME = 'upsert_kit_quotas' AND DELETE_RULE = 'CASCADE'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(foreign_keys, 1, "the reservations' foreign key is back");

    let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(9, 0, 0)
        .unwrap();
    // The deleted newest reservation's id is not handed out again.
    let next =
        quota::reserve::<Quotas, _>(&mut conn, &"k ".to_owned(), 1, Duration::from_secs(30), now)
            .unwrap();
    assert_eq!(next.id, 44);
    // 'k' is now a key of its own: no quota row, where PAD SPACE found 'k '.
    assert!(matches!(
        quota::try_consume::<Quotas, _>(&mut conn, &"k".to_owned(), 1, now),
        Err(Error::NotFound(_))
    ));
    let key = IdempotencyKey::new("job").unwrap();
    let fresh = run::<IdempotencyKeys, _, _, _>(&mut conn, &key, "f", now, |_| Ok(8_i64)).unwrap();
    assert!(fresh.applied, "'job' is a key of its own beside 'job '");
    let key = IdempotencyKey::new("job ").unwrap();
    let kept = run::<IdempotencyKeys, _, _, _>(&mut conn, &key, "f", now, |_| Ok(9_i64)).unwrap();
    assert_eq!((kept.value, kept.applied), (7, false));
    exercise!(&mut conn);
}

/// Migration 000166 through diesel's harness (what the diesel CLI runs): reverted, the keys are
/// `utf8mb4_bin` again and take the spellings PAD SPACE matches; run again, it upgrades them.
#[test]
fn the_mysql_no_pad_migration_reverts_and_upgrades_with_diesels_harness() {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    use diesel_migrations::MigrationHarness;
    let db = TestMysql::new();
    let mut conn = db.conn();
    conn.run_pending_migrations(MYSQL_MIGRATIONS).unwrap();
    conn.revert_last_migration(MYSQL_MIGRATIONS).unwrap();
    let tables = [
        "upsert_kit_idempotency_keys.key",
        "upsert_kit_quotas.quota_key",
        "upsert_kit_reservations.quota_key",
    ];
    let collations = |collation: &str| tables.map(|t| (t.to_owned(), collation.to_owned()));
    assert_eq!(mysql_key_collations(&mut conn), collations("utf8mb4_bin"));
    conn.batch_execute(
        "INSERT INTO upsert_kit_quotas (quota_key, quota_limit, reserved) VALUES ('k ', 10, 2);
         INSERT INTO upsert_kit_reservations (quota_key, amount, expires_at)
             VALUES ('k', 2, '2026-12-01 10:00:00');",
    )
    .unwrap();
    assert_eq!(
        conn.run_pending_migrations(MYSQL_MIGRATIONS).unwrap().len(),
        1
    );
    assert_eq!(
        mysql_key_collations(&mut conn),
        collations("utf8mb4_nopad_bin")
    );
    let keys: Vec<String> = diesel::dsl::sql::<diesel::sql_types::Text>(
        "SELECT quota_key FROM upsert_kit_reservations",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(keys, ["k "]);
    create_tables(&mut conn).unwrap();
    exercise!(&mut conn);
}
