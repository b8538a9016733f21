//! The Strava job: one athlete's totals (`ytd`, `all_time`, `recent`) and its OAuth token.
//!
//! # API
//! - `POST {api_base}/oauth/token` with `client_id`, `client_secret`,
//!   `grant_type=refresh_token`, `refresh_token` → `{"access_token", "refresh_token",
//!   "expires_at" (Unix seconds), "expires_in", …}`.
//! - `GET {api_base}/athletes/{id}/stats` with `Authorization: Bearer …` → the athlete's
//!   `recent_*_totals`, `ytd_*_totals` and `all_*_totals` for rides, runs and swims, plus
//!   `biggest_ride_distance` and `biggest_climb_elevation_gain`.
//!
//! # Rows
//! `ytd`, `all_time` and `recent`, each `{"ride": T, "run": T, "swim": T}` where `T` is
//! [`ActivityTotals`]; `all_time` also carries the two "biggest" figures.
//!
//! # Capture format (`--from-file`)
//! One JSON object holding the two responses the online run would receive:
//! ```text
//! {
//!   "athlete_id": 134815,               // optional when "token" has "athlete": {"id": …}
//!   "token": { …POST /oauth/token response… },   // optional: without it, auth is "none"
//!   "stats": { …GET /athletes/{id}/stats response… }
//! }
//! ```

use super::error::{JobError, Secret};
use super::http::HttpClient;
use super::json::{self, Obj, Shape};
use super::models::{StravaAuth, StravaStats};
use super::run::{
    ensure_fresh_token, name_input, SyncConnection, SyncDatabase, SyncSummary, TokenLock,
};
use crate::schema::{strava_auth, strava_stats};
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use upsert_kit::upsert::{Changed, Newer};
use upsert_kit::{atomic_upsert_auth, atomic_upsert_stats, Upsertable};

/// The public Strava API.
pub const DEFAULT_API_BASE: &str = "https://www.strava.com/api/v3";
/// The advisory-lock namespace of token refreshes (the key is the account).
pub const LOCK_NAMESPACE: &str = "strava-token-refresh";
/// Refresh the token when it expires within this long (Strava tokens live 6 hours).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(10 * 60);

/// The totals of one activity kind over one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityTotals {
    /// Activities.
    pub count: u64,
    /// Metres.
    pub distance: f64,
    /// Seconds in motion.
    pub moving_time: u64,
    /// Seconds from start to end.
    pub elapsed_time: u64,
    /// Metres climbed.
    pub elevation_gain: f64,
    /// Achievements (Strava sends it for recent totals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achievement_count: Option<u64>,
}

/// Rides, runs and swims over one period: the data of one stats row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodTotals {
    /// Rides.
    pub ride: ActivityTotals,
    /// Runs.
    pub run: ActivityTotals,
    /// Swims.
    pub swim: ActivityTotals,
    /// Longest ride in metres (`all_time` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub biggest_ride_distance: Option<f64>,
    /// Biggest climb in metres (`all_time` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub biggest_climb_elevation_gain: Option<f64>,
}

/// A validated `GET /athletes/{id}/stats` response.
#[derive(Debug, Clone, PartialEq)]
pub struct AthleteStats {
    /// The last four weeks (`recent_*_totals`).
    pub recent: PeriodTotals,
    /// This year (`ytd_*_totals`).
    pub ytd: PeriodTotals,
    /// Ever (`all_*_totals`).
    pub all_time: PeriodTotals,
}

/// What the job reads of a totals object.
const TOTALS_SHAPE: Shape = Shape::Object(&[
    ("count", Shape::Value),
    ("distance", Shape::Value),
    ("moving_time", Shape::Value),
    ("elapsed_time", Shape::Value),
    ("elevation_gain", Shape::Value),
    ("achievement_count", Shape::Value),
]);

/// What the job reads of a stats response.
pub(crate) const STATS_SHAPE: Shape = Shape::Object(&[
    ("recent_ride_totals", TOTALS_SHAPE),
    ("recent_run_totals", TOTALS_SHAPE),
    ("recent_swim_totals", TOTALS_SHAPE),
    ("ytd_ride_totals", TOTALS_SHAPE),
    ("ytd_run_totals", TOTALS_SHAPE),
    ("ytd_swim_totals", TOTALS_SHAPE),
    ("all_ride_totals", TOTALS_SHAPE),
    ("all_run_totals", TOTALS_SHAPE),
    ("all_swim_totals", TOTALS_SHAPE),
    ("biggest_ride_distance", Shape::Value),
    ("biggest_climb_elevation_gain", Shape::Value),
]);

/// What the job reads of a token response.
pub(crate) const TOKEN_SHAPE: Shape = Shape::Object(&[
    ("access_token", Shape::Value),
    ("refresh_token", Shape::Value),
    ("expires_at", Shape::Value),
    ("athlete", Shape::Object(&[("id", Shape::Value)])),
]);

/// What the job reads of a capture: any other field is only checked to be valid JSON.
const CAPTURE_SHAPE: Shape = Shape::Object(&[
    ("athlete_id", Shape::Value),
    ("token", TOKEN_SHAPE),
    ("stats", STATS_SHAPE),
]);

fn totals(stats: &Obj<'_>, key: &str) -> Result<ActivityTotals, JobError> {
    let path = json::join(stats.path, key);
    let t = stats.object(key, &path)?;
    Ok(ActivityTotals {
        count: t.count("count")?,
        distance: t.amount("distance")?,
        moving_time: t.count("moving_time")?,
        elapsed_time: t.count("elapsed_time")?,
        elevation_gain: t.amount("elevation_gain")?,
        achievement_count: match t.opt("achievement_count") {
            Some(_) => Some(t.count("achievement_count")?),
            None => None,
        },
    })
}

fn period(stats: &Obj<'_>, prefix: &str) -> Result<PeriodTotals, JobError> {
    Ok(PeriodTotals {
        ride: totals(stats, &format!("{prefix}_ride_totals"))?,
        run: totals(stats, &format!("{prefix}_run_totals"))?,
        swim: totals(stats, &format!("{prefix}_swim_totals"))?,
        biggest_ride_distance: None,
        biggest_climb_elevation_gain: None,
    })
}

fn optional_amount(o: &Obj<'_>, key: &str) -> Result<Option<f64>, JobError> {
    o.opt(key).map(|_| o.amount(key)).transpose()
}

impl AthleteStats {
    /// Validates a stats response found at `path` of `source_name` (`""` for the root).
    ///
    /// ```
    /// let text = std::fs::read_to_string("examples/data/strava.json")?;
    /// let capture: serde_json::Value = serde_json::from_str(&text)?;
    /// let stats = sync_jobs::strava::AthleteStats::from_json("capture", "stats", &capture["stats"])?;
    /// assert!(stats.all_time.ride.count >= stats.ytd.ride.count);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`] naming the first missing or invalid field (a count that is not a
    /// non-negative integer, a distance that is not a finite non-negative number, …).
    pub fn from_json(source_name: &str, path: &str, value: &Value) -> Result<Self, JobError> {
        let o = Obj::of(source_name, path, value)?;
        let recent = period(&o, "recent")?;
        let ytd = period(&o, "ytd")?;
        let mut all_time = period(&o, "all")?;
        all_time.biggest_ride_distance = optional_amount(&o, "biggest_ride_distance")?;
        all_time.biggest_climb_elevation_gain =
            optional_amount(&o, "biggest_climb_elevation_gain")?;
        Ok(AthleteStats {
            recent,
            ytd,
            all_time,
        })
    }

    /// The three stats rows (`ytd`, `all_time`, `recent`), stamped `now`.
    ///
    /// ```
    /// # let text = std::fs::read_to_string("examples/data/strava.json")?;
    /// # let capture = sync_jobs::strava::StravaCapture::parse("capture", &text)?;
    /// let rows = capture.stats.rows(chrono::Utc::now().naive_utc());
    /// let kinds: Vec<&str> = rows.iter().map(|r| r.stats_type.as_str()).collect();
    /// assert_eq!(kinds, ["ytd", "all_time", "recent"]);
    /// assert_eq!(rows[0].data["run"]["count"], 121);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rows(&self, now: NaiveDateTime) -> Vec<StravaStats> {
        [
            ("ytd", &self.ytd),
            ("all_time", &self.all_time),
            ("recent", &self.recent),
        ]
        .into_iter()
        .map(|(kind, data)| StravaStats {
            stats_type: kind.to_owned(),
            data: serde_json::to_value(data).expect("totals serialise to JSON"),
            created_at: now,
            updated_at: now,
        })
        .collect()
    }
}

/// A validated `POST /oauth/token` response. `Debug` never shows the tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct StravaToken {
    /// The bearer token for API calls.
    pub access_token: Secret,
    /// The token for the next refresh (Strava may rotate it).
    pub refresh_token: Secret,
    /// When `access_token` expires (UTC).
    pub expires_at: NaiveDateTime,
    /// The athlete, when the response names one (`athlete.id`).
    pub athlete_id: Option<i64>,
}

impl StravaToken {
    /// Validates a token response found at `path` of `source_name`.
    ///
    /// ```
    /// use sync_jobs::strava::StravaToken;
    /// let v = serde_json::json!({"access_token": "a", "refresh_token": "r", "expires_at": 1796000000, "athlete": {"id": 7}});
    /// let token = StravaToken::from_json("POST /oauth/token", "", &v)?;
    /// assert_eq!((token.athlete_id, token.expires_at.to_string().as_str()), (Some(7), "2026-11-30 00:53:20"));
    /// let v = serde_json::json!({"access_token": "a", "refresh_token": "r", "expires_at": "soon"});
    /// let err = StravaToken::from_json("POST /oauth/token", "", &v).unwrap_err();
    /// assert_eq!(err.to_string(), "POST /oauth/token: expires_at: expected an integer, found a string");
    /// # Ok::<(), sync_jobs::JobError>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`] for a missing or empty token, or an `expires_at` that is not a
    /// Unix time in years 1970–9999.
    pub fn from_json(source_name: &str, path: &str, value: &Value) -> Result<Self, JobError> {
        // The tokens are secrets from the moment they arrive, before anything else is checked.
        json::register_secrets(value, &["access_token", "refresh_token"]);
        let o = Obj::of(source_name, path, value)?;
        let seconds = o.int("expires_at")?;
        let expires_at = chrono::DateTime::from_timestamp(seconds, 0)
            .filter(|t| seconds >= 0 && t.naive_utc().and_utc().timestamp() < 253_402_300_800)
            .ok_or_else(|| {
                JobError::payload(
                    source_name,
                    format!(
                        "{}: {seconds} is not a Unix time in years 1970-9999",
                        json::join(path, "expires_at")
                    ),
                )
            })?
            .naive_utc();
        let athlete_id = match o.opt("athlete") {
            Some(_) => {
                let athlete_path = json::join(path, "athlete");
                Some(o.object("athlete", &athlete_path)?.int("id")?)
            }
            None => None,
        };
        Ok(StravaToken {
            access_token: Secret::new(o.string("access_token")?),
            refresh_token: Secret::new(o.string("refresh_token")?),
            expires_at,
            athlete_id,
        })
    }

    fn into_row(self, account: i64, athlete_id: i64) -> StravaAuth {
        StravaAuth {
            id: account,
            athlete_id,
            access_token: self.access_token.expose().to_owned(),
            refresh_token: self.refresh_token.expose().to_owned(),
            expires_at: self.expires_at,
            updated_at: chrono::Utc::now().naive_utc(),
        }
    }
}

/// A capture of the token and stats responses (the format is in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct StravaCapture {
    /// Where the capture was read from (a path, or `stdin`): errors name it.
    pub source_name: String,
    /// The athlete of the token row.
    pub athlete_id: Option<i64>,
    /// The token response, if captured.
    pub token: Option<StravaToken>,
    /// The stats response.
    pub stats: AthleteStats,
}

impl StravaCapture {
    /// Parses and validates a capture; `source_name` (a path, or `stdin`) prefixes errors.
    ///
    /// ```
    /// use sync_jobs::strava::StravaCapture;
    /// let capture = StravaCapture::parse("examples/data/strava.json", &std::fs::read_to_string("examples/data/strava.json")?)?;
    /// assert!(capture.token.is_some());
    /// let err = StravaCapture::parse("stdin", r#"{"stats": {"recent_ride_totals": "#).unwrap_err();
    /// assert!(err.to_string().starts_with("stdin: truncated JSON"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`JobError::Payload`]: malformed, truncated or non-finite JSON, a missing field, a wrong
    /// type, or a token without an athlete id.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, JobError> {
        let root = json::parse_shaped(source_name, text, &CAPTURE_SHAPE)?;
        let o = Obj::of(source_name, "", &root)?;
        let stats = AthleteStats::from_json(source_name, "stats", o.get("stats")?)?;
        let token = o
            .opt("token")
            .map(|t| StravaToken::from_json(source_name, "token", t))
            .transpose()?;
        let athlete_id = match o.opt("athlete_id") {
            Some(_) => Some(o.int("athlete_id")?),
            None => token.as_ref().and_then(|t| t.athlete_id),
        };
        if token.is_some() && athlete_id.is_none() {
            return Err(JobError::payload(
                source_name,
                "athlete_id: missing field (needed to store the token; or give token.athlete.id)",
            ));
        }
        Ok(StravaCapture {
            source_name: source_name.to_owned(),
            athlete_id,
            token,
            stats,
        })
    }
}

/// How an online run reaches Strava.
#[derive(Debug, Clone)]
pub struct StravaApi {
    /// `https://www.strava.com/api/v3` ([`DEFAULT_API_BASE`]), or a test server.
    pub api_base: String,
    /// The application's client id (`STRAVA_CLIENT_ID`).
    pub client_id: String,
    /// The application's client secret (`STRAVA_CLIENT_SECRET`).
    pub client_secret: Secret,
    /// A refresh token to start from when no token is stored for the account yet
    /// (`STRAVA_REFRESH_TOKEN`). A stored token always wins: Strava rotates refresh tokens.
    pub bootstrap_refresh_token: Option<Secret>,
    /// The athlete, when no token row names one yet.
    pub athlete_id: Option<i64>,
    /// Refresh when the token expires within this long ([`DEFAULT_REFRESH_MARGIN`]).
    pub refresh_margin: Duration,
    /// The HTTP client (timeouts).
    pub http: HttpClient,
}

/// Where a run's data comes from.
#[derive(Debug, Clone)]
pub enum StravaSource {
    /// Call the API.
    Online(StravaApi),
    /// A capture read from a file or stdin.
    Capture(Box<StravaCapture>),
}

/// Runs one Strava sync for `account` on `db`: the three stats rows are inserted, updated or
/// left unchanged, never duplicated, and the token only ever moves forward.
///
/// Transactions, locks and round trips (details in [`crate::run`]):
/// - Offline: one transaction: the token upsert (under the advisory lock
///   `(LOCK_NAMESPACE, account)` on PostgreSQL, released at commit) and three stats upserts,
///   one statement each.
/// - Online: the token transaction (lock, one read, and only when the token expires within
///   the margin: one `POST /oauth/token` and one upsert; the lock is released at its commit),
///   then one `GET /athletes/{id}/stats` with no transaction open, then one transaction of
///   three upserts. PostgreSQL runs at READ COMMITTED, so the read after the lock sees the
///   token a concurrent run committed; SQLite's `BEGIN IMMEDIATE` serialises runs on a file.
///
/// # Examples
///
/// ```
/// use sync_jobs::{strava, AuthOutcome, SyncDatabase};
/// let dir = tempfile::tempdir()?;
/// let mut db = SyncDatabase::open(dir.path().join("sync.db").to_str().unwrap())?;
/// let text = std::fs::read_to_string("examples/data/strava.json")?;
/// let source = strava::StravaSource::Capture(Box::new(strava::StravaCapture::parse("capture", &text)?));
/// let first = strava::sync(&mut db, 1, &source)?;
/// assert_eq!((first.stats.inserted, first.auth), (3, AuthOutcome::Inserted));
/// let second = strava::sync(&mut db, 1, &source)?;
/// assert_eq!((second.stats.unchanged, second.auth), (3, AuthOutcome::Unchanged));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`JobError`]: API errors (401, 429, other statuses, transport), invalid responses,
/// missing configuration, database errors. Stats are written all or none.
pub fn sync(
    db: &mut SyncDatabase,
    account: i64,
    source: &StravaSource,
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
/// use sync_jobs::strava::{sync_with, StravaCapture, StravaSource};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// sync_jobs::db::run_migrations(&mut conn)?;
/// let text = std::fs::read_to_string("examples/data/strava.json")?;
/// let source = StravaSource::Capture(Box::new(StravaCapture::parse("capture", &text)?));
/// assert_eq!(sync_with(&mut conn, 1, &source)?.stats.inserted, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`sync`].
pub fn sync_with<C>(
    conn: &mut C,
    account: i64,
    source: &StravaSource,
) -> Result<SyncSummary, JobError>
where
    C: SyncConnection,
    StravaStats: Upsertable<C::Raw, Changed<strava_stats::data>>,
    StravaAuth: Upsertable<C::Raw, Newer<strava_auth::expires_at>>,
{
    let lock = TokenLock::new(LOCK_NAMESPACE, account);
    match source {
        StravaSource::Capture(capture) => {
            let has_token = capture.token.is_some() && capture.athlete_id.is_some();
            let write = |conn: &mut C| {
                let mut summary = SyncSummary::new();
                if let (Some(token), Some(athlete)) = (&capture.token, capture.athlete_id) {
                    let row = token.clone().into_row(account, athlete);
                    summary.auth = atomic_upsert_auth(conn, &row)
                        .map_err(|e| name_input(e.into(), Some(&capture.source_name), "token"))?
                        .into();
                }
                write_stats(
                    conn,
                    &capture.stats,
                    Some(&capture.source_name),
                    &mut summary,
                )?;
                Ok(summary)
            };
            // The token lock (when a token is stored) for the whole transaction.
            if has_token {
                conn.token_transaction(lock, write)
            } else {
                conn.sync_transaction(write)
            }
        }
        StravaSource::Online(api) => {
            let (token, auth) = ensure_fresh_token(
                conn,
                lock,
                api.refresh_margin,
                |c| c.strava_token(account),
                |stored| refresh(api, account, stored),
            )?;
            let url = format!(
                "{}/athletes/{}/stats",
                api.api_base.trim_end_matches('/'),
                token.athlete_id
            );
            let body =
                api.http
                    .get_json(&url, &Secret::new(token.access_token.clone()), &STATS_SHAPE)?;
            let stats = AthleteStats::from_json(&crate::http::endpoint("GET", &url), "", &body)?;
            let mut summary = conn.sync_transaction(|conn| {
                let mut summary = SyncSummary::new();
                write_stats(conn, &stats, None, &mut summary)?;
                Ok(summary)
            })?;
            summary.auth = auth;
            Ok(summary)
        }
    }
}

fn write_stats<C>(
    conn: &mut C,
    stats: &AthleteStats,
    source: Option<&str>,
    summary: &mut SyncSummary,
) -> Result<(), JobError>
where
    C: SyncConnection,
    StravaStats: Upsertable<C::Raw, Changed<strava_stats::data>>,
{
    for row in stats.rows(chrono::Utc::now().naive_utc()) {
        let outcome = atomic_upsert_stats(conn, &row)
            .map_err(|e| name_input(e.into(), source, &format!("stats[{}]", row.stats_type)))?;
        tracing::info!(stats_type = %row.stats_type, %outcome, "stats row");
        summary.record_stats(&row.stats_type, outcome);
    }
    Ok(())
}

/// `POST {api_base}/oauth/token` with the stored (or bootstrap) refresh token.
fn refresh(
    api: &StravaApi,
    account: i64,
    stored: Option<&StravaAuth>,
) -> Result<StravaAuth, JobError> {
    let refresh_token = match (stored, &api.bootstrap_refresh_token) {
        (Some(s), _) => Secret::new(s.refresh_token.clone()),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(JobError::Config(format!(
                "no Strava token is stored for account {account}: set STRAVA_REFRESH_TOKEN to \
                 start from a refresh token"
            )))
        }
    };
    if api.client_id.is_empty() || api.client_secret.expose().is_empty() {
        return Err(JobError::Config(
            "refreshing the Strava token needs STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET".into(),
        ));
    }
    let url = format!("{}/oauth/token", api.api_base.trim_end_matches('/'));
    let body = api.http.post_form_json(
        &url,
        &[
            ("client_id", api.client_id.as_str()),
            ("client_secret", api.client_secret.expose()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ],
        &TOKEN_SHAPE,
    )?;
    let token = StravaToken::from_json(&crate::http::endpoint("POST", &url), "", &body)?;
    let athlete_id = token
        .athlete_id
        .or(api.athlete_id)
        .or(stored.map(|s| s.athlete_id))
        .ok_or_else(|| {
            JobError::Config(format!(
                "no athlete id for account {account}: pass --athlete-id (or STRAVA_ATHLETE_ID)"
            ))
        })?;
    Ok(token.into_row(account, athlete_id))
}
