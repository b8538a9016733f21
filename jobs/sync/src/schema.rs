//! Diesel table definitions of the sync jobs' migrations (PostgreSQL, SQLite and MySQL share
//! them).

use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Json, Jsonb};

/// The stats payload's SQL type on each backend: `JSONB` on PostgreSQL (the same OIDs as
/// Diesel's `Jsonb`, so the statements and their binds are the ones `Jsonb` gives), SQLite's
/// binary JSONB (a `BLOB`), and `JSON` on MySQL/MariaDB, which has no `JSONB`. A
/// `serde_json::Value` reads and writes it as Diesel's `Jsonb` (PostgreSQL, SQLite) or `Json`
/// (MySQL) does.
#[derive(
    Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
)]
#[diesel(postgres_type(oid = 3802, array_oid = 3807))]
#[diesel(sqlite_type(name = "Binary"))]
#[diesel(mysql_type(name = "String"))]
pub struct JsonData;

impl ToSql<JsonData, diesel::pg::Pg> for serde_json::Value {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::pg::Pg>) -> serialize::Result {
        <serde_json::Value as ToSql<Jsonb, diesel::pg::Pg>>::to_sql(self, out)
    }
}

impl FromSql<JsonData, diesel::pg::Pg> for serde_json::Value {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Jsonb, diesel::pg::Pg>>::from_sql(bytes)
    }
}

impl ToSql<JsonData, diesel::sqlite::Sqlite> for serde_json::Value {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::sqlite::Sqlite>) -> serialize::Result {
        <serde_json::Value as ToSql<Jsonb, diesel::sqlite::Sqlite>>::to_sql(self, out)
    }
}

impl FromSql<JsonData, diesel::sqlite::Sqlite> for serde_json::Value {
    fn from_sql(
        bytes: <diesel::sqlite::Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Jsonb, diesel::sqlite::Sqlite>>::from_sql(bytes)
    }
}

impl ToSql<JsonData, diesel::mysql::Mysql> for serde_json::Value {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::mysql::Mysql>) -> serialize::Result {
        <serde_json::Value as ToSql<Json, diesel::mysql::Mysql>>::to_sql(self, out)
    }
}

impl FromSql<JsonData, diesel::mysql::Mysql> for serde_json::Value {
    fn from_sql(bytes: diesel::mysql::MysqlValue<'_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Json, diesel::mysql::Mysql>>::from_sql(bytes)
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::JsonData;

    /// Strava stats: one row per `stats_type`.
    strava_stats (id) {
        /// Surrogate key.
        id -> Int8,
        /// Unique stats kind: `ytd`, `all_time`, `recent`.
        stats_type -> Text,
        /// The API's payload.
        data -> JsonData,
        /// When the row was first written (UTC).
        created_at -> Timestamp,
        /// When the row's data last changed (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::JsonData;

    /// WakaTime stats: one row per `stats_type` (a stats range such as `last_7_days`).
    wakatime_stats (id) {
        /// Surrogate key.
        id -> Int8,
        /// Unique stats kind.
        stats_type -> Text,
        /// The API's payload.
        data -> JsonData,
        /// When the row was first written (UTC).
        created_at -> Timestamp,
        /// When the row's data last changed (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// Strava OAuth tokens, one row per account.
    strava_auth (id) {
        /// The account.
        id -> Int8,
        /// Strava's athlete id.
        athlete_id -> Int8,
        /// OAuth access token (secret).
        access_token -> Text,
        /// OAuth refresh token (secret).
        refresh_token -> Text,
        /// When the access token expires (UTC).
        expires_at -> Timestamp,
        /// When the row was last written (UTC).
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// WakaTime OAuth tokens, one row per account.
    wakatime_auth (id) {
        /// The account.
        id -> Int8,
        /// WakaTime's user id.
        user_id -> Text,
        /// OAuth access token (secret).
        access_token -> Text,
        /// OAuth refresh token (secret).
        refresh_token -> Text,
        /// When the access token expires (UTC).
        expires_at -> Timestamp,
        /// When the row was last written (UTC).
        updated_at -> Timestamp,
    }
}
