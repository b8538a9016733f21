//! What the two sync binaries share: logging, the database argument, output and exit codes.

use std::process::ExitCode;
use sync_jobs::SyncSummary;
use upsert_kit::db::{redact_url, BackendKind};

/// The options both sync jobs take.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Database: postgres://… for PostgreSQL, otherwise an SQLite file path (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sync.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Read a capture of the token and stats responses instead of calling the API ("-": stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<String>,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Logs to stderr at the level `RUST_LOG` sets (default: warnings and errors only). The HTTP
/// client's own logs are capped at `debug`: at `trace` it dumps raw bodies, and token
/// responses carry secrets.
pub fn init_tracing() {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let no_raw_bodies = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("ureq", LevelFilter::DEBUG)
        .with_target("ureq_proto", LevelFilter::DEBUG);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(no_raw_bodies.and(env));
    tracing_subscriber::registry().with(layer).init();
}

/// Parses the command line. `--help` and `--version` print and exit 0; a usage error (an
/// unknown option, an unknown stats range, …) prints one line `<job>: error: …` and exits 2.
pub fn parse_args<T: clap::Parser>(job: &str) -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{job}: error: {first} (see --help)");
            std::process::exit(2)
        }
    }
}

/// Reads an environment variable, treating an empty value as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Prints the summary (`--json`: one JSON object; otherwise a short human summary) and
/// returns success.
pub fn report_success(
    job: &str,
    database_url: &str,
    source: &str,
    json: bool,
    summary: &SyncSummary,
) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string(summary).expect("a summary serialises to JSON")
        );
    } else {
        let backend = match BackendKind::of(database_url) {
            BackendKind::Postgres => "PostgreSQL",
            BackendKind::Sqlite => "SQLite",
        };
        println!(
            "{job}: synced {source} into {} ({backend})",
            redact_url(database_url)
        );
        println!("{summary}");
    }
    ExitCode::SUCCESS
}

/// Prints one line `<job>: error: <cause>: <cause>…` on stderr and returns failure.
pub fn report_error(job: &str, error: &anyhow::Error) -> ExitCode {
    let line = format!("{error:#}").replace(['\n', '\r'], " ");
    eprintln!("{job}: error: {line}");
    ExitCode::FAILURE
}
