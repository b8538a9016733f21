//! What a sync run can fail with.

use std::fmt;
use std::time::Duration;
use upsert_kit::db::BackendKind;

/// Every error of a sync run. Messages are one line and never contain tokens, client secrets
/// or database passwords: API errors name the endpoint (a URL without credentials) and the
/// status, never the request's headers or form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A payload (a capture file, stdin or an API response) is not what the job expects:
    /// malformed or truncated JSON, a missing field, a wrong type, a non-finite number, an
    /// unknown stats range. Nothing was written.
    #[error("{source_name}: {reason}")]
    Payload {
        /// Where the payload came from (`examples/data/strava.json`, `stdin`, `GET …/stats`).
        source_name: String,
        /// What is wrong, with the JSON path of the offending field.
        reason: String,
    },

    /// The run is not configured well enough to start (a missing client id, no stored token
    /// and no refresh token to start from, …).
    #[error("configuration: {0}")]
    Config(String),

    /// The API refused the credentials (HTTP 401).
    #[error("{endpoint} answered 401 Unauthorized: the access token was refused (revoked or expired); re-authorize the account")]
    Unauthorized {
        /// The request, e.g. `GET https://www.strava.com/api/v3/athletes/1/stats`.
        endpoint: String,
    },

    /// The API's rate limit was reached (HTTP 429).
    #[error("{endpoint} answered 429 Too Many Requests: rate limited, {}", retry_hint(*.retry_after))]
    RateLimited {
        /// The request.
        endpoint: String,
        /// The server's `Retry-After` (delay seconds or an HTTP date), when it sent one.
        retry_after: Option<Duration>,
    },

    /// The API answered with another error status (4xx or 5xx).
    #[error("{endpoint} answered {status}{}{}", if *.status >= 500 { " (a server error at the API; try again later)" } else { "" }, detail_suffix(.detail))]
    Api {
        /// The request.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response's body (its `message` field when it is JSON), if any.
        detail: Option<String>,
    },

    /// The request did not complete: connection refused, DNS failure, timeout, TLS error.
    #[error("{endpoint} failed: {message}")]
    Transport {
        /// The request.
        endpoint: String,
        /// The transport's error.
        message: String,
    },

    /// The database could not be opened: a PostgreSQL server that does not answer or refuses
    /// the login, an SQLite file that cannot be created. The message shows the URL with its
    /// password redacted.
    #[error("{0}")]
    DatabaseUnavailable(String),

    /// The sync jobs' migrations ([`crate::db`]) could not be applied; the failed one was
    /// rolled back.
    #[error("migration failed: {0}")]
    Migration(String),

    /// The database refused or failed (the stats written by this run were rolled back).
    #[error(transparent)]
    Database(#[from] upsert_kit::Error),

    /// The URL names a server backend this build was made without: PostgreSQL and MySQL are
    /// features of the crate (`postgres`, `mysql`), off by default so that the default build
    /// links no database client library. Nothing was opened.
    #[error(
        "{url}: this build of the sync jobs has no {} backend: build them with the feature \"{}\" \
         (cargo build --release -p sync-jobs --features {}; it links {})",
        backend_name(*.backend),
        backend_feature(*.backend),
        backend_feature(*.backend),
        backend_library(*.backend)
    )]
    BackendNotBuilt {
        /// The database URL, its password redacted.
        url: String,
        /// The backend it names.
        backend: BackendKind,
    },
}

fn backend_name(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Postgres => "PostgreSQL",
        BackendKind::Mysql => "MySQL/MariaDB",
        BackendKind::Sqlite => "SQLite",
    }
}

fn backend_feature(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Postgres => "postgres",
        BackendKind::Mysql => "mysql",
        // Always built in; never reported.
        BackendKind::Sqlite => "sqlite",
    }
}

fn backend_library(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Postgres => "libpq",
        BackendKind::Mysql => "libmysqlclient or MariaDB's libmariadb",
        BackendKind::Sqlite => "SQLite, compiled in",
    }
}

fn retry_hint(after: Option<Duration>) -> String {
    match after {
        Some(d) => format!("retry after {} s", d.as_secs()),
        None => "retry later (no Retry-After given)".to_owned(),
    }
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl JobError {
    /// A [`JobError::BackendNotBuilt`] error for `url`, which is shown with its password
    /// redacted.
    ///
    /// ```
    /// use sync_jobs::JobError;
    /// let e = JobError::backend_not_built("postgres://sync:hunter2@db/stats");
    /// assert_eq!(
    ///     e.to_string(),
    ///     "postgres://sync:***@db/stats: this build of the sync jobs has no PostgreSQL backend: \
    ///      build them with the feature \"postgres\" (cargo build --release -p sync-jobs \
    ///      --features postgres; it links libpq)"
    /// );
    /// assert!(!e.is_transient());
    /// let e = JobError::backend_not_built("mariadb://root@127.0.0.1:3306/test");
    /// assert!(e.to_string().contains("no MySQL/MariaDB backend: build them with the feature \"mysql\""));
    /// ```
    pub fn backend_not_built(url: &str) -> Self {
        JobError::BackendNotBuilt {
            url: upsert_kit::db::redact_url(url),
            backend: BackendKind::of(url),
        }
    }

    /// A [`JobError::Payload`] error.
    pub fn payload(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        JobError::Payload {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }

    /// Whether the database was busy (SQLite locked past the busy timeout): nothing was
    /// written, and running again can succeed ([`JobError::is_transient`]).
    pub fn is_busy(&self) -> bool {
        matches!(self, JobError::Database(upsert_kit::Error::Busy(_)))
    }

    /// Whether running the job again later can succeed without changing anything: rate
    /// limits, server errors, transport failures, an unreachable database and retryable
    /// database errors. A 401, a bad payload or a configuration error needs a person.
    ///
    /// ```
    /// use sync_jobs::JobError;
    /// let busy = JobError::Api { endpoint: "GET https://x/stats".into(), status: 503, detail: None };
    /// assert!(busy.is_transient());
    /// assert!(!JobError::payload("stdin", "truncated JSON").is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::RateLimited { .. } | JobError::Transport { .. } => true,
            JobError::Api { status, .. } => *status >= 500,
            JobError::Database(e) => e.is_retryable(),
            JobError::DatabaseUnavailable(_) => true,
            _ => false,
        }
    }
}

/// A secret string (a token, a client secret): `Debug` and `Display` print `<redacted>`, and
/// making one registers its value with [`crate::secrets`], so that no message or log line of
/// the process shows it.
///
/// ```
/// use sync_jobs::Secret;
/// let token = Secret::new("abc123");
/// assert_eq!(format!("{token:?} {token}"), "<redacted> <redacted>");
/// assert_eq!(token.expose(), "abc123");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret and registers it with [`crate::secrets`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::secrets::register(&value);
        Secret(value)
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("abc123");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "abc123");
    }

    #[test]
    fn rate_limit_message_names_the_retry_after() {
        let e = JobError::RateLimited {
            endpoint: "GET http://x/stats".into(),
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            e.to_string(),
            "GET http://x/stats answered 429 Too Many Requests: rate limited, retry after 120 s"
        );
        assert!(e.is_transient());
    }
}
