//! Quotas: reserve units, then commit or release them; or consume units at once.
//!
//! Each metric of a period row is a quota of the library ([`TokensQuota`](crate::TokensQuota),
//! [`ReportsQuota`](crate::ReportsQuota), [`ChatsQuota`](crate::ChatsQuota)) found by the
//! period's natural key; their reservations share a table. Each call is one conditional
//! statement of [`upsert_kit::quota`](mod@upsert_kit::quota) (two in one transaction on
//! SQLite): `used + reserved <= limit` holds at every commit, concurrent calls fill a limit
//! exactly, and a refused call sweeps its period's expired reservations and tries again. Every
//! function takes the current instant (`at`, UTC): use one clock for all of them.

use crate::{check_amount, check_instant, in_period, Metric, Result, UsageConnection, UsagePeriod};
use chrono::NaiveDateTime;
use std::time::Duration;
#[cfg(doc)]
use upsert_kit::Error;

/// The longest time to live of a reservation (one day).
pub const MAX_RESERVATION_TTL: Duration = upsert_kit::quota::MAX_RESERVATION_TTL;

/// Units held against a period's limit until [`commit`]ted, [`release`]d or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a reservation holds units until it is committed or released (or expires)"]
pub struct Reservation {
    /// The reservation's row id.
    pub id: i64,
    /// The account.
    pub account: i64,
    /// The period the units are held in.
    pub period_id: i64,
    /// The first instant of that period (its natural key, with the account).
    pub period_start: NaiveDateTime,
    /// What is reserved.
    pub metric: Metric,
    /// How many units.
    pub amount: i64,
    /// When the reservation stops counting.
    pub expires_at: NaiveDateTime,
}

/// Reserves `amount` units of `metric` in `account`'s period containing `at`, for `ttl`: only
/// if `used + reserved + amount <= limit` ([`upsert_kit::quota::reserve`]; one round trip on
/// PostgreSQL). A connection lost during the statement outside a transaction is
/// [`Error::OutcomeUnknown`]: a reservation may have been made; it expires after `ttl`.
///
/// # Errors
/// - [`Error::InvalidInput`]: `amount` not in `1..=MAX_AMOUNT`, `ttl` zero or above
///   [`MAX_RESERVATION_TTL`], `at` out of range. Nothing is written.
/// - [`Error::NotFound`]: `account` is not registered. Nothing is written.
/// - [`Error::QuotaExceeded`]: not enough units left (`available` says how many were).
///
/// ```
/// use std::time::Duration;
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::quota::{commit, expire_reservations, release, reserve};
/// use usage_tracking::{set_usage_limits, Metric, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let (now, ttl) = (chrono::Utc::now().naive_utc(), Duration::from_secs(60));
/// set_usage_limits(&mut conn, 7, Usage::tokens(100), now)?;
///
/// let held = reserve(&mut conn, 7, Metric::Tokens, 80, now, ttl)?;
/// assert!(reserve(&mut conn, 7, Metric::Tokens, 30, now, ttl).is_err());
/// let period = commit(&mut conn, &held, 50, now)?; // used 50 of the 80 held
/// assert_eq!((period.tokens_used, period.tokens_reserved), (50, 0));
/// let held = reserve(&mut conn, 7, Metric::Tokens, 30, now, ttl)?;
/// assert!(release(&mut conn, &held)?);
/// assert!(!release(&mut conn, &held)?); // nothing left to give back
/// let _held = reserve(&mut conn, 7, Metric::Tokens, 10, now, ttl)?;
/// assert_eq!(expire_reservations(&mut conn, now)?, 0);
/// assert_eq!(expire_reservations(&mut conn, now + chrono::Duration::seconds(60))?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn reserve<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    metric: Metric,
    amount: i64,
    at: NaiveDateTime,
    ttl: Duration,
) -> Result<Reservation> {
    check_amount("amount", amount, false)?;
    check_instant("at", at)?;
    // The library refuses a `ttl` of 0 or of more than a day; the expiry must fit years 1-9999.
    if ttl <= MAX_RESERVATION_TTL {
        let expires_at = at + chrono::Duration::from_std(ttl).unwrap_or_default();
        check_instant("ttl", expires_at)?;
    }
    in_period(conn, account, at, |c, k| {
        c.reserve(metric, k, amount, ttl, at)
    })
}

/// Consumes `amount` units of `metric` in `account`'s period containing `at`, if the limit
/// allows it, and returns the period after the change: as [`reserve`], without a reservation
/// ([`upsert_kit::quota::try_consume`]). Do not retry an [`Error::OutcomeUnknown`] blindly.
///
/// # Errors
/// As [`reserve`] (without the `ttl` errors).
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::quota::try_consume;
/// use usage_tracking::{set_usage_limits, Metric, Usage};
/// use upsert_kit::Error;
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage { tokens: 0, reports: 2, chats: 0 }, now)?;
/// try_consume(&mut conn, 7, Metric::Reports, 2, now)?;
/// let refused = try_consume(&mut conn, 7, Metric::Reports, 1, now);
/// assert!(matches!(refused, Err(Error::QuotaExceeded { requested: 1, available: 0 })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn try_consume<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    metric: Metric,
    amount: i64,
    at: NaiveDateTime,
) -> Result<UsagePeriod> {
    check_amount("amount", amount, false)?;
    check_instant("at", at)?;
    in_period(conn, account, at, |c, k| c.consume(metric, k, amount, at))
}

/// Turns `reservation` into usage: `actual` units (at most the reserved amount) are added to
/// `used`, and the whole reservation leaves `reserved`, in one statement that also deletes the
/// reservation ([`upsert_kit::quota::commit`]). Returns the period after the change. (Example:
/// [`reserve`].)
///
/// # Errors
/// - [`Error::InvalidInput`]: `actual` below 0 or above the reserved amount; `at` out of range.
/// - [`Error::NotFound`]: the reservation was already committed or released, or expired
///   (`expires_at <= at`). Nothing is counted; use [`try_consume`] to count the work anyway.
pub fn commit<C: UsageConnection>(
    conn: &mut C,
    reservation: &Reservation,
    actual: i64,
    at: NaiveDateTime,
) -> Result<UsagePeriod> {
    check_amount("actual", actual, true)?;
    check_instant("at", at)?;
    // The library refuses an `actual` above the reserved amount.
    conn.commit(reservation, actual, at)
}

/// Gives `reservation`'s units back. Returns `false` when there was nothing to give back (it
/// was committed, released or swept already): releasing is idempotent.
///
/// (Example: [`reserve`].)
///
/// # Errors
/// Database errors only.
pub fn release<C: UsageConnection>(conn: &mut C, reservation: &Reservation) -> Result<bool> {
    conn.release(reservation)
}

/// Sweeps every reservation that expired at or before `at`, for every account: deletes it and
/// subtracts its units from its period's `reserved` (one statement per metric,
/// [`upsert_kit::quota::expire`]; the one call of the crate that works across accounts).
/// Returns how many were swept. Meant for a periodic job.
///
/// (Example: [`reserve`].)
///
/// # Errors
/// [`Error::InvalidInput`] when `at` is out of range; database errors.
pub fn expire_reservations<C: UsageConnection>(conn: &mut C, at: NaiveDateTime) -> Result<usize> {
    check_instant("at", at)?;
    conn.expire(at)
}
