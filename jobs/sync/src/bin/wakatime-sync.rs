//! `wakatime-sync`: one cron run that upserts the current WakaTime user's stats (one row per
//! range) and OAuth token. See `sync_jobs::wakatime`.

mod common;

use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;
use sync_jobs::wakatime::{self, StatsRange, WakatimeApi, WakatimeCapture, WakatimeSource};
use sync_jobs::{read_capture, HttpClient, Secret, SyncDatabase, SyncSummary};

/// Sync the current WakaTime user's stats (one row per range) and OAuth token into the database.
#[derive(Debug, clap::Parser)]
#[command(
    name = "wakatime-sync",
    version,
    after_help = "Secrets come from the environment only: WAKATIME_CLIENT_ID and \
WAKATIME_CLIENT_SECRET (for token refreshes; WAKATIME_REDIRECT_URI if your app needs it), \
WAKATIME_REFRESH_TOKEN (to start when no token is stored yet).\n\
Logging: RUST_LOG=info (default: warn); --log-format json for log collectors."
)]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,

    /// The account whose token row is used.
    #[arg(long, env = "WAKATIME_ACCOUNT", default_value_t = 1)]
    account: i64,

    /// The stats ranges to fetch online (comma-separated): last_7_days, last_30_days,
    /// last_6_months, last_year, all_time.
    #[arg(
        long,
        env = "WAKATIME_RANGES",
        value_delimiter = ',',
        default_value = "last_7_days,last_30_days,last_6_months,last_year,all_time"
    )]
    range: Vec<StatsRange>,

    /// The API's base URL.
    #[arg(long, env = "WAKATIME_API_BASE", default_value = wakatime::DEFAULT_API_BASE)]
    api_base: String,

    /// The OAuth server's base URL (the token endpoint is <BASE>/oauth/token).
    #[arg(long, env = "WAKATIME_OAUTH_BASE", default_value = wakatime::DEFAULT_OAUTH_BASE)]
    oauth_base: String,

    /// Refresh the token when it expires within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = wakatime::DEFAULT_REFRESH_MARGIN.as_secs())]
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
            let capture = WakatimeCapture::parse(&name, &text)?;
            (WakatimeSource::Capture(capture), name)
        }
        None => (
            WakatimeSource::Online(WakatimeApi {
                api_base: args.api_base.clone(),
                oauth_base: args.oauth_base.clone(),
                client_id: common::env("WAKATIME_CLIENT_ID").unwrap_or_default(),
                client_secret: Secret::new(
                    common::env("WAKATIME_CLIENT_SECRET").unwrap_or_default(),
                ),
                redirect_uri: common::env("WAKATIME_REDIRECT_URI"),
                bootstrap_refresh_token: common::env("WAKATIME_REFRESH_TOKEN").map(Secret::new),
                ranges: args.range.clone(),
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
    let summary = wakatime::sync(&mut db, args.account, &source)
        .map_err(|e| common::name_busy_database(e, url, &waited))?;
    Ok((source_name, summary))
}

fn main() -> ExitCode {
    common::protect(
        "wakatime-sync",
        &["WAKATIME_CLIENT_SECRET", "WAKATIME_REFRESH_TOKEN"],
    );
    let args: Args = common::parse_args("wakatime-sync");
    sync_jobs::secrets::register_url(&args.common.database_url);
    common::init_tracing(args.common.log_format);
    let span = common::run_span(
        "wakatime-sync",
        args.account,
        &args.common.database_url,
        args.common.from_file.is_some(),
    );
    let outcome = span.in_scope(|| run(&args));
    match outcome {
        Ok((source, summary)) => common::report_success(
            "wakatime-sync",
            &args.common.database_url,
            &source,
            args.common.json,
            &summary,
        ),
        Err(e) => common::report_error("wakatime-sync", &e),
    }
}
