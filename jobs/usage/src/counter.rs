//! Usage counters: atomic increments recorded once per idempotency key.
//!
//! An increment is the library's recorded increment ([`upsert_kit::idempotency::Record`]) of
//! the period's counters ([`PeriodCounters`](crate::PeriodCounters), found by the account and
//! the month's first instant) in the usage ledger ([`UsageEvents`](crate::UsageEvents), keys
//! unique per account): on PostgreSQL one statement, its own transaction, one round trip, `WITH
//! up AS (UPDATE usage_periods SET tokens_used = tokens_used + $t, … WHERE account = $a AND
//! period_start = $s RETURNING …) INSERT INTO usage_events … SELECT … FROM up RETURNING …`.
//! The counter change and the ledger row (with the totals right after) commit together or not
//! at all, and a key already in the ledger undoes both and returns the first call's row, so a
//! retry after any failure, even an unknown outcome, counts the request once while its key is
//! kept ([`prune_idempotency_keys`]). The month's first increment finds no period row: it
//! creates the period and runs again. Increments count what happened; they are not checked
//! against the limits (see [`crate::quota`]).

use crate::{check_amount, check_instant, in_period, Usage, UsageConnection};
use chrono::NaiveDateTime;
use upsert_kit::{Error, Result};

/// The longest idempotency key, in bytes (UTF-8).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

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
/// **Guarantee**: concurrent increments never lose a count, and a key is counted once: every
/// call with it, concurrent or later, returns the first call's [`Increment`] (`applied:
/// false`) while the key is kept, so retrying after any error, [`Error::OutcomeUnknown`]
/// included, is safe (a [`Retry`](upsert_kit::Retry) of it may be declared
/// [`idempotent`](upsert_kit::Retry::idempotent)). A repeat is recognised by the key alone, whatever its `at`. **Cost**
/// (PostgreSQL): one round trip; three or four more on a month's first use; one more for a
/// repeated key; a savepoint inside the caller's transaction.
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
pub fn increment<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    key: &str,
    at: NaiveDateTime,
    amounts: Usage,
) -> Result<Increment> {
    let key = checked_key(key)?;
    for (name, amount) in [
        ("amounts.tokens", amounts.tokens),
        ("amounts.reports", amounts.reports),
        ("amounts.chats", amounts.chats),
    ] {
        check_amount(name, amount, true)?;
    }
    if amounts == Usage::default() {
        return Err(Error::invalid(
            "amounts",
            "all amounts are 0: an increment must add something",
        ));
    }
    check_instant("at", at)?;
    let (hash, now) = (request_hash(&amounts), chrono::Utc::now().naive_utc());
    in_period(conn, account, at, |c, period| {
        c.record(&key, hash, period, amounts, now)
    })
}

/// Deletes the ledger rows (idempotency keys) recorded before `older_than` (one `DELETE`), and
/// returns how many. A pruned key is forgotten: a later increment with it counts again. Choose a
/// retention longer than any retry of a request can take (e.g. days).
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
    conn.prune_events(older_than)
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
        assert_ne!(request_hash(&Usage::new(0, 5, 0)), a);
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
