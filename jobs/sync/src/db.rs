//! The sync jobs' migrations: the four tables of [`crate::schema`], embedded in the binaries,
//! one set per backend.
//!
//! The binaries apply them on start ([`crate::SyncDatabase::open`], under a lock so runs that
//! start together migrate once). All three sets are embedded whichever backends the crate is
//! built with (features `postgres` and `mysql`); [`run_migrations`] applies the set of the
//! connection's backend. They are also plain Diesel migrations: from `jobs/sync/`,
//! `diesel migration run --database-url postgres://…` applies the PostgreSQL set
//! (`diesel.toml` points at `migrations/postgres`); the SQLite set is
//! `--migration-dir migrations/sqlite`.

use crate::error::JobError;
use diesel::migration::MigrationSource;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use upsert_kit::conn::WriteConnection;
use upsert_kit::tables::{ChooseBackend, PerBackend};

/// The PostgreSQL migrations (`migrations/postgres`): `strava_stats`, `wakatime_stats`,
/// `strava_auth`, `wakatime_auth`.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The SQLite migrations (`migrations/sqlite`): the same tables as [`PG_MIGRATIONS`].
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// The MySQL/MariaDB migrations (`migrations/mysql`): the same tables as [`PG_MIGRATIONS`]
/// (`JSON` for the payload, `DATETIME(6)` for the timestamps, `VARCHAR(64)` keys).
pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// Each backend's migrations, for [`run_migrations`].
const MIGRATIONS: PerBackend<fn() -> EmbeddedMigrations> = PerBackend {
    postgres: || PG_MIGRATIONS,
    sqlite: || SQLITE_MIGRATIONS,
    mysql: || MYSQL_MIGRATIONS,
};

/// Whether `conn` (SQLite) lacks any migration of [`SQLITE_MIGRATIONS`], found with a plain
/// read: unlike Diesel's `has_pending_migration`, which first runs `CREATE TABLE IF NOT
/// EXISTS __diesel_schema_migrations` (a write), it takes no write lock, so a run with nothing
/// to migrate does not queue behind other writers of the file.
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// assert!(sync_jobs::db::sqlite_needs_migrations(&mut conn)?);
/// sync_jobs::db::run_migrations(&mut conn)?;
/// assert!(!sync_jobs::db::sqlite_needs_migrations(&mut conn)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`JobError::Migration`] when the embedded migrations cannot be listed; the database's
/// error (e.g. [`upsert_kit::Error::Busy`]) when the read fails otherwise.
pub fn sqlite_needs_migrations(conn: &mut SqliteConnection) -> Result<bool, JobError> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let applied = match diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load::<Applied>(conn)
    {
        Ok(rows) => rows,
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().starts_with("no such table") =>
        {
            return Ok(true)
        }
        Err(e) => return Err(e.into()),
    };
    let embedded = MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS)
        .map_err(|e| JobError::Migration(e.to_string()))?;
    Ok(embedded.iter().any(|m| {
        let version = m.name().version().to_string();
        !applied.iter().any(|a| a.version == version)
    }))
}

/// Applies the pending migrations of `conn`'s backend ([`PG_MIGRATIONS`],
/// [`SQLITE_MIGRATIONS`] or [`MYSQL_MIGRATIONS`]); returns how many ran.
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// assert_eq!(sync_jobs::db::run_migrations(&mut conn)?, 1);
/// assert_eq!(sync_jobs::db::run_migrations(&mut conn)?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`JobError::Migration`] when a migration fails; it is rolled back.
pub fn run_migrations<C>(conn: &mut C) -> Result<usize, JobError>
where
    C: WriteConnection,
    C::Backend: ChooseBackend,
    C::Raw: MigrationHarness<C::Backend>,
{
    let migrations = MIGRATIONS.of::<C>()();
    conn.raw()
        .run_pending_migrations(migrations)
        .map(|applied| applied.len())
        .map_err(|e| JobError::Migration(e.to_string()))
}
