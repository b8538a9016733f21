//! The WakaTime job: the current user's coding stats over the configured ranges, and its
//! OAuth token.
//!
//! # API
//! - `POST {oauth_base}/oauth/token` with `client_id`, `client_secret`,
//!   `grant_type=refresh_token`, `refresh_token` (and `redirect_uri` when configured), asking
//!   for JSON → `{"access_token", "refresh_token", "uid", "expires_at" (RFC 3339) or
//!   "expires_in" (seconds), …}`.
//! - `GET {api_base}/users/current/stats/{range}` with `Authorization: Bearer …` →
//!   `{"data": {"range", "start", "end", "total_seconds", "daily_average", "languages": […], …}}`.
//!
//! # Rows
//! One row per range ([`StatsRange`]), its data a [`RangeStats`].
//!
//! # Capture format (`--from-file`)
//! ```text
//! {
//!   "token": { …POST /oauth/token response… },      // optional: without it, auth is "none"
//!   "stats": {                                       // one entry per range to write
//!     "last_7_days": { …GET /users/current/stats/last_7_days response… },
//!     "all_time":    { … }
//!   }
//! }
//! ```

use super::error::{JobError, Secret};
use super::http::HttpClient;
use super::json::{self, Obj, Shape};
use super::models::{WakatimeAuth, WakatimeStats};
use super::run::{
    ensure_fresh_token, name_input, SyncConnection, SyncDatabase, SyncSummary, TokenLock,
};
use crate::schema::{wakatime_auth, wakatime_stats};
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use upsert_kit::upsert::{Changed, Newer};
use upsert_kit::{atomic_upsert_auth, atomic_upsert_stats, Upsertable};

/// The public WakaTime API.
pub const DEFAULT_API_BASE: &str = "https://wakatime.com/api/v1";
/// WakaTime's OAuth server (the token endpoint is `{oauth_base}/oauth/token`).
pub const DEFAULT_OAUTH_BASE: &str = "https://wakatime.com";
/// The advisory-lock namespace of token refreshes (the key is the account).
pub const LOCK_NAMESPACE: &str = "wakatime-token-refresh";
/// Refresh the token when it expires within this long.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(10 * 60);

/// A stats range of `GET /users/current/stats/{range}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatsRange {
    /// `last_7_days`.
    Last7Days,
    /// `last_30_days`.
    Last30Days,
    /// `last_6_months`.
    Last6Months,
    /// `last_year`.
    LastYear,
    /// `all_time`.
    AllTime,
}

impl StatsRange {
    /// Every range, shortest first.
    pub const ALL: [StatsRange; 5] = [
        StatsRange::Last7Days,
        StatsRange::Last30Days,
        StatsRange::Last6Months,
        StatsRange::LastYear,
        StatsRange::AllTime,
    ];

    /// The API's name of the range (also the row's `stats_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatsRange::Last7Days => "last_7_days",
            StatsRange::Last30Days => "last_30_days",
            StatsRange::Last6Months => "last_6_months",
            StatsRange::LastYear => "last_year",
            StatsRange::AllTime => "all_time",
        }
    }
}

impl fmt::Display for StatsRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stats range name that WakaTime does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// The name is not repeated: the caller names where it was (`stats.last_week: …`), and a
// usage error must not echo an argument's value.
#[error("unknown stats range; expected one of last_7_days, last_30_days, last_6_months, last_year, all_time")]
pub struct UnknownRange(pub String);

impl FromStr for StatsRange {
    type Err = UnknownRange;

    /// ```
    /// use sync_jobs::wakatime::StatsRange;
    /// assert_eq!("last_year".parse::<StatsRange>(), Ok(StatsRange::LastYear));
    /// let err = "last_week".parse::<StatsRange>().unwrap_err();
    /// assert_eq!(err.0, "last_week");
    /// assert!(err.to_string().starts_with("unknown stats range; expected one of last_7_days"));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatsRange::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRange(s.to_owned()))
    }
}

/// Time spent on one language, editor, project, …
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    /// The language, editor, project, … name.
    pub name: String,
    /// Seconds.
    pub total_seconds: f64,
    /// Share of the range's total, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// A validated stats response (`data` of `GET /users/current/stats/{range}`): the data of one
/// stats row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeStats {
    /// The range.
    pub range: String,
    /// Start of the range (as WakaTime sends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End of the range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Seconds coded in the range.
    pub total_seconds: f64,
    /// Seconds per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_average: Option<f64>,
    /// Languages.
    pub languages: Vec<Share>,
    /// Editors.
    pub editors: Vec<Share>,
    /// Operating systems.
    pub operating_systems: Vec<Share>,
    /// Categories (coding, debugging, …).
    pub categories: Vec<Share>,
    /// Projects (absent when the user keeps them private).
    pub projects: Vec<Share>,
}

/// What the job reads of a share (a language, an editor, …).
const SHARE_SHAPE: Shape = Shape::Object(&[
    ("name", Shape::Value),
    ("total_seconds", Shape::Value),
    ("percent", Shape::Value),
]);

/// What the job reads of a stats response.
pub(crate) const STATS_SHAPE: Shape = Shape::Object(&[(
    "data",
    Shape::Object(&[
        ("range", Shape::Value),
        ("start", Shape::Value),
        ("end", Shape::Value),
        ("total_seconds", Shape::Value),
        ("daily_average", Shape::Value),
        ("languages", Shape::Array(&SHARE_SHAPE)),
        ("editors", Shape::Array(&SHARE_SHAPE)),
        ("operating_systems", Shape::Array(&SHARE_SHAPE)),
        ("categories", Shape::Array(&SHARE_SHAPE)),
        ("projects", Shape::Array(&SHARE_SHAPE)),
    ]),
)]);

/// What the job reads of a token response.
pub(crate) const TOKEN_SHAPE: Shape = Shape::Object(&[
    ("access_token", Shape::Value),
    ("refresh_token", Shape::Value),
    ("expires_at", Shape::Value),
    ("expires_in", Shape::Value),
    ("uid", Shape::Value),
]);

/// What the job reads of a capture: any other field is only checked to be valid JSON.
const CAPTURE_SHAPE: Shape =
    Shape::Object(&[("token", TOKEN_SHAPE), ("stats", Shape::Map(&STATS_SHAPE))]);

fn shares(data: &Obj<'_>, key: &str) -> Result<Vec<Share>, JobError> {
    if data.opt(key).is_none() {
        return Ok(Vec::new());
    }
    data.array(key)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{}[{i}]", json::join(data.path, key));
            let o = Obj::of(data.source, &path, item)?;
            Ok(Share {
                name: o.string("name")?.to_owned(),
                total_seconds: o.amount("total_seconds")?,
                percent: o.opt("percent").map(|_| o.amount("percent")).transpose()?,
            })
        })
        .collect()
}

fn optional_string(o: &Obj<'_>, key: &str) -> Result<Option<String>, JobError> {
    o.opt(key)
        .map(|_| o.string(key).map(str::to_owned))
        .transpose()
}

impl RangeStats {
    /// Validates a stats response (the object holding `data`) found at `path` of
    /// `source_name`, for `range`.
    ///
    /// ```
    /// use sync_jobs::wakatime::{RangeStats, StatsRange};
    /// let v = serde_json::json!({"data": {"range": "last_7_days", "total_seconds": 3600.5,
    ///     "languages": [{"name": "Rust", "total_seconds": 3600.5, "percent": 100.0}]}});
    /// let stats = RangeStats::from_json("GET …/stats/last_7_days", "", StatsRange::Last7Days, &v)?;
    /// assert_eq!(stats.languages[0].name, "Rust");
    /// let err = RangeStats::from_json("GET …/stats/last_year", "", StatsRange::LastYear, &v).unwrap_err();
    /// assert!(err.to_string().contains("data.range: the response is for \"last_7_days\", expected \"last_year\""));
    /// # Ok::<(), sync_jobs::JobError>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`] naming the first missing or invalid field, or a `data.range` that
    /// is not `range`.
    pub fn from_json(
        source_name: &str,
        path: &str,
        range: StatsRange,
        value: &Value,
    ) -> Result<Self, JobError> {
        let o = Obj::of(source_name, path, value)?;
        let data_path = json::join(path, "data");
        let data = o.object("data", &data_path)?;
        if let Some(r) = data.opt("range") {
            let name = data.string("range")?;
            if name != range.as_str() {
                return Err(JobError::payload(
                    source_name,
                    format!(
                        "{}: the response is for {:?}, expected {:?}",
                        json::join(&data_path, "range"),
                        r.as_str().unwrap_or_default(),
                        range.as_str()
                    ),
                ));
            }
        }
        Ok(RangeStats {
            range: range.as_str().to_owned(),
            start: optional_string(&data, "start")?,
            end: optional_string(&data, "end")?,
            total_seconds: data.amount("total_seconds")?,
            daily_average: data
                .opt("daily_average")
                .map(|_| data.amount("daily_average"))
                .transpose()?,
            languages: shares(&data, "languages")?,
            editors: shares(&data, "editors")?,
            operating_systems: shares(&data, "operating_systems")?,
            categories: shares(&data, "categories")?,
            projects: shares(&data, "projects")?,
        })
    }

    fn row(&self, now: NaiveDateTime) -> WakatimeStats {
        WakatimeStats {
            stats_type: self.range.clone(),
            data: serde_json::to_value(self).expect("stats serialise to JSON"),
            created_at: now,
            updated_at: now,
        }
    }
}

/// A validated `POST /oauth/token` response. `Debug` never shows the tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct WakatimeToken {
    /// The bearer token for API calls.
    pub access_token: Secret,
    /// The token for the next refresh.
    pub refresh_token: Secret,
    /// When `access_token` expires (UTC).
    pub expires_at: NaiveDateTime,
    /// WakaTime's user id (`uid`), when given.
    pub user_id: Option<String>,
}

impl WakatimeToken {
    /// Validates a token response found at `path` of `source_name`. The expiry is
    /// `expires_at` (RFC 3339 text or Unix seconds) or, without it, now + `expires_in`.
    ///
    /// ```
    /// use sync_jobs::wakatime::WakatimeToken;
    /// let v = serde_json::json!({"access_token": "a", "refresh_token": "r", "uid": "u1",
    ///     "expires_at": "2027-11-29T03:12:44Z"});
    /// let token = WakatimeToken::from_json("POST /oauth/token", "", &v)?;
    /// assert_eq!(token.expires_at.to_string(), "2027-11-29 03:12:44");
    /// assert_eq!(format!("{:?}", token.access_token), "<redacted>");
    /// # Ok::<(), sync_jobs::JobError>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`] for a missing or empty token, or an expiry that is missing or
    /// out of range.
    pub fn from_json(source_name: &str, path: &str, value: &Value) -> Result<Self, JobError> {
        // The tokens are secrets from the moment they arrive, before anything else is checked.
        json::register_secrets(value, &["access_token", "refresh_token"]);
        let o = Obj::of(source_name, path, value)?;
        let bad = |reason: String| {
            JobError::payload(
                source_name,
                format!("{}: {reason}", json::join(path, "expires_at")),
            )
        };
        let expires_at = match o.opt("expires_at") {
            Some(Value::String(s)) => {
                let utc = chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| bad(format!("{s:?} is not an RFC 3339 time: {e}")))?
                    .naive_utc();
                // Checked after the conversion: `9999-12-31T23:59:59-01:00` is in year 10000
                // in UTC, which the database cannot store.
                if !(1970..=9999).contains(&chrono::Datelike::year(&utc)) {
                    return Err(bad(format!(
                        "{s:?} is {utc} in UTC, outside years 1970-9999"
                    )));
                }
                utc
            }
            Some(Value::Number(_)) => {
                let secs = o.int("expires_at")?;
                chrono::DateTime::from_timestamp(secs, 0)
                    .filter(|_| (0..253_402_300_800).contains(&secs))
                    .ok_or_else(|| bad(format!("{secs} is not a Unix time in years 1970-9999")))?
                    .naive_utc()
            }
            Some(_) => return Err(bad("expected an RFC 3339 string or Unix seconds".into())),
            None => {
                let secs = o.count("expires_in").map_err(|_| {
                    bad("missing field (and no expires_in in seconds to compute it)".into())
                })?;
                let secs = i64::try_from(secs)
                    .ok()
                    .filter(|s| *s < 100 * 365 * 86_400)
                    .ok_or_else(|| bad("expires_in is too large".into()))?;
                chrono::Utc::now().naive_utc() + chrono::Duration::seconds(secs)
            }
        };
        Ok(WakatimeToken {
            access_token: Secret::new(o.string("access_token")?),
            refresh_token: Secret::new(o.string("refresh_token")?),
            expires_at,
            user_id: optional_string(&o, "uid")?,
        })
    }

    fn into_row(self, account: i64, fallback_user: Option<&str>) -> WakatimeAuth {
        WakatimeAuth {
            id: account,
            user_id: self
                .user_id
                .or_else(|| fallback_user.map(str::to_owned))
                .unwrap_or_else(|| "current".to_owned()),
            access_token: self.access_token.expose().to_owned(),
            refresh_token: self.refresh_token.expose().to_owned(),
            expires_at: self.expires_at,
            updated_at: chrono::Utc::now().naive_utc(),
        }
    }
}

/// A capture of the token and stats responses (the format is in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct WakatimeCapture {
    /// Where the capture was read from (a path, or `stdin`): errors name it.
    pub source_name: String,
    /// The token response, if captured.
    pub token: Option<WakatimeToken>,
    /// One validated response per range, in [`StatsRange`] order.
    pub stats: Vec<RangeStats>,
}

impl WakatimeCapture {
    /// Parses and validates a capture; `source_name` (a path, or `stdin`) prefixes errors.
    ///
    /// ```
    /// use sync_jobs::wakatime::WakatimeCapture;
    /// let text = std::fs::read_to_string("examples/data/wakatime.json")?;
    /// let capture = WakatimeCapture::parse("examples/data/wakatime.json", &text)?;
    /// assert_eq!(capture.stats.len(), 5);
    /// let err = WakatimeCapture::parse("stdin", r#"{"stats": {"last_week": {"data": {}}}}"#).unwrap_err();
    /// assert!(err.to_string().contains("stats.last_week: unknown stats range; expected one of"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`]: malformed, truncated or non-finite JSON, an unknown range, a
    /// missing field or a wrong type.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, JobError> {
        let root = json::parse_shaped(source_name, text, &CAPTURE_SHAPE)?;
        let o = Obj::of(source_name, "", &root)?;
        let stats_obj = o.object("stats", "stats")?;
        let mut stats = Vec::new();
        let mut ranges: Vec<(StatsRange, &Value)> = Vec::new();
        for (name, value) in stats_obj.map {
            let range = name
                .parse::<StatsRange>()
                .map_err(|e| JobError::payload(source_name, format!("stats.{name}: {e}")))?;
            ranges.push((range, value));
        }
        if ranges.is_empty() {
            return Err(JobError::payload(
                source_name,
                "stats: no ranges (expected e.g. \"last_7_days\")",
            ));
        }
        ranges.sort_by_key(|(r, _)| *r);
        for (range, value) in ranges {
            let path = format!("stats.{range}");
            stats.push(RangeStats::from_json(source_name, &path, range, value)?);
        }
        let token = o
            .opt("token")
            .map(|t| WakatimeToken::from_json(source_name, "token", t))
            .transpose()?;
        Ok(WakatimeCapture {
            source_name: source_name.to_owned(),
            token,
            stats,
        })
    }
}

/// How an online run reaches WakaTime.
#[derive(Debug, Clone)]
pub struct WakatimeApi {
    /// `https://wakatime.com/api/v1` ([`DEFAULT_API_BASE`]), or a test server.
    pub api_base: String,
    /// `https://wakatime.com` ([`DEFAULT_OAUTH_BASE`]), or a test server.
    pub oauth_base: String,
    /// The application's client id (`WAKATIME_CLIENT_ID`).
    pub client_id: String,
    /// The application's client secret (`WAKATIME_CLIENT_SECRET`).
    pub client_secret: Secret,
    /// The application's redirect URI, sent with refreshes when set.
    pub redirect_uri: Option<String>,
    /// A refresh token to start from when no token is stored for the account yet
    /// (`WAKATIME_REFRESH_TOKEN`). A stored token always wins.
    pub bootstrap_refresh_token: Option<Secret>,
    /// The ranges to fetch, one request each (in [`StatsRange`] order, duplicates ignored).
    pub ranges: Vec<StatsRange>,
    /// Refresh when the token expires within this long ([`DEFAULT_REFRESH_MARGIN`]).
    pub refresh_margin: Duration,
    /// The HTTP client (timeouts).
    pub http: HttpClient,
}

/// Where a run's data comes from.
#[derive(Debug, Clone)]
pub enum WakatimeSource {
    /// Call the API.
    Online(WakatimeApi),
    /// A capture read from a file or stdin.
    Capture(WakatimeCapture),
}

/// Runs one WakaTime sync for `account` on `db`: one stats row per range is inserted, updated
/// or left unchanged, never duplicated, and the token only ever moves forward.
///
/// Transactions, locks and round trips (details in [`crate::run`]):
/// - Offline: one transaction: the token upsert (under the advisory lock
///   `(LOCK_NAMESPACE, account)` on PostgreSQL, released at commit) and one upsert per range,
///   in [`StatsRange`] order.
/// - Online: the token transaction (lock, one read, and only when the token expires within
///   the margin: one `POST /oauth/token` and one upsert; the lock is released at its commit),
///   then one `GET /users/current/stats/{range}` per range with no transaction open, then one
///   transaction of one upsert per range, in [`StatsRange`] order (concurrent runs lock rows
///   in the same order: no deadlock).
///
/// # Examples
///
/// ```
/// use sync_jobs::{wakatime, AuthOutcome, SyncDatabase};
/// let dir = tempfile::tempdir()?;
/// let mut db = SyncDatabase::open(dir.path().join("sync.db").to_str().unwrap())?;
/// let text = std::fs::read_to_string("examples/data/wakatime.json")?;
/// let source = wakatime::WakatimeSource::Capture(wakatime::WakatimeCapture::parse("capture", &text)?);
/// let first = wakatime::sync(&mut db, 1, &source)?;
/// assert_eq!((first.stats.inserted, first.auth), (5, AuthOutcome::Inserted));
/// let second = wakatime::sync(&mut db, 1, &source)?;
/// assert_eq!((second.stats.unchanged, second.auth), (5, AuthOutcome::Unchanged));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`JobError`]: API errors (401, 429, other statuses, transport), invalid responses,
/// missing configuration, database errors. Stats are written all or none.
pub fn sync(
    db: &mut SyncDatabase,
    account: i64,
    source: &WakatimeSource,
) -> Result<SyncSummary, JobError> {
    match db {
        #[cfg(feature = "postgres")]
        SyncDatabase::Postgres(c) => sync_with(c, account, source),
        SyncDatabase::Sqlite(c) => sync_with(c, account, source),
        #[cfg(feature = "mysql")]
        SyncDatabase::Mysql(c) => sync_with(c, account, source),
    }
}

/// [`sync`] on a connection of either backend.
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use sync_jobs::wakatime::{sync_with, WakatimeCapture, WakatimeSource};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// sync_jobs::db::run_migrations(&mut conn)?;
/// let text = std::fs::read_to_string("examples/data/wakatime.json")?;
/// let source = WakatimeSource::Capture(WakatimeCapture::parse("capture", &text)?);
/// assert_eq!(sync_with(&mut conn, 1, &source)?.stats.inserted, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`sync`].
pub fn sync_with<C>(
    conn: &mut C,
    account: i64,
    source: &WakatimeSource,
) -> Result<SyncSummary, JobError>
where
    C: SyncConnection,
    WakatimeStats: Upsertable<C::Raw, Changed<wakatime_stats::data>>,
    WakatimeAuth: Upsertable<C::Raw, Newer<wakatime_auth::expires_at>>,
{
    let lock = TokenLock::new(LOCK_NAMESPACE, account);
    match source {
        WakatimeSource::Capture(capture) => {
            // Built before the transaction: on SQLite it holds the file's only write lock, and
            // turning large stats into rows is work that needs no lock.
            let rows = stats_rows(&capture.stats);
            let write = |conn: &mut C| {
                let mut summary = SyncSummary::new();
                if let Some(token) = &capture.token {
                    let stored = conn.wakatime_token(account)?;
                    let row = token
                        .clone()
                        .into_row(account, stored.as_ref().map(|s| s.user_id.as_str()));
                    summary.auth = atomic_upsert_auth(conn, &row)?.into();
                }
                write_stats(conn, &rows, None, &mut summary)?;
                Ok(summary)
            };
            // The token lock (when a token is stored) for the whole transaction.
            if capture.token.is_some() {
                conn.token_transaction(lock, write)
            } else {
                conn.sync_transaction(write)
            }
        }
        WakatimeSource::Online(api) => {
            // Fetched and written in one fixed order, so that concurrent runs lock the rows in
            // the same order and cannot deadlock.
            let mut ranges = api.ranges.clone();
            ranges.sort();
            ranges.dedup();
            if ranges.is_empty() {
                return Err(JobError::Config("no stats range to fetch".into()));
            }
            let (token, auth) = ensure_fresh_token(
                conn,
                lock,
                api.refresh_margin,
                |c| c.wakatime_token(account),
                |stored| refresh(api, account, stored),
            )?;
            let bearer = Secret::new(token.access_token.clone());
            let mut stats = Vec::with_capacity(ranges.len());
            for range in &ranges {
                let url = format!(
                    "{}/users/current/stats/{range}",
                    api.api_base.trim_end_matches('/')
                );
                let body = api.http.get_json(&url, &bearer, &STATS_SHAPE)?;
                stats.push(RangeStats::from_json(
                    &crate::http::endpoint("GET", &url),
                    "",
                    *range,
                    &body,
                )?);
            }
            let rows = stats_rows(&stats);
            let mut summary = conn.sync_transaction(|conn| {
                let mut summary = SyncSummary::new();
                write_stats(conn, &rows, None, &mut summary)?;
                Ok(summary)
            })?;
            summary.auth = auth;
            Ok(summary)
        }
    }
}

/// The stats rows of `stats`, stamped now.
fn stats_rows(stats: &[RangeStats]) -> Vec<WakatimeStats> {
    let now = chrono::Utc::now().naive_utc();
    stats.iter().map(|s| s.row(now)).collect()
}

fn write_stats<C>(
    conn: &mut C,
    rows: &[WakatimeStats],
    source: Option<&str>,
    summary: &mut SyncSummary,
) -> Result<(), JobError>
where
    C: SyncConnection,
    WakatimeStats: Upsertable<C::Raw, Changed<wakatime_stats::data>>,
{
    for row in rows {
        let outcome = atomic_upsert_stats(conn, row)
            .map_err(|e| name_input(e.into(), source, &format!("stats.{}", row.stats_type)))?;
        tracing::info!(stats_type = %row.stats_type, %outcome, "stats row");
        summary.record_stats(&row.stats_type, outcome);
    }
    Ok(())
}

/// `POST {oauth_base}/oauth/token` with the stored (or bootstrap) refresh token.
fn refresh(
    api: &WakatimeApi,
    account: i64,
    stored: Option<&WakatimeAuth>,
) -> Result<WakatimeAuth, JobError> {
    let refresh_token = match (stored, &api.bootstrap_refresh_token) {
        (Some(s), _) => Secret::new(s.refresh_token.clone()),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(JobError::Config(format!(
                "no WakaTime token is stored for account {account}: set WAKATIME_REFRESH_TOKEN \
                 to start from a refresh token"
            )))
        }
    };
    if api.client_id.is_empty() || api.client_secret.expose().is_empty() {
        return Err(JobError::Config(
            "refreshing the WakaTime token needs WAKATIME_CLIENT_ID and WAKATIME_CLIENT_SECRET"
                .into(),
        ));
    }
    let url = format!("{}/oauth/token", api.oauth_base.trim_end_matches('/'));
    let mut form = vec![
        ("client_id", api.client_id.as_str()),
        ("client_secret", api.client_secret.expose()),
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    if let Some(uri) = &api.redirect_uri {
        form.push(("redirect_uri", uri.as_str()));
    }
    let body = api.http.post_form_json(&url, &form, &TOKEN_SHAPE)?;
    let token = WakatimeToken::from_json(&crate::http::endpoint("POST", &url), "", &body)?;
    Ok(token.into_row(account, stored.map(|s| s.user_id.as_str())))
}
