//! The scenarios of the library's generic primitives, on tables the race crate declares itself
//! ([`crate::tables`]): the counter table [`race_counter`](crate::tables::race_counter) and the
//! ready-made ledger and quota tables of [`upsert_kit::tables`], each against its naive baseline
//! in [`naive`] on the same table.
//!
//! | scenario | naive | atomic |
//! |---|---|---|
//! | `counter` | [`naive::read_add_write`] of one hot row | [`counter::increment`] of it |
//! | `counter-retry` | the same, each request delivered twice (a retry after a lost acknowledgement) | [`idempotency::increment_once`], both deliveries with the request's key |
//! | `quota` | [`naive::try_consume_check_then_act`] | [`quota::try_consume`] |

use crate::naive;
use crate::scenario::{timestamp, Anomalies, Op, Pattern, Scenario, Tally};
use crate::sql::RaceSql;
use crate::tables::{RaceCounter, COUNTER, RETRY_COUNTER};
use anyhow::Result;
use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use std::sync::atomic::{AtomicI64, Ordering};
use upsert_kit::idempotency::{self, IdempotencyKey};
use upsert_kit::tables::{upsert_kit_quotas, IdempotencyKeys, Quotas};
use upsert_kit::{counter, quota, Error};

/// `counter`: every worker adds one to one hot row.
#[derive(Debug, Default)]
pub struct Counter;

impl Scenario for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        Ok(conn.set_counter(COUNTER, 0)?)
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        _op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        match pattern {
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            // As ORM code writes it: load, add, save (two round trips, no transaction).
            Pattern::Naive => naive::read_add_write(conn, COUNTER)?,
            // One `UPDATE … SET n = n + 1 … RETURNING n`.
            Pattern::Atomic => {
                counter::increment::<RaceCounter, _>(conn, &COUNTER, [1])?
                    .ok_or_else(|| Error::NotFound("the counter row is missing".into()))?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
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

impl Scenario for CounterRetry {
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
                Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
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

    /// Creates window `window`'s quota row, unless it exists.
    fn open(&self, conn: &mut PgConnection, window: i64) -> QueryResult<()> {
        diesel::insert_into(upsert_kit_quotas::table)
            .values((
                upsert_kit_quotas::quota_key.eq(Self::key(window)),
                upsert_kit_quotas::quota_limit.eq(self.limit),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(())
    }

    /// Opens window `window + 1` (whoever gets there first; the calls are idempotent).
    fn advance(&self, conn: &mut PgConnection, window: i64) -> upsert_kit::Result<()> {
        self.open(conn, window + 1)?;
        // The row exists before any worker is sent to it.
        let _ =
            self.current
                .compare_exchange(window, window + 1, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }
}

impl Scenario for Quota {
    fn name(&self) -> &'static str {
        "quota"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE upsert_kit_reservations, upsert_kit_quotas")?;
        self.open(conn, 0)?;
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
        let key = Self::key(window);
        let granted = match pattern {
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
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
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        let (over, used): (i64, i64) = upsert_kit_quotas::table
            .select((
                sql::<BigInt>("coalesce(sum(greatest(used - quota_limit, 0)), 0)::int8"),
                sql::<BigInt>("coalesce(sum(used), 0)::int8"),
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
