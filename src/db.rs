//! Connections and pools, with errors that never print a password.
//!
//! A database URL that starts with `postgres://` or `postgresql://` names a PostgreSQL server,
//! one that starts with `mysql://` (or `mariadb://`, which [`connect_mysql`] rewrites) a MySQL or
//! MariaDB server; anything else is an SQLite file path (`sqlite://` and `file:` prefixes are
//! accepted).
//!
//! Nothing here is required: every primitive takes any Diesel connection of a supported
//! backend. These helpers add what a cron job usually wants around Diesel's own
//! `establish`: redacted errors, the pooler mode below and, for SQLite, the settings of a
//! file shared by writers.
//!
//! # Behind a transaction-mode pooler: pooler mode
//! Hosted PostgreSQL is usually reached through a pooler in *transaction* mode (PgBouncer,
//! Supabase's pooler on port 6543, RDS Proxy): each transaction of one client connection may
//! run on a different server connection. Two things break there:
//!
//! - **Named prepared statements.** Diesel prepares each cacheable statement once per
//!   connection under a name (`__diesel_stmt_0`, …) and executes it by name later; the crate's
//!   upserts, counters, quotas and claims are all such statements. Behind the pooler the name
//!   lives on one server connection only: the next transaction, on another one, fails with
//!   `prepared statement "__diesel_stmt_0" does not exist`, and a second client preparing the
//!   same name on a server connection that already has it fails with `… already exists`
//!   (PgBouncer before 1.21 does not track prepared statements at all).
//! - **Session state.** A session advisory lock, or a `SET` without `LOCAL`, stays on the
//!   server connection that ran it, which the pooler then hands to another client.
//!
//! **Pooler mode** answers both. Turn it on with the URL parameter
//! `upsert_kit_pooler=transaction` ([`POOLER_PARAM`]) given to [`connect_pg`] or [`pg_pool`]
//! (the crate takes it out of the URL before libpq sees it), or on a connection of your own
//! with [`set_pooler_mode`]. A connection in pooler mode:
//!
//! - has Diesel's prepared-statement cache disabled, so every statement is sent as libpq's
//!   *unnamed* statement (`PQsendQueryParams`: parse, bind and execute in one message
//!   sequence, which the pooler keeps on one server connection). The cost is a parse and plan
//!   per statement (measured in the race report); the results are the same.
//! - refuses the session-scoped advisory locks ([`lock::lock`](crate::lock::lock),
//!   [`try_lock`](crate::lock::try_lock), [`try_lock_for`](crate::lock::try_lock_for),
//!   [`with_lock`](crate::lock::with_lock), the shared ones) with
//!   [`Error::SessionStateUnavailable`] before sending anything: use the transaction-scoped
//!   locks ([`xact_lock`](crate::lock::xact_lock) inside a transaction) or a claim with a lease
//!   ([`claim`](crate::claim)), which hold without a session.
//!
//! The mode is a marker the crate keeps in the connection's Diesel instrumentation slot
//! (wrapping the default instrumentation, which still receives every event): it moves with
//! the connection, also through an r2d2 pool. Calling `set_instrumentation` on the connection
//! afterwards replaces the marker: call [`set_pooler_mode`] again after it.
//!
//! `upsert_kit_pooler=session` (or `off`) leaves the mode off, for a pooler in session mode,
//! which keeps one server connection per client connection.
//!
//! **Session settings.** A `SET` without `LOCAL` stays on the server connection, where the
//! next client of a transaction-mode pooler finds it. The crate sends none: its one setting is
//! `set_config('lock_timeout', …, true)` in [`try_lock_for`](crate::lock::try_lock_for),
//! transaction-local (and refused in pooler mode with the other session locks). Diesel's
//! connection setup sends `SET TIME ZONE 'UTC'` and `SET CLIENT_ENCODING TO 'UTF8'`: PgBouncer
//! tracks these two parameters and gives each client its own values on whatever server
//! connection it gets (the library's `tests/pooler.rs` checks both, and that an untracked
//! session `SET` does leak). RDS Proxy instead pins a client that sends a `SET` to its server
//! connection (correct, but without multiplexing): see the workspace's
//! `docs/hosted-databases.md`. Settings of your own: use `SET LOCAL` (or
//! `set_config(…, true)`) inside the transaction that needs them.

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::error::{Error, Result};
#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::redact::redact_message_with;
/// Moved to [`crate::redact`]; these paths stay until 0.2 (see CHANGELOG.md).
#[doc(no_inline)]
pub use crate::redact::{
    redact_url, scrub_forms, scrub_secret, secret_forms, url_password, MIN_SECRET_FRAGMENT,
    REDACTED,
};
#[cfg(feature = "mysql")]
use diesel::mysql::MysqlConnection;
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
/// An r2d2 pool of MySQL/MariaDB connections.
#[cfg(all(feature = "mysql", feature = "r2d2"))]
pub type MysqlPool = Pool<ConnectionManager<MysqlConnection>>;
/// An r2d2 pool of SQLite connections.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
pub type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;

/// Which backend a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A PostgreSQL server (`postgres://…`, `postgresql://…`).
    Postgres,
    /// A MySQL or MariaDB server (`mysql://…`, `mariadb://…`).
    Mysql,
    /// An SQLite file (any other string).
    Sqlite,
}

impl BackendKind {
    /// The backend a URL names.
    ///
    /// ```
    /// use upsert_kit::db::BackendKind;
    /// assert_eq!(BackendKind::of("postgres://localhost/app"), BackendKind::Postgres);
    /// assert_eq!(BackendKind::of("mysql://app@localhost/app"), BackendKind::Mysql);
    /// assert_eq!(BackendKind::of("sync.db"), BackendKind::Sqlite);
    /// ```
    pub fn of(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            BackendKind::Postgres
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            BackendKind::Mysql
        } else {
            BackendKind::Sqlite
        }
    }
}

/// The busy timeout of [`connect_sqlite`] and [`sqlite_pool`] unless the URL's
/// `busy_timeout` parameter sets another: how long a statement waits for another connection's
/// lock before it fails with [`Error::Busy`].
#[cfg(feature = "sqlite")]
pub const DEFAULT_SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Strips an `sqlite://` or `file:` prefix and the crate's own `busy_timeout` parameter,
/// giving the path SQLite opens.
///
/// ```
/// use upsert_kit::db::sqlite_path;
/// assert_eq!(sqlite_path("sqlite://data/sync.db"), "data/sync.db");
/// assert_eq!(sqlite_path("sync.db?busy_timeout=30000"), "sync.db");
/// ```
pub fn sqlite_path(url: &str) -> String {
    split_busy_timeout(url).0
}

/// The path SQLite opens, and the `busy_timeout=<milliseconds>` parameter's text if the URL
/// has one (taken out of the query; other parameters stay).
fn split_busy_timeout(url: &str) -> (String, Option<String>) {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("file:"))
        .unwrap_or(url);
    let Some((head, query)) = path.rsplit_once('?') else {
        return (path.to_owned(), None);
    };
    let mut timeout = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("busy_timeout", v)) => {
                timeout = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if timeout.is_none() {
        return (path.to_owned(), None);
    }
    let path = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    (path, timeout)
}

/// The path and busy timeout (milliseconds) an SQLite URL asks for.
#[cfg(feature = "sqlite")]
fn sqlite_target(url: &str) -> Result<(String, u32)> {
    let (path, timeout) = split_busy_timeout(url);
    let ms = match timeout {
        None => DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
        Some(t) => t.parse::<u32>().map_err(|_| {
            Error::invalid(
                "busy_timeout",
                "expected the busy timeout in milliseconds (0 to 4294967295)",
            )
        })?,
    };
    Ok((path, ms))
}

/// The URL parameter that turns [pooler mode](self#behind-a-transaction-mode-pooler-pooler-mode)
/// on: `postgres://app@pooler:6432/app?upsert_kit_pooler=transaction`.
#[cfg(feature = "postgres")]
pub const POOLER_PARAM: &str = "upsert_kit_pooler=transaction";

/// The name of [`POOLER_PARAM`]'s key.
#[cfg(feature = "postgres")]
const POOLER_KEY: &str = "upsert_kit_pooler";

/// `url` without its `upsert_kit_pooler` parameter, and whether it asked for pooler mode.
///
/// ```
/// use upsert_kit::db::split_pooler_param;
/// assert_eq!(
///     split_pooler_param("postgres://db/app?upsert_kit_pooler=transaction&sslmode=require").unwrap(),
///     ("postgres://db/app?sslmode=require".to_owned(), true)
/// );
/// assert_eq!(split_pooler_param("postgres://db/app").unwrap(), ("postgres://db/app".to_owned(), false));
/// assert!(split_pooler_param("postgres://db/app?upsert_kit_pooler=yes").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] when the parameter's value is not `transaction`, `session` or `off`.
#[cfg(feature = "postgres")]
pub fn split_pooler_param(url: &str) -> Result<(String, bool)> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), false));
    };
    let mut pooler = None;
    let mut rest = Vec::new();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some((POOLER_KEY, v)) => pooler = Some(v),
            _ => rest.push(kv),
        }
    }
    let on = match pooler {
        None => return Ok((url.to_owned(), false)),
        Some("transaction") => true,
        Some("session" | "off") => false,
        Some(_) => {
            return Err(Error::invalid(
                POOLER_KEY,
                "expected `transaction` (pooler mode on), `session` or `off`",
            ))
        }
    };
    let url = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    Ok((url, on))
}

/// The marker of pooler mode, kept as the connection's instrumentation; it forwards every
/// event to the instrumentation it replaced.
#[cfg(feature = "postgres")]
struct PoolerMode {
    inner: Option<Box<dyn diesel::connection::Instrumentation>>,
}

#[cfg(feature = "postgres")]
impl diesel::connection::Instrumentation for PoolerMode {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        if let Some(inner) = self.inner.as_deref_mut() {
            inner.on_connection_event(event);
        }
    }
}

/// Puts `conn` in [pooler mode](self#behind-a-transaction-mode-pooler-pooler-mode): Diesel's
/// prepared-statement cache off (every statement unnamed), session-scoped locks refused. For
/// connections not opened by [`connect_pg`] or [`pg_pool`]; those take
/// [`POOLER_PARAM`] in the URL instead. Statements already prepared on the connection are
/// forgotten by Diesel (they stay on whichever server connection has them).
///
/// The connection's instrumentation becomes the diesel default one
/// ([`get_default_instrumentation`](diesel::connection::get_default_instrumentation)) behind
/// the marker; set a custom instrumentation before this call, not after (see the module docs).
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = establish_pg()?;
/// use upsert_kit::db::{is_pooler_mode, set_pooler_mode};
/// assert!(!is_pooler_mode(&mut conn));
/// set_pooler_mode(&mut conn);
/// assert!(is_pooler_mode(&mut conn));
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub fn set_pooler_mode(conn: &mut PgConnection) {
    use diesel::connection::CacheSize;
    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    if !is_pooler_mode(conn) {
        conn.set_instrumentation(PoolerMode {
            inner: diesel::connection::get_default_instrumentation(),
        });
    }
}

/// Whether `conn` is in [pooler mode](self#behind-a-transaction-mode-pooler-pooler-mode).
#[cfg(feature = "postgres")]
pub fn is_pooler_mode(conn: &mut PgConnection) -> bool {
    conn.instrumentation()
        .downcast_ref::<PoolerMode>()
        .is_some()
}

/// Opens a PostgreSQL connection. The error never contains the URL's password.
///
/// With `upsert_kit_pooler=transaction` in the URL ([`POOLER_PARAM`]) the connection is in
/// [pooler mode](self#behind-a-transaction-mode-pooler-pooler-mode); the parameter is taken
/// out before libpq sees the URL.
///
/// # Errors
/// [`Error::Connect`] when the server does not answer or refuses the login;
/// [`Error::InvalidInput`] for an `upsert_kit_pooler` value other than `transaction`,
/// `session` or `off`.
#[cfg(feature = "postgres")]
pub fn connect_pg(url: &str) -> Result<PgConnection> {
    let (libpq_url, pooler) = split_pooler_param(url)?;
    let mut conn = PgConnection::establish(&libpq_url).map_err(|e| {
        let password = url_password(url);
        Error::Connect(format!(
            "cannot connect to {}: {}",
            redact_url(&libpq_url),
            redact_message_with(&e.to_string(), password.as_deref())
        ))
    })?;
    if pooler {
        set_pooler_mode(&mut conn);
    }
    Ok(conn)
}

/// [`set_pooler_mode`] as the pool's connection customizer.
#[cfg(all(feature = "postgres", feature = "r2d2"))]
#[derive(Debug, Clone, Copy)]
struct PoolerSetup;

#[cfg(all(feature = "postgres", feature = "r2d2"))]
impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for PoolerSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> std::result::Result<(), diesel::r2d2::Error> {
        set_pooler_mode(conn);
        Ok(())
    }
}

/// The URL Diesel's MySQL connection takes: `mariadb://` becomes `mysql://` (the same
/// protocol; Diesel accepts only the latter).
#[cfg(feature = "mysql")]
fn mysql_url(url: &str) -> String {
    match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    }
}

/// Opens a MySQL or MariaDB connection (`mysql://user:password@host:port/database`, or
/// `mariadb://…`). The error never contains the URL's password.
///
/// Diesel's connection sets the `CLIENT_FOUND_ROWS` flag, the session's time zone to UTC and
/// its character set to `utf8mb4`; the upserts report exact outcomes whatever the flag (see
/// [`upsert`](crate::upsert#outcomes)).
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = upsert_kit_support::TestMysql::with_sql(
/// #     "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, sku VARCHAR(64) NOT NULL UNIQUE, name TEXT NOT NULL)");
/// # let url = db.url();
/// use upsert_kit::{atomic_upsert, bulk_upsert, UpsertModel, UpsertOutcome};
///
/// #[derive(UpsertModel)]
/// #[upsert(table = items, key(sku))]
/// struct Item { sku: String, name: String }
///
/// let mut conn = upsert_kit::db::connect_mysql(url)?; // mysql://user:password@host:3306/app
/// let anvil = Item { sku: "a-1".into(), name: "anvil".into() };
/// assert_eq!(atomic_upsert(&mut conn, &anvil)?, UpsertOutcome::Inserted);
/// assert_eq!(atomic_upsert(&mut conn, &anvil)?, UpsertOutcome::Updated);
/// let outcome = bulk_upsert(&mut conn, &[anvil, Item { sku: "b-2".into(), name: "bolt".into() }])?;
/// assert_eq!((outcome.inserted, outcome.updated), (1, 1));
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Connect`] when the server does not answer or refuses the login.
#[cfg(feature = "mysql")]
pub fn connect_mysql(url: &str) -> Result<MysqlConnection> {
    let url = mysql_url(url);
    MysqlConnection::establish(&url).map_err(|e| {
        let password = url_password(&url);
        Error::Connect(format!(
            "cannot connect to {}: {}",
            redact_url(&url),
            redact_message_with(&e.to_string(), password.as_deref())
        ))
    })
}

/// Builds an r2d2 pool of `size` MySQL or MariaDB connections (a 10 s checkout timeout).
///
/// # Errors
/// [`Error::Pool`] when no connection can be opened; the message never contains the password.
///
/// # Panics
/// When `size` is 0.
#[cfg(all(feature = "mysql", feature = "r2d2"))]
pub fn mysql_pool(url: &str, size: u32) -> Result<MysqlPool> {
    assert!(size > 0, "a pool needs at least one connection");
    let url = mysql_url(url);
    let password = url_password(&url);
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .error_handler(Box::new(RedactingErrorHandler {
            password: password.clone(),
        }))
        .build(ConnectionManager::<MysqlConnection>::new(url.clone()))
        .map_err(|e| {
            Error::Pool(format!(
                "cannot open a pool on {}: {}",
                redact_url(&url),
                redact_message_with(&e.to_string(), password.as_deref())
            ))
        })
}

/// Opens an SQLite file (created if missing) set up for a writer that shares the file:
/// WAL journal, a busy timeout, foreign keys on.
///
/// The busy timeout is [`DEFAULT_SQLITE_BUSY_TIMEOUT_MS`] unless the URL's `busy_timeout`
/// parameter (milliseconds) says otherwise: `sync.db?busy_timeout=30000`. A statement that
/// waits longer than that for another connection's lock fails with [`Error::Busy`], which is
/// retryable: nothing was applied.
///
/// # Errors
/// [`Error::Connect`] when the file cannot be opened, [`Error::Busy`] when it stays locked
/// past the busy timeout while the connection is set up, [`Error::InvalidInput`] for a
/// `busy_timeout` that is not a number of milliseconds.
#[cfg(feature = "sqlite")]
pub fn connect_sqlite(url: &str) -> Result<SqliteConnection> {
    let (path, busy_ms) = sqlite_target(url)?;
    let mut conn = SqliteConnection::establish(&path)
        .map_err(|e| Error::Connect(format!("cannot open SQLite database {path:?}: {e}")))?;
    sqlite_setup(&mut conn, &path, busy_ms).map_err(|e| match Error::from(e) {
        Error::Busy(m) => Error::Busy(format!("{path:?}: {m}")),
        other => Error::Connect(format!("cannot set up SQLite database {path:?}: {other}")),
    })?;
    Ok(conn)
}

/// Per-connection SQLite settings of [`connect_sqlite`] and [`sqlite_pool`], and the file's
/// in-process writer gate (`crate::sqlite_gate`).
#[cfg(feature = "sqlite")]
fn sqlite_setup(conn: &mut SqliteConnection, path: &str, busy_ms: u32) -> diesel::QueryResult<()> {
    use diesel::connection::SimpleConnection;
    // The busy timeout first: the journal-mode change may wait for another connection.
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;"
    ))?;
    crate::sqlite_gate::install(conn, path, busy_ms);
    Ok(())
}

/// [`sqlite_setup`] as the pool's connection customizer.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
#[derive(Debug, Clone)]
struct SqliteSetup {
    path: String,
    busy_ms: u32,
}

#[cfg(all(feature = "sqlite", feature = "r2d2"))]
impl diesel::r2d2::CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(
        &self,
        conn: &mut SqliteConnection,
    ) -> std::result::Result<(), diesel::r2d2::Error> {
        sqlite_setup(conn, &self.path, self.busy_ms).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Builds an r2d2 pool of `size` PostgreSQL connections (a 10 s checkout timeout).
///
/// With `upsert_kit_pooler=transaction` in the URL ([`POOLER_PARAM`]) every connection of the
/// pool is in [pooler mode](self#behind-a-transaction-mode-pooler-pooler-mode).
///
/// # Errors
/// [`Error::Pool`] when no connection can be opened; the message never contains the password.
/// [`Error::InvalidInput`] for a bad `upsert_kit_pooler` value.
///
/// # Panics
/// When `size` is 0.
#[cfg(all(feature = "postgres", feature = "r2d2"))]
pub fn pg_pool(url: &str, size: u32) -> Result<PgPool> {
    assert!(size > 0, "a pool needs at least one connection");
    let password = url_password(url);
    let (libpq_url, pooler) = split_pooler_param(url)?;
    let mut builder = Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .error_handler(Box::new(RedactingErrorHandler {
            password: password.clone(),
        }));
    if pooler {
        builder = builder.connection_customizer(Box::new(PoolerSetup));
    }
    builder
        .build(ConnectionManager::<PgConnection>::new(libpq_url))
        .map_err(|e| {
            Error::Pool(format!(
                "cannot open a pool on {}: {}",
                redact_url(url),
                redact_message_with(&e.to_string(), password.as_deref())
            ))
        })
}

/// The pool's error handler: r2d2's default one logs each failed connection attempt with the
/// driver's message, which may quote the URL's password; this one logs it redacted.
#[cfg(all(any(feature = "postgres", feature = "mysql"), feature = "r2d2"))]
struct RedactingErrorHandler {
    password: Option<String>,
}

#[cfg(all(any(feature = "postgres", feature = "mysql"), feature = "r2d2"))]
impl std::fmt::Debug for RedactingErrorHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactingErrorHandler")
    }
}

#[cfg(all(any(feature = "postgres", feature = "mysql"), feature = "r2d2"))]
impl r2d2::HandleError<diesel::r2d2::Error> for RedactingErrorHandler {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::error!(
            "connection pool: {}",
            redact_message_with(&error.to_string(), self.password.as_deref())
        );
    }
}

/// Builds an r2d2 pool of `size` SQLite connections on one file, each set up as
/// [`connect_sqlite`] does (the URL's `busy_timeout` parameter included).
///
/// # Errors
/// [`Error::Pool`] when the file cannot be opened, [`Error::InvalidInput`] for a bad
/// `busy_timeout`.
///
/// # Panics
/// When `size` is 0.
#[cfg(all(feature = "sqlite", feature = "r2d2"))]
pub fn sqlite_pool(url: &str, size: u32) -> Result<SqlitePool> {
    assert!(size > 0, "a pool needs at least one connection");
    let (path, busy_ms) = sqlite_target(url)?;
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(SqliteSetup {
            path: path.clone(),
            busy_ms,
        }))
        .build(ConnectionManager::<SqliteConnection>::new(path))
        .map_err(|e| Error::Pool(e.to_string()))
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
