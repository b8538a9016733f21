//! The race scenarios, each one a naive pattern and its atomic replacement, and which of them
//! each backend runs ([`Scenarios`]).
//!
//! | scenario | naive | atomic | backends |
//! |---|---|---|---|
//! | `upsert` | the backend's query-then-upsert ([`RaceConnection::query_then_upsert`]) over K existing keys | [`atomic_upsert`] | all |
//! | `first-insert` | the same, all workers on one fresh key per round | [`atomic_upsert`] | all |
//! | `counter`, `quota`, `claim` | see [`crate::generic`] (the library's generic primitives) | | all |
//! | `bulk` | a loop of [`atomic_upsert`] over a batch | one [`bulk_upsert`] of the batch | all |
//! | `counter-retry` | see [`crate::generic`] | | PostgreSQL |
//! | `usage-counter`, `usage-counter-retry`, `usage-quota`, `get-or-create` | see [`crate::primitives`] (the usage-tracking example's) | | PostgreSQL |
//! | `lock` | [`naive::read_add_write`] in a transaction | the same under [`lock::xact_lock`] | PostgreSQL |
//! | `hot-key` | the query-then-upsert, all workers on one existing key | [`atomic_upsert`] | PostgreSQL |
//!
//! The scenarios that run on every backend are written once, generic over the connection
//! ([`RaceConnection`]); what differs between backends (tables, the naive baselines' SQL) is
//! the backend's ([`crate::backend`]).
//!
//! The upsert scenarios write the sync jobs' `strava_stats` rows ([`StravaStats`]). Where the
//! backend has it ([`RaceConnection::UPSERT_PATTERNS`]: PostgreSQL), they also run the third
//! side, `diesel`: plain Diesel's `insert_into(t).values(&row).on_conflict(key).do_update()
//! .set(…)`, and for `bulk` its multi-row `values(&vec)` ([`crate::plain`]), what a Diesel user
//! writes without the crate: as race-free as the crate's, and the peer its speed is measured
//! against.

use crate::backend::RaceConnection;
use crate::generic;
use crate::naive;
use crate::primitives;
pub use crate::scenario::{
    key, timestamp, Anomalies, Op, Params, Pattern, Scenario, Tally, NAIVE_AND_ATOMIC,
    UPSERT_COALESCED,
};
use crate::sql::RaceSql;
use crate::tables::{RaceCounter, LOCK_COUNTER};
use anyhow::{anyhow, bail, Result};
use diesel::connection::Connection;
use diesel::mysql::MysqlConnection;
use diesel::pg::PgConnection;
use sync_jobs::models::StravaStats;
use upsert_kit::claim::ClaimConnection;
use upsert_kit::conn::{BindKey, WriteConnection};
use upsert_kit::counter::CounterBackend;
use upsert_kit::lock::{self, LockKey};
use upsert_kit::quota::{BindQuota, QuotaBackend};
use upsert_kit::tables::Quotas;
use upsert_kit::{atomic_upsert, bulk_upsert, Upsertable};
use upsert_kit_support::server::Server;

/// The backend of connection `C`, as the library's primitives name it.
type Db<C> = <C as WriteConnection>::Backend;

/// The scenarios a backend runs.
pub trait Scenarios: RaceConnection {
    /// Every scenario name, in report order.
    const NAMES: &'static [&'static str];

    /// The scenario called `name`.
    ///
    /// # Errors
    /// A name the backend does not run, or sizes the scenario refuses.
    fn by_name(name: &str, params: &Params) -> Result<Box<dyn Scenario<Self>>>;
}

/// The scenarios every backend runs, in report order.
pub const SHARED: &[&str] = &[
    "upsert",
    "first-insert",
    "counter",
    "quota",
    "bulk",
    "claim",
];

/// The scenario of [`SHARED`] called `name`, on `C`; `None` for another name.
fn shared<C>(name: &str, params: &Params) -> Result<Option<Box<dyn Scenario<C>>>>
where
    C: RaceConnection + ClaimConnection<C::Queue>,
    Db<C>: CounterBackend + QuotaBackend,
    StravaStats: Upsertable<C>,
    RaceCounter: BindKey<Db<C>>,
    Quotas: BindQuota<Db<C>>,
{
    Ok(Some(match name {
        "upsert" => Box::new(SteadyUpsert::new(params.keys)),
        "first-insert" => Box::new(FirstInsert),
        "counter" => Box::new(generic::Counter),
        "quota" => Box::new(generic::Quota::new(params.quota_limit)),
        "bulk" => Box::new(Bulk::new(params.bulk_keys, params.batch)?),
        "claim" => Box::new(generic::Claim::new::<C>(params.claim_items)?),
        _ => return Ok(None),
    }))
}

/// The error for `name`, which `C` does not run.
fn unknown<C: Scenarios>(name: &str) -> anyhow::Error {
    let backend = <C::Server as Server>::BACKEND;
    if <PgConnection as Scenarios>::NAMES.contains(&name) {
        anyhow!(
            "scenario {name:?} has no {backend} version ({backend} runs: {})",
            C::NAMES.join(", ")
        )
    } else {
        anyhow!("unknown scenario {name:?}; known: {}", C::NAMES.join(", "))
    }
}

impl Scenarios for PgConnection {
    const NAMES: &'static [&'static str] = &[
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

    fn by_name(name: &str, params: &Params) -> Result<Box<dyn Scenario<Self>>> {
        if let Some(scenario) = shared(name, params)? {
            return Ok(scenario);
        }
        Ok(match name {
            "counter-retry" => Box::new(generic::CounterRetry),
            "get-or-create" => Box::new(primitives::GetOrCreate),
            "lock" => Box::new(LockedCounter),
            "hot-key" => Box::new(HotKey::new()),
            "usage-counter" => Box::new(primitives::UsageCounter::new()),
            "usage-counter-retry" => Box::new(primitives::UsageCounterRetry::new()),
            "usage-quota" => Box::new(primitives::UsageQuota::new(params.quota_limit)),
            other => return Err(unknown::<Self>(other)),
        })
    }
}

impl Scenarios for MysqlConnection {
    const NAMES: &'static [&'static str] = SHARED;

    fn by_name(name: &str, params: &Params) -> Result<Box<dyn Scenario<Self>>> {
        shared(name, params)?.ok_or_else(|| unknown::<Self>(name))
    }
}

/// One stats row written by `pattern`: the backend's naive query-then-upsert, plain Diesel's
/// upsert or the crate's.
fn upsert_row<C>(
    conn: &mut C,
    pattern: Pattern,
    op: &Op<'_>,
    row: &StravaStats,
) -> upsert_kit::Result<u64>
where
    C: RaceConnection,
    StravaStats: Upsertable<C>,
{
    match pattern {
        Pattern::Naive => conn.query_then_upsert(row)?,
        Pattern::Diesel => conn.plain_upsert(row)?,
        Pattern::Atomic => {
            atomic_upsert(conn, row)?;
        }
        Pattern::Coalesced => {
            op.writer::<C>()?.upsert(row.clone())?;
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

/// Empties `strava_stats` and writes `rows` (unmeasured).
fn reset_stats<C>(conn: &mut C, rows: &[StravaStats]) -> Result<()>
where
    C: RaceConnection,
    StravaStats: Upsertable<C>,
{
    conn.batch_execute("TRUNCATE strava_stats")?;
    if !rows.is_empty() {
        bulk_upsert(conn, rows)?;
    }
    Ok(())
}

/// Duplicate rows (more rows than distinct keys) and keys missing from `strava_stats`, when
/// `expected` distinct keys were written.
fn stats_anomalies<C: RaceConnection>(conn: &mut C, expected: i64) -> Result<Anomalies> {
    let (rows, distinct) = conn.stats_counts()?;
    Ok(Anomalies {
        duplicate_rows: rows - distinct,
        lost_updates: expected - distinct,
        ..Anomalies::default()
    })
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

impl<C> Scenario<C> for SteadyUpsert
where
    C: RaceConnection,
    StravaStats: Upsertable<C>,
{
    fn name(&self) -> &'static str {
        "upsert"
    }
    fn patterns(&self) -> &'static [Pattern] {
        C::SINGLE_UPSERT_PATTERNS
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        reset_stats(conn, &self.rows)
    }
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        let row = &self.rows[op.rng.usize(..self.rows.len())];
        upsert_row(conn, pattern, op, row)
    }
    fn verify(&self, conn: &mut C, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, self.rows.len() as i64)
    }
}

/// `first-insert`: every round, all workers write the same new key at once (the cron storm).
struct FirstInsert;

impl<C> Scenario<C> for FirstInsert
where
    C: RaceConnection,
    StravaStats: Upsertable<C>,
{
    fn name(&self) -> &'static str {
        "first-insert"
    }
    fn lockstep(&self) -> bool {
        true
    }
    fn patterns(&self) -> &'static [Pattern] {
        C::SINGLE_UPSERT_PATTERNS
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        reset_stats(conn, &[])
    }
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        let row = StravaStats {
            stats_type: format!("round-{}", op.round),
            data: crate::payload::stats_payload(op.round),
            created_at: timestamp(),
            updated_at: timestamp(),
        };
        upsert_row(conn, pattern, op, &row)
    }
    fn verify(&self, conn: &mut C, tally: &Tally) -> Result<Anomalies> {
        // One row per round is expected: a round without its row lost its write.
        stats_anomalies(conn, tally.rounds as i64)
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

impl<C> Scenario<C> for Bulk
where
    C: RaceConnection,
    StravaStats: Upsertable<C>,
{
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
        C::UPSERT_PATTERNS
    }
    fn prepare(&self, conn: &mut C) -> Result<()> {
        reset_stats(conn, &self.rows)
    }
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64> {
        let start = op.rng.usize(..=self.rows.len() - self.batch);
        let batch = &self.rows[start..start + self.batch];
        match pattern {
            Pattern::Naive => {
                for row in batch {
                    atomic_upsert(conn, row)?;
                }
            }
            Pattern::Diesel => conn.plain_bulk_upsert(batch)?,
            Pattern::Atomic => {
                bulk_upsert(conn, batch)?;
            }
            p @ Pattern::Coalesced => return Err(crate::scenario::missing_side(p)),
        }
        Ok(self.batch as u64)
    }
    fn verify(&self, conn: &mut C, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, self.rows.len() as i64)
    }
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

impl Scenario<PgConnection> for HotKey {
    fn name(&self) -> &'static str {
        "hot-key"
    }
    fn patterns(&self) -> &'static [Pattern] {
        UPSERT_COALESCED
    }
    fn prepare(&self, conn: &mut PgConnection) -> Result<()> {
        reset_stats(conn, &self.rows[..1])
    }
    fn op(
        &self,
        conn: &mut PgConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = &self.rows[op.worker % self.rows.len()];
        upsert_row(conn, pattern, op, row)
    }
    fn verify(&self, conn: &mut PgConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, 1)
    }
}

/// `lock`: a read-modify-write in a transaction, bare or under a transaction-scoped advisory
/// lock (the pattern for work that cannot be one statement).
struct LockedCounter;

impl Scenario<PgConnection> for LockedCounter {
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
