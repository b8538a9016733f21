//! The sync jobs' migrations: the four tables of [`crate::schema`], embedded in the binaries,
//! one set per backend.
//!
//! The binaries apply them on start ([`crate::SyncDatabase::open`], under a lock so runs that
//! start together migrate once). They are also plain Diesel migrations: from `jobs/sync/`,
//! `diesel migration run --database-url postgres://…` applies the PostgreSQL set
//! (`diesel.toml` points at `migrations/postgres`); the SQLite set is
//! `--migration-dir migrations/sqlite`.

use crate::error::JobError;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The PostgreSQL migrations (`migrations/postgres`): `strava_stats`, `wakatime_stats`,
/// `strava_auth`, `wakatime_auth`.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The SQLite migrations (`migrations/sqlite`): the same tables as [`PG_MIGRATIONS`].
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Connections whose schema this crate can migrate: [`PgConnection`] with [`PG_MIGRATIONS`],
/// [`SqliteConnection`] with [`SQLITE_MIGRATIONS`].
pub trait Migrate {
    /// Applies every pending migration of this backend's set; returns how many ran.
    ///
    /// # Errors
    /// [`JobError::Migration`] when a migration fails; it is rolled back.
    fn run_migrations(&mut self) -> Result<usize, JobError>;
}

fn apply<DB, C>(conn: &mut C, migrations: impl MigrationSource<DB>) -> Result<usize, JobError>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
{
    conn.run_pending_migrations(migrations)
        .map(|applied| applied.len())
        .map_err(|e| JobError::Migration(e.to_string()))
}

impl Migrate for PgConnection {
    fn run_migrations(&mut self) -> Result<usize, JobError> {
        apply::<Pg, _>(self, PG_MIGRATIONS)
    }
}

impl Migrate for SqliteConnection {
    fn run_migrations(&mut self) -> Result<usize, JobError> {
        apply::<Sqlite, _>(self, SQLITE_MIGRATIONS)
    }
}

/// Applies the pending migrations of `conn`'s backend (see [`Migrate`]); returns how many ran.
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
pub fn run_migrations<C: Migrate>(conn: &mut C) -> Result<usize, JobError> {
    conn.run_migrations()
}
