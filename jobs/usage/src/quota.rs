//! Quotas: reserve units against a period's limit, then commit or release them; or consume
//! units at once.
//!
//! The check and the change are one conditional statement, which on PostgreSQL also inserts
//! the reservation (one statement, its own transaction: both happen or neither):
//!
//! ```sql
//! WITH up AS (UPDATE usage_periods SET tokens_reserved = tokens_reserved + $n
//!              WHERE account = $account AND period_start = $start
//!                AND tokens_used + tokens_reserved + $n <= tokens_limit
//!             RETURNING id)
//! INSERT INTO usage_reservations (period_id, …) SELECT up.id, … FROM up
//! RETURNING id, period_id
//! ```
//!
//! [`try_consume`] is the same `UPDATE` on `tokens_used`, alone. The period is found by its
//! natural key, the month's first instant: when nothing comes back (refused, or the month's
//! first use and no period row yet), the period is got or created and the call tried again.
//!
//! On PostgreSQL (READ COMMITTED) a concurrent writer of the row makes the statement wait, and
//! the condition is then evaluated again against the newest committed row, so two requests can
//! never both take the last units: `used + reserved <= limit` holds at every commit. Limits
//! here are hard: no call of this module lets `used + reserved` exceed the limit. (Increments of
//! [`crate::counter`] count what happened and are not checked; [`crate::set_usage_limits`]
//! may lower a limit below what is used.)
//!
//! # Reservations
//! [`reserve`] holds units for a time to live; [`commit`] turns them into usage (possibly fewer
//! than reserved), [`release`] gives them back. A reservation never committed or released
//! expires at `expires_at`: it stops counting when it is swept, which [`reserve`] and
//! [`try_consume`] do themselves when the limit would refuse them (in a transaction of their
//! own, then they try once more), and which [`expire_reservations`] does for every account
//! (for a cron job). Sweeping deletes the reservation row and subtracts its units in one
//! transaction, so a reservation is subtracted once, whether it is swept, committed or released.
//!
//! Locks (PostgreSQL): commit, release and sweeps take the reservation row, then the period row;
//! reserve takes the period row and inserts a new reservation row. None waits for a row the
//! other holds in the opposite order. Call these functions outside a transaction of your own:
//! inside one, their transactions become savepoints and the locks of a refused attempt are
//! still held when it sweeps, so a sweep racing a commit can end in [`Error::Deadlock`]
//! (retryable, never a hang).
//!
//! # Clocks
//! Every function takes the current instant (`at`, UTC) from the caller, and compares it with
//! `expires_at`; use one clock (e.g. `chrono::Utc::now().naive_utc()`) for all of them.
//!
//! # SQLite
//! A reservation's conditional update and insert run in one `BEGIN IMMEDIATE` transaction, a
//! consumption's update is one statement, commits, releases and sweeps are immediate
//! transactions: each runs with the write lock held, so the same sums hold (see [the crate's
//! notes on SQLite](crate#sqlite)). Because an SQLite statement cannot contain an `UPDATE` inside `WITH`,
//! the reservation is two statements there, made atomic by the transaction.

use crate::{
    check_amount, check_instant, monthly_period, period_for, Backend, Metric, QuotaStep, ReserveAt,
    Usage, UsageConnection, UsagePeriod, WriteTx,
};
use chrono::NaiveDateTime;
use std::collections::BTreeMap;
use std::time::Duration;
use upsert_kit::{Error, Result};

/// The longest time to live of a reservation (one day).
pub const MAX_RESERVATION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

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
    /// What is reserved.
    pub metric: Metric,
    /// How many units.
    pub amount: i64,
    /// When the reservation stops counting.
    pub expires_at: NaiveDateTime,
}

/// Reserves `amount` units of `metric` in `account`'s period containing `at`, for `ttl`.
///
/// **Guarantee**: succeeds only if `used + reserved + amount <= limit`, decided atomically by
/// one conditional `UPDATE … RETURNING` (see the [module documentation](self)); concurrent
/// reservations never overshoot the limit, and when demand exceeds it they fill it exactly.
///
/// **Cost** (PostgreSQL, READ COMMITTED assumed): one round trip, the reservation statement,
/// which finds the period by its start (its own transaction; inside the caller's transaction,
/// part of it). When refused, or on the first use of a month: the period is read (or created)
/// and the reservation tried again; if still refused, the expired reservations of the period
/// are swept (own transaction) and, if any were, the reservation is tried once more; the
/// period is read for the error. A connection lost during the statement outside a transaction is
/// [`Error::OutcomeUnknown`]: a reservation may have been made; it expires after `ttl`.
///
/// # Errors
/// - [`Error::InvalidInput`]: `amount` not in `1..=MAX_AMOUNT`, `ttl` zero or above
///   [`MAX_RESERVATION_TTL`], `at` out of range. Nothing is written.
/// - [`Error::NotFound`]: `account` is not registered. Nothing is written.
/// - [`Error::QuotaExceeded`]: not enough units left (`available` says how many were).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::quota::{commit, reserve};
/// use usage_tracking::{set_usage_limits, Metric, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage::tokens(100), now)?;
///
/// let held = reserve(&mut conn, 7, Metric::Tokens, 80, now, Duration::from_secs(60))?;
/// assert!(reserve(&mut conn, 7, Metric::Tokens, 30, now, Duration::from_secs(60)).is_err());
/// let period = commit(&mut conn, &held, 50, now)?; // used 50 of the 80 held
/// assert_eq!((period.tokens_used, period.tokens_reserved), (50, 0));
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
    if ttl.is_zero() || ttl > MAX_RESERVATION_TTL {
        return Err(Error::invalid(
            "ttl",
            format!("{ttl:?} is not in (0, {MAX_RESERVATION_TTL:?}]"),
        ));
    }
    let expires_at = chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| at.checked_add_signed(ttl))
        .ok_or_else(|| Error::invalid("ttl", "the expiry is out of range"))?;
    check_instant("ttl", expires_at)?;
    let b = conn.backend();
    with_sweep(b, account, metric, amount, at, |b, period_start| {
        let new = ReserveAt {
            account,
            period_start,
            metric,
            amount,
            expires_at,
            created_at: chrono::Utc::now().naive_utc(),
        };
        Ok(b.reserve_one(&new)?.map(|(id, period_id)| Reservation {
            id,
            account,
            period_id,
            metric,
            amount,
            expires_at,
        }))
    })
}

/// Consumes `amount` units of `metric` in `account`'s period containing `at`, if the limit
/// allows it: `UPDATE … SET used = used + n WHERE used + reserved + n <= limit RETURNING`.
/// Returns the period after the change.
///
/// **Guarantee and cost**: as [`reserve`], without a reservation row: one round trip on
/// PostgreSQL when accepted (the conditional `UPDATE`). A connection lost during the
/// update outside a transaction is [`Error::OutcomeUnknown`]: do not retry it blindly, the
/// units may have been consumed.
///
/// # Errors
/// As [`reserve`] (without the `ttl` errors).
///
/// # Examples
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
    with_sweep(
        conn.backend(),
        account,
        metric,
        amount,
        at,
        |b, period_start| b.consume_one(account, period_start, metric, amount),
    )
}

/// Runs `attempt` on the period starting at the month of `at`. When nothing comes back (the
/// limit refused it, or the period does not exist yet), gets or creates the period and runs
/// `attempt` again; when that is refused too, sweeps the period's expired reservations in a
/// transaction of their own and, if that freed anything, runs `attempt` once more.
fn with_sweep<B: Backend, T>(
    b: &mut B,
    account: i64,
    metric: Metric,
    amount: i64,
    at: NaiveDateTime,
    attempt: impl Fn(&mut B, NaiveDateTime) -> Result<Option<T>>,
) -> Result<T> {
    let (start, _) = monthly_period(at)?;
    if let Some(done) = attempt(b, start)? {
        return Ok(done);
    }
    // Refused, or the month's first use (`NotFound` for an unknown account, nothing written).
    let refused = period_for(b, account, at)?.row.id;
    if let Some(done) = attempt(b, start)? {
        return Ok(done);
    }
    if sweep(b, Some((account, refused)), at)? > 0 {
        if let Some(done) = attempt(b, start)? {
            return Ok(done);
        }
    }
    let available = b.period_by_id(account, refused)?.available(metric);
    Err(Error::QuotaExceeded {
        requested: amount,
        available,
    })
}

/// Turns `reservation` into usage: `actual` units (at most the reserved amount) are added to
/// `used`, and the whole reservation leaves `reserved`. Returns the period after the change.
///
/// **Guarantee**: `used + reserved` never grows, so a commit can never exceed the limit. The
/// reservation row is deleted in the same transaction (`DELETE … RETURNING`), so committing
/// twice, or committing a released or swept reservation, fails with [`Error::NotFound`] and
/// changes nothing.
/// **Cost**: four round trips on PostgreSQL (`BEGIN`, delete, update, `COMMIT`).
///
/// # Errors
/// - [`Error::InvalidInput`]: `actual` below 0 or above the reserved amount; `at` out of range.
/// - [`Error::NotFound`]: the reservation was already committed or released, or expired
///   (`expires_at <= at`). Nothing is counted; use [`try_consume`] to count the work anyway.
///
/// # Examples
/// See [`reserve`].
pub fn commit<C: UsageConnection>(
    conn: &mut C,
    reservation: &Reservation,
    actual: i64,
    at: NaiveDateTime,
) -> Result<UsagePeriod> {
    check_amount("actual", actual, true)?;
    check_instant("at", at)?;
    if actual > reservation.amount {
        return Err(Error::invalid(
            "actual",
            format!(
                "{actual} is more than the {} units reserved",
                reservation.amount
            ),
        ));
    }
    conn.backend().write_tx(|b| {
        let row = b
            .take_reservation(reservation.account, reservation.id, Some(at))?
            .ok_or_else(|| gone(reservation.id))?;
        let metric = Metric::parse(&row.metric)?;
        b.settle(
            row.account,
            row.period_id,
            Usage::of(metric, row.amount),
            Usage::of(metric, actual),
        )
    })
}

/// Gives `reservation`'s units back. Returns `false` when there was nothing to give back (it
/// was committed, released or swept already): releasing is idempotent.
///
/// **Cost**: four round trips on PostgreSQL; two when there is nothing to release.
///
/// # Errors
/// Database errors only.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::quota::{release, reserve};
/// use usage_tracking::{get_or_create_usage_period, set_usage_limits, Metric, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage::tokens(100), now)?;
/// let held = reserve(&mut conn, 7, Metric::Tokens, 100, now, Duration::from_secs(60))?;
/// assert!(release(&mut conn, &held)?);
/// assert!(!release(&mut conn, &held)?);
/// assert_eq!(get_or_create_usage_period(&mut conn, 7, now)?.row.available(Metric::Tokens), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn release<C: UsageConnection>(conn: &mut C, reservation: &Reservation) -> Result<bool> {
    conn.backend().write_tx(|b| {
        let Some(row) = b.take_reservation(reservation.account, reservation.id, None)? else {
            return Ok(false);
        };
        let metric = Metric::parse(&row.metric)?;
        b.settle(
            row.account,
            row.period_id,
            Usage::of(metric, row.amount),
            Usage::default(),
        )?;
        Ok(true)
    })
}

/// Sweeps every reservation that expired at or before `at`, for every account: deletes it and
/// subtracts its units from its period's `reserved`, in one transaction. Returns how many were
/// swept. Meant for a periodic job; [`reserve`] and [`try_consume`] also sweep their own
/// period when they would be refused.
///
/// **Cost**: on PostgreSQL, `BEGIN`, one `SELECT` and one `DELETE … RETURNING` of the expired
/// rows, one `UPDATE` per period concerned (in account and period order), `COMMIT`. The
/// other statements of this crate name the account (the key a distributed table is routed
/// by); this sweep, for every account, reads and deletes across accounts.
///
/// # Errors
/// [`Error::InvalidInput`] when `at` is out of range; database errors (the sweep is then rolled
/// back whole).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::quota::{expire_reservations, reserve};
/// use usage_tracking::{set_usage_limits, Metric, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage::tokens(100), now)?;
/// let _held = reserve(&mut conn, 7, Metric::Tokens, 10, now, Duration::from_secs(60))?;
/// assert_eq!(expire_reservations(&mut conn, now)?, 0);
/// assert_eq!(expire_reservations(&mut conn, now + chrono::Duration::seconds(60))?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn expire_reservations<C: UsageConnection>(conn: &mut C, at: NaiveDateTime) -> Result<usize> {
    check_instant("at", at)?;
    sweep(conn.backend(), None, at)
}

fn sweep<B: Backend>(b: &mut B, period: Option<(i64, i64)>, at: NaiveDateTime) -> Result<usize> {
    b.write_tx(|b| {
        let expired = b.take_expired(period, at)?;
        // Keyed (account, period id): every settle names the account.
        let mut per_period: BTreeMap<(i64, i64), Usage> = BTreeMap::new();
        for row in &expired {
            let metric = Metric::parse(&row.metric)?;
            let sum = per_period.entry((row.account, row.period_id)).or_default();
            match metric {
                Metric::Tokens => sum.tokens += row.amount,
                Metric::Reports => sum.reports += row.amount,
                Metric::Chats => sum.chats += row.amount,
            }
        }
        for ((account, period), unreserve) in per_period {
            b.settle(account, period, unreserve, Usage::default())?;
        }
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "swept expired reservations");
        }
        Ok(expired.len())
    })
}

fn gone(id: i64) -> Error {
    Error::NotFound(format!(
        "reservation {id} was already committed, released or has expired"
    ))
}
