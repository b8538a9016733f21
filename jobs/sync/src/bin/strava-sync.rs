//! `strava-sync`: one cron run that upserts a Strava athlete's totals (`ytd`, `all_time`,
//! `recent`) and OAuth token. See `sync_jobs::strava`.

mod common;

use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;
use sync_jobs::strava::{self, StravaApi, StravaCapture, StravaSource};
use sync_jobs::{read_capture, HttpClient, Secret, SyncDatabase, SyncSummary};

/// Sync a Strava athlete's totals (ytd, all_time, recent) and OAuth token into the database.
#[derive(Debug, clap::Parser)]
#[command(
    name = "strava-sync",
    version,
    after_help = "Secrets come from the environment only: STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET \
(for token refreshes), STRAVA_REFRESH_TOKEN (to start when no token is stored yet).\n\
Logging: RUST_LOG=info (default: warn); --log-format json for log collectors."
)]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,

    /// The account whose token row is used.
    #[arg(long, env = "STRAVA_ACCOUNT", default_value_t = 1)]
    account: i64,

    /// The Strava athlete id, when no stored token names it yet.
    #[arg(long, env = "STRAVA_ATHLETE_ID")]
    athlete_id: Option<i64>,

    /// The API's base URL.
    #[arg(long, env = "STRAVA_API_BASE", default_value = strava::DEFAULT_API_BASE)]
    api_base: String,

    /// Refresh the token when it expires within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = strava::DEFAULT_REFRESH_MARGIN.as_secs())]
    refresh_margin: u64,

    /// Give up on an HTTP request after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
}

fn run(args: &Args) -> anyhow::Result<(String, SyncSummary)> {
    // Read and validate the input before touching the database: bad input writes nothing.
    let (source, source_name) = match &args.common.from_file {
        Some(path) => {
            let (text, name) = read_capture(path)?;
            let capture = StravaCapture::parse(&name, &text)?;
            (StravaSource::Capture(Box::new(capture)), name)
        }
        None => (
            StravaSource::Online(StravaApi {
                api_base: args.api_base.clone(),
                client_id: common::env("STRAVA_CLIENT_ID").unwrap_or_default(),
                client_secret: Secret::new(common::env("STRAVA_CLIENT_SECRET").unwrap_or_default()),
                bootstrap_refresh_token: common::env("STRAVA_REFRESH_TOKEN").map(Secret::new),
                athlete_id: args.athlete_id,
                refresh_margin: Duration::from_secs(args.refresh_margin),
                http: HttpClient::new(Duration::from_secs(args.timeout)),
            }),
            args.api_base.clone(),
        ),
    };
    let url = &args.common.database_url;
    let (waited, open_url) = args.common.busy_timeout();
    let mut db = SyncDatabase::open(&open_url)
        .map_err(|e| common::name_busy_database(e, url, &waited))
        .context("opening the database")?;
    let summary = strava::sync(&mut db, args.account, &source)
        .map_err(|e| common::name_busy_database(e, url, &waited))?;
    Ok((source_name, summary))
}

fn main() -> ExitCode {
    common::protect(
        "strava-sync",
        &["STRAVA_CLIENT_SECRET", "STRAVA_REFRESH_TOKEN"],
    );
    let args: Args = common::parse_args("strava-sync");
    sync_jobs::secrets::register_url(&args.common.database_url);
    common::init_tracing(args.common.log_format);
    let span = common::run_span(
        "strava-sync",
        args.account,
        &args.common.database_url,
        args.common.from_file.is_some(),
    );
    let outcome = span.in_scope(|| run(&args));
    match outcome {
        Ok((source, summary)) => common::report_success(
            "strava-sync",
            &args.common.database_url,
            &source,
            args.common.json,
            &summary,
        ),
        Err(e) => common::report_error("strava-sync", &e),
    }
}
