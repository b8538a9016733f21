//! The race report: each upsert-kit primitive against the naive pattern it replaces, side by
//! side under real concurrency, measured for throughput, latency, errors and the damage each
//! leaves (duplicate rows, lost updates, units granted beyond a limit).
//!
//! The `upsert-race` binary parses its flags into a [`Config`] and calls [`run`] for the
//! backend it was asked for (PostgreSQL or MySQL/MariaDB), which creates a scratch database of
//! its own (with the tables of that backend's scenarios), runs every cell and returns the
//! [`Row`]s; [`report`] turns them into a text table, JSON and an SVG plot.
//!
//! The core is generic: a [`Scenario`] says how to reset its state, what one operation of each
//! pattern is, and how to count the damage afterwards; the runner gives each worker its own
//! connection, releases them together on a barrier, and times every operation. A scenario that
//! runs on every backend is written once, generic over the connection
//! ([`backend::RaceConnection`], which holds what differs between the backends: tables and
//! the naive baselines' SQL); [`scenarios::Scenarios`] says which scenarios each backend runs.
//!
//! The `counter`, `counter-retry`, `quota` and `claim` scenarios ([`generic`]) run the
//! library's generic primitives on tables the race crate declares itself ([`tables`]) or the
//! backend's queue; the `usage-*` and `get-or-create` scenarios ([`primitives`]) run the
//! usage-tracking example's code (PostgreSQL).
//!
//! [`naive`] holds the racy baselines every backend shares (and re-exports PostgreSQL's naive
//! upsert); the baselines of the adopters' primitives live next to the code that replaces
//! them, in `usage_tracking::naive` and `backfill_scheduler::naive`. None of them is for
//! application code.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod backend;
pub mod generic;
pub mod naive;
pub mod payload;
pub mod plain;
pub mod primitives;
pub mod report;
pub mod scenario;
pub mod scenarios;
pub mod sql;
pub mod tables;

use anyhow::{bail, Context, Result};
use backend::RaceConnection;
use scenario::{Anomalies, Op, Pattern, Scenario, Tally};
use scenarios::Scenarios;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use upsert_kit::conn::{Dialect, WriteConnection};
use upsert_kit_support::server::ServerDb;

/// When a worker stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many operations per worker.
    Ops(u64),
    /// After this long (the operation in flight finishes).
    Duration(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's admin URL (a user allowed to `CREATE DATABASE`); `None` for
    /// [`backend::default_admin_url`].
    pub admin_url: Option<String>,
    /// Scenario names, in order; none for every scenario of the backend
    /// ([`Scenarios::NAMES`]).
    pub scenarios: Vec<String>,
    /// Patterns, in order.
    pub patterns: Vec<Pattern>,
    /// Worker counts to sweep.
    pub workers: Vec<usize>,
    /// Per cell and round.
    pub stop: Stop,
    /// Rounds: every cell runs once per round, the patterns of a cell back to back, and the
    /// rounds are summed. On a shared machine whose disk latency moves, this spreads the slow
    /// moments evenly over the patterns being compared.
    pub rounds: usize,
    /// The scenarios' sizes.
    pub params: scenarios::Params,
    /// Batches the coalesced cells' writer has in flight at once
    /// ([`CoalescerBuilder::in_flight`](upsert_kit::coalesce::CoalescerBuilder::in_flight));
    /// `None`: the library's default.
    pub in_flight: Option<usize>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// One cell of the report: a backend, a scenario, a pattern, a worker count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `postgresql` or `mysql` (MariaDB here); rows of reports written before the MySQL
    /// scenarios read as `postgresql`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Scenario name.
    pub scenario: String,
    /// `naive` or `atomic`.
    pub pattern: String,
    /// Concurrent workers, each on its own connection.
    pub workers: usize,
    /// Operations attempted (a bulk operation is one batch).
    pub operations: u64,
    /// What `per_sec` counts: `ops`, or `rows` for bulk scenarios.
    pub unit: String,
    /// Successful units per second of wall time (failed operations do not count).
    pub per_sec: f64,
    /// Median latency of one operation, in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency of one operation, in microseconds.
    pub p99_us: f64,
    /// Operations that returned an error.
    pub errors: u64,
    /// `errors / operations`.
    pub error_rate: f64,
    /// Errors by class.
    pub error_kinds: BTreeMap<String, u64>,
    /// Rows beyond the first for one key.
    pub duplicate_rows: i64,
    /// Writes acknowledged to the client that the final state does not show.
    pub lost_updates: i64,
    /// Writes counted more than once (`counter-retry`: a retried delivery counted again).
    /// Absent from reports written before it existed (read as 0).
    #[serde(default)]
    pub double_counted: i64,
    /// Units granted beyond a limit.
    pub over_limit: i64,
    /// Wall time of the cell, in seconds.
    pub seconds: f64,
}

fn default_backend() -> String {
    "postgresql".to_owned()
}

/// Runs every cell of `config` on a scratch database of its own on the `C` server of
/// `config.admin_url` (created here with the tables of `C`'s scenarios, dropped on return) and
/// returns the rows in order.
///
/// # Errors
/// An unknown scenario, no or zero worker counts, a server that cannot be reached or refuses
/// to create the database, or a scenario's own setup or check failing. Errors of the
/// measured operations are not errors of the run: they are counted in the rows.
pub fn run<C: Scenarios>(config: &Config) -> Result<Vec<Row>> {
    let names: Vec<&str> = if config.scenarios.is_empty() {
        C::NAMES.to_vec()
    } else {
        config.scenarios.iter().map(String::as_str).collect()
    };
    let chosen: Vec<Box<dyn Scenario<C>>> = names
        .iter()
        .map(|name| C::by_name(name, &config.params))
        .collect::<Result<_>>()?;
    if config.workers.is_empty() || config.workers.contains(&0) {
        bail!("--workers needs positive worker counts");
    }
    let admin_url = match &config.admin_url {
        Some(url) => url.clone(),
        None => backend::default_admin_url::<C>()?,
    };
    let db = ServerDb::<C::Server>::on(&admin_url).map_err(anyhow::Error::msg)?;
    let mut conn = C::connect(db.url()).context("connect to the race database")?;
    conn.create_tables()?;
    tables::create(&mut conn)?;

    run_cells(db.url(), &chosen, config)
}

/// Runs every cell of `config` with `chosen` on the database `url` and returns the rows.
fn run_cells<C: RaceConnection>(
    url: &str,
    chosen: &[Box<dyn Scenario<C>>],
    config: &Config,
) -> Result<Vec<Row>> {
    let cells: Vec<(&dyn Scenario<C>, Pattern, usize)> = chosen
        .iter()
        .flat_map(|s| {
            config.workers.iter().flat_map(move |&w| {
                config
                    .patterns
                    .iter()
                    .filter(|p| s.patterns().contains(p))
                    .map(move |&p| (s.as_ref(), p, w))
            })
        })
        .collect();
    let rounds = config.rounds.max(1);
    let bar = progress_bar(config.progress, (cells.len() * rounds) as u64);
    let mut measured: Vec<Option<Measured>> = (0..cells.len()).map(|_| None).collect();
    for round in 0..rounds {
        for (i, &(scenario, pattern, workers)) in cells.iter().enumerate() {
            let name = format!(
                "{} / {} / {workers} workers",
                scenario.name(),
                pattern.as_str()
            );
            bar.set_message(format!("round {}: {name}", round + 1));
            let m = run_cell(
                url,
                scenario,
                pattern,
                workers,
                config.stop,
                config.in_flight,
            )
            .with_context(|| name.clone())?;
            match &mut measured[i] {
                Some(sum) => sum.add(m),
                slot => *slot = Some(m),
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(cells
        .iter()
        .zip(measured)
        .map(|(&(scenario, pattern, workers), m)| {
            m.expect("every cell ran").row(scenario, pattern, workers)
        })
        .collect())
}

/// The raw figures of a cell (summed over rounds).
struct Measured {
    latencies_ns: Vec<u64>,
    operations: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    anomalies: Anomalies,
    seconds: f64,
}

impl Measured {
    fn add(&mut self, other: Measured) {
        self.latencies_ns.extend(other.latencies_ns);
        self.operations += other.operations;
        self.ok += other.ok;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        self.anomalies.duplicate_rows += other.anomalies.duplicate_rows;
        self.anomalies.lost_updates += other.anomalies.lost_updates;
        self.anomalies.double_counted += other.anomalies.double_counted;
        self.anomalies.over_limit += other.anomalies.over_limit;
        self.seconds += other.seconds;
    }

    fn row<C: RaceConnection>(
        mut self,
        scenario: &dyn Scenario<C>,
        pattern: Pattern,
        workers: usize,
    ) -> Row {
        self.latencies_ns.sort_unstable();
        let errors: u64 = self.errors.values().sum();
        Row {
            backend: C::BACKEND.to_owned(),
            scenario: scenario.name().to_owned(),
            pattern: pattern.as_str().to_owned(),
            workers,
            operations: self.operations,
            unit: scenario.unit().to_owned(),
            per_sec: (self.ok * scenario.units_per_op()) as f64 / self.seconds,
            p50_us: percentile(&self.latencies_ns, 0.50),
            p99_us: percentile(&self.latencies_ns, 0.99),
            errors,
            error_rate: if self.operations == 0 {
                0.0
            } else {
                errors as f64 / self.operations as f64
            },
            error_kinds: self.errors,
            duplicate_rows: self.anomalies.duplicate_rows,
            lost_updates: self.anomalies.lost_updates,
            double_counted: self.anomalies.double_counted,
            over_limit: self.anomalies.over_limit,
            seconds: self.seconds,
        }
    }
}

fn progress_bar(enabled: bool, cells: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(cells);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cells [{elapsed}] {msg}")
            .expect("a valid progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// What one worker brings back.
#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    operations: u64,
    ok: u64,
    effect: u64,
    rounds: u64,
    errors: BTreeMap<String, u64>,
}

fn run_cell<C: RaceConnection>(
    url: &str,
    scenario: &dyn Scenario<C>,
    pattern: Pattern,
    workers: usize,
    stop: Stop,
    in_flight: Option<usize>,
) -> Result<Measured> {
    let mut admin = C::connect(url)?;
    scenario.prepare(&mut admin)?;
    // Every worker connects before the start, so connecting is not measured.
    let conns = (0..workers)
        .map(|_| C::connect(url))
        .collect::<upsert_kit::Result<Vec<_>>>()?;
    // The coalesced cells' writer, over a pool of its own whose connection is made before
    // the start too.
    let writer = match pattern {
        Pattern::Coalesced => {
            // A connection per batch in flight (the library's number unless told), and one to
            // spare.
            let batches = in_flight
                .unwrap_or(<<C as WriteConnection>::Backend as Dialect>::BATCHES_IN_FLIGHT);
            let pool = diesel::r2d2::Pool::builder()
                .max_size(batches as u32 + 1)
                .build(diesel::r2d2::ConnectionManager::<C>::new(url))
                .context("the coalescing writer's pool")?;
            drop(pool.get().context("the coalescing writer's connection")?);
            let builder = upsert_kit::coalesce::CoalescerBuilder::default();
            Some(match in_flight {
                Some(n) => builder.in_flight(n).build(pool),
                None => builder.build(pool),
            })
        }
        _ => None,
    };
    let writer = writer
        .as_ref()
        .map(|w| w as &(dyn std::any::Any + Send + Sync));
    let start = Barrier::new(workers + 1);
    let round = Barrier::new(workers);
    let done = AtomicBool::new(false);

    let (results, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(worker, conn)| {
                let (start, round, done) = (&start, &round, &done);
                s.spawn(move || {
                    work(
                        scenario, pattern, worker, conn, writer, stop, start, round, done,
                    )
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let results: Vec<WorkerResult> = handles
            .into_iter()
            .map(|h| h.join().expect("a race worker panicked"))
            .collect();
        (results, t0.elapsed())
    });

    let mut error_kinds = BTreeMap::new();
    for r in &results {
        for (kind, n) in &r.errors {
            *error_kinds.entry(kind.clone()).or_insert(0) += n;
        }
    }
    let tally = Tally {
        ok: results.iter().map(|r| r.ok).sum(),
        effect: results.iter().map(|r| r.effect).sum(),
        rounds: results.iter().map(|r| r.rounds).max().unwrap_or(0),
    };
    let anomalies = scenario.verify(&mut admin, &tally)?;
    Ok(Measured {
        operations: results.iter().map(|r| r.operations).sum(),
        ok: tally.ok,
        latencies_ns: results.into_iter().flat_map(|r| r.latencies_ns).collect(),
        errors: error_kinds,
        anomalies,
        seconds: elapsed.as_secs_f64(),
    })
}

/// The `q` quantile of sorted nanoseconds, in microseconds (nearest rank).
fn percentile(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1_000.0
}

#[allow(clippy::too_many_arguments)]
fn work<C: RaceConnection>(
    scenario: &dyn Scenario<C>,
    pattern: Pattern,
    worker: usize,
    mut conn: C,
    writer: Option<&(dyn std::any::Any + Send + Sync)>,
    stop: Stop,
    start: &Barrier,
    round: &Barrier,
    done: &AtomicBool,
) -> WorkerResult {
    let mut out = WorkerResult::default();
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ worker as u64);
    let lockstep = scenario.lockstep();
    start.wait();
    let deadline = match stop {
        Stop::Duration(d) => Some(Instant::now() + d),
        Stop::Ops(_) => None,
    };
    let mut i = 0_u64;
    loop {
        let finished = match stop {
            Stop::Ops(n) => i >= n,
            Stop::Duration(_) => deadline.is_some_and(|d| Instant::now() >= d),
        };
        if lockstep {
            // All workers agree on whether to run round `i`, then start it together: the
            // leader decides, the second barrier publishes its decision.
            if round.wait().is_leader() {
                done.store(finished, Ordering::SeqCst);
            }
            round.wait();
            if done.load(Ordering::SeqCst) {
                break;
            }
        } else if finished {
            break;
        }
        let mut op = Op {
            worker,
            round: i,
            rng: &mut rng,
            writer,
        };
        let t = Instant::now();
        let result = scenario.op(&mut conn, pattern, &mut op);
        out.latencies_ns.push(t.elapsed().as_nanos() as u64);
        out.operations += 1;
        match result {
            Ok(effect) => {
                out.ok += 1;
                out.effect += effect;
            }
            Err(e) => *out.errors.entry(error_class(&e)).or_insert(0) += 1,
        }
        i += 1;
    }
    out.rounds = i;
    out
}

/// A short name for an error's class (no values, so nothing secret).
fn error_class(e: &upsert_kit::Error) -> String {
    use upsert_kit::Error;
    match e {
        Error::Constraint { kind, .. } => format!("{kind} violation"),
        Error::SerializationFailure(_) => "serialization failure".into(),
        Error::Deadlock(_) => "deadlock".into(),
        Error::LockTimeout(_) => "lock timeout".into(),
        Error::StatementTimeout(_) => "statement timeout".into(),
        Error::ConnectionLost(_) | Error::OutcomeUnknown(_) => "connection lost".into(),
        Error::QuotaExceeded { .. } => "quota exceeded".into(),
        other => {
            let text = other.to_string();
            text.chars().take(60).collect()
        }
    }
}
