//! `backfill-scheduler`: one run of the backfill scheduler. It applies the crate's migration,
//! schedules the months of `--from`…`--to` (if given), then runs a command for each due month
//! (`backfill_scheduler::backfill`) until none is due, and prints what the run did and the
//! queue's state at its end (`upsert_kit::claim::Queue::state`).
//!
//! Any number of these may run at once, on one host or many: each due month goes to exactly
//! one of them.

use anyhow::Context;
use backfill_scheduler::{
    backfill, run_migrations, schedule_months, BackfillMonth, BackfillReport,
};
use std::ffi::OsString;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;
use upsert_kit::claim::{Queue, QueueState};

/// Run the backfill scheduler: run COMMAND once for each due month of `backfill_log`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "backfill-scheduler",
    version,
    after_help = "COMMAND runs with BACKFILL_YEAR and BACKFILL_MONTH (1-12) in its environment; \
its standard output goes to this program's standard error. Exit status 0 marks the month done; \
any other records a failed attempt (retried after a backoff, parked after --max-attempts).\n\
The run's report and the queue's state are printed on standard output at the end.\n\
Example: backfill-scheduler --from 2024-01 --to 2026-10 -- ./recompute.sh"
)]
struct Args {
    /// The PostgreSQL database (postgres://…).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// First month to schedule (YYYY-MM); months already scheduled keep their state.
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_month, requires = "to")]
    from: Option<(i32, u32)>,

    /// Last month to schedule (YYYY-MM, inclusive).
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_month, requires = "from")]
    to: Option<(i32, u32)>,

    /// This scheduler's name in the holder column (unique among live schedulers).
    #[arg(long, default_value_t = format!("backfill-scheduler-{}", std::process::id()))]
    holder: String,

    /// How long a month is held before other schedulers may take it back, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease: u64,

    /// Attempts per month before a failure parks it.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..))]
    max_attempts: i32,

    /// The command to run for each month, and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// `YYYY-MM` as `(year, month)`; the range of each is checked by `schedule_months`.
fn parse_month(text: &str) -> Result<(i32, u32), String> {
    let parsed = text
        .split_once('-')
        .and_then(|(y, m)| Some((y.parse().ok()?, m.parse().ok()?)));
    parsed.ok_or_else(|| "expected a month as YYYY-MM, e.g. 2026-01".to_owned())
}

/// Runs `command` for one month; `Err` says how it failed (never its output).
fn run_month(command: &[OsString], year: i32, month: u32) -> Result<(), String> {
    let (program, args) = command.split_first().expect("clap requires a command");
    let status = Command::new(program)
        .args(args)
        .env("BACKFILL_YEAR", year.to_string())
        .env("BACKFILL_MONTH", month.to_string())
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", program.to_string_lossy()))
    }
}

fn run(args: &Args) -> anyhow::Result<(BackfillReport, QueueState)> {
    let mut conn =
        upsert_kit::db::connect_pg(&args.database_url).context("connecting to the database")?;
    run_migrations(&mut conn).context("applying the backfill_log migration")?;
    if let (Some(from), Some(to)) = (args.from, args.to) {
        schedule_months(&mut conn, from, to).context("scheduling the months")?;
    }
    let queue = Queue::<BackfillMonth>::new(args.holder.as_str())?
        .lease(Duration::from_secs(args.lease))
        .max_attempts(args.max_attempts);
    let report = backfill(&mut conn, &queue, |year, month| {
        run_month(&args.command, year, month)
    })?;
    let state = queue
        .state(&mut conn)
        .context("reading the queue's state")?;
    Ok((report, state))
}

/// The report's line and the queue state's line.
fn summary(report: &BackfillReport, state: &QueueState) -> String {
    let oldest = match state.oldest_ready_age {
        Some(age) => format!("{}s", age.as_secs()),
        None => "none".to_owned(),
    };
    format!(
        "run: {} done, {} to retry, {} parked, {} lost; expired leases reaped: {} requeued, {} parked\n\
         queue: {} ready, {} waiting, {} leased, {} expired, {} parked; oldest ready: {oldest}",
        report.done,
        report.retried,
        report.parked,
        report.lost,
        report.reaped.requeued,
        report.reaped.parked,
        state.ready,
        state.waiting,
        state.leased,
        state.expired,
        state.parked,
    )
}

/// `text` without the password of any URL among the command line's words (a URL given to
/// the wrong option, or as a stray argument, is echoed by a usage error).
fn scrub_passwords(text: &str, words: &[String]) -> String {
    let mut text = text.to_owned();
    for word in words {
        let value = word.split_once('=').map_or(word.as_str(), |(_, v)| v);
        for candidate in [word.as_str(), value] {
            if let Some(password) = upsert_kit::db::url_password(candidate) {
                text = upsert_kit::db::scrub_secret(&text, &password);
            }
        }
    }
    text
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = match <Args as clap::Parser>::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprint!("{}", scrub_passwords(&e.render().to_string(), &words));
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok((report, state)) => {
            println!("{}", summary(&report, &state));
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The library's errors never hold the URL's password; scrub it all the same.
            let mut line = scrub_passwords(&format!("{e:#}"), &words);
            if let Some(password) = upsert_kit::db::url_password(&args.database_url) {
                line = upsert_kit::db::scrub_secret(&line, &password);
            }
            eprintln!(
                "backfill-scheduler: error: {}",
                line.replace(['\n', '\r', '\t'], " ")
            );
            ExitCode::FAILURE
        }
    }
}
