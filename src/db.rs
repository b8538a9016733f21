//! Connections and pools, with errors that never print a password.
//!
//! A database URL that starts with `postgres://` or `postgresql://` names a PostgreSQL server;
//! anything else is an SQLite file path (`sqlite://` and `file:` prefixes are accepted).
//!
//! Nothing here is required: every primitive takes any Diesel connection of a supported
//! backend. These helpers add what a cron job usually wants around Diesel's own
//! `establish`: redacted errors and, for SQLite, the settings of a file shared by writers.

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::error::{Error, Result};
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
#[cfg(feature = "r2d2")]
use diesel::r2d2::{ConnectionManager, Pool};
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
#[cfg(feature = "r2d2")]
use std::time::Duration;

/// An r2d2 pool of PostgreSQL connections.
#[cfg(all(feature = "postgres", feature = "r2d2"))]
pub type PgPool = Pool<ConnectionManager<PgConnection>>;
/// An r2d2 pool of SQLite connections.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
pub type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;

/// Which backend a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A PostgreSQL server (`postgres://…`, `postgresql://…`).
    Postgres,
    /// An SQLite file (any other string).
    Sqlite,
}

impl BackendKind {
    /// The backend a URL names.
    ///
    /// ```
    /// use upsert_kit::db::BackendKind;
    /// assert_eq!(BackendKind::of("postgres://localhost/app"), BackendKind::Postgres);
    /// assert_eq!(BackendKind::of("sync.db"), BackendKind::Sqlite);
    /// ```
    pub fn of(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            BackendKind::Postgres
        } else {
            BackendKind::Sqlite
        }
    }
}

/// Strips an `sqlite://` or `file:` prefix, giving the path SQLite opens.
pub fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("file:"))
        .unwrap_or(url)
}

/// Opens a PostgreSQL connection. The error never contains the URL's password.
///
/// # Errors
/// [`Error::Connect`] when the server does not answer or refuses the login.
#[cfg(feature = "postgres")]
pub fn connect_pg(url: &str) -> Result<PgConnection> {
    PgConnection::establish(url).map_err(|e| {
        Error::Connect(format!(
            "cannot connect to {}: {}",
            redact_url(url),
            redact_message(&e.to_string())
        ))
    })
}

/// Opens an SQLite file (created if missing) set up for a writer that shares the file:
/// WAL journal, a 5 s busy timeout, foreign keys on.
///
/// # Errors
/// [`Error::Connect`] when the file cannot be opened.
#[cfg(feature = "sqlite")]
pub fn connect_sqlite(url: &str) -> Result<SqliteConnection> {
    let path = sqlite_path(url);
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| Error::Connect(format!("cannot open SQLite database {path:?}: {e}")))?;
    sqlite_setup(&mut conn)
        .map_err(|e| Error::Connect(format!("cannot set up SQLite database {path:?}: {e}")))?;
    Ok(conn)
}

/// Per-connection SQLite settings of [`connect_sqlite`] and [`sqlite_pool`].
#[cfg(feature = "sqlite")]
fn sqlite_setup(conn: &mut SqliteConnection) -> diesel::QueryResult<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;",
    )
}

/// [`sqlite_setup`] as the pool's connection customizer.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
#[derive(Debug, Clone, Copy)]
struct SqliteSetup;

#[cfg(all(feature = "sqlite", feature = "r2d2"))]
impl diesel::r2d2::CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(
        &self,
        conn: &mut SqliteConnection,
    ) -> std::result::Result<(), diesel::r2d2::Error> {
        sqlite_setup(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Builds an r2d2 pool of `size` PostgreSQL connections (a 10 s checkout timeout).
///
/// # Errors
/// [`Error::Pool`] when no connection can be opened; the message never contains the password.
///
/// # Panics
/// When `size` is 0.
#[cfg(all(feature = "postgres", feature = "r2d2"))]
pub fn pg_pool(url: &str, size: u32) -> Result<PgPool> {
    assert!(size > 0, "a pool needs at least one connection");
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .build(ConnectionManager::<PgConnection>::new(url))
        .map_err(|e| {
            Error::Pool(format!(
                "cannot open a pool on {}: {}",
                redact_url(url),
                redact_message(&e.to_string())
            ))
        })
}

/// Builds an r2d2 pool of `size` SQLite connections on one file, each set up as
/// [`connect_sqlite`] does.
///
/// # Errors
/// [`Error::Pool`] when the file cannot be opened.
///
/// # Panics
/// When `size` is 0.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
pub fn sqlite_pool(url: &str, size: u32) -> Result<SqlitePool> {
    assert!(size > 0, "a pool needs at least one connection");
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(SqliteSetup))
        .build(ConnectionManager::<SqliteConnection>::new(sqlite_path(url)))
        .map_err(|e| Error::Pool(e.to_string()))
}

/// A database URL with its password replaced by `***`, safe to print.
///
/// ```
/// use upsert_kit::db::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/app"), "postgres://app:***@db:5432/app");
/// assert_eq!(redact_url("postgres://db/app?password=s3cret"), "postgres://db/app?password=***");
/// assert_eq!(redact_url("stats.db"), "stats.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// Removes anything that looks like a password from a driver message (libpq quotes
/// connection strings in some of its errors).
pub(crate) fn redact_message(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            if w.contains("://") {
                redact_url(w)
            } else if w.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `SELECT 1`, to check that a connection answers.
///
/// # Errors
/// The classified error of the failed round trip.
pub fn ping<C>(conn: &mut C) -> Result<()>
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}
