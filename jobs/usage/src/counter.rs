//! Usage counters: atomic increments recorded once per idempotency key.
//!
//! An increment is, on PostgreSQL, one statement that is its own transaction (one round trip);
//! it finds the account's period by its natural key, the month's first instant:
//!
//! ```sql
//! WITH up AS (UPDATE usage_periods SET tokens_used = tokens_used + $t, …
//!             WHERE account = $account AND period_start = $start
//!             RETURNING id, tokens_used, …)
//! INSERT INTO usage_events (account, idempotency_key, period_id, …, tokens_total, …)
//! SELECT $account, $key, up.id, …, up.tokens_used, … FROM up
//! RETURNING id, period_id, tokens_total, …
//! ```
//!
//! - On the first increment of a month the period row does not exist yet: nothing is updated,
//!   nothing inserted, no row comes back; the period is then created with
//!   [`get_or_create_usage_period`](crate::get_or_create_usage_period) and the statement runs
//!   again.
//! - The counter update is `SET n = n + d` under the row lock: concurrent increments queue on
//!   the row, none reads a value and writes it back, so none is lost.
//! - The ledger row, carrying the totals right after the update, commits with the counter
//!   change or not at all. A key already in the ledger (committed by another call; a concurrent
//!   holder of the key is waited for) makes the insert fail with a unique violation, which
//!   undoes the whole statement, counter update included. The ledger row is then read and
//!   compared with this request: same amounts, its stored result is returned and nothing is
//!   counted; other amounts, [`Error::IdempotencyConflict`].
//! - Inside the caller's transaction the statement runs in a savepoint, so that a repeated key
//!   does not abort the caller's transaction.
//!
//! Because the ledger row and the counter change commit together, a retry after any failure,
//! even one whose outcome is unknown (connection lost during the commit), counts the request
//! exactly once, as long as the key is still in the ledger: [`prune_idempotency_keys`] removes
//! keys after a retention period the caller chooses, longer than any retry can take.
//!
//! Locks (PostgreSQL, READ COMMITTED): the period row, then the key's unique-index entry; every
//! increment takes them in this order, so increments cannot deadlock each other, and the row
//! lock is held only for the statement's own commit. On SQLite the ledger insert
//! (`ON CONFLICT DO NOTHING`), the counter update and the totals' update run in one
//! `BEGIN IMMEDIATE` transaction: increments run one at a time (see [the crate's notes on
//! SQLite](crate#sqlite)).
//!
//! Increments count what happened; they are not checked against the limits. Use
//! [`crate::quota`] to refuse work that would exceed a limit.

use crate::{
    check_amount, check_instant, create_period, monthly_period, ApplyKeyed, Backend, Keyed,
    KeyedRequest, Usage, UsageConnection,
};
use chrono::NaiveDateTime;
use upsert_kit::{Error, Result};

/// The longest idempotency key, in bytes (UTF-8).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// How many times an increment runs its statement: once more after creating the month's
/// period (its first use), and once more when the key's ledger row was pruned between the
/// conflicting insert and the read.
const ATTEMPTS: u32 = 3;

/// The library's idempotency key (not blank, no control characters, at most
/// [`upsert_kit::idempotency::MAX_KEY_LEN`] bytes); the usage ledger's column holds at most
/// [`MAX_IDEMPOTENCY_KEY_LEN`] of them, checked by [`increment`]. Keys are scoped per account:
/// two accounts may use the same key.
pub use upsert_kit::idempotency::IdempotencyKey;

/// A key for the usage ledger: the library's checks, and at most [`MAX_IDEMPOTENCY_KEY_LEN`]
/// bytes (the `usage_events.idempotency_key` column's limit).
///
/// ```
/// use usage_tracking::counter::checked_key;
/// assert!(checked_key("job-42:2026-11-29").is_ok());
/// assert!(checked_key("").is_err());
/// assert!(checked_key(&"x".repeat(129)).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] (field `idempotency_key`) when `key` is empty or blank, longer
/// than [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, or contains a control character.
pub fn checked_key(key: &str) -> Result<IdempotencyKey> {
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::invalid(
            "idempotency_key",
            format!(
                "{} bytes is longer than the limit of {MAX_IDEMPOTENCY_KEY_LEN}",
                key.len()
            ),
        ));
    }
    IdempotencyKey::new(key)
}

/// What an increment did, or, for a repeated key, what the first call with that key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment {
    /// The ledger row of the key.
    pub event_id: i64,
    /// The period the amounts were counted in.
    pub period_id: i64,
    /// The period's counters right after the amounts were added.
    pub totals: Usage,
    /// `true` for the call that counted the amounts, `false` for a repeat of its key.
    pub applied: bool,
}

/// Adds `amounts` to `account`'s period containing `at`, once per `key`.
///
/// **Guarantee**: concurrent increments never lose a count (`SET n = n + d` under the row
/// lock). A key is counted once: every call with it, concurrent or later, returns the first
/// call's [`Increment`] (with `applied: false`), as long as the key has not been pruned. It is
/// therefore safe to retry an increment after any error, including
/// [`Error::OutcomeUnknown`], with the same key (see
/// [`Retry::idempotent`](upsert_kit::Retry::idempotent) and the second example). A repeat is recognised by the key
/// alone, whatever its `at`.
///
/// **Cost** (PostgreSQL, READ COMMITTED assumed): one round trip, the increment statement (see
/// the [module documentation](self)); three or four more on the first use of a month (the
/// period is created, then the statement runs again); one more (the ledger read) for a
/// repeated key. Inside the caller's
/// transaction it runs in a savepoint (two more). Under REPEATABLE READ or SERIALIZABLE
/// concurrent increments of one period fail with [`Error::SerializationFailure`] instead of
/// waiting: retry them with [`Retry`](upsert_kit::Retry).
///
/// # Errors
/// - [`Error::InvalidInput`], nothing written: a bad key (see [`checked_key`]), an
///   amount below 0 or above [`MAX_AMOUNT`](crate::MAX_AMOUNT), all amounts 0, `at` out
///   of range.
/// - [`Error::NotFound`]: `account` is not registered; nothing written.
/// - [`Error::IdempotencyConflict`]: `key` was used for other amounts; nothing written.
/// - [`Error::ConnectionLost`] / [`Error::OutcomeUnknown`]: retry with the same key.
///
/// # Examples
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use upsert_kit::Error;
/// use usage_tracking::counter::increment;
/// use usage_tracking::{set_usage_limits, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage { tokens: 1000, reports: 10, chats: 50 }, now)?;
///
/// let first = increment(&mut conn, 7, "request-1", now, Usage::tokens(120))?;
/// let again = increment(&mut conn, 7, "request-1", now, Usage::tokens(120))?;
/// assert!(first.applied && !again.applied);
/// assert_eq!((first.totals, first.event_id), (again.totals, again.event_id));
/// assert_eq!(first.totals.tokens, 120);
///
/// let other = increment(&mut conn, 7, "request-1", now, Usage::tokens(5));
/// assert!(matches!(other, Err(Error::IdempotencyConflict { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Retried with [`upsert_kit::Retry`]: the increment carries its key, so the closure is
/// declared [`idempotent`](upsert_kit::Retry::idempotent) and even an unknown outcome (the
/// connection lost while the increment committed) is retried; the retry is recognised by its
/// key and counts nothing twice. On a server, take a new connection from a pool inside the
/// closure, so that a retry does not run on the connection that was lost.
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use upsert_kit::Retry;
/// use usage_tracking::counter::increment;
/// use usage_tracking::{set_usage_limits, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage::tokens(1000), now)?;
///
/// let counted = Retry::new()
///     .idempotent()
///     .run(|_attempt| increment(&mut conn, 7, "job-42", now, Usage::tokens(3)))?;
/// assert_eq!(counted.totals.tokens, 3);
/// // The job runs again (say the scheduler did not see it finish): counted once.
/// let again = Retry::new()
///     .idempotent()
///     .run(|_attempt| increment(&mut conn, 7, "job-42", now, Usage::tokens(3)))?;
/// assert!(!again.applied);
/// assert_eq!(again.totals.tokens, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn increment<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    key: &str,
    at: NaiveDateTime,
    amounts: Usage,
) -> Result<Increment> {
    let key = checked_key(key)?;
    check_amounts(&amounts)?;
    check_instant("at", at)?;
    let hash = request_hash(&amounts);
    let (period_start, _) = monthly_period(at)?;
    let b = conn.backend();
    let request = KeyedRequest {
        account,
        idempotency_key: key.as_str(),
        period_start,
        amounts,
        request_hash: hash,
        created_at: chrono::Utc::now().naive_utc(),
    };
    let mut violation = None;
    for _ in 0..ATTEMPTS {
        match b.apply_keyed(&request)? {
            Keyed::Applied {
                event_id,
                period_id,
                totals,
            } => {
                return Ok(Increment {
                    event_id,
                    period_id,
                    totals,
                    applied: true,
                })
            }
            Keyed::KeyTaken { violation: v } => {
                if let Some(first) = b.find_event(account, key.as_str())? {
                    let first_amounts = Usage {
                        tokens: first.tokens,
                        reports: first.reports,
                        chats: first.chats,
                    };
                    if first.request_hash != hash || first_amounts != amounts {
                        return Err(Error::IdempotencyConflict {
                            key: key.as_str().to_owned(),
                        });
                    }
                    return Ok(Increment {
                        event_id: first.id,
                        period_id: first.period_id,
                        totals: Usage {
                            tokens: first.tokens_total,
                            reports: first.reports_total,
                            chats: first.chats_total,
                        },
                        applied: false,
                    });
                }
                // No ledger row for the key: pruned in between, or the violation was another
                // unique index's. Try once more; a violation that stays is reported.
                tracing::debug!(
                    account,
                    "unique violation without a ledger row; trying again"
                );
                violation = v;
            }
            Keyed::NoPeriod => {
                // The month's first increment (or its period was deleted): create the period
                // (`NotFound` for an unknown account, nothing written), then count.
                create_period(b, account, at)?;
            }
        }
    }
    Err(violation.unwrap_or_else(|| {
        Error::NotFound(format!(
            "idempotency key {:?}: its ledger row or period kept disappearing",
            key.as_str()
        ))
    }))
}

/// Deletes the ledger rows (idempotency keys) recorded before `older_than`, and returns how
/// many. A pruned key is forgotten: a later increment with it counts again. Choose a retention
/// longer than any retry of a request can take (e.g. days).
///
/// **Cost**: one `DELETE` (indexed on `created_at`), in its own statement.
///
/// # Errors
/// [`Error::InvalidInput`] when `older_than` is out of range; database errors.
///
/// # Examples
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::counter::{increment, prune_idempotency_keys};
/// use usage_tracking::{set_usage_limits, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage::tokens(1000), now)?;
/// increment(&mut conn, 7, "request-1", now, Usage::tokens(1))?;
/// let week_ago = now - chrono::Duration::days(7);
/// assert_eq!(prune_idempotency_keys(&mut conn, week_ago)?, 0);
/// assert_eq!(prune_idempotency_keys(&mut conn, now + chrono::Duration::minutes(1))?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn prune_idempotency_keys<C: UsageConnection>(
    conn: &mut C,
    older_than: NaiveDateTime,
) -> Result<usize> {
    check_instant("older_than", older_than)?;
    conn.backend().prune_events(older_than)
}

fn check_amounts(amounts: &Usage) -> Result<()> {
    for (name, amount) in [
        ("amounts.tokens", amounts.tokens),
        ("amounts.reports", amounts.reports),
        ("amounts.chats", amounts.chats),
    ] {
        check_amount(name, amount, true)?;
    }
    if *amounts == Usage::default() {
        return Err(Error::invalid(
            "amounts",
            "all amounts are 0: an increment must add something",
        ));
    }
    Ok(())
}

/// The request's fingerprint stored with its key: 64-bit FNV-1a over the amounts (little-endian),
/// stable across builds and platforms.
fn request_hash(amounts: &Usage) -> i64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for value in [amounts.tokens, amounts.reports, amounts.chats] {
        for byte in value.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_stable_and_tells_amounts_apart() {
        let a = request_hash(&Usage::tokens(5));
        assert_eq!(a, request_hash(&Usage::tokens(5)));
        assert_ne!(a, request_hash(&Usage::tokens(6)));
        assert_ne!(
            request_hash(&Usage {
                tokens: 0,
                reports: 5,
                chats: 0
            }),
            a
        );
    }

    #[test]
    fn keys_are_bounded_and_not_blank() {
        assert!(checked_key("k").is_ok());
        assert!(checked_key(&"é".repeat(64)).is_ok()); // 128 bytes
        for bad in [String::new(), "  ".into(), "a\0b".into(), "x".repeat(129)] {
            assert!(matches!(
                checked_key(&bad),
                Err(Error::InvalidInput(ref e)) if e.field == "idempotency_key"
            ));
        }
    }
}
