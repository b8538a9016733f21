//! A backfill scheduler on [`upsert_kit::claim`]: months to (re)compute are rows of the
//! `backfill_log` table ([`schema::backfill_log`]), and any number of schedulers, in one
//! process or on many hosts, drain them with `FOR UPDATE SKIP LOCKED` claims under a lease.
//! Each due month is processed by exactly one scheduler (provided the work finishes within the
//! lease), failures are retried after a capped doubling backoff, and a month that keeps
//! failing is parked as `failed` instead of being retried forever.
//!
//! - [`run_migrations`] creates the `backfill_log` table (the crate's own migration, also
//!   available as [`MIGRATIONS`] for a harness that runs several crates' migrations);
//! - [`schedule_months`] adds a range of months as `pending`;
//! - [`backfill`] claims, processes and completes (or fails) due months until none is left;
//! - [`BackfillMonth`] is the queue's row type, for direct use of [`Queue`]
//!   (claim, complete, fail, extend, reap, [state](Queue::state)); [`BackfillMonthByYear`] the
//!   same row with `year` as the queue's tenant column (the table distributed by year). Both
//!   declare `created_at`, so a queue's state tells how long ago its oldest due month was
//!   scheduled.
//!
//! The `backfill-scheduler` binary (`src/main.rs`) schedules a range of months, runs a command
//! for each due one, and prints the run's report and the queue's state at the end.
//!
//! # Behind a pooler, and on Citus
//! Claims hold by their lease, a row of the table, so the scheduler needs no server session of
//! its own: behind a transaction-mode pooler (PgBouncer, Supabase's, RDS Proxy) connect with
//! `?upsert_kit_pooler=transaction` and run [`backfill`] unchanged. Session advisory locks,
//! which the racy scheduler of the production report held across `COMMIT`, are refused there
//! ([`Error::SessionStateUnavailable`]); transaction locks (`upsert_kit::lock::xact_lock`) hold,
//! for work that fits in one transaction. On Citus, keep `backfill_log` on one shard and use
//! [`BackfillMonth`], or distribute it by `year` and use [`BackfillMonthByYear`], whose queue
//! names the years it claims within. The crate's README has the table of which to use where.
//!
//! [`naive`] keeps the racy scheduler this crate replaces, as the baseline of its race tests
//! and of the race report (`upsert-race`). It is not for application code.
//!
//! # Examples
//! ```no_run
//! use std::time::Duration;
//! use backfill_scheduler::{backfill, run_migrations, schedule_months, BackfillMonth};
//! use upsert_kit::claim::Queue;
//! # fn main() -> upsert_kit::Result<()> {
//! let mut conn = upsert_kit::db::connect_pg("postgres://postgres@127.0.0.1/app")?;
//! run_migrations(&mut conn)?;
//! schedule_months(&mut conn, (2024, 1), (2026, 10))?;
//! let queue = Queue::<BackfillMonth>::new(format!("scheduler-{}", std::process::id()))?
//!     .lease(Duration::from_secs(120));
//! let report = backfill(&mut conn, &queue, |year, month| {
//!     println!("recomputing {year}-{month:02}");
//!     Ok::<(), std::io::Error>(())
//! })?;
//! println!("{} done, {} to retry, {} parked", report.done, report.retried, report.parked);
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod naive;
pub mod schema;

use crate::schema::backfill_log;
use diesel::pg::PgConnection;
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::fmt;
use upsert_kit::claim::{ClaimConnection, ClaimQueue, Failed, Queue, Reaped};
use upsert_kit::{Error, Result};

/// The crate's migrations (PostgreSQL): the `backfill_log` table and its indexes. Run them
/// with [`run_migrations`], with the diesel CLI (`diesel migration run --migration-dir
/// jobs/backfill/migrations/postgres`), or hand them to a harness
/// (`upsert_kit_support::TestDb::migrated(MIGRATIONS)`).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Applies the crate's pending migrations on `conn`; returns how many ran (0 when the table is
/// already there). Other crates' migrations in the same database are left alone.
///
/// Schedulers started together on a fresh database would race to create the table: the
/// migrations run in one transaction under a transaction-scoped advisory lock
/// ([`upsert_kit::lock::exclusive_transaction`], which holds behind a transaction-mode pooler
/// too), so the first applies them and the others wait, then find nothing pending.
///
/// # Errors
/// [`Error::Migration`] when a migration fails; it is rolled back.
pub fn run_migrations(conn: &mut PgConnection) -> Result<usize> {
    let key = upsert_kit::lock::LockKey::new("backfill-scheduler migrations", 0);
    upsert_kit::lock::exclusive_transaction(conn, key, |c| {
        c.run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| Error::Migration(e.to_string()))
    })
}

/// The backfill scheduler's queue row: one month of the `backfill_log` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::QueryableByName)]
#[diesel(table_name = backfill_log)]
pub struct BackfillMonth {
    /// The year.
    pub year: i32,
    /// The month, 1–12.
    pub month: i32,
}

impl ClaimQueue for BackfillMonth {
    type Table = backfill_log::table;
    const CREATED_AT: Option<&'static str> = Some("created_at");
}

/// The same queue row as [`BackfillMonth`], with `year` declared as the queue's tenant column
/// ([`ClaimQueue::TENANT`]): every claim, completion, failure and reap names the year, and a
/// [`Queue`] of it claims within the years it names ([`Queue::tenant`]), one statement per
/// year. Use it when `backfill_log` is distributed by `year` (Citus, see the workspace's
/// docs/citus.md): each statement then runs on the one shard of its year, where `FOR UPDATE
/// SKIP LOCKED` works as on one server. On one server, or with the table on one shard,
/// [`BackfillMonth`] needs no years named.
///
/// ```no_run
/// use backfill_scheduler::{backfill, BackfillMonthByYear};
/// use upsert_kit::claim::Queue;
/// # fn main() -> upsert_kit::Result<()> {
/// let mut conn = upsert_kit::db::connect_pg("postgres://postgres@127.0.0.1/app")?;
/// let queue = Queue::<BackfillMonthByYear>::new("scheduler-1")?.tenant(2025).tenant(2026);
/// backfill(&mut conn, &queue, |year, month| {
///     println!("recomputing {year}-{month:02}");
///     Ok::<(), std::io::Error>(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::QueryableByName)]
#[diesel(table_name = backfill_log)]
pub struct BackfillMonthByYear {
    /// The year (the tenant column).
    pub year: i32,
    /// The month, 1–12.
    pub month: i32,
}

impl ClaimQueue for BackfillMonthByYear {
    type Table = backfill_log::table;
    const TENANT: Option<&'static str> = Some("year");
    const CREATED_AT: Option<&'static str> = Some("created_at");
}

/// The queue row types of `backfill_log` that [`backfill`] drains: [`BackfillMonth`] and
/// [`BackfillMonthByYear`].
pub trait MonthRow: ClaimQueue + private::Sealed {
    /// The row's year and month.
    fn year_month(&self) -> (i32, i32);
}

impl MonthRow for BackfillMonth {
    fn year_month(&self) -> (i32, i32) {
        (self.year, self.month)
    }
}

impl MonthRow for BackfillMonthByYear {
    fn year_month(&self) -> (i32, i32) {
        (self.year, self.month)
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::BackfillMonth {}
    impl Sealed for super::BackfillMonthByYear {}
}

/// Schedules every month from `from` to `to` (inclusive, `(year, month)`) as `pending` in
/// `backfill_log`; months already there (whatever their status) are left alone. Returns how
/// many were added. One `INSERT … ON CONFLICT (year, month) DO NOTHING` per 10,000 months,
/// in one transaction; safe to run from several schedulers at once.
///
/// # Errors
/// [`Error::InvalidInput`] when a month is outside 1–12, a year outside 1–9999, or `from` is
/// after `to`; nothing is written then. The statements' errors otherwise.
///
/// # Examples
/// ```no_run
/// # fn main() -> upsert_kit::Result<()> {
/// let mut conn = upsert_kit::db::connect_pg("postgres://postgres@127.0.0.1/app")?;
/// backfill_scheduler::run_migrations(&mut conn)?;
/// let added = backfill_scheduler::schedule_months(&mut conn, (2025, 11), (2026, 2))?;
/// assert!(added <= 4);
/// # Ok(()) }
/// ```
pub fn schedule_months(conn: &mut PgConnection, from: (i32, u32), to: (i32, u32)) -> Result<usize> {
    use diesel::ExpressionMethods;
    for (name, (year, month)) in [("from", from), ("to", to)] {
        if !(1..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(Error::invalid(
                name,
                format!("({year}, {month}) is not a month of years 1-9999"),
            ));
        }
    }
    if from > to {
        return Err(Error::invalid("from", "is after `to`"));
    }
    let index = |(y, m): (i32, u32)| y * 12 + m as i32 - 1;
    let rows: Vec<_> = (index(from)..=index(to))
        .map(|i| {
            (
                backfill_log::year.eq(i.div_euclid(12)),
                backfill_log::month.eq(i.rem_euclid(12) + 1),
            )
        })
        .collect();
    upsert_kit::transaction(conn, |conn| {
        let mut added = 0;
        for chunk in rows.chunks(10_000) {
            added += diesel::insert_into(backfill_log::table)
                .values(chunk)
                .on_conflict((backfill_log::year, backfill_log::month))
                .do_nothing()
                .execute(conn)?;
        }
        Ok(added)
    })
}

/// What one [`backfill`] run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Months processed and marked done.
    pub done: usize,
    /// Months whose processing failed and that will be retried after their backoff.
    pub retried: usize,
    /// Months whose processing failed for the last allowed time: parked as `failed`.
    pub parked: usize,
    /// Months processed whose claim had been lost meanwhile (the lease expired and another
    /// scheduler took them back): their processing may be repeated elsewhere.
    pub lost: usize,
    /// Expired leases of other schedulers that this run's reaps returned to the queue
    /// (`requeued`) or parked because they had used their last attempt (`parked`).
    pub reaped: Reaped,
}

/// Runs the backfill scheduler on `conn` until no month is due: reaps expired leases, claims
/// the next due month ([`Queue::claim`], one at a time, in month-scheduling order), calls
/// `process(year, month)`, and marks the month done, or on `Err` records the error for a retry
/// after backoff (parked past the queue's `max_attempts`). Months failing in this run are not
/// retried by it (their backoff has not passed): the next run takes them.
///
/// Any number of schedulers may run at once on their own connections, in one process or many:
/// each due month is processed by exactly one of them, provided `process` returns within the
/// queue's lease (see [`Queue::lease`]; a scheduler that dies mid-month leaves it to be
/// reaped once its lease expires, and that attempt counts).
///
/// Three round trips per month (reap, claim, complete or fail), plus `process`'s own. No
/// lock is held while `process` runs: the lease alone keeps other schedulers off the month.
/// A panic in `process` propagates; the month is then reaped after its lease.
///
/// # Errors
/// The statements' errors ([`Error::is_retryable`] tells whether running again helps). The
/// months completed before the error stay done.
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use backfill_scheduler::{backfill, run_migrations, schedule_months, BackfillMonth};
/// use upsert_kit::claim::Queue;
/// # fn main() -> upsert_kit::Result<()> {
/// let mut conn = upsert_kit::db::connect_pg("postgres://postgres@127.0.0.1/app")?;
/// run_migrations(&mut conn)?;
/// schedule_months(&mut conn, (2024, 1), (2026, 10))?;
/// let queue = Queue::<BackfillMonth>::new(format!("scheduler-{}", std::process::id()))?
///     .lease(Duration::from_secs(120));
/// let report = backfill(&mut conn, &queue, |year, month| {
///     println!("recomputing {year}-{month:02}");
///     Ok::<(), std::io::Error>(())
/// })?;
/// println!("{} done, {} to retry", report.done, report.retried);
/// # Ok(()) }
/// ```
pub fn backfill<Q, F, E>(
    conn: &mut PgConnection,
    queue: &Queue<Q>,
    mut process: F,
) -> Result<BackfillReport>
where
    Q: MonthRow,
    PgConnection: ClaimConnection<Q>,
    F: FnMut(i32, u32) -> std::result::Result<(), E>,
    E: fmt::Display,
{
    let mut report = BackfillReport::default();
    loop {
        let reaped = queue.reap_expired(conn)?;
        report.reaped.requeued += reaped.requeued;
        report.reaped.parked += reaped.parked;
        let claims = queue.claim(conn, 1)?;
        if claims.is_empty() {
            return Ok(report);
        }
        for claim in claims {
            // The month column is CHECKed to 1-12.
            let (year, month) = claim.item.year_month();
            let month = u32::try_from(month).unwrap_or(0);
            let outcome = match process(year, month) {
                Ok(()) => queue.complete(conn, &claim).map(|()| &mut report.done),
                Err(e) => queue
                    .fail(conn, &claim, &e.to_string())
                    .map(|failed| match failed {
                        Failed::Retry { .. } => &mut report.retried,
                        Failed::Parked => &mut report.parked,
                    }),
            };
            match outcome {
                Ok(counter) => *counter += 1,
                Err(Error::NotFound(_)) => report.lost += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
