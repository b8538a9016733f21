//! What both jobs share: the database a run writes to, its transactions, the single-flight
//! token refresh, and the run's summary.
//!
//! # Transactions
//! - **Offline** (`--from-file`): the capture is parsed and validated completely before the
//!   database is touched; then the token (when the capture has one) and every stats row are
//!   written in **one transaction**: all or nothing.
//! - **Online**: first the token transaction (take the account's refresh lock, re-read the
//!   stored token, refresh it at the API when it expires within the margin, store the new one
//!   with [`atomic_upsert_auth`], commit); then the stats are
//!   fetched and validated with no transaction open, and written in one transaction. A
//!   refreshed token is committed before the stats are fetched on purpose: the API has already
//!   retired the old refresh token, so rolling the new one back when the stats request fails
//!   would lock the account out. Every other failure leaves the database as it was.
//!
//! # Single-flight token refresh
//! - PostgreSQL: the token transaction holds the transaction-scoped advisory lock
//!   `LockKey::new("<job>-token-refresh", account)` (see `upsert_kit::lock`) around the read,
//!   the refresh and the store. Runs that start together queue on the lock; each one re-reads the
//!   token after taking it, so only the first refreshes and the others find a fresh token.
//!   The lock is released at commit or rollback; it holds across processes and hosts.
//! - MySQL/MariaDB: there is no transaction-scoped named lock, so the token transaction runs
//!   inside the session-scoped named lock of the same key (`GET_LOCK`, see
//!   `upsert_kit::lock::mysql`): taken before `BEGIN`, so the transaction's REPEATABLE READ
//!   snapshot is taken after it and sees the token the previous holder committed, and
//!   released after `COMMIT`, so the next holder finds it. The migrations run under the named
//!   lock [`MIGRATION_LOCK_NAMESPACE`] (MySQL's DDL commits on its own, so no transaction
//!   would hold them together).
//! - SQLite: the token transaction is `BEGIN IMMEDIATE`, which takes the database's single
//!   write lock at once; it plays the advisory lock's part (for every account at once). Runs
//!   that overlap queue for that lock: each waits up to its connection's busy timeout (the
//!   binaries' `--busy-timeout`, [`DEFAULT_BUSY_TIMEOUT`] unless the URL's `busy_timeout=<ms>`
//!   parameter says otherwise, see [`BusyTimeout`] and [`upsert_kit::db::connect_sqlite`]). A
//!   run that waited longer fails with [`upsert_kit::Error::Busy`], which is retryable: it
//!   wrote nothing.
//!
//! # Opening
//! A run opens the database and applies pending migrations (see [`SyncDatabase::open`]). On
//! SQLite a run with nothing to migrate only reads: it takes no write lock.
//!
//! In every case the store itself is monotonic ([`atomic_upsert_auth`]):
//! an older token never overwrites a newer one.

use crate::db as migrations;
use crate::error::JobError;
use crate::models::{StravaAuth, WakatimeAuth};
use crate::schema::{strava_auth, wakatime_auth};
use chrono::NaiveDateTime;
use diesel::dsl::{Find, Limit, Select};
#[cfg(feature = "mysql")]
use diesel::mysql::MysqlConnection;
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
use diesel::query_dsl::LoadQuery;
use diesel::sqlite::SqliteConnection;
use diesel::{OptionalExtension, QueryDsl, RunQueryDsl};
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use upsert_kit::conn::write_transaction;
use upsert_kit::db::{self, BackendKind};
use upsert_kit::lock::{exclusive_transaction, ExclusiveBackend, LockKey};
use upsert_kit::upsert::Newer;
use upsert_kit::{atomic_upsert_auth, AuthModel, UpsertOutcome, Upsertable};

/// Connections a sync run can write through: SQLite and, with the crate's features `postgres`
/// and `mysql`, PostgreSQL and MySQL/MariaDB. Implemented once for every connection the
/// library's [`exclusive_transaction`] runs on ([`SqliteConnection`], `PgConnection`,
/// `MysqlConnection`); the run logic is generic over it, and each backend's behaviour is the
/// library's.
///
/// # Examples
///
/// A run that fails after writing leaves nothing behind (upserts inside the run's transaction
/// join it):
///
/// ```
/// use diesel::{Connection, QueryDsl, RunQueryDsl, SqliteConnection};
/// use sync_jobs::{models::StravaStats, JobError, SyncConnection};
/// use sync_jobs::schema::strava_stats;
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// sync_jobs::db::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// let row = StravaStats { stats_type: "ytd".into(), data: serde_json::json!({"count": 1}), created_at: now, updated_at: now };
/// let run = conn.sync_transaction(|c| -> Result<(), JobError> {
///     upsert_kit::atomic_upsert_stats(c, &row)?;
///     Err(JobError::Config("the API failed after the first row".into()))
/// });
/// assert!(run.is_err());
/// assert_eq!(strava_stats::table.count().get_result::<i64>(&mut conn)?, 0);
/// assert!(conn.strava_token(1)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SyncConnection: ExclusiveBackend {
    /// Runs `f` in one write transaction ([`upsert_kit::conn::write_transaction`]): PostgreSQL
    /// and MySQL `BEGIN`, SQLite `BEGIN IMMEDIATE` (takes the write lock at once, so concurrent
    /// runs on one file are serialised); a savepoint when a transaction is already open.
    /// `f`'s error rolls everything back. Outside a transaction, a run the server rolled back as
    /// a deadlock's victim (InnoDB: runs that first-insert the same stats rows together can
    /// deadlock on the unique index's gap locks; nothing of the victim was applied) is run again
    /// from the start, up to [`MYSQL_DEADLOCK_ATTEMPTS`] times.
    ///
    /// # Errors
    /// `f`'s error, unchanged, or the database's; a connection lost while committing is
    /// [`upsert_kit::Error::OutcomeUnknown`] (the run may or may not have been applied).
    fn sync_transaction<T>(
        &mut self,
        f: impl FnMut(&mut Self) -> Result<T, JobError>,
    ) -> Result<T, JobError>;

    /// Runs `f` in one transaction during which no other run holds the token lock `lock`: the
    /// library's [`exclusive_transaction`] (PostgreSQL: the transaction-scoped advisory lock;
    /// MySQL: the session-scoped named lock around the transaction; SQLite: `BEGIN IMMEDIATE`,
    /// the database's write lock).
    ///
    /// # Errors
    /// As [`SyncConnection::sync_transaction`], and the lock's errors.
    fn token_transaction<T>(
        &mut self,
        lock: TokenLock,
        f: impl FnOnce(&mut Self) -> Result<T, JobError>,
    ) -> Result<T, JobError>;

    /// The stored Strava token of `account`, if any.
    ///
    /// # Errors
    /// Database errors.
    fn strava_token(&mut self, account: i64) -> Result<Option<StravaAuth>, JobError>;

    /// The stored WakaTime token of `account`, if any.
    ///
    /// # Errors
    /// Database errors.
    fn wakatime_token(&mut self, account: i64) -> Result<Option<WakatimeAuth>, JobError>;
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        JobError::Database(e.into())
    }
}

/// The columns of a token row, in the order of [`TokenRow`].
type StravaColumns = (
    strava_auth::id,
    strava_auth::athlete_id,
    strava_auth::access_token,
    strava_auth::refresh_token,
    strava_auth::expires_at,
    strava_auth::updated_at,
);
type WakatimeColumns = (
    wakatime_auth::id,
    wakatime_auth::user_id,
    wakatime_auth::access_token,
    wakatime_auth::refresh_token,
    wakatime_auth::expires_at,
    wakatime_auth::updated_at,
);
/// A token row: id, account on the API, access token, refresh token, expiry, update time.
type TokenRow<A> = (i64, A, String, String, NaiveDateTime, NaiveDateTime);
/// The read of one account's token.
type TokenQuery<T, C> = Limit<Select<Find<T, i64>, C>>;

impl<C> SyncConnection for C
where
    C: ExclusiveBackend,
    TokenQuery<strava_auth::table, StravaColumns>: for<'a> LoadQuery<'a, C, TokenRow<i64>>,
    TokenQuery<wakatime_auth::table, WakatimeColumns>: for<'a> LoadQuery<'a, C, TokenRow<String>>,
{
    fn sync_transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        let nested = upsert_kit::tx::in_transaction(self);
        let mut attempt = 1;
        loop {
            match write_transaction(self, &mut f) {
                Err(JobError::Database(upsert_kit::Error::Deadlock(m)))
                    if !nested && attempt < MYSQL_DEADLOCK_ATTEMPTS =>
                {
                    tracing::info!(
                        attempt,
                        "deadlock victim, running the transaction again: {m}"
                    );
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(u64::from(attempt) * 5));
                }
                other => return other,
            }
        }
    }

    fn token_transaction<T>(
        &mut self,
        lock: TokenLock,
        f: impl FnOnce(&mut Self) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        exclusive_transaction(self, lock.key(), f)
    }

    fn strava_token(&mut self, account: i64) -> Result<Option<StravaAuth>, JobError> {
        let columns: StravaColumns = Default::default();
        let row = strava_auth::table
            .find(account)
            .select(columns)
            .first(self)
            .optional()?;
        Ok(row.map(
            |(id, athlete_id, access_token, refresh_token, expires_at, updated_at)| {
                register(&access_token, &refresh_token);
                StravaAuth {
                    id,
                    athlete_id,
                    access_token,
                    refresh_token,
                    expires_at,
                    updated_at,
                }
            },
        ))
    }

    fn wakatime_token(&mut self, account: i64) -> Result<Option<WakatimeAuth>, JobError> {
        let columns: WakatimeColumns = Default::default();
        let row = wakatime_auth::table
            .find(account)
            .select(columns)
            .first(self)
            .optional()?;
        Ok(row.map(
            |(id, user_id, access_token, refresh_token, expires_at, updated_at)| {
                register(&access_token, &refresh_token);
                WakatimeAuth {
                    id,
                    user_id,
                    access_token,
                    refresh_token,
                    expires_at,
                    updated_at,
                }
            },
        ))
    }
}

/// Registers a stored token's two secrets for redaction (see [`crate::secrets`]).
fn register(access: &str, refresh: &str) {
    crate::secrets::register(access);
    crate::secrets::register(refresh);
}

/// How many times a run's transaction is run when it keeps being a deadlock's victim (InnoDB
/// picks victims among concurrent first inserts; the name stays from when only MySQL runs were
/// run again).
pub const MYSQL_DEADLOCK_ATTEMPTS: u32 = 5;

/// The lock that serialises the token refreshes of one account: the job's namespace
/// ([`crate::strava::LOCK_NAMESPACE`], [`crate::wakatime::LOCK_NAMESPACE`]) and the account.
/// On PostgreSQL it is the advisory lock `LockKey::new(namespace, account)` of
/// `upsert_kit::lock`, on MySQL the named lock of that key; on SQLite the database's write
/// lock, which an immediate transaction holds, stands in for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenLock {
    /// The job's lock namespace.
    pub namespace: &'static str,
    /// The account whose token is refreshed.
    pub account: i64,
}

impl TokenLock {
    /// The lock of `account`'s token in `namespace`.
    pub fn new(namespace: &'static str, account: i64) -> Self {
        TokenLock { namespace, account }
    }

    /// The library's lock key.
    fn key(self) -> LockKey {
        LockKey::new(self.namespace, self.account)
    }
}

/// The database of a sync run: an SQLite file or, with the crate's features `postgres` and
/// `mysql`, a PostgreSQL or MySQL/MariaDB connection.
pub enum SyncDatabase {
    /// `postgres://…` or `postgresql://…` (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(PgConnection),
    /// `mysql://…` or `mariadb://…` (feature `mysql`).
    #[cfg(feature = "mysql")]
    Mysql(MysqlConnection),
    /// Any other URL: an SQLite file path.
    Sqlite(SqliteConnection),
}

impl fmt::Debug for SyncDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "postgres")]
            SyncDatabase::Postgres(_) => "SyncDatabase::Postgres",
            #[cfg(feature = "mysql")]
            SyncDatabase::Mysql(_) => "SyncDatabase::Mysql",
            SyncDatabase::Sqlite(_) => "SyncDatabase::Sqlite",
        })
    }
}

/// The lock namespace that serialises migrations of concurrent runs (PostgreSQL's advisory
/// lock, MySQL's named lock).
pub const MIGRATION_LOCK_NAMESPACE: &str = "upsert-kit-migrations";

/// Seconds libpq waits for a PostgreSQL server to answer, unless the URL says otherwise.
pub const CONNECT_TIMEOUT_SECS: u32 = 10;

/// How long a run on an SQLite file waits for another run's write lock (its connection's busy
/// timeout) unless `--busy-timeout` or the URL's `busy_timeout=<ms>` parameter says otherwise.
/// A run holds the lock while it writes: milliseconds for the example captures, a second or two
/// for a capture of 30 MB. Five minutes lets a run wait out a queue of such runs (16 of them
/// started together finish within about 30 s), and still ends a run that meets a file locked
/// for good (a forgotten `BEGIN` in a shell) with an error instead of hanging the cron job.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest busy timeout the binaries' `--busy-timeout` accepts: one hour.
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a run waits for an SQLite file's write lock before it fails with the retryable
/// busy error, and what set it. PostgreSQL and MySQL URLs are not concerned (their runs wait
/// for row and named locks as long as the server lets them).
///
/// ```
/// use std::time::Duration;
/// use sync_jobs::run::BusyTimeout;
/// let five_minutes = Duration::from_secs(300);
/// let option = BusyTimeout::of("sync.db", five_minutes);
/// assert_eq!(option.url_for("sync.db"), "sync.db?busy_timeout=300000");
/// assert_eq!(option.to_string(), "300 s (--busy-timeout 300)");
/// // The URL's own parameter wins.
/// let url = "sync.db?busy_timeout=30000";
/// let own = BusyTimeout::of(url, five_minutes);
/// assert_eq!(own.url_for(url), url);
/// assert_eq!(own.to_string(), "30000 ms (the URL's busy_timeout=30000)");
/// // Not an SQLite file: nothing to add.
/// let pg = "postgres://app@db/app";
/// assert_eq!(BusyTimeout::of(pg, five_minutes).url_for(pg), pg);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyTimeout {
    /// The URL's own `busy_timeout=<ms>` parameter, as written.
    Url(String),
    /// The run's `--busy-timeout`, for a URL without its own parameter.
    Option(Duration),
}

impl BusyTimeout {
    /// The busy timeout of a run on `url` whose `--busy-timeout` is `option`: the URL's own
    /// `busy_timeout` parameter when it has one, else `option`.
    pub fn of(url: &str, option: Duration) -> Self {
        match url_busy_timeout(url) {
            Some(ms) => BusyTimeout::Url(ms.to_owned()),
            None => BusyTimeout::Option(option),
        }
    }

    /// The URL to open: an SQLite URL without its own `busy_timeout` parameter gets this one
    /// (in milliseconds, as [`upsert_kit::db::connect_sqlite`] reads it); any other URL is
    /// returned as it is.
    pub fn url_for(&self, url: &str) -> String {
        match self {
            BusyTimeout::Option(wait) if BackendKind::of(url) == BackendKind::Sqlite => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}busy_timeout={}", wait.as_millis())
            }
            _ => url.to_owned(),
        }
    }
}

impl fmt::Display for BusyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusyTimeout::Url(ms) => write!(f, "{ms} ms (the URL's busy_timeout={ms})"),
            BusyTimeout::Option(wait) => {
                let s = wait.as_secs();
                write!(f, "{s} s (--busy-timeout {s})")
            }
        }
    }
}

/// The text of an SQLite URL's `busy_timeout` parameter, read as
/// [`upsert_kit::db::connect_sqlite`] reads it: in the query after the URL's last `?`.
fn url_busy_timeout(url: &str) -> Option<&str> {
    if BackendKind::of(url) != BackendKind::Sqlite {
        return None;
    }
    let (_, query) = url.rsplit_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("busy_timeout="))
}

impl SyncDatabase {
    /// Opens the database `url` names (see [`BackendKind::of`]) and applies the pending
    /// migrations, in one transaction that holds the advisory lock
    /// [`MIGRATION_LOCK_NAMESPACE`] on PostgreSQL (SQLite: an immediate transaction, taken only
    /// when a plain read finds a migration missing), so runs that start together on a fresh
    /// database migrate it once. An SQLite file is created if missing; a PostgreSQL URL without a
    /// `connect_timeout` gets one of [`CONNECT_TIMEOUT_SECS`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("sync.db");
    /// let db = sync_jobs::SyncDatabase::open(path.to_str().unwrap())?;
    /// assert_eq!(db.backend(), upsert_kit::db::BackendKind::Sqlite);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::DatabaseUnavailable`] when the server does not answer or the file cannot be
    /// opened (the message shows the URL with its password redacted),
    /// [`JobError::BackendNotBuilt`] when the URL names a server backend this build was made
    /// without (features `postgres`, `mysql`), [`JobError::Migration`] when a migration fails.
    pub fn open(url: &str) -> Result<Self, JobError> {
        let unavailable = |e: upsert_kit::Error| match e {
            upsert_kit::Error::Connect(m) | upsert_kit::Error::ConnectionLost(m) => {
                JobError::DatabaseUnavailable(m)
            }
            other => JobError::Database(other),
        };
        let mut db = match BackendKind::of(url) {
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                SyncDatabase::Postgres(db::connect_pg(&with_timeout(url)).map_err(unavailable)?)
            }
            #[cfg(feature = "mysql")]
            BackendKind::Mysql => SyncDatabase::Mysql(db::connect_mysql(url).map_err(unavailable)?),
            #[cfg(not(all(feature = "postgres", feature = "mysql")))]
            #[allow(unreachable_patterns)]
            // with one server feature, one of the two is matched above
            BackendKind::Postgres | BackendKind::Mysql => {
                return Err(JobError::backend_not_built(url))
            }
            BackendKind::Sqlite => {
                SyncDatabase::Sqlite(db::connect_sqlite(url).map_err(unavailable)?)
            }
        };
        // Runs that start together on a fresh database must not race to create the tables:
        // the migrations run in one transaction, under an advisory lock on PostgreSQL and
        // under SQLite's write lock, so the second run finds them applied.
        let key = LockKey::new(MIGRATION_LOCK_NAMESPACE, 0);
        let applied = match &mut db {
            #[cfg(feature = "postgres")]
            SyncDatabase::Postgres(c) => exclusive_transaction(c, key, migrations::run_migrations)?,
            // MySQL's DDL commits on its own: the named lock alone serialises the runs.
            #[cfg(feature = "mysql")]
            SyncDatabase::Mysql(c) => {
                upsert_kit::lock::with_lock(&mut *c, key, migrations::run_migrations)?
            }
            // Only a run with something to migrate takes SQLite's write lock: the check is a
            // plain read, so runs on a migrated file do not queue behind each other here.
            SyncDatabase::Sqlite(c) => {
                if migrations::sqlite_needs_migrations(c)? {
                    exclusive_transaction(c, key, migrations::run_migrations)?
                } else {
                    0
                }
            }
        };
        tracing::info!(url = %db::redact_url(url), applied, "database open, migrations applied");
        Ok(db)
    }

    /// The backend.
    pub fn backend(&self) -> BackendKind {
        match self {
            #[cfg(feature = "postgres")]
            SyncDatabase::Postgres(_) => BackendKind::Postgres,
            #[cfg(feature = "mysql")]
            SyncDatabase::Mysql(_) => BackendKind::Mysql,
            SyncDatabase::Sqlite(_) => BackendKind::Sqlite,
        }
    }
}

#[cfg(feature = "postgres")]
/// `url` with `connect_timeout` added to its query unless it has one. The query is looked for
/// after the userinfo (which ends at the last `@`): a password may hold `?` or `&`.
fn with_timeout(url: &str) -> String {
    let after_userinfo = url.rfind('@').map_or(0, |at| at + 1);
    let tail = &url[after_userinfo..];
    if tail.contains("connect_timeout=") {
        return url.to_owned();
    }
    let sep = if tail.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout={CONNECT_TIMEOUT_SECS}")
}

/// What a run did to the token row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthOutcome {
    /// A token was stored for a new account.
    Inserted,
    /// A newer token replaced the stored one.
    Updated,
    /// A token was offered, and the stored one was as new or newer: left alone.
    Unchanged,
    /// The run wrote no token (it was fresh enough, or the capture had none).
    None,
}

impl From<UpsertOutcome> for AuthOutcome {
    fn from(o: UpsertOutcome) -> Self {
        match o {
            UpsertOutcome::Inserted => AuthOutcome::Inserted,
            UpsertOutcome::Updated => AuthOutcome::Updated,
            UpsertOutcome::Unchanged => AuthOutcome::Unchanged,
        }
    }
}

impl AuthOutcome {
    /// `"inserted"`, `"updated"`, `"unchanged"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::Inserted => "inserted",
            AuthOutcome::Updated => "updated",
            AuthOutcome::Unchanged => "unchanged",
            AuthOutcome::None => "none",
        }
    }
}

/// Stats rows by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsCounts {
    /// New stats types.
    pub inserted: usize,
    /// Rows whose data changed.
    pub updated: usize,
    /// Rows whose data was already stored as it is.
    pub unchanged: usize,
}

/// What one run wrote. Serialises exactly as
/// `{"stats": {"inserted": I, "updated": U, "unchanged": N}, "auth": "inserted" | "updated" | "unchanged" | "none"}`;
/// `Display` gives the human summary, with each stats type's outcome.
///
/// ```
/// use sync_jobs::{AuthOutcome, SyncSummary};
/// use upsert_kit::UpsertOutcome;
/// let mut s = SyncSummary::new();
/// s.record_stats("ytd", UpsertOutcome::Inserted);
/// s.auth = AuthOutcome::Unchanged;
/// assert_eq!(
///     serde_json::to_string(&s)?,
///     r#"{"stats":{"inserted":1,"updated":0,"unchanged":0},"auth":"unchanged"}"#
/// );
/// assert_eq!(s.to_string(), "stats: 1 inserted, 0 updated, 0 unchanged (ytd: inserted)\nauth:  unchanged");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncSummary {
    /// Stats rows by outcome.
    pub stats: StatsCounts,
    /// What happened to the token.
    pub auth: AuthOutcome,
    /// Each stats type's outcome, in the order written (not serialised).
    #[serde(skip)]
    pub rows: Vec<(String, UpsertOutcome)>,
}

impl Default for SyncSummary {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncSummary {
    /// Nothing written yet: no stats, auth [`AuthOutcome::None`].
    pub fn new() -> Self {
        SyncSummary {
            stats: StatsCounts::default(),
            auth: AuthOutcome::None,
            rows: Vec::new(),
        }
    }

    /// Counts one stats row's outcome.
    pub fn record_stats(&mut self, stats_type: &str, outcome: UpsertOutcome) {
        match outcome {
            UpsertOutcome::Inserted => self.stats.inserted += 1,
            UpsertOutcome::Updated => self.stats.updated += 1,
            UpsertOutcome::Unchanged => self.stats.unchanged += 1,
        }
        self.rows.push((stats_type.to_owned(), outcome));
    }
}

impl fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "stats: {} inserted, {} updated, {} unchanged",
            s.inserted, s.updated, s.unchanged
        )?;
        if !self.rows.is_empty() {
            let rows: Vec<String> = self.rows.iter().map(|(t, o)| format!("{t}: {o}")).collect();
            write!(f, " ({})", rows.join(", "))?;
        }
        write!(f, "\nauth:  {}", self.auth.as_str())
    }
}

/// Names the capture and the field for a value that the library refused before writing
/// ([`upsert_kit::Error::InvalidInput`]: the checks that only hold after conversion, such as
/// a timestamp's range): `stdin: token.expires_at: …` instead of `invalid input: expires_at: …`.
/// Other errors, and errors of online runs (`source` `None`), are returned as they are.
pub(crate) fn name_input(e: JobError, source: Option<&str>, path: &str) -> JobError {
    match (e, source) {
        (JobError::Database(upsert_kit::Error::InvalidInput(i)), Some(source)) => {
            JobError::payload(source, format!("{path}.{}: {}", i.field, i.reason))
        }
        (e, _) => e,
    }
}

/// A token a job knows how to judge and refresh.
pub(crate) trait StoredToken: AuthModel + Clone {
    fn expires_at(&self) -> NaiveDateTime;
}

impl StoredToken for StravaAuth {
    fn expires_at(&self) -> NaiveDateTime {
        self.expires_at
    }
}

impl StoredToken for WakatimeAuth {
    fn expires_at(&self) -> NaiveDateTime {
        self.expires_at
    }
}

/// The token transaction of an online run (see the module docs): lock, re-read, refresh if it
/// expires within `margin`, store monotonically, commit. Returns the token to use and what
/// happened to the stored row.
pub(crate) fn ensure_fresh_token<C, A>(
    conn: &mut C,
    lock: TokenLock,
    margin: Duration,
    load: impl Fn(&mut C) -> Result<Option<A>, JobError>,
    refresh: impl FnOnce(Option<&A>) -> Result<A, JobError>,
) -> Result<(A, AuthOutcome), JobError>
where
    C: SyncConnection,
    A: StoredToken + Upsertable<C::Raw, Newer<A::ExpiresAt>>,
{
    conn.token_transaction(lock, |conn| {
        // Read only now, under the lock: a run that waited finds the token the first refreshed.
        let stored = load(conn)?;
        let margin = chrono::Duration::from_std(margin)
            .map_err(|_| JobError::Config("the refresh margin is too large".into()))?;
        let deadline = chrono::Utc::now().naive_utc() + margin;
        if let Some(token) = &stored {
            if token.expires_at() > deadline {
                tracing::info!(expires_at = %token.expires_at(), "stored token is fresh; no refresh");
                return Ok((token.clone(), AuthOutcome::None));
            }
            tracing::info!(expires_at = %token.expires_at(), "stored token expires within the margin; refreshing");
        } else {
            tracing::info!("no stored token; refreshing from the configured refresh token");
        }
        let fresh = refresh(stored.as_ref())?;
        let outcome = atomic_upsert_auth(conn, &fresh)?;
        tracing::info!(%outcome, expires_at = %fresh.expires_at(), "token stored");
        if outcome == UpsertOutcome::Unchanged {
            // A newer token is already stored (it cannot happen under the lock, but the store
            // is monotonic whatever the caller does): use the stored one.
            if let Some(newer) = load(conn)? {
                return Ok((newer, outcome.into()));
            }
        }
        Ok((fresh, outcome.into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_the_library_refuses_is_named_by_capture_and_field() {
        let refused = || {
            JobError::Database(upsert_kit::Error::invalid(
                "expires_at",
                "timestamp +10000-01-01 00:59:59 is out of range (years 1 to 9999)",
            ))
        };
        assert_eq!(
            name_input(refused(), Some("stdin"), "token").to_string(),
            "stdin: token.expires_at: timestamp +10000-01-01 00:59:59 is out of range (years 1 to 9999)"
        );
        assert!(matches!(
            name_input(refused(), None, "token"),
            JobError::Database(upsert_kit::Error::InvalidInput(_))
        ));
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn postgres_urls_get_a_connect_timeout_unless_they_have_one() {
        assert_eq!(
            with_timeout("postgres://h/db"),
            "postgres://h/db?connect_timeout=10"
        );
        assert_eq!(
            with_timeout("postgres://h/db?sslmode=disable"),
            "postgres://h/db?sslmode=disable&connect_timeout=10"
        );
        assert_eq!(
            with_timeout("postgres://h/db?connect_timeout=3"),
            "postgres://h/db?connect_timeout=3"
        );
        assert_eq!(
            with_timeout("postgres://u:p?ss&connect_timeout=/w@h/db"),
            "postgres://u:p?ss&connect_timeout=/w@h/db?connect_timeout=10"
        );
    }
}
