//! Usage counters: atomic increments recorded once per idempotency key.
//!
//! An increment is a recorded increment ([`upsert_kit::idempotency::Record`]) of
//! [`PeriodCounters`](crate::PeriodCounters) in [`UsageEvents`](crate::UsageEvents): on
//! PostgreSQL one statement, `WITH up AS (UPDATE usage_periods … RETURNING …) INSERT INTO
//! usage_events … SELECT … FROM up RETURNING …`. The counter change and the ledger row (the
//! totals right after) commit together or not at all; a key in the ledger undoes both and
//! returns the first call's row. Increments are not checked against the limits.

use crate::{check_instant, in_period, Usage, UsageConnection};
use chrono::NaiveDateTime;
use upsert_kit::conn::WriteConnection;
use upsert_kit::{Error, Result};

/// The longest idempotency key, in bytes (UTF-8).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The library's idempotency key; the usage ledger holds at most [`MAX_IDEMPOTENCY_KEY_LEN`]
/// bytes of it ([`checked_key`]). Keys are scoped per account.
pub use upsert_kit::idempotency::IdempotencyKey;

/// A key for the usage ledger: the library's checks, and at most [`MAX_IDEMPOTENCY_KEY_LEN`]
/// bytes.
///
/// ```
/// use upsert_kit::Error;
/// use usage_tracking::counter::checked_key;
/// assert!(checked_key("job-42:2026-11-29").is_ok());
/// assert!(checked_key(&"é".repeat(64)).is_ok()); // 128 bytes
/// for bad in [String::new(), "  ".into(), "a\0b".into(), "x".repeat(129)] {
///     let refused = checked_key(&bad);
///     assert!(matches!(refused, Err(Error::InvalidInput(ref e)) if e.field == "idempotency_key"));
/// }
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] (field `idempotency_key`) when `key` is empty or blank, longer
/// than [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, or contains a control character.
pub fn checked_key(key: &str) -> Result<IdempotencyKey> {
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        let len = key.len();
        let limit = format!("{len} bytes is longer than the limit of {MAX_IDEMPOTENCY_KEY_LEN}");
        return Err(Error::invalid("idempotency_key", limit));
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
/// Concurrent increments never lose a count, and every call with a key, concurrent or later,
/// returns the first call's [`Increment`] (`applied: false`) while the key is kept: retrying
/// after any error, [`Error::OutcomeUnknown`] included, counts once (declare such a
/// [`Retry`](upsert_kit::Retry) [`idempotent`](upsert_kit::Retry::idempotent)). A repeat is
/// recognised by its key alone, whatever its `at`. One round trip on PostgreSQL.
///
/// # Errors
/// [`Error::InvalidInput`] (a bad key, see [`checked_key`]; an amount below 0 or above
/// [`MAX_AMOUNT`](crate::MAX_AMOUNT); all amounts 0; `at` out of range), [`Error::NotFound`]
/// (an unregistered account), [`Error::IdempotencyConflict`] (the key was used for other
/// amounts): nothing written. [`Error::ConnectionLost`], [`Error::OutcomeUnknown`]: retry with
/// the same key.
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
pub fn increment<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    key: &str,
    at: NaiveDateTime,
    amounts: Usage,
) -> Result<Increment> {
    let key = checked(key, at, &amounts)?;
    let hash = request_hash(&amounts);
    in_period(conn, account, at, |c, k| c.record(&key, hash, k, amounts))
}

/// The checks of [`increment`]'s input, made before anything is sent or queued.
fn checked(key: &str, at: NaiveDateTime, amounts: &Usage) -> Result<IdempotencyKey> {
    amounts.check("amounts", true)?;
    if *amounts == Usage::default() {
        let why = "all amounts are 0: an increment must add something";
        return Err(Error::invalid("amounts", why));
    }
    check_instant("at", at)?;
    checked_key(key)
}

/// [`increment`] through a [`Coalescer`](upsert_kit::coalesce::Coalescer) shared by request
/// handlers: concurrent increments share one transaction and its commit, each caller told its
/// own [`Increment`]; an increment alone in its batch runs as the direct call does
/// ([`Coalescer::run_atomic`](upsert_kit::coalesce::Coalescer::run_atomic)). Errors as
/// [`increment`]'s (a failed batch fails each of its callers).
pub fn increment_coalesced<C>(
    writer: &upsert_kit::coalesce::Coalescer<C>,
    (account, key, at): (i64, &str, NaiveDateTime),
    amounts: Usage,
) -> Result<Increment>
where
    C: UsageConnection + diesel::r2d2::R2D2Connection + WriteConnection<Raw = C> + 'static,
{
    let key = checked(key, at, &amounts)?.as_str().to_owned();
    writer.run_atomic(move |c| increment(c, account, &key, at, amounts))
}

/// Deletes the ledger rows (idempotency keys) recorded before `older_than` (one `DELETE`), and
/// returns how many: a pruned key counts again. Keep keys longer than any retry can take.
///
/// # Errors
/// [`Error::InvalidInput`] when `older_than` is out of range; database errors.
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
}
