//! The library's error type and the one place where database errors are classified.
//!
//! Diesel maps only a few SQLSTATEs to [`DatabaseErrorKind`] (unique, foreign key, not-null and
//! check violations, serialization failure, closed connection) and reports everything else as an
//! unnamed kind without the SQLSTATE. The classes this crate needs beyond those (deadlock
//! `40P01`, lock timeout `55P03`, statement timeout and query cancel `57014`, administrator
//! shutdown `57P01`) are therefore recognised by the server's primary message, which PostgreSQL
//! emits in English unless `lc_messages` is set to another language. On a server with translated
//! messages those errors fall back to [`Error::Database`], which is never retried: the safe side.
//!
//! MySQL and MariaDB: Diesel keeps only the message (no error number), and maps 1062 (duplicate
//! key) to a unique violation, 1213 (deadlock) to a serialization failure, 1048 to not-null,
//! 1452 to foreign key and 3819 to check. The rest is recognised by the server's English
//! message (`lc_messages` is `en_US` unless set otherwise), as for PostgreSQL:
//!
//! | error | message starts with | class |
//! |---|---|---|
//! | 1213, 3058 | `Deadlock found when trying to get lock`, `… get user-level lock` (MySQL 8's named locks) | [`Error::Deadlock`] (retryable) |
//! | 1205 | `Lock wait timeout exceeded` | [`Error::LockTimeout`] (InnoDB undoes the statement, not the transaction) |
//! | 1062 | `Duplicate entry '…' for key '…'` | [`Error::Constraint`], `Unique`, the key's name as the constraint |
//! | 2006, 2013, 1927, 4031 | `… server has gone away`, `Lost connection to …`, `Connection was killed`, `The client was disconnected …` | [`Error::ConnectionLost`]; [`Error::OutcomeUnknown`] during `COMMIT` or a statement outside a transaction |
//! | 1317 | `Query execution was interrupted` | [`Error::Cancelled`] (or [`Error::StatementTimeout`] when the message says the maximum statement time was exceeded) |
//! | 1290, 1792 | `The MariaDB server is running with the --read-only option`, `Cannot execute statement in a READ ONLY transaction` | [`Error::Database`]: permanent on this server (after a failover, reconnect to the new primary) |

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind};
use std::fmt;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the library returns.
///
/// Ask an error what to do with it through [`Error::is_retryable`] and
/// [`Error::is_outcome_unknown`] instead of matching on variants: the classification lives here.
/// Messages never contain bind values, tokens or database passwords.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was rejected before anything was written.
    // Not `#[from]`: that would make the `InvalidInput` the source too, and a report of the
    // error chain would print its text twice.
    #[error("invalid input: {0}")]
    InvalidInput(InvalidInput),

    /// A constraint of the schema rejected the write (permanent: retrying gives the same answer).
    #[error("{kind} violated{}: {message}", constraint.as_deref().map(|c| format!(" (constraint \"{c}\")")).unwrap_or_default())]
    Constraint {
        /// Which kind of constraint.
        kind: ConstraintKind,
        /// The constraint's name, when the server reported it.
        constraint: Option<String>,
        /// The server's primary message.
        message: String,
    },

    /// A serializable or repeatable-read transaction lost a race (`40001`); retry the whole
    /// transaction.
    #[error("serialization failure, retry the transaction: {0}")]
    SerializationFailure(String),

    /// The server broke a deadlock by aborting this transaction (`40P01`); retry it.
    #[error("deadlock detected, retry the transaction: {0}")]
    Deadlock(String),

    /// A lock could not be acquired within `lock_timeout` (`55P03`).
    #[error("lock not acquired within the lock timeout: {0}")]
    LockTimeout(String),

    /// SQLite: another connection held the database's lock past this connection's busy
    /// timeout (`database is locked`). SQLite applies a transaction whole or not at all, and a
    /// busy statement did not run: nothing was applied, so the transaction can be retried
    /// ([`Error::is_retryable`]). The timeout is the URL's `busy_timeout` parameter of
    /// [`connect_sqlite`](crate::db::connect_sqlite).
    #[error("database busy: another connection held the SQLite write lock past the busy timeout; nothing was applied, so retrying can succeed: {0}")]
    Busy(String),

    /// The statement ran longer than `statement_timeout` (`57014`).
    #[error("statement timeout: {0}")]
    StatementTimeout(String),

    /// The statement was cancelled (`57014`, `pg_cancel_backend`).
    #[error("statement cancelled: {0}")]
    Cancelled(String),

    /// No connection could be opened (server down, refused, bad credentials). Nothing was
    /// applied. The message is a whole sentence (`cannot connect to postgres://app:***@db/app:
    /// …`, `cannot open SQLite database …`).
    #[error("{0}")]
    Connect(String),

    /// The connection was lost before the transaction's `COMMIT` was sent: nothing was
    /// applied, so the transaction can be retried on a new connection.
    #[error("connection lost before commit (nothing was applied): {0}")]
    ConnectionLost(String),

    /// The connection was lost while a write may have been committing: during the
    /// transaction's `COMMIT`, or while a statement outside any transaction (which commits on
    /// its own) ran. It may or may not have been applied; the message says which case it was.
    /// Retry only writes that carry an idempotency key.
    #[error("the outcome is unknown: {0}")]
    OutcomeUnknown(String),

    /// The same idempotency key was used earlier with different arguments. The message does
    /// not name the key (a key may be a secret); the field holds it, hidden from `Debug`.
    #[error("the idempotency key was already used with different arguments")]
    IdempotencyConflict {
        /// The key.
        key: crate::redact::Redacted<String>,
    },

    /// The idempotency key's first call is still in flight (its ledger row holds no result yet);
    /// nothing was written. Try again later with the same key.
    #[error("the idempotency key is in use by a call still in flight")]
    IdempotencyInFlight {
        /// The key, hidden from `Debug`.
        key: crate::redact::Redacted<String>,
    },

    /// A reservation or consumption would exceed the limit.
    #[error("quota exceeded: {requested} requested, {available} available")]
    QuotaExceeded {
        /// Units asked for.
        requested: i64,
        /// Units left under the limit at the time of the request.
        available: i64,
    },

    /// A counter increment would take an amount column across one of its bounds; nothing was
    /// written (permanent for these amounts: retrying gives the same answer until the row
    /// changes).
    #[error("counter column {column:?} at {current} cannot take {delta:+}: it would cross its {bound} of {limit} (nothing was written)")]
    CounterBound {
        /// The amount column.
        column: String,
        /// Which bound.
        bound: BoundKind,
        /// The column's value when the refusal was explained (read right after it).
        current: i64,
        /// The amount that was refused.
        delta: i64,
        /// The bound's value.
        limit: i64,
    },

    /// A row the operation needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// The operation needs state kept in one server session (a session-scoped advisory lock),
    /// and the connection is in pooler mode
    /// ([`db`](crate::db#behind-a-transaction-mode-pooler-pooler-mode)): behind a
    /// transaction-mode pooler the next transaction may run on another server connection, and
    /// the lock would stay on one the pooler hands to another client. Nothing was sent.
    /// Permanent: use a transaction-scoped lock ([`xact_lock`](crate::lock::xact_lock) inside
    /// a transaction) or a claim with a lease ([`claim`](crate::claim)) instead.
    #[error("{operation} needs one server session, which a transaction-mode pooler does not keep (the connection is in pooler mode); nothing was sent. Use a transaction-scoped lock (lock::xact_lock / try_xact_lock inside a transaction) or a claim with a lease (claim::Queue) instead")]
    SessionStateUnavailable {
        /// What was refused (`"lock::lock"`, …).
        operation: &'static str,
    },

    /// No connection could be taken from the pool in time.
    #[error("connection pool: {0}")]
    Pool(String),

    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(String),

    /// Any other database error (permanent unless the variants above say otherwise).
    // Not `#[source]`: the message already holds Diesel's, which would otherwise be printed
    // twice by a report of the error chain (`database error: X: X`).
    #[error("database error: {0}")]
    Database(diesel::result::Error),
}

/// The constraint kinds of [`Error::Constraint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConstraintKind {
    /// A unique index or primary key (`23505`).
    Unique,
    /// A foreign key (`23503`).
    ForeignKey,
    /// A `NOT NULL` column (`23502`).
    NotNull,
    /// A `CHECK` constraint (`23514`).
    Check,
    /// An exclusion constraint (`23P01`).
    Exclusion,
}

impl fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConstraintKind::Unique => "unique constraint",
            ConstraintKind::ForeignKey => "foreign key constraint",
            ConstraintKind::NotNull => "not-null constraint",
            ConstraintKind::Check => "check constraint",
            ConstraintKind::Exclusion => "exclusion constraint",
        })
    }
}

/// The bounds of [`Error::CounterBound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BoundKind {
    /// The constant floor of [`Increment::at_least`](crate::counter::Increment::at_least).
    Floor,
    /// The constant ceiling of [`Increment::at_most`](crate::counter::Increment::at_most).
    Ceiling,
    /// The row's limit column ([`Increment::within_limits`](crate::counter::Increment::within_limits)).
    Limit,
}

impl fmt::Display for BoundKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BoundKind::Floor => "floor",
            BoundKind::Ceiling => "ceiling",
            BoundKind::Limit => "limit column",
        })
    }
}

/// Input rejected before anything was sent to the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// The offending field or argument.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidInput {
    /// An input error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Error {
    /// A shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput(InvalidInput::new(field, reason))
    }

    /// The error's class, a short stable name without any value of the call in it:
    /// `"constraint"`, `"deadlock"`, `"busy"`, … (the variant's name in snake case). Spans record
    /// it as `error.type`, and the metrics label errors and retries with it.
    ///
    /// ```
    /// assert_eq!(upsert_kit::Error::Deadlock("…".into()).class(), "deadlock");
    /// ```
    pub fn class(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::Constraint { .. } => "constraint",
            Error::SerializationFailure(_) => "serialization_failure",
            Error::Deadlock(_) => "deadlock",
            Error::LockTimeout(_) => "lock_timeout",
            Error::Busy(_) => "busy",
            Error::StatementTimeout(_) => "statement_timeout",
            Error::Cancelled(_) => "cancelled",
            Error::Connect(_) => "connect",
            Error::ConnectionLost(_) => "connection_lost",
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::IdempotencyConflict { .. } => "idempotency_conflict",
            Error::IdempotencyInFlight { .. } => "idempotency_in_flight",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::CounterBound { .. } => "counter_bound",
            Error::NotFound(_) => "not_found",
            Error::SessionStateUnavailable { .. } => "session_state_unavailable",
            Error::Pool(_) => "pool",
            Error::Migration(_) => "migration",
            Error::Database(_) => "database",
        }
    }

    /// Whether re-running the whole transaction on a healthy connection can succeed and is
    /// safe: serialization failures, deadlocks, connections lost before `COMMIT` (the server
    /// rolled the transaction back), failed connects and a busy SQLite database.
    /// [`Error::OutcomeUnknown`] is *not* retryable: see [`Error::is_outcome_unknown`].
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::SerializationFailure(_)
                | Error::Deadlock(_)
                | Error::ConnectionLost(_)
                | Error::Connect(_)
                | Error::Busy(_)
        )
    }

    /// Whether the write may or may not have been applied (connection lost during `COMMIT`).
    /// Such a write may be retried only if it is idempotent (carries an idempotency key).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_))
    }

    /// The constraint's name for [`Error::Constraint`].
    pub fn constraint_name(&self) -> Option<&str> {
        match self {
            Error::Constraint { constraint, .. } => constraint.as_deref(),
            _ => None,
        }
    }

    /// Reclassifies an error raised while committing: a lost connection then means the outcome
    /// is unknown rather than "nothing applied". [`transaction`](crate::transaction) does this
    /// for its own `COMMIT`; call it for a statement that committed on its own.
    ///
    /// ```
    /// use upsert_kit::Error;
    /// let lost = Error::ConnectionLost("server closed the connection unexpectedly".into());
    /// assert!(lost.is_retryable());
    /// let at_commit = lost.at_commit();
    /// assert!(at_commit.is_outcome_unknown() && !at_commit.is_retryable());
    /// assert_eq!(
    ///     at_commit.to_string(),
    ///     "the outcome is unknown: connection lost during COMMIT: server closed the connection unexpectedly"
    /// );
    /// ```
    #[must_use]
    pub fn at_commit(self) -> Self {
        match self {
            Error::ConnectionLost(m) => {
                Error::OutcomeUnknown(format!("connection lost during COMMIT: {m}"))
            }
            other => other,
        }
    }
}

fn classify_database(
    kind: DatabaseErrorKind,
    info: &dyn DatabaseErrorInformation,
) -> Option<Error> {
    let message = info.message().trim_end().to_owned();
    let constraint = |k| Error::Constraint {
        kind: k,
        constraint: info.constraint_name().map(str::to_owned),
        message: message.clone(),
    };
    Some(match kind {
        DatabaseErrorKind::UniqueViolation if info.constraint_name().is_none() => {
            // MySQL: `Duplicate entry 'x' for key 'name'` (MySQL 8: 'table.name').
            Error::Constraint {
                kind: ConstraintKind::Unique,
                constraint: mysql_duplicate_key_name(&message),
                message: message.clone(),
            }
        }
        DatabaseErrorKind::SerializationFailure if message.starts_with("Deadlock found") => {
            Error::Deadlock(message)
        }
        DatabaseErrorKind::UniqueViolation => constraint(ConstraintKind::Unique),
        DatabaseErrorKind::ForeignKeyViolation => constraint(ConstraintKind::ForeignKey),
        DatabaseErrorKind::NotNullViolation => constraint(ConstraintKind::NotNull),
        DatabaseErrorKind::CheckViolation => constraint(ConstraintKind::Check),
        DatabaseErrorKind::ExclusionViolation => constraint(ConstraintKind::Exclusion),
        DatabaseErrorKind::SerializationFailure => Error::SerializationFailure(message),
        DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
            Error::ConnectionLost(message)
        }
        _ => return classify_by_message(&message),
    })
}

/// The index named by MySQL's `Duplicate entry '…' for key '…'`, without MySQL 8's table
/// prefix.
fn mysql_duplicate_key_name(message: &str) -> Option<String> {
    let rest = message.rsplit_once(" for key '")?.1;
    let name = rest.strip_suffix('\'')?;
    Some(name.rsplit_once('.').map_or(name, |(_, n)| n).to_owned())
}

/// The classes Diesel leaves unnamed, recognised by PostgreSQL's (English) primary message,
/// and MySQL's / MariaDB's.
fn classify_by_message(message: &str) -> Option<Error> {
    let m = message.to_owned();
    if let Some(e) = classify_mysql_message(message) {
        return Some(e);
    }
    if message.starts_with("deadlock detected") {
        Some(Error::Deadlock(m))
    } else if message.starts_with("canceling statement due to lock timeout")
        || message.starts_with("could not obtain lock")
    {
        Some(Error::LockTimeout(m))
    } else if message.starts_with("canceling statement due to statement timeout") {
        Some(Error::StatementTimeout(m))
    } else if message.starts_with("canceling statement due to user request") {
        Some(Error::Cancelled(m))
    } else if message.starts_with("terminating connection")
        || message.starts_with("server closed the connection unexpectedly")
        || message.starts_with("no connection to the server")
        || message.starts_with("could not receive data from server")
        || message.starts_with("could not send data to server")
        || message.starts_with("SSL connection has been closed unexpectedly")
    {
        Some(Error::ConnectionLost(m))
    } else if message.starts_with("database is locked")
        || message.starts_with("database table is locked")
    {
        // SQLite: another writer held the lock past the busy timeout. Nothing was applied.
        Some(Error::Busy(m))
    } else if message.starts_with("UNIQUE constraint failed") {
        Some(Error::Constraint {
            kind: ConstraintKind::Unique,
            constraint: message
                .strip_prefix("UNIQUE constraint failed: ")
                .map(str::to_owned),
            message: m,
        })
    } else {
        None
    }
}

/// MySQL's and MariaDB's messages of the classes Diesel leaves unnamed.
fn classify_mysql_message(message: &str) -> Option<Error> {
    let m = message.to_owned();
    if message.starts_with("Lock wait timeout exceeded") {
        Some(Error::LockTimeout(m))
    } else if message.starts_with("Deadlock found when trying to get ") {
        // 1213 (`… get lock`), and MySQL 8's 3058 between named locks (`… get user-level lock`).
        Some(Error::Deadlock(m))
    } else if message
        .to_ascii_lowercase()
        .ends_with("server has gone away")
        || message.starts_with("Lost connection to")
        || message.starts_with("Connection was killed")
        || message.starts_with("The client was disconnected")
        || message.starts_with("Server shutdown in progress")
    {
        Some(Error::ConnectionLost(m))
    } else if message.starts_with("Duplicate entry ") {
        // Diesel names the kind for prepared statements only; a plain query's error comes here.
        Some(Error::Constraint {
            kind: ConstraintKind::Unique,
            constraint: mysql_duplicate_key_name(message),
            message: m,
        })
    } else if let Some(rest) = message.strip_prefix("CONSTRAINT `") {
        // MariaDB 4025: CONSTRAINT `name` failed for `db`.`table`
        Some(Error::Constraint {
            kind: ConstraintKind::Check,
            constraint: rest.split_once('`').map(|(name, _)| name.to_owned()),
            message: m,
        })
    } else if let Some(rest) = message.strip_prefix("Check constraint '") {
        // MySQL 8 3819: Check constraint 'name' is violated.
        Some(Error::Constraint {
            kind: ConstraintKind::Check,
            constraint: rest.split_once('\'').map(|(name, _)| name.to_owned()),
            message: m,
        })
    } else if message.starts_with("Query execution was interrupted") {
        if message.contains("max_statement_time") || message.contains("maximum statement") {
            Some(Error::StatementTimeout(m))
        } else {
            Some(Error::Cancelled(m))
        }
    } else {
        None
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as D;
        match e {
            D::DatabaseError(kind, ref info) => {
                classify_database(kind, info.as_ref()).unwrap_or(Error::Database(e))
            }
            D::NotFound => Error::NotFound("no such row".into()),
            D::BrokenTransactionManager => {
                Error::ConnectionLost("the connection's transaction state is broken".into())
            }
            D::RollbackErrorOnCommit {
                rollback_error,
                commit_error,
            } => {
                tracing::debug!(error = %rollback_error, "rollback after a failed commit failed too");
                Error::from(*commit_error).at_commit()
            }
            other => Error::Database(other),
        }
    }
}

#[cfg(feature = "r2d2")]
impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        // r2d2 quotes the last connection error, which may quote the URL.
        Error::Pool(crate::redact::redact_message(&e.to_string()))
    }
}

impl From<diesel::ConnectionError> for Error {
    fn from(e: diesel::ConnectionError) -> Self {
        Error::Connect(format!(
            "cannot connect: {}",
            crate::redact::redact_message(&e.to_string())
        ))
    }
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::InvalidInput(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Every cause in an error chain, joined as `anyhow`'s `{:#}` and most loggers print it.
    fn chain(e: &Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out.push_str(": ");
            out.push_str(&s.to_string());
            next = s.source();
        }
        out
    }

    #[test]
    fn both_of_mysqls_deadlocks_are_retryable_deadlocks() {
        for message in [
            "Deadlock found when trying to get lock; try restarting transaction",
            "Deadlock found when trying to get user-level lock; try rolling back transaction/releasing locks and restarting lock acquisition.",
        ] {
            let e = Error::from(diesel::result::Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(message.to_owned()),
            ));
            assert!(matches!(e, Error::Deadlock(_)), "{message}: {e:?}");
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn a_report_of_the_error_chain_never_repeats_a_message() {
        let invalid = Error::invalid("expires_at", "timestamp +10000-01-01 is out of range");
        assert_eq!(
            chain(&invalid),
            "invalid input: expires_at: timestamp +10000-01-01 is out of range"
        );
        let db = Error::from(diesel::result::Error::QueryBuilderError("bad query".into()));
        assert_eq!(chain(&db), "database error: bad query");
        let connect = Error::from(diesel::ConnectionError::BadConnection(
            "could not translate host name".into(),
        ));
        assert_eq!(
            chain(&connect),
            "cannot connect: could not translate host name"
        );
    }
}
