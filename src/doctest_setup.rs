// The tables of the documentation's examples, included by each example with
// `include!("doctest_setup.rs")` (hidden), the way diesel's own doctests do. An example sees
// three Diesel tables (`stats`, `tokens`, `items`) and `establish_sqlite()`, an in-memory SQLite
// database that has them.

diesel::table! {
    /// A stats table: one row per `stats_type`, the payload as JSON.
    stats (id) {
        id -> BigInt,
        stats_type -> Text,
        data -> Jsonb,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// OAuth tokens: one row per account, monotonic in `expires_at`.
    tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        access_token -> Text,
        refresh_token -> Text,
        expires_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// A catalogue keyed by its unique `sku`.
    items (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
    }
}

diesel::table! {
    /// A counter table: calls and bytes per user and day, with optional limits.
    api_calls (user_id, day) {
        user_id -> BigInt,
        day -> Date,
        calls -> BigInt,
        bytes -> BigInt,
        max_calls -> BigInt,
        max_bytes -> BigInt,
    }
}

diesel::table! {
    /// A quota per account.
    credits (account) {
        account -> BigInt,
        credit_limit -> BigInt,
        used -> BigInt,
        reserved -> BigInt,
    }
}

diesel::table! {
    /// The reservations held against `credits`.
    credit_holds (id) {
        id -> BigInt,
        account -> BigInt,
        amount -> BigInt,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    /// An idempotency ledger.
    idempotency_keys (key) {
        key -> Text,
        fingerprint -> Text,
        result -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Period rows: one per account and window start.
    periods (id) {
        id -> BigInt,
        account -> BigInt,
        starts_at -> Timestamp,
        ends_at -> Timestamp,
    }
}

/// An in-memory SQLite database with the examples' tables.
#[allow(dead_code)]
fn establish_sqlite() -> Result<diesel::SqliteConnection, Box<dyn std::error::Error>> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn = diesel::SqliteConnection::establish(":memory:")?;
    conn.batch_execute(
        "CREATE TABLE stats (
            id INTEGER PRIMARY KEY,
            stats_type TEXT NOT NULL UNIQUE,
            data BLOB NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        CREATE TABLE tokens (
            id BIGINT PRIMARY KEY NOT NULL,
            user_id BIGINT NOT NULL,
            access_token TEXT NOT NULL,
            refresh_token TEXT NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        );
        CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            sku TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL
        );
        CREATE TABLE api_calls (
            user_id BIGINT NOT NULL,
            day DATE NOT NULL,
            calls BIGINT NOT NULL DEFAULT 0,
            bytes BIGINT NOT NULL DEFAULT 0,
            max_calls BIGINT NOT NULL DEFAULT 1000,
            max_bytes BIGINT NOT NULL DEFAULT 1000000,
            PRIMARY KEY (user_id, day)
        );
        CREATE TABLE credits (
            account BIGINT PRIMARY KEY NOT NULL,
            credit_limit BIGINT NOT NULL,
            used BIGINT NOT NULL DEFAULT 0,
            reserved BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE credit_holds (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account BIGINT NOT NULL REFERENCES credits (account),
            amount BIGINT NOT NULL,
            expires_at TIMESTAMP NOT NULL
        );
        CREATE TABLE idempotency_keys (
            key TEXT PRIMARY KEY NOT NULL,
            fingerprint TEXT NOT NULL,
            result TEXT,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE periods (
            id INTEGER PRIMARY KEY,
            account BIGINT NOT NULL,
            starts_at TIMESTAMP NOT NULL,
            ends_at TIMESTAMP NOT NULL,
            UNIQUE (account, starts_at)
        );",
    )?;
    Ok(conn)
}

#[cfg(feature = "postgres")]
diesel::table! {
    /// A work queue with the default column names of `upsert_kit::claim::ClaimQueue`.
    tasks (id) {
        id -> BigInt,
        name -> Text,
    }
}

/// A claimed task, as a worker reads it.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(Debug, diesel::QueryableByName)]
#[diesel(table_name = tasks)]
#[allow(dead_code)]
struct Task {
    id: i64,
    name: String,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl upsert_kit::claim::ClaimQueue for Task {
    type Table = tasks::table;
    const CREATED_AT: Option<&'static str> = Some("created_at");
}

/// A database of its own on the test server (see the `upsert-kit-support` crate), with the
/// examples' tables and three pending tasks; dropped with the returned guard.
#[cfg(feature = "postgres")]
#[allow(dead_code)]
fn establish_pg(
) -> Result<(upsert_kit_support::TestDb, diesel::PgConnection), Box<dyn std::error::Error>> {
    let db = upsert_kit_support::TestDb::with_sql(
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL);
         CREATE TABLE tasks (
             id BIGSERIAL PRIMARY KEY,
             name TEXT NOT NULL,
             status TEXT NOT NULL DEFAULT 'pending',
             attempts INT NOT NULL DEFAULT 0,
             locked_until TIMESTAMPTZ,
             holder TEXT,
             last_error TEXT,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now());
         INSERT INTO tasks (name) VALUES ('resize'), ('index'), ('mail');",
    );
    let conn = db.conn();
    Ok((db, conn))
}

/// A MySQL/MariaDB database of its own on the test server (see the `upsert-kit-support`
/// crate), with the examples' `tasks` queue and three pending tasks; dropped with the guard.
#[cfg(feature = "mysql")]
#[allow(dead_code)]
fn establish_mysql(
) -> Result<(upsert_kit_support::TestMysql, diesel::MysqlConnection), Box<dyn std::error::Error>> {
    // The tests' queue, its items created now (the docs show their age).
    let tasks = upsert_kit_support::mysql::TASKS_TABLE
        .replace("DEFAULT '2000-01-01 00:00:00'", "DEFAULT CURRENT_TIMESTAMP(6)");
    let db = upsert_kit_support::TestMysql::with_sql(&format!(
        "{tasks}; INSERT INTO tasks (name) VALUES ('resize'), ('index'), ('mail');"
    ));
    let conn = db.conn();
    Ok((db, conn))
}
