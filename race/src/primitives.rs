//! The scenarios of the usage-tracking example's primitives (its counters, quotas and periods),
//! on PostgreSQL: each of its calls against the naive baseline it replaces
//! (`usage_tracking::naive`). The library's generic counter, idempotency, quota and claim
//! primitives have theirs in [`crate::generic`] (the `claim` scenario runs on the backfill
//! scheduler's queue there).
//!
//! | scenario | naive | atomic |
//! |---|---|---|
//! | `usage-counter` | [`naive::increment_read_add_write`] | [`counter::increment`], a fresh key per operation (coalesced: [`counter::increment_coalesced`]) |
//! | `usage-counter-retry` | the same, each request delivered twice (a retry after a lost acknowledgement) | [`counter::increment`], both deliveries with the request's key |
//! | `usage-quota` | [`naive::try_consume_check_then_act`] | [`quota::try_consume`] |
//! | `get-or-create` | [`naive::get_or_create_usage_period_select_then_insert`], all workers on one fresh period per round | [`get_or_create_usage_period`] |

use crate::scenario::{timestamp, Anomalies, Op, Pattern, Scenario, Tally, WITH_COALESCED};
use anyhow::Result;
use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use upsert_kit::Error;
use usage_tracking::schema::usage_periods;
use usage_tracking::{counter, naive, quota};
use usage_tracking::{get_or_create_usage_period, set_usage_limits, Metric, Usage};

/// The account of the `usage-counter`, `usage-counter-retry` and `get-or-create` scenarios.
const ACCOUNT: i64 = 1;

/// Empties the usage tables and registers `account` with `limits`; returns the id of its
/// period containing [`timestamp`].
fn reset_usage(conn: &mut PgConnection, account: i64, limits: Usage) -> Result<i64> {
    conn.batch_execute(
        "TRUNCATE usage_events, usage_reservations, usage_periods, usage_accounts CASCADE",
    )?;
    set_usage_limits(conn, account, limits, timestamp())?;
    Ok(get_or_create_usage_period(conn, account, timestamp())?
        .row
        .id)
}

fn tokens_used(conn: &mut PgConnection, period: i64) -> Result<i64> {
    Ok(usage_periods::table
        .find(period)
        .select(usage_periods::tokens_used)
        .get_result(conn)?)
}

/// Limits no scenario reaches.
fn unlimited() -> Usage {
    Usage {
        tokens: usage_tracking::MAX_AMOUNT,
        reports: 0,
        chats: 0,
    }
}

/// `usage-counter`: every worker adds one token to one hot period.
#[derive(Debug, Default)]
pub struct UsageCounter {
    period: AtomicI64,
}

impl UsageCounter {
    /// The scenario (its period is made by [`Scenario::prepare`]).
    pub fn new() -> Self {
        UsageCounter {
            period: AtomicI64::new(0),
        }
    }
}

impl Scenario<PgConnection> for UsageCounter {
    fn name(&self) -> &'static str {
        "usage-counter"
    }
    fn patterns(&self) -> &'static [Pattern] {
        WITH_COALESCED
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        let period = reset_usage(conn, ACCOUNT, unlimited())?;
        self.period.store(period, Ordering::SeqCst);
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let key = || format!("w{}-{}", op.worker, op.round);
        match pattern {
            p @ Pattern::Diesel => return Err(crate::scenario::missing_side(p)),
            // As ORM code writes it: load, add, save (two round trips, no transaction).
            Pattern::Naive => {
                naive::increment_read_add_write(conn, self.period.load(Ordering::SeqCst), 1)?;
            }
            Pattern::Atomic => {
                counter::increment(conn, ACCOUNT, &key(), timestamp(), Usage::tokens(1))?;
            }
            Pattern::Coalesced => {
                let (writer, key) = (op.writer::<PgConnection>()?, key());
                let call = (ACCOUNT, key.as_str(), timestamp());
                counter::increment_coalesced(writer, call, Usage::tokens(1))?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        let used = tokens_used(conn, self.period.load(Ordering::SeqCst))?;
        Ok(Anomalies {
            lost_updates: tally.effect as i64 - used,
            ..Anomalies::default()
        })
    }
}

/// `usage-counter-retry`: every request is delivered twice (the client retries after losing the
/// acknowledgement); it must count once. Damage is counted as in `counter-retry`: "doubled"
/// deliveries counted beyond the first of their request, "lost upd" counted deliveries the
/// final value does not show.
#[derive(Debug, Default)]
pub struct UsageCounterRetry {
    period: AtomicI64,
}

impl UsageCounterRetry {
    /// The scenario (its period is made by [`Scenario::prepare`]).
    pub fn new() -> Self {
        UsageCounterRetry {
            period: AtomicI64::new(0),
        }
    }
}

impl Scenario<PgConnection> for UsageCounterRetry {
    fn name(&self) -> &'static str {
        "usage-counter-retry"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        let period = reset_usage(conn, ACCOUNT, unlimited())?;
        self.period.store(period, Ordering::SeqCst);
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let key = format!("request-w{}-{}", op.worker, op.round);
        let mut counted = 0;
        for _delivery in 0..2 {
            match pattern {
                p @ (Pattern::Diesel | Pattern::Coalesced) => {
                    return Err(crate::scenario::missing_side(p))
                }
                // No key: the retry is counted again.
                Pattern::Naive => {
                    naive::increment_read_add_write(conn, self.period.load(Ordering::SeqCst), 1)?;
                    counted += 1;
                }
                Pattern::Atomic => {
                    let done =
                        counter::increment(conn, ACCOUNT, &key, timestamp(), Usage::tokens(1))?;
                    counted += u64::from(done.applied);
                }
            }
        }
        // The deliveries that said they added one.
        Ok(counted)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        let used = tokens_used(conn, self.period.load(Ordering::SeqCst))?;
        Ok(crate::scenario::retry_anomalies(used, tally))
    }
}

/// `usage-quota`: workers take one token at a time from the current window (an account whose period
/// allows `limit` tokens); a worker refused opens the next window. Demand always exceeds
/// supply, so every window but the last ends exactly full.
#[derive(Debug)]
pub struct UsageQuota {
    limit: i64,
    current: AtomicI64,
    /// The period id of each window opened so far.
    periods: Mutex<Vec<i64>>,
}

impl UsageQuota {
    /// The scenario with windows of `limit` tokens (at least 1).
    pub fn new(limit: i64) -> Self {
        UsageQuota {
            limit: limit.max(1),
            current: AtomicI64::new(0),
            periods: Mutex::new(Vec::new()),
        }
    }

    fn limits(&self) -> Usage {
        Usage {
            tokens: self.limit,
            reports: 0,
            chats: 0,
        }
    }

    /// Window `w`'s account (accounts of other scenarios are below 1000).
    fn account(window: i64) -> i64 {
        1000 + window
    }

    /// Opens window `window + 1` (once, whoever gets there first; the calls are idempotent).
    fn advance(&self, conn: &mut PgConnection, window: i64) -> upsert_kit::Result<()> {
        let next = window + 1;
        set_usage_limits(conn, Self::account(next), self.limits(), timestamp())?;
        let period = get_or_create_usage_period(conn, Self::account(next), timestamp())?
            .row
            .id;
        let mut periods = self.periods.lock().expect("quota windows");
        if periods.len() as i64 == next {
            periods.push(period);
        }
        drop(periods);
        // The period exists before any worker is sent to it.
        let _ = self
            .current
            .compare_exchange(window, next, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }
}

impl Scenario<PgConnection> for UsageQuota {
    fn name(&self) -> &'static str {
        "usage-quota"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        let period = reset_usage(conn, Self::account(0), self.limits())?;
        *self.periods.lock().expect("quota windows") = vec![period];
        self.current.store(0, Ordering::SeqCst);
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        _op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let window = self.current.load(Ordering::SeqCst);
        let granted = match pattern {
            p @ (Pattern::Diesel | Pattern::Coalesced) => {
                return Err(crate::scenario::missing_side(p))
            }
            // Check, then act: two round trips, and the check may be stale when the act runs.
            Pattern::Naive => {
                let period = self.periods.lock().expect("quota windows")[window as usize];
                naive::try_consume_check_then_act(conn, period, 1)?
            }
            // One conditional statement after the period's lookup.
            Pattern::Atomic => match quota::try_consume(
                conn,
                Self::account(window),
                Metric::Tokens,
                1,
                timestamp(),
            ) {
                Ok(_) => true,
                Err(Error::QuotaExceeded { .. }) => false,
                Err(e) => return Err(e),
            },
        };
        if granted {
            Ok(1)
        } else {
            self.advance(conn, window)?;
            Ok(0)
        }
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        let (over, used): (i64, i64) = usage_periods::table
            .select((
                sql::<BigInt>("coalesce(sum(greatest(tokens_used - tokens_limit, 0)), 0)::int8"),
                sql::<BigInt>("coalesce(sum(tokens_used), 0)::int8"),
            ))
            .get_result(conn)?;
        Ok(Anomalies {
            duplicate_rows: 0,
            lost_updates: tally.effect as i64 - used,
            over_limit: over,
            double_counted: 0,
        })
    }
}

/// `get-or-create`: every round, all workers ask at once for the account's period of a month
/// no one has asked for yet (the first request of a month, from every server at once).
#[derive(Debug)]
pub struct GetOrCreate;

/// The first month of the scenario; round `r` asks for the month `r` months later.
const FIRST_YEAR: i32 = 2000;

fn month_of_round(round: u64) -> NaiveDateTime {
    let index = i64::from(FIRST_YEAR) * 12 + round as i64;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) + 1);
    // Beyond year 9999 the library refuses the instant (an error the report shows).
    NaiveDate::from_ymd_opt(year.min(i64::from(i32::MAX)) as i32, month as u32, 15)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .unwrap_or(NaiveDateTime::MAX)
}

impl Scenario<PgConnection> for GetOrCreate {
    fn name(&self) -> &'static str {
        "get-or-create"
    }
    fn lockstep(&self) -> bool {
        true
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        reset_usage(conn, ACCOUNT, unlimited())?;
        // Only the rounds' periods stay.
        diesel::delete(usage_periods::table).execute(conn)?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let at = month_of_round(op.round);
        let obtained = match pattern {
            p @ (Pattern::Diesel | Pattern::Coalesced) => {
                return Err(crate::scenario::missing_side(p))
            }
            Pattern::Naive => {
                naive::get_or_create_usage_period_select_then_insert(conn, ACCOUNT, at)?
            }
            Pattern::Atomic => get_or_create_usage_period(conn, ACCOUNT, at)?,
        };
        Ok(u64::from(obtained.created))
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        let (rows, distinct): (i64, i64) = usage_periods::table
            .select((
                sql::<BigInt>("count(*)"),
                sql::<BigInt>("count(DISTINCT (account, period_start))"),
            ))
            .get_result(conn)?;
        Ok(Anomalies {
            duplicate_rows: rows - distinct,
            // One period per round is expected, and exactly one caller per round created it.
            lost_updates: (tally.rounds as i64 - distinct)
                + (tally.rounds as i64 - tally.effect as i64).abs(),
            over_limit: 0,
            double_counted: 0,
        })
    }
}
