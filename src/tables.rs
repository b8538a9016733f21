//! Ready-made tables for users who do not bring their own: an idempotency ledger, a quota table
//! and its reservations, declared for [`idempotency`](crate::idempotency) and
//! [`quota`](mod@crate::quota) exactly as a user's own tables would be.
//!
//! The SQL is the repository's `migrations/` (one directory per backend, for the diesel CLI, see
//! the root `diesel.toml`); [`create_tables`] runs the same SQL. Every statement is
//! `CREATE … IF NOT EXISTS`, so both may run on one database. The later migrations that cannot
//! run twice run only on tables still without them: SQLite's, which rebuilds the reservations
//! table so that its ids are never reused (`AUTOINCREMENT`), and MySQL's, which changes the key
//! columns of tables made in `utf8mb4_bin` to a binary NO PAD collation.
//!
//! Keys mean the same on every backend: `"a"`, `"a "` and `"A"` are three keys. On MySQL and
//! MariaDB the key columns are `VARCHAR(255)` in MariaDB's `utf8mb4_nopad_bin` or MySQL's
//! `utf8mb4_0900_bin` (8.0.17+; the SQL names both in version comments, and each server runs
//! its own), not in a `PAD SPACE` collation such as `utf8mb4_bin`, which ignores trailing
//! spaces (see [`limits`](crate::limits)). A database made by the first MySQL tables is
//! upgraded by [`create_tables`] (or migration 000166): each reservation first takes its
//! quota's own spelling of the key, which `PAD SPACE` had matched to another (`"k"` against
//! `"k "`); afterwards a key spelled with other trailing spaces than a stored one is a new key.
//!
//! # Examples
//!
//! ```
//! use diesel::{Connection, RunQueryDsl, SqliteConnection};
//! use upsert_kit::idempotency::{run, IdempotencyKey};
//! use upsert_kit::tables::{create_tables, IdempotencyKeys, Quotas};
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! create_tables(&mut conn)?;
//! create_tables(&mut conn)?; // idempotent
//! let now = chrono::Utc::now().naive_utc();
//! let key = IdempotencyKey::new("job-1")?;
//! let first = run::<IdempotencyKeys, _, _, _>(&mut conn, &key, "", now, |_| Ok(1_i64))?;
//! assert!(first.applied);
//!
//! diesel::sql_query("INSERT INTO upsert_kit_quotas (quota_key, quota_limit) VALUES ('tokens:7', 10)")
//!     .execute(&mut conn)?;
//! let usage = upsert_kit::quota::try_consume::<Quotas, _>(&mut conn, &"tokens:7".to_owned(), 4, now)?;
//! assert_eq!(usage.available(), 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![allow(missing_docs)] // the columns of `diesel::table!`

use crate::conn::{Dialect, WriteConnection};
use crate::error::Result;

diesel::table! {
    /// The ready-made idempotency ledger.
    upsert_kit_idempotency_keys (key) {
        key -> Text,
        fingerprint -> Text,
        result -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// The ready-made quota table: one row per quota key.
    upsert_kit_quotas (quota_key) {
        quota_key -> Text,
        quota_limit -> BigInt,
        used -> BigInt,
        reserved -> BigInt,
    }
}

diesel::table! {
    /// The reservations held against [`upsert_kit_quotas`].
    upsert_kit_reservations (id) {
        id -> BigInt,
        quota_key -> Text,
        amount -> BigInt,
        expires_at -> Timestamp,
    }
}

crate::ledger! {
    table = upsert_kit_idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
    /// The ready-made ledger's declaration.
    #[derive(Debug, Clone, Copy)]
    pub struct IdempotencyKeys;
}

crate::quota! {
    table = upsert_kit_quotas, key = (quota_key: String), limit = quota_limit, used = used, reserved = reserved;
    reservations = upsert_kit_reservations(id, amount, expires_at);
    /// The ready-made quota table's declaration (with its reservations).
    #[derive(Debug, Clone, Copy)]
    pub struct Quotas;
}

/// A statement of the ready-made tables' own SQL, without binds.
struct Fixed(&'static str);

impl<DB: diesel::backend::Backend> diesel::query_builder::QueryFragment<DB> for Fixed {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        out.push_sql(self.0);
        Ok(())
    }
}

/// Creates the ready-made tables when they are missing (the SQL of `migrations/` for the
/// connection's backend), in one transaction.
///
/// # Errors
/// Database errors (e.g. a table of the same name with other columns is left alone and will fail
/// later; one with a conflicting index name fails here).
///
/// # Examples
/// See the [module documentation](self).
pub fn create_tables<C: WriteConnection>(conn: &mut C) -> Result<()> {
    use diesel::connection::SimpleConnection;
    let sql = <C::Backend as Dialect>::DEFAULT_TABLES_SQL;
    conn.write(|c| {
        c.batch_execute(sql)?;
        for (pending, upgrade) in <C::Backend as Dialect>::DEFAULT_TABLES_UPGRADES {
            if !c.run_ints(&Fixed(pending))?.is_empty() {
                c.batch_execute(upgrade)?;
            }
        }
        Ok(())
    })
}

/// One value for each backend, and the one for a connection's: the migrations of a crate's own
/// tables, say, whose SQL differs between backends (diesel's `embed_migrations!` embeds one
/// directory per backend), so that a function generic over the connection runs the right one.
///
/// # Examples
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::{Connection, SqliteConnection};
/// use upsert_kit::conn::WriteConnection;
/// use upsert_kit::tables::{ChooseBackend, PerBackend};
///
/// const CREATE: PerBackend<&str> = PerBackend {
///     postgres: "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
///     sqlite: "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
///     mysql: "CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)",
/// };
///
/// fn create_notes<C>(conn: &mut C) -> upsert_kit::Result<()>
/// where
///     C: WriteConnection,
///     C::Backend: ChooseBackend,
/// {
///     let sql = *CREATE.of::<C>();
///     conn.raw().batch_execute(sql)?;
///     Ok(())
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// create_notes(&mut conn)?;
/// conn.batch_execute("INSERT INTO notes (body) VALUES ('hello')")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PerBackend<T> {
    /// PostgreSQL's.
    pub postgres: T,
    /// SQLite's.
    pub sqlite: T,
    /// MySQL's and MariaDB's.
    pub mysql: T,
}

impl<T> PerBackend<T> {
    /// The value for `C`'s backend.
    pub fn of<C>(&self) -> &T
    where
        C: WriteConnection,
        C::Backend: ChooseBackend,
    {
        <C::Backend as ChooseBackend>::choose(self)
    }
}

/// Which of a [`PerBackend`]'s values is a backend's: implemented for PostgreSQL, SQLite and
/// MySQL; sealed.
pub trait ChooseBackend: Dialect {
    /// This backend's value.
    #[doc(hidden)]
    fn choose<T>(values: &PerBackend<T>) -> &T;
}

#[cfg(feature = "postgres")]
impl ChooseBackend for diesel::pg::Pg {
    fn choose<T>(values: &PerBackend<T>) -> &T {
        &values.postgres
    }
}

#[cfg(feature = "sqlite")]
impl ChooseBackend for diesel::sqlite::Sqlite {
    fn choose<T>(values: &PerBackend<T>) -> &T {
        &values.sqlite
    }
}

#[cfg(feature = "mysql")]
impl ChooseBackend for diesel::mysql::Mysql {
    fn choose<T>(values: &PerBackend<T>) -> &T {
        &values.mysql
    }
}
