//! The scenarios of the library's generic counter, idempotency, quota and claim primitives, each
//! against its naive baseline on the same table. `counter`, `quota` and `claim` are written once
//! for every backend ([`RaceConnection`]); `counter-retry` runs on PostgreSQL.
//!
//! | scenario | naive | atomic |
//! |---|---|---|
//! | `counter` | [`naive::read_add_write`] of one hot row | [`counter::increment`] of it |
//! | `counter-retry` | the same, each request delivered twice (a retry after a lost acknowledgement) | [`idempotency::increment_once`], both deliveries with the request's key |
//! | `quota` | [`naive::try_consume_check_then_act`] | [`quota::try_consume`] |
//! | `claim` | the backend's lockless claim of one item ([`RaceConnection::claim_select_then_update`]), then mark it done | [`Queue::claim`] of one item, then [`Queue::complete`] |
//!
//! The counters are rows of the race crate's [`race_counter`](crate::tables::race_counter), the
//! quotas rows of the library's ready-made `upsert_kit_quotas` ([`crate::tables`]); the queue is
//! the backend's ([`RaceConnection::Queue`]: the backfill scheduler's months on PostgreSQL, the
//! race crate's `race_queue` on MySQL).

use crate::backend::RaceConnection;
use crate::naive;
use crate::scenario::{timestamp, Anomalies, Op, Pattern, Scenario, Tally, WITH_COALESCED};
use crate::sql::RaceSql;
use crate::tables::{RaceCounter, COUNTER, RETRY_COUNTER};
use anyhow::{bail, Result};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use std::sync::atomic::{AtomicI64, Ordering};
use upsert_kit::claim::{ClaimConnection, Queue};
use upsert_kit::conn::{BindKey, WriteConnection};
use upsert_kit::counter::CounterBackend;
use upsert_kit::idempotency::{self, IdempotencyKey};
use upsert_kit::quota::{BindQuota, QuotaBackend};
use upsert_kit::tables::{IdempotencyKeys, Quotas};
use upsert_kit::{counter, quota, Error};

/// The backend of connection `C`, as the library's primitives name it.
type Db<C> = <C as WriteConnection>::Backend;

/// `counter`: every worker adds one to one hot row.
#[derive(Debug, Default)]
pub struct Counter;

impl<C> Scenario<C> for Counter
where
    C: RaceConnection,
    Db<C>: CounterBackend,
    RaceCounter: BindKey<Db<C>>,
{
    fn name(&self) -> &'static str {
        "counter"
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        Ok(conn.set_counter(COUNTER, 0)?)
    }
    fn patterns(&self) -> &'static [Pattern] {
        WITH_COALESCED
    }
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        match pattern {
            p @ Pattern::Diesel => return Err(crate::scenario::missing_side(p)),
            // The increments of a batch, one statement of their sum.
            Pattern::Coalesced => {
                op.writer::<C>()?
                    .increment::<RaceCounter>(COUNTER, [1])?
                    .ok_or_else(|| Error::NotFound("the counter row is missing".into()))?;
            }
            // As ORM code writes it: load, add, save (two round trips, no transaction).
            Pattern::Naive => naive::read_add_write(conn, COUNTER)?,
            // One `UPDATE … SET n = n + 1 … RETURNING n` (on MySQL the row is read back).
            Pattern::Atomic => {
                counter::increment::<RaceCounter, _>(conn, &COUNTER, [1])?
                    .ok_or_else(|| Error::NotFound("the counter row is missing".into()))?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut C, tally: &Tally) -> Result<Anomalies> {
        Ok(Anomalies {
            lost_updates: tally.effect as i64 - conn.counter_value(COUNTER)?,
            ..Anomalies::default()
        })
    }
}

/// `counter-retry`: every request is delivered twice (the client retries after losing the
/// acknowledgement); it must count once. Two kinds of damage, counted apart (they would cancel
/// in a net figure): "doubled", deliveries counted beyond the first of their request (each
/// delivery that said it added one, minus one per request), and "lost upd", deliveries that
/// said they added one and that the final value does not show (overwritten by a concurrent
/// read-add-write).
#[derive(Debug, Default)]
pub struct CounterRetry;

impl Scenario<PgConnection> for CounterRetry {
    fn name(&self) -> &'static str {
        "counter-retry"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        // The keys of a cell are reused by the next one: forget them.
        conn.batch_execute("TRUNCATE upsert_kit_idempotency_keys")?;
        Ok(conn.set_counter(RETRY_COUNTER, 0)?)
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let key = IdempotencyKey::new(format!("request-w{}-{}", op.worker, op.round))?;
        let mut counted = 0;
        for _delivery in 0..2 {
            match pattern {
                p @ (Pattern::Diesel | Pattern::Coalesced) => {
                    return Err(crate::scenario::missing_side(p))
                }
                // No key: the retry is counted again.
                Pattern::Naive => {
                    naive::read_add_write(conn, RETRY_COUNTER)?;
                    counted += 1;
                }
                // One statement: the increment and the key's ledger row, or neither.
                Pattern::Atomic => {
                    let done = idempotency::increment_once::<IdempotencyKeys, RaceCounter, _>(
                        conn,
                        &key,
                        &RETRY_COUNTER,
                        [1],
                        timestamp(),
                    )?;
                    counted += u64::from(done.applied);
                }
            }
        }
        // The deliveries that said they added one.
        Ok(counted)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        Ok(crate::scenario::retry_anomalies(
            conn.counter_value(RETRY_COUNTER)?,
            tally,
        ))
    }
}

/// `quota`: workers take one unit at a time from the current window (a row of
/// `upsert_kit_quotas` with a limit of `limit` units); a worker refused opens the next window.
/// Demand always exceeds supply, so every window but the last ends exactly full.
#[derive(Debug)]
pub struct Quota {
    limit: i64,
    current: AtomicI64,
}

impl Quota {
    /// The scenario with windows of `limit` units (at least 1).
    pub fn new(limit: i64) -> Self {
        Quota {
            limit: limit.max(1),
            current: AtomicI64::new(0),
        }
    }

    /// Window `w`'s quota key.
    fn key(window: i64) -> String {
        format!("window-{window}")
    }

    /// Opens window `window + 1` (whoever gets there first; the calls are idempotent).
    fn advance<C: RaceConnection>(&self, conn: &mut C, window: i64) -> upsert_kit::Result<()> {
        conn.open_quota(&Self::key(window + 1), self.limit)?;
        // The row exists before any worker is sent to it.
        let _ =
            self.current
                .compare_exchange(window, window + 1, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }
}

impl<C> Scenario<C> for Quota
where
    C: RaceConnection,
    Db<C>: QuotaBackend,
    Quotas: BindQuota<Db<C>>,
{
    fn name(&self) -> &'static str {
        "quota"
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        conn.batch_execute("DELETE FROM upsert_kit_reservations; DELETE FROM upsert_kit_quotas")?;
        conn.open_quota(&Self::key(0), self.limit)?;
        self.current.store(0, Ordering::SeqCst);
        Ok(())
    }
    fn op(&self, conn: &mut C, pattern: Pattern, _op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        let window = self.current.load(Ordering::SeqCst);
        let key = Self::key(window);
        let granted = match pattern {
            p @ (Pattern::Diesel | Pattern::Coalesced) => {
                return Err(crate::scenario::missing_side(p))
            }
            // Check, then act: two round trips, and the check may be stale when the act runs.
            Pattern::Naive => naive::try_consume_check_then_act(conn, &key, 1)?,
            // One conditional `UPDATE`.
            Pattern::Atomic => match quota::try_consume::<Quotas, _>(conn, &key, 1, timestamp()) {
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
    fn verify(&self, conn: &mut C, tally: &Tally) -> Result<Anomalies> {
        let windows = conn.quota_rows()?;
        let over: i64 = windows
            .iter()
            .map(|&(limit, used)| (used - limit).max(0))
            .sum();
        let used: i64 = windows.iter().map(|&(_, used)| used).sum();
        Ok(Anomalies {
            lost_updates: tally.effect as i64 - used,
            over_limit: over,
            ..Anomalies::default()
        })
    }
}

/// `claim`: workers drain a queue of `items` items, one item per claim, and mark each done.
#[derive(Debug)]
pub struct Claim {
    items: usize,
}

impl Claim {
    /// The scenario with a queue of `items` items per cell, on connections `C`.
    ///
    /// # Errors
    /// When `items` is 0 or above what `C`'s queue holds ([`RaceConnection::MAX_QUEUE_ITEMS`]:
    /// 108,000 on PostgreSQL, the months of years 1000 to 9999).
    pub fn new<C: RaceConnection>(items: usize) -> Result<Self> {
        if items == 0 {
            bail!("--claim-items must be positive");
        }
        if items > C::MAX_QUEUE_ITEMS {
            bail!("--claim-items must be between 1 and {}", C::MAX_QUEUE_ITEMS);
        }
        Ok(Claim { items })
    }
}

impl<C> Scenario<C> for Claim
where
    C: RaceConnection + ClaimConnection<C::Queue>,
{
    fn name(&self) -> &'static str {
        "claim"
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        conn.fill_queue(self.items)
    }
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        let holder = format!("worker-{}", op.worker);
        match pattern {
            p @ (Pattern::Diesel | Pattern::Coalesced) => Err(crate::scenario::missing_side(p)),
            Pattern::Naive => {
                let claimed = conn.claim_select_then_update(&holder)?;
                for &id in &claimed {
                    conn.mark_done(id)?;
                }
                Ok(claimed.len() as u64)
            }
            Pattern::Atomic => {
                let queue = Queue::<C::Queue>::new(holder)?;
                let claimed = queue.claim(conn, 1)?;
                for claim in &claimed {
                    queue.complete(conn, claim)?;
                }
                Ok(claimed.len() as u64)
            }
        }
    }
    fn verify(&self, conn: &mut C, tally: &Tally) -> Result<Anomalies> {
        // Both patterns count an attempt per hand-out: attempts beyond the first are items
        // handed out twice.
        let counts = conn.queue_counts()?;
        Ok(Anomalies {
            duplicate_rows: counts.repeated,
            // Hand-outs the workers saw but the queue does not show, and items left claimed.
            lost_updates: (tally.effect as i64 - counts.handed_out).abs() + counts.unfinished,
            ..Anomalies::default()
        })
    }
}
