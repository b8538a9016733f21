//! Usage tracking on [`upsert_kit`]: the worked example of get-or-create, counters and quotas.
//!
//! One row per account and month (`usage_periods`): token, report and chat counters, units held
//! by reservations, limits copied from the account. It answers three production reports: two
//! requests creating one period ([`get_or_create_usage_period`]), increments lost or counted
//! twice ([`counter::increment`]), two requests spending the last unit of quota ([`quota`]).
//! Every write is a library primitive on the tables declared here ([`PeriodCounters`],
//! [`UsageEvents`], [`TokensQuota`], …): no statement of its own. Functions take a
//! [`UsageConnection`] and UTC instants; the guarantees hold on SQLite too. [`naive`] keeps the
//! racy patterns they replace.
//!
//! # Examples
//!
//! ```
//! use diesel::{Connection, SqliteConnection};
//! use usage_tracking::{counter, get_or_create_usage_period, quota, set_usage_limits, Metric, Usage};
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! usage_tracking::run_migrations(&mut conn)?;
//! let now = chrono::Utc::now().naive_utc();
//! set_usage_limits(&mut conn, 7, Usage { tokens: 1000, reports: 10, chats: 50 }, now)?;
//!
//! // Count what a request used, once, whatever retries deliver it again.
//! counter::increment(&mut conn, 7, "report-1", now, Usage { tokens: 300, reports: 1, chats: 0 })?;
//! counter::increment(&mut conn, 7, "report-1", now, Usage { tokens: 300, reports: 1, chats: 0 })?;
//! // Refuse work the limit cannot pay for.
//! let refused = quota::try_consume(&mut conn, 7, Metric::Tokens, 701, now);
//! assert!(matches!(refused, Err(upsert_kit::Error::QuotaExceeded { available: 700, .. })));
//!
//! let period = get_or_create_usage_period(&mut conn, 7, now)?.row;
//! assert_eq!((period.tokens_used, period.reports_used), (300, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod calls;
pub mod counter;
pub mod naive;
pub mod quota;
pub mod schema;

use crate::schema::{usage_events, usage_periods, usage_reservations};
use chrono::{Datelike, NaiveDateTime};
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use std::fmt;
use upsert_kit::tables::PerBackend;
use upsert_kit::{Error, Obtained, Result};

/// The PostgreSQL migrations of the usage tables, for `diesel_migrations` or [`run_migrations`].
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The SQLite migrations: the same tables, columns and constraints as [`PG_MIGRATIONS`], except
/// that the keys stay those of the first migration (PostgreSQL's second one makes every key
/// include the account, so that the tables can be distributed by it on Citus).
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Each backend's migrations (none for MySQL).
pub(crate) const MIGRATIONS: PerBackend<Option<fn() -> EmbeddedMigrations>> = PerBackend {
    postgres: Some(|| PG_MIGRATIONS),
    sqlite: Some(|| SQLITE_MIGRATIONS),
    mysql: None,
};

/// Applies the pending migrations of the usage tables on `conn`'s backend ([`PG_MIGRATIONS`] or
/// [`SQLITE_MIGRATIONS`]); returns how many ran.
///
/// # Errors
/// [`Error::Migration`] when a migration fails (it is rolled back).
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// assert_eq!(usage_tracking::run_migrations(&mut conn)?, 1);
/// assert_eq!(usage_tracking::run_migrations(&mut conn)?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_migrations<C: UsageConnection>(conn: &mut C) -> Result<usize> {
    conn.migrate()
}

/// The largest amount one call may add, reserve or consume (10^15: no `BIGINT` overflow).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Token, report and chat quantities: amounts to add, counters, or limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Tokens.
    pub tokens: i64,
    /// Reports.
    pub reports: i64,
    /// Chats.
    pub chats: i64,
}

impl Usage {
    /// `tokens` tokens, nothing else.
    pub fn tokens(tokens: i64) -> Self {
        Usage::new(tokens, 0, 0)
    }

    pub(crate) const fn new(tokens: i64, reports: i64, chats: i64) -> Self {
        Usage {
            tokens,
            reports,
            chats,
        }
    }

    /// The quantity of `metric`.
    pub fn get(&self, metric: Metric) -> i64 {
        [self.tokens, self.reports, self.chats][metric as usize]
    }

    /// Checks each quantity (named `{what}.tokens`, …) with [`check_amount`].
    pub(crate) fn check(&self, what: &str, zero_ok: bool) -> Result<()> {
        for metric in [Metric::Tokens, Metric::Reports, Metric::Chats] {
            check_amount(&format!("{what}.{metric}"), self.get(metric), zero_ok)?;
        }
        Ok(())
    }
}

/// A counted quantity of a usage period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Tokens (`tokens_used`, `tokens_reserved`, `tokens_limit`).
    Tokens,
    /// Reports.
    Reports,
    /// Chats.
    Chats,
}

impl Metric {
    /// `"tokens"`, `"reports"` or `"chats"` (as stored in `usage_reservations.metric`).
    pub fn as_str(self) -> &'static str {
        ["tokens", "reports", "chats"][self as usize]
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of `usage_periods`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = usage_periods)]
pub struct UsagePeriod {
    /// Surrogate key.
    pub id: i64,
    /// The account.
    pub account: i64,
    /// First instant of the period (inclusive).
    pub period_start: NaiveDateTime,
    /// End of the period (exclusive).
    pub period_end: NaiveDateTime,
    /// Tokens counted.
    pub tokens_used: i64,
    /// Reports counted.
    pub reports_used: i64,
    /// Chats counted.
    pub chats_used: i64,
    /// Tokens held by live reservations.
    pub tokens_reserved: i64,
    /// Reports held by live reservations.
    pub reports_reserved: i64,
    /// Chats held by live reservations.
    pub chats_reserved: i64,
    /// Tokens allowed.
    pub tokens_limit: i64,
    /// Reports allowed.
    pub reports_limit: i64,
    /// Chats allowed.
    pub chats_limit: i64,
    /// When the row was created.
    pub created_at: NaiveDateTime,
}

impl UsagePeriod {
    /// The counters.
    pub fn used(&self) -> Usage {
        Usage::new(self.tokens_used, self.reports_used, self.chats_used)
    }

    /// The units held by live reservations.
    pub fn reserved(&self) -> Usage {
        let p = self;
        Usage::new(p.tokens_reserved, p.reports_reserved, p.chats_reserved)
    }

    /// The limits.
    pub fn limits(&self) -> Usage {
        Usage::new(self.tokens_limit, self.reports_limit, self.chats_limit)
    }

    /// Units of `metric` that can still be reserved or consumed: `limit - used - reserved` ≥ 0.
    pub fn available(&self, metric: Metric) -> i64 {
        (self.limits().get(metric) - self.used().get(metric) - self.reserved().get(metric)).max(0)
    }
}

upsert_kit::counter! {
    table = usage_periods, key = (account: i64, period_start: NaiveDateTime),
    amounts = (tokens_used, reports_used, chats_used);
    /// The usage counters of a period row, found by its natural key (the account and the
    /// period's first instant), declared for [`upsert_kit::counter`](mod@upsert_kit::counter).
    #[derive(Debug, Clone, Copy)]
    pub struct PeriodCounters;
}

upsert_kit::ledger! {
    table = usage_events, scope = (account: i64), key = idempotency_key,
    fingerprint = request_hash: i64, created_at = created_at, amounts = (tokens, reports, chats),
    totals = (tokens_total, reports_total, chats_total), row = usage_periods(period_id = id);
    /// The idempotency ledger of usage increments (keys unique per account), declared for
    /// [`upsert_kit::idempotency::Record`].
    #[derive(Debug, Clone, Copy)]
    pub struct UsageEvents;
}

/// Declares the quota of each metric of a period row, found by its natural key; its
/// reservations, in one table, name the row by `(account, period_id)` and carry the metric.
macro_rules! metric_quota {
    ($($name:ident: $metric:literal ($limit:ident, $used:ident, $reserved:ident),)+) => {$(
        upsert_kit::quota! {
            table = usage_periods, key = (account: i64, period_start: NaiveDateTime),
            limit = $limit, used = $used, reserved = $reserved;
            reservations = usage_reservations(id, amount, expires_at),
                link = (account = account, period_id = id), tag = (metric = $metric);
            #[doc = concat!("The ", $metric, " quota of a period row.")]
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
        }
    )+};
}

metric_quota! {
    TokensQuota: "tokens" (tokens_limit, tokens_used, tokens_reserved),
    ReportsQuota: "reports" (reports_limit, reports_used, reports_reserved),
    ChatsQuota: "chats" (chats_limit, chats_used, chats_reserved),
}

/// A period's natural key: the account and the period's first instant.
pub(crate) type PeriodKey = (i64, NaiveDateTime);

/// Connections the usage functions run on: `PgConnection`, `SqliteConnection`, and r2d2
/// pooled connections of either; implemented at once for every connection whose backend binds
/// the usage tables' declarations (and has their migrations).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a connection the usage functions can use",
    note = "pass `&mut PgConnection`, `&mut SqliteConnection` or a pooled connection of either"
)]
pub trait UsageConnection: calls::Calls {}

impl<C: calls::Calls> UsageConnection for C {}

/// Checks a caller's instant (years 1 to 9999, the range both backends store).
pub(crate) fn check_instant(field: &str, at: NaiveDateTime) -> Result<()> {
    if !(1..=9999).contains(&at.year()) {
        let range = format!("timestamp {at} is out of range (years 1 to 9999)");
        return Err(Error::invalid(field, range));
    }
    Ok(())
}

/// Checks an amount to add, reserve or consume: `0..=MAX_AMOUNT`, and above 0 unless
/// `zero_ok`.
pub(crate) fn check_amount(field: &str, amount: i64, zero_ok: bool) -> Result<()> {
    let bound = if zero_ok { "0 or more" } else { "above 0" };
    let why = if amount < 0 || (amount == 0 && !zero_ok) {
        format!("{amount} is not allowed: amounts must be {bound}")
    } else if amount > MAX_AMOUNT {
        format!("{amount} is above the largest amount, {MAX_AMOUNT}")
    } else {
        return Ok(());
    };
    Err(Error::invalid(field, why))
}

/// The calendar month (UTC) containing `at`: `[first day 00:00, first day of the next month)`.
///
/// # Errors
/// [`Error::InvalidInput`] when `at` is outside years 1 to 9999 or in December 9999 (the
/// period's end would be out of range).
///
/// ```
/// use chrono::NaiveDate;
/// let at = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap().and_hms_opt(23, 59, 59).unwrap();
/// let (start, end) = usage_tracking::monthly_period(at)?;
/// assert_eq!(start, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap().and_hms_opt(0, 0, 0).unwrap());
/// assert_eq!(end, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap());
/// # Ok::<(), upsert_kit::Error>(())
/// ```
pub fn monthly_period(at: NaiveDateTime) -> Result<(NaiveDateTime, NaiveDateTime)> {
    check_instant("at", at)?;
    // The library's calendar windows; this crate only adds its own range (years 1 to 9999).
    let (start, end) = upsert_kit::period::Window::Month.bounds(at)?;
    if end.year() > 9999 {
        let range = format!("the month of {at} ends outside years 1 to 9999");
        return Err(Error::invalid("at", range));
    }
    Ok((start, end))
}

/// Registers `account` with its per-period `limits`, or changes them: they apply to the
/// account's periods that end after `at` (past ones keep theirs; a limit below what is used
/// lets nothing more be reserved or consumed). One transaction ([`upsert_kit::atomic_upsert`]
/// of the account, one `UPDATE` of its open periods): concurrent calls leave the limits of one
/// of them, never a mix.
///
/// # Errors
/// [`Error::InvalidInput`] when a limit is negative or above [`MAX_AMOUNT`], or `at` is out of
/// range; nothing is written.
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::{get_or_create_usage_period, set_usage_limits, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage { tokens: 1000, reports: 10, chats: 50 }, now)?;
/// let period = get_or_create_usage_period(&mut conn, 7, now)?;
/// assert_eq!(period.row.tokens_limit, 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_usage_limits<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    limits: Usage,
    at: NaiveDateTime,
) -> Result<()> {
    limits.check("limits", true)?;
    check_instant("at", at)?;
    conn.set_limits(account, limits, at)
}

/// Returns `account`'s usage period containing `at` (its month, see [`monthly_period`]),
/// creating it with the account's current limits when it does not exist; `created` says
/// whether this call created it. Concurrent calls for one month return the same row and exactly
/// one reports `created` ([`upsert_kit::get_or_create`](mod@upsert_kit::get_or_create) on the
/// unique `(account, period_start)`). One round trip when the period exists (a `SELECT` by its
/// natural key); no transaction of its own. READ COMMITTED is assumed.
///
/// # Errors
/// [`Error::InvalidInput`] for an `at` out of range; [`Error::NotFound`] for an account never
/// registered with [`set_usage_limits`] (nothing written).
pub fn get_or_create_usage_period<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    at: NaiveDateTime,
) -> Result<Obtained<UsagePeriod>> {
    let (start, _) = monthly_period(at)?;
    let (found, created) = (conn.find_period(&(account, start))?, false);
    match found {
        Some(row) => Ok(Obtained { row, created }),
        None => conn.create_period(account, at),
    }
}

/// Runs `call` on the period of `account` containing `at`; when there is no such period row
/// yet (the month's first use: [`Error::NotFound`]), creates it and runs `call` again.
pub(crate) fn in_period<C: UsageConnection, T>(
    conn: &mut C,
    account: i64,
    at: NaiveDateTime,
    mut call: impl FnMut(&mut C, &PeriodKey) -> Result<T>,
) -> Result<T> {
    let key = (account, monthly_period(at)?.0);
    for _ in 0..3 {
        match call(conn, &key) {
            // `NotFound` for an unknown account, nothing written.
            Err(Error::NotFound(_)) => _ = conn.create_period(account, at)?,
            done => return done,
        }
    }
    let gone = format!("the usage period of account {account} kept disappearing");
    Err(Error::NotFound(gone))
}

pub(crate) fn unknown_account(account: i64) -> Error {
    let why = format!("usage account {account} is not registered (see set_usage_limits)");
    Error::NotFound(why)
}
