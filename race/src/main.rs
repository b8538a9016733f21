//! `upsert-race`: the naive and the atomic pattern side by side under real concurrency.
//!
//! ```text
//! upsert-race --workers 1,2,4,8,16 --duration 3 --json race.json --plot race.svg
//! upsert-race --scenario first-insert --workers 8 --ops 200
//! ```
//!
//! It creates its own database (`upsert_kit_t_<pid>_…`) on the server of `--database-url`
//! (default: `DATABASE_URL`, else the local server, else a throwaway cluster), or with
//! `--backend mysql` of `--mysql-url`, and drops it at the end. The work is done by the
//! `upsert_race` library; this is its command line.

use anyhow::{bail, Context, Result};
use clap::Parser;
use diesel::mysql::MysqlConnection;
use diesel::pg::PgConnection;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use upsert_race::scenarios::{self, Pattern};
use upsert_race::{Config, Row, Stop};

/// Runs the naive and the atomic pattern of each scenario side by side under concurrency and
/// prints throughput, latency, errors, duplicate rows, lost updates and over-limit units.
#[derive(Debug, Parser)]
#[command(name = "upsert-race", version)]
struct Args {
    /// Admin URL of the PostgreSQL server (a user allowed to CREATE DATABASE); the run uses a
    /// database of its own there. Default: DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres when it answers, else a throwaway cluster
    /// started from the PostgreSQL binaries on this machine (initdb, postgres).
    #[arg(long)]
    database_url: Option<String>,

    /// The backend to race on: postgres, or mysql (MySQL/MariaDB: the scenarios upsert,
    /// first-insert, counter, quota, bulk and claim).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "mysql"])]
    backend: String,

    /// Admin URL of the MySQL/MariaDB server for `--backend mysql` (a user allowed to CREATE
    /// DATABASE). Default: MYSQL_DATABASE_URL, else mysql://root@127.0.0.1:3306/test when it
    /// answers, else a throwaway mariadbd.
    #[arg(long)]
    mysql_url: Option<String>,

    /// Scenarios, comma-separated: upsert, first-insert, counter, counter-retry, quota,
    /// get-or-create, lock, bulk, hot-key, claim, usage-counter, usage-counter-retry, usage-quota.
    /// Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,

    /// Patterns, comma-separated: naive, diesel (plain Diesel's upsert, in the upsert,
    /// first-insert, bulk and hot-key scenarios only), atomic, coalesced (the atomic call
    /// through one coalescing writer shared by the workers, in the upsert, first-insert,
    /// hot-key, counter and usage-counter scenarios only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "naive,diesel,atomic,coalesced"
    )]
    patterns: Vec<String>,

    /// Worker counts to sweep, comma-separated; each worker has its own connection.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    workers: Vec<usize>,

    /// Seconds per cell (scenario × pattern × workers).
    #[arg(long, default_value_t = 3.0, conflicts_with = "ops")]
    duration: f64,

    /// Operations per worker per cell, instead of a duration (first-insert: rounds).
    #[arg(long)]
    ops: Option<u64>,

    /// Rounds: each cell runs once per round (the patterns of a cell back to back) and the
    /// rounds are summed, which evens out a shared machine's slow moments.
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// Keys of the steady-state upsert scenario.
    #[arg(long, default_value_t = 64)]
    keys: u64,

    /// Rows per batch of the bulk scenario.
    #[arg(long, default_value_t = 1000)]
    batch: usize,

    /// Keys of the bulk scenario.
    #[arg(long, default_value_t = 20_000)]
    bulk_keys: u64,

    /// Units per quota window of the quota scenario.
    #[arg(long, default_value_t = 20)]
    quota_limit: i64,

    /// Items queued for each cell of the claim scenario (at most 108000); a cell that drains
    /// them keeps claiming from the empty queue.
    #[arg(long, default_value_t = 30_000)]
    claim_items: usize,

    /// Batches the coalescing writer of the coalesced cells has in flight at once, each on its
    /// own connection. Default: the library's (two on PostgreSQL and MySQL/MariaDB).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    in_flight: Option<u32>,

    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Also draw throughput and error rate against workers to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,

    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,

    /// Run nothing: read the rows of an earlier `--json` report, print its table, and draw
    /// `--plot` from it.
    #[arg(long, value_name = "JSON", conflicts_with = "json")]
    from_json: Option<PathBuf>,

    /// Print the stats payload the scenarios write (compact JSON) and exit; pgbench scripts
    /// send the same one.
    #[arg(long)]
    print_payload: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the error and its causes on one line, never a backtrace.
            eprintln!("upsert-race: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.print_payload {
        println!("{}", upsert_race::payload::stats_payload(0));
        return Ok(());
    }
    if let Some(path) = &args.from_json {
        let rows = upsert_race::report::read_json(path)?;
        return report(&rows, args);
    }
    let stop = match args.ops {
        Some(0) => bail!("--ops must be positive"),
        Some(n) => Stop::Ops(n),
        None if args.duration > 0.0 && args.duration.is_finite() => {
            Stop::Duration(Duration::from_secs_f64(args.duration))
        }
        None => bail!("--duration must be a positive number of seconds"),
    };
    let mysql = args.backend == "mysql";
    let config = Config {
        admin_url: if mysql {
            args.mysql_url.clone()
        } else {
            args.database_url.clone()
        },
        scenarios: args.scenario.clone(),
        patterns: args
            .patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<_>>()?,
        workers: args.workers.clone(),
        stop,
        rounds: args.rounds,
        params: scenarios::Params {
            keys: args.keys,
            batch: args.batch,
            bulk_keys: args.bulk_keys,
            quota_limit: args.quota_limit,
            claim_items: args.claim_items,
        },
        in_flight: args.in_flight.map(|n| n as usize),
        progress: !args.no_progress,
    };
    let rows = if mysql {
        upsert_race::run::<MysqlConnection>(&config)?
    } else {
        upsert_race::run::<PgConnection>(&config)?
    };
    report(&rows, args)
}

/// Prints the table and writes the JSON and the plot that `args` ask for.
fn report(rows: &[Row], args: &Args) -> Result<()> {
    print!("{}", upsert_race::report::table(rows));
    if let Some(path) = &args.json {
        upsert_race::report::write_json(rows, path)?;
    }
    if let Some(path) = &args.plot {
        upsert_race::report::write_plot(rows, path)
            .with_context(|| format!("plot {}", path.display()))?;
    }
    Ok(())
}
