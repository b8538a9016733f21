//! The race scenarios: each one a naive pattern and its atomic replacement.
//!
//! | scenario | naive | atomic |
//! |---|---|---|
//! | `upsert` | [`naive::query_then_upsert`] over K existing keys | [`atomic_upsert`] |
//! | `first-insert` | [`naive::query_then_upsert`], all workers on one fresh key per round | [`atomic_upsert`] |
//! | `counter`, `counter-retry`, `quota` | see [`crate::generic`] (the library's generic primitives) | |
//! | `usage-counter`, `usage-counter-retry`, `usage-quota`, `get-or-create`, `claim` | see [`crate::primitives`] (the adopters') | |
//! | `lock` | [`naive::read_add_write`] in a transaction | the same under [`lock::xact_lock`] |
//! | `bulk` | a loop of [`atomic_upsert`] over a batch | one [`bulk_upsert`] of the batch |
//! | `hot-key` | [`naive::query_then_upsert`], all workers on one existing key | [`atomic_upsert`] |
//!
//! `upsert`, `first-insert`, `hot-key` and `bulk` also run the third side, `diesel`: plain
//! Diesel's `insert_into(t).values(&row).on_conflict(key).do_update().set(…)`, and for `bulk`
//! its multi-row `values(&vec)` ([`crate::plain`]), what a Diesel user writes without the
//! crate: as race-free as the crate's, and the peer its speed is measured against.
//!
//! `counter`, `counter-retry` and `lock` run on a table of the race crate's own
//! ([`race_counter`](crate::tables::race_counter), one row each); `counter-retry` and `quota`
//! on the library's ready-made ledger and quota tables ([`upsert_kit::tables`]).
//! [`crate::tables::create`] creates them all.

use crate::generic;
use crate::naive;
use crate::plain;
use crate::primitives;
pub use crate::scenario::{
    key, timestamp, Anomalies, Op, Params, Pattern, Scenario, Tally, ALL_PATTERNS, NAIVE_AND_ATOMIC,
};
use crate::sql::RaceSql;
use crate::tables::LOCK_COUNTER;
use anyhow::{bail, Result};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use sync_jobs::models::{StravaStats, WakatimeStats};
use sync_jobs::schema::{strava_stats, wakatime_stats};
use upsert_kit::lock::{self, LockKey};
use upsert_kit::{atomic_upsert, bulk_upsert};

/// Every scenario name, in report order.
pub const NAMES: &[&str] = &[
    "upsert",
    "first-insert",
    "counter",
    "counter-retry",
    "quota",
    "get-or-create",
    "lock",
    "bulk",
    "hot-key",
    "claim",
    "usage-counter",
    "usage-counter-retry",
    "usage-quota",
];

/// The scenario called `name`.
pub fn by_name(name: &str, params: &Params) -> Result<Box<dyn Scenario>> {
    Ok(match name {
        "upsert" => Box::new(SteadyUpsert::new(params.keys)),
        "first-insert" => Box::new(FirstInsert),
        "counter" => Box::new(generic::Counter),
        "counter-retry" => Box::new(generic::CounterRetry),
        "quota" => Box::new(generic::Quota::new(params.quota_limit)),
        "get-or-create" => Box::new(primitives::GetOrCreate),
        "lock" => Box::new(LockedCounter),
        "bulk" => Box::new(Bulk::new(params.bulk_keys, params.batch)?),
        "hot-key" => Box::new(HotKey::new()),
        "claim" => Box::new(primitives::Claim::new(params.claim_items)?),
        "usage-counter" => Box::new(primitives::UsageCounter::new()),
        "usage-counter-retry" => Box::new(primitives::UsageCounterRetry::new()),
        "usage-quota" => Box::new(primitives::UsageQuota::new(params.quota_limit)),
        other => bail!("unknown scenario {other:?}; known: {}", NAMES.join(", ")),
    })
}

/// Every scenario, in report order.
pub fn available() -> Vec<String> {
    NAMES.iter().map(|n| (*n).to_owned()).collect()
}

/// One stats row written by `pattern`: the naive query-then-upsert, plain Diesel's upsert or
/// the crate's (the `upsert` and `hot-key` scenarios differ only in the row they pick).
fn upsert_strava_row(
    conn: &mut PgConnection,
    pattern: Pattern,
    row: &StravaStats,
) -> upsert_kit::Result<u64> {
    match pattern {
        Pattern::Naive => {
            naive::query_then_upsert(conn, row)?;
        }
        Pattern::Diesel => {
            plain::upsert_strava(conn, row)?;
        }
        Pattern::Atomic => {
            atomic_upsert(conn, row)?;
        }
    }
    Ok(1)
}

fn stats_rows(n: u64) -> Vec<StravaStats> {
    let data = crate::payload::stats_payload(0);
    (0..n)
        .map(|i| StravaStats {
            stats_type: key(i),
            data: data.clone(),
            created_at: timestamp(),
            updated_at: timestamp(),
        })
        .collect()
}

/// `upsert`: steady state over K existing keys, each operation on a random one.
struct SteadyUpsert {
    rows: Vec<StravaStats>,
}

impl SteadyUpsert {
    fn new(keys: u64) -> Self {
        SteadyUpsert {
            rows: stats_rows(keys.max(1)),
        }
    }
}

impl Scenario for SteadyUpsert {
    fn name(&self) -> &'static str {
        "upsert"
    }
    fn patterns(&self) -> &'static [Pattern] {
        ALL_PATTERNS
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE strava_stats")?;
        bulk_upsert(conn, &self.rows)?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = &self.rows[op.rng.usize(..self.rows.len())];
        upsert_strava_row(conn, pattern, row)
    }
    fn verify(&self, conn: &mut PgConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, self.rows.len())
    }
}

/// `first-insert`: every round, all workers write the same new key at once (the cron storm).
struct FirstInsert;

impl Scenario for FirstInsert {
    fn name(&self) -> &'static str {
        "first-insert"
    }
    fn lockstep(&self) -> bool {
        true
    }
    fn patterns(&self) -> &'static [Pattern] {
        ALL_PATTERNS
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE wakatime_stats")?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = WakatimeStats {
            stats_type: format!("round-{}", op.round),
            data: crate::payload::stats_payload(op.round),
            created_at: timestamp(),
            updated_at: timestamp(),
        };
        match pattern {
            Pattern::Naive => {
                naive::query_then_upsert(conn, &row)?;
            }
            Pattern::Diesel => {
                plain::upsert_wakatime(conn, &row)?;
            }
            Pattern::Atomic => {
                atomic_upsert(conn, &row)?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        use diesel::dsl::{count, count_star};
        use diesel::prelude::AggregateExpressionMethods;
        let (rows, distinct): (i64, i64) = wakatime_stats::table
            .select((
                count_star(),
                count(wakatime_stats::stats_type).aggregate_distinct(),
            ))
            .get_result(conn)?;
        Ok(Anomalies {
            duplicate_rows: rows - distinct,
            // One row per round is expected: a round without its row lost its write.
            lost_updates: tally.rounds as i64 - distinct,
            ..Anomalies::default()
        })
    }
}

/// `lock`: a read-modify-write in a transaction, bare or under a transaction-scoped advisory
/// lock (the pattern for work that cannot be one statement).
struct LockedCounter;

impl Scenario for LockedCounter {
    fn name(&self) -> &'static str {
        "lock"
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        Ok(conn.set_counter(LOCK_COUNTER, 0)?)
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        _op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        conn.transaction(|conn| {
            if pattern == Pattern::Atomic {
                lock::xact_lock(conn, LockKey::new("upsert-race", i64::from(LOCK_COUNTER)))?;
            }
            naive::read_add_write(conn, LOCK_COUNTER)?;
            Ok::<_, upsert_kit::Error>(())
        })?;
        Ok(1)
    }
    fn verify(&self, conn: &mut PgConnection, tally: &Tally) -> Result<Anomalies> {
        Ok(Anomalies {
            lost_updates: tally.effect as i64 - conn.counter_value(LOCK_COUNTER)?,
            ..Anomalies::default()
        })
    }
}

/// `bulk`: batches of consecutive keys over a steady state; naive loops single upserts.
struct Bulk {
    rows: Vec<StravaStats>,
    batch: usize,
}

impl Bulk {
    fn new(keys: u64, batch: usize) -> Result<Self> {
        if batch == 0 || keys < batch as u64 {
            bail!("--batch must be between 1 and --bulk-keys ({keys})");
        }
        Ok(Bulk {
            rows: stats_rows(keys),
            batch,
        })
    }
}

impl Scenario for Bulk {
    fn name(&self) -> &'static str {
        "bulk"
    }
    fn unit(&self) -> &'static str {
        "rows"
    }
    fn units_per_op(&self) -> u64 {
        self.batch as u64
    }
    fn patterns(&self) -> &'static [Pattern] {
        ALL_PATTERNS
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE strava_stats")?;
        bulk_upsert(conn, &self.rows)?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let start = op.rng.usize(..=self.rows.len() - self.batch);
        let batch = &self.rows[start..start + self.batch];
        match pattern {
            Pattern::Naive => {
                for row in batch {
                    atomic_upsert(conn, row)?;
                }
            }
            Pattern::Diesel => {
                plain::bulk_upsert_strava(conn, batch)?;
            }
            Pattern::Atomic => {
                bulk_upsert(conn, batch)?;
            }
        }
        Ok(self.batch as u64)
    }
    fn verify(&self, conn: &mut PgConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, self.rows.len())
    }
}

/// Duplicate rows (more rows than distinct keys) and keys missing from `strava_stats`, when
/// `expected` distinct keys were written.
fn stats_anomalies(conn: &mut PgConnection, expected: usize) -> Result<Anomalies> {
    use diesel::dsl::{count, count_star};
    use diesel::prelude::AggregateExpressionMethods;
    let (rows, distinct): (i64, i64) = strava_stats::table
        .select((
            count_star(),
            count(strava_stats::stats_type).aggregate_distinct(),
        ))
        .get_result(conn)?;
    Ok(Anomalies {
        duplicate_rows: rows - distinct,
        lost_updates: expected as i64 - distinct,
        ..Anomalies::default()
    })
}

/// `hot-key`: every worker upserts the same existing key, as fast as it can (the cron storm
/// on one account): the row lock of that key is the whole contention. The naive side holds
/// it from its `UPDATE` to its `COMMIT` (a round trip more); the others hold it for one
/// statement.
struct HotKey {
    rows: Vec<StravaStats>,
}

impl HotKey {
    /// One row per worker (as many as the report has ever used), all with the hot key and
    /// each with its own payload, so that every write changes the row.
    fn new() -> Self {
        HotKey {
            rows: (0..64)
                .map(|w| StravaStats {
                    stats_type: HOT_KEY.to_owned(),
                    data: crate::payload::stats_payload(w),
                    created_at: timestamp(),
                    updated_at: timestamp(),
                })
                .collect(),
        }
    }
}

/// The key of the `hot-key` scenario.
const HOT_KEY: &str = "hot-key";

impl Scenario for HotKey {
    fn name(&self) -> &'static str {
        "hot-key"
    }
    fn patterns(&self) -> &'static [Pattern] {
        ALL_PATTERNS
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE strava_stats")?;
        bulk_upsert(conn, &self.rows[..1])?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = &self.rows[op.worker % self.rows.len()];
        upsert_strava_row(conn, pattern, row)
    }
    fn verify(&self, conn: &mut PgConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, 1)
    }
}
