//! What every race scenario is made of: its sides ([`Pattern`]), one operation's context
//! ([`Op`]), what the workers did ([`Tally`]) and the damage found after ([`Anomalies`]), the
//! [`Scenario`] trait the runner drives, and the pieces the scenarios share (the fixed
//! timestamp and keys).
//!
//! The scenarios themselves (`scenarios`, `generic`, `primitives`), the backends and the naive
//! baselines build on this module; it imports none of them.

use anyhow::{bail, Result};
use chrono::{NaiveDate, NaiveDateTime};

/// The sides of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The racy pattern the crate replaces.
    Naive,
    /// Plain Diesel's own upsert, where one exists ([`Scenario::patterns`]).
    Diesel,
    /// The crate's pattern.
    Atomic,
    /// The crate's pattern through one [`Coalescer`](upsert_kit::coalesce::Coalescer) shared by
    /// the workers (the scenarios that say so: [`WITH_COALESCED`], [`UPSERT_COALESCED`]).
    Coalesced,
}

impl Pattern {
    /// `naive`, `diesel` or `atomic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Naive => "naive",
            Pattern::Diesel => "diesel",
            Pattern::Atomic => "atomic",
            Pattern::Coalesced => "coalesced",
        }
    }

    /// Parses `naive`, `diesel`, `atomic` or `coalesced`.
    pub fn parse(s: &str) -> Result<Pattern> {
        match s {
            "naive" => Ok(Pattern::Naive),
            "diesel" => Ok(Pattern::Diesel),
            "atomic" => Ok(Pattern::Atomic),
            "coalesced" => Ok(Pattern::Coalesced),
            other => bail!("unknown pattern {other:?} (naive, diesel, atomic, coalesced)"),
        }
    }
}

/// The error of a scenario asked for a side it lacks (the runner never asks: it runs
/// [`Scenario::patterns`] only).
pub(crate) fn missing_side(pattern: Pattern) -> upsert_kit::Error {
    let why = match pattern {
        Pattern::Diesel => "this scenario has no plain-Diesel side",
        _ => "this scenario has no such side",
    };
    upsert_kit::Error::invalid("pattern", why)
}

/// The patterns of the scenarios without a plain-Diesel side.
pub const NAIVE_AND_ATOMIC: &[Pattern] = &[Pattern::Naive, Pattern::Atomic];
/// The patterns of the upsert scenarios.
pub const ALL_PATTERNS: &[Pattern] = &[Pattern::Naive, Pattern::Diesel, Pattern::Atomic];
/// The patterns of a scenario without a plain-Diesel side that also runs through the
/// coalescing writer.
pub const WITH_COALESCED: &[Pattern] = &[Pattern::Naive, Pattern::Atomic, Pattern::Coalesced];
/// The patterns of an upsert scenario that also runs through the coalescing writer.
pub const UPSERT_COALESCED: &[Pattern] = &[
    Pattern::Naive,
    Pattern::Diesel,
    Pattern::Atomic,
    Pattern::Coalesced,
];

/// The scenarios' sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Keys of the steady-state `upsert` scenario.
    pub keys: u64,
    /// Rows per batch of the `bulk` scenario.
    pub batch: usize,
    /// Keys of the `bulk` scenario (each batch is `batch` consecutive keys).
    pub bulk_keys: u64,
    /// Units per quota window of the `quota` and `usage-quota` scenarios.
    pub quota_limit: i64,
    /// Items queued for each cell of the `claim` scenario.
    pub claim_items: usize,
}

/// One operation's context.
pub struct Op<'a> {
    /// The worker's index.
    pub worker: usize,
    /// This worker's operation number (in lockstep scenarios, the round, the same for all).
    pub round: u64,
    /// The worker's random numbers (seeded per worker: runs are repeatable).
    pub rng: &'a mut fastrand::Rng,
    /// The cell's coalescing writer (the [`Pattern::Coalesced`] cells only), shared by its
    /// workers: a `Coalescer` of the cell's connection type ([`Op::writer`]).
    pub writer: Option<&'a (dyn std::any::Any + Send + Sync)>,
}

impl std::fmt::Debug for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("worker", &self.worker)
            .field("round", &self.round)
            .field("coalesced", &self.writer.is_some())
            .finish_non_exhaustive()
    }
}

impl Op<'_> {
    /// The cell's coalescing writer over connections `C`.
    ///
    /// # Errors
    /// When the cell has none (not a [`Pattern::Coalesced`] cell).
    pub fn writer<C: diesel::r2d2::R2D2Connection + 'static>(
        &self,
    ) -> upsert_kit::Result<&upsert_kit::coalesce::Coalescer<C>> {
        self.writer.and_then(|w| w.downcast_ref()).ok_or_else(|| {
            upsert_kit::Error::invalid("pattern", "this cell has no coalescing writer")
        })
    }
}

/// What the workers of a cell did, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Operations that succeeded.
    pub ok: u64,
    /// The sum of the successful operations' effects (increments applied, units granted…).
    pub effect: u64,
    /// Rounds run (lockstep scenarios).
    pub rounds: u64,
}

/// The damage found after a cell.
#[derive(Debug, Default)]
pub struct Anomalies {
    /// Rows beyond the first for one key.
    pub duplicate_rows: i64,
    /// Acknowledged writes the final state does not show (for `first-insert`: keys left
    /// without a row).
    pub lost_updates: i64,
    /// Writes counted more than once (`counter-retry`: retried deliveries counted again).
    pub double_counted: i64,
    /// Units granted beyond a limit.
    pub over_limit: i64,
}

/// A race scenario on connections `C`: a scenario that runs on every backend implements it for
/// every [`RaceConnection`](crate::backend::RaceConnection), a PostgreSQL-only one for
/// `PgConnection`.
pub trait Scenario<C>: Send + Sync {
    /// Its name on the command line and in the report.
    fn name(&self) -> &'static str;
    /// What the throughput counts.
    fn unit(&self) -> &'static str {
        "ops"
    }
    /// Units per operation (rows per batch for bulk scenarios).
    fn units_per_op(&self) -> u64 {
        1
    }
    /// Whether all workers start each operation together (a barrier per round).
    fn lockstep(&self) -> bool {
        false
    }
    /// The patterns it has; a pattern asked for that it lacks is left out of its cells.
    fn patterns(&self) -> &'static [Pattern] {
        NAIVE_AND_ATOMIC
    }
    /// Resets the scenario's tables before a cell.
    fn prepare(&self, conn: &mut C) -> Result<()>;
    /// One operation of `pattern`; returns its effect (see [`Tally::effect`]).
    fn op(&self, conn: &mut C, pattern: Pattern, op: &mut Op<'_>) -> upsert_kit::Result<u64>;
    /// Counts the damage after a cell.
    fn verify(&self, conn: &mut C, tally: &Tally) -> Result<Anomalies>;
}

/// The timestamp every benchmark row carries, `2026-11-29 00:00:00` (fixed, so pgbench can
/// send the same one).
pub fn timestamp() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 29)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
}

/// The key of row `i` in the upsert and bulk scenarios (pgbench builds the same).
pub fn key(i: u64) -> String {
    format!("key-{i}")
}

/// The damage of a retry scenario whose counter ended at `value`, when `tally.ok` requests
/// completed and their deliveries said they added `tally.effect`: deliveries counted beyond
/// one per request, and deliveries counted that the value does not show.
pub(crate) fn retry_anomalies(value: i64, tally: &Tally) -> Anomalies {
    Anomalies {
        double_counted: tally.effect as i64 - tally.ok as i64,
        lost_updates: tally.effect as i64 - value,
        ..Anomalies::default()
    }
}
