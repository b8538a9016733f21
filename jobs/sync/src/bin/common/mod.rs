//! What the two sync binaries share: logging, the database argument, output and exit codes.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use sync_jobs::run::BusyTimeout;
use sync_jobs::{secrets, SyncSummary};
use upsert_kit::db::{redact_url, BackendKind};

/// What a usage error shows instead of an argument's value.
const VALUE_NOT_SHOWN: &str = "<value not shown>";

/// Registers every secret the process may hold before anything can print: the environment's
/// secrets `env_secrets` (by variable name), the password of `DATABASE_URL` and of any URL on
/// the command line; and makes a panic print one scrubbed line (`<job>: error: internal
/// error: …`) instead of the default message.
pub fn protect(job: &'static str, env_secrets: &[&str]) {
    for name in env_secrets {
        if let Ok(value) = std::env::var(name) {
            secrets::register(&value);
        }
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        secrets::register_url(&url);
    }
    for arg in std::env::args_os().skip(1) {
        secrets::register_url(&arg.to_string_lossy());
    }
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        let line = secrets::scrub(&format!("{payload}{at}")).replace(['\n', '\r'], " ");
        error_line(job, &format!("internal error: {line}"));
    }));
}

/// Whether a command-line word is an option name (`-v`, `--api-base`), which a usage error
/// may show; anything else may be a value, and a value may hold a credential.
fn is_option_name(word: &str) -> bool {
    let name = word
        .strip_prefix("--")
        .or_else(|| word.strip_prefix('-'))
        .unwrap_or("");
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A usage error's line with every argument value of the command line replaced by
/// [`VALUE_NOT_SHOWN`]: a URL given to the wrong option, a token pasted as a stray argument
/// or a mistyped range all look alike to the parser, so none is echoed. Option names are kept.
fn without_values(line: &str, args: &[String]) -> String {
    let mut values: Vec<String> = Vec::new();
    for arg in args {
        let value = match arg.split_once('=') {
            Some((name, value)) if is_option_name(name) => value,
            _ if is_option_name(arg) => continue,
            _ => arg.as_str(),
        };
        values.push(value.to_owned());
        values.extend(value.split(',').map(str::to_owned));
    }
    values.retain(|v| !v.is_empty());
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    let mut out = line.to_owned();
    for v in &values {
        out = out.replace(&format!("'{v}'"), &format!("'{VALUE_NOT_SHOWN}'"));
        out = out.replace(&format!("\"{v}\""), &format!("\"{VALUE_NOT_SHOWN}\""));
    }
    secrets::scrub(&out)
}

/// How log lines are written ([`CommonArgs::log_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (the event's, with
    /// `message`), `span` (the innermost span's name and fields) and `spans` (every span
    /// from the root).
    Json,
}

/// The options both sync jobs take.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Database: an SQLite file path (created if missing); postgres://… (PostgreSQL) or
    /// mysql://… (MySQL, MariaDB) in a build with the feature postgres or mysql.
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

    /// Log lines on stderr: text (for people) or json (one JSON object per line, with the
    /// spans' fields, for log collectors). Either way every line is scrubbed of secrets.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// SQLite: wait up to this many seconds for another run's write lock before giving up
    /// (0 to 3600; the URL's own busy_timeout parameter, in milliseconds, wins).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = sync_jobs::run::DEFAULT_BUSY_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(0..=sync_jobs::run::MAX_BUSY_TIMEOUT.as_secs())
    )]
    pub busy_timeout: u64,
}

impl CommonArgs {
    /// How long the run waits for an SQLite file's write lock, and the URL to open with it.
    pub fn busy_timeout(&self) -> (BusyTimeout, String) {
        let wait = BusyTimeout::of(&self.database_url, Duration::from_secs(self.busy_timeout));
        let url = wait.url_for(&self.database_url);
        (wait, url)
    }
}

/// Stderr for log lines, each one passed through [`secrets::scrub`] (the formatter writes one
/// event in one call).
struct ScrubbingStderr;

impl std::io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = secrets::scrub(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Stderr for JSON log lines: each line goes through [`secrets::scrub_json_line`], which
/// scrubs every string of the object decoded (so a value gets the same scrubbing as in a text
/// line) and writes it back as one line of valid JSON.
struct ScrubbingJsonStderr;

impl std::io::Write for ScrubbingJsonStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut out = String::with_capacity(buf.len());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&secrets::scrub_json_line(line));
            out.push('\n');
        }
        std::io::stderr().write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether stderr carries JSON lines (`--log-format json`): the error line and a panic's line
/// are then JSON objects too, so that a log collector reads every line the run writes after
/// its arguments were parsed.
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Writes `<job>: error: <text>` on stderr: as that line, or with `--log-format json` as one
/// JSON object (`timestamp`, `level` `ERROR`, `target` the job, `fields.message` the line).
/// `text` must be scrubbed already.
fn error_line(job: &str, text: &str) {
    let line = format!("{job}: error: {text}");
    let line = if JSON_LINES.load(Ordering::Relaxed) {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "target": job,
            "fields": { "message": line },
        })
        .to_string()
    } else {
        line
    };
    // Writing may fail (stderr closed): there is nobody left to tell then.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// Logs to stderr at the level `RUST_LOG` sets (default: warnings and errors only), as text or
/// as one JSON object per line (`format`), every line scrubbed of the process's secrets
/// ([`secrets::scrub`]). The HTTP client's own logs are capped at `debug`: at `trace` it dumps
/// raw bodies, and token responses carry secrets.
pub fn init_tracing(format: LogFormat) {
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
    let filter = no_raw_bodies.and(env);
    JSON_LINES.store(format == LogFormat::Json, Ordering::Relaxed);
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(|| ScrubbingStderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(|| ScrubbingJsonStderr)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

/// The span of one run, at `info`: the job's name, the account, the database's backend and
/// whether the data comes from a capture file or the API; never a URL, a path or a secret.
/// Every log line of the run carries these fields (in JSON, under `span` and `spans`).
pub fn run_span(
    job: &'static str,
    account: i64,
    database_url: &str,
    offline: bool,
) -> tracing::Span {
    let backend = match BackendKind::of(database_url) {
        BackendKind::Postgres => "postgresql",
        BackendKind::Sqlite => "sqlite",
        BackendKind::Mysql => "mysql",
    };
    tracing::info_span!(
        "sync",
        job,
        account,
        backend,
        source = if offline { "file" } else { "api" }
    )
}

/// Parses the command line. `--help` and `--version` print and exit 0; a usage error (an
/// unknown option, an unknown stats range, …) prints one line `<job>: error: …` and exits 2.
/// The line names the option but never shows an argument's value (see [`without_values`]).
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
            // The values an option accepts are the program's own words: shown.
            let accepted = rendered
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("[possible values: ") && l.ends_with(']'))
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            eprintln!(
                "{job}: error: {}{accepted} (see --help)",
                without_values(first, &args)
            );
            std::process::exit(2)
        }
    }
}

/// `error`, naming the database (its URL redacted) and how long the run waited when it was
/// busy: the line then says which file to look at, that the run gave up after `waited`, and
/// that it can be retried.
pub fn name_busy_database(
    error: sync_jobs::JobError,
    database_url: &str,
    waited: &BusyTimeout,
) -> anyhow::Error {
    if error.is_busy() {
        anyhow::Error::new(error).context(format!(
            "{}: gave up after waiting {waited} for the write lock",
            redact_url(database_url)
        ))
    } else {
        error.into()
    }
}

/// Reads an environment variable, treating an empty value as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Prints the summary (`--json`: one JSON object; otherwise a short human summary) and
/// returns success. `source` and the database are shown with their credentials redacted.
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
            BackendKind::Mysql => "MySQL/MariaDB",
        };
        println!(
            "{job}: synced {} into {} ({backend})",
            secrets::scrub(&redact_url(source)),
            redact_url(database_url)
        );
        println!("{summary}");
    }
    ExitCode::SUCCESS
}

/// Prints one line `<job>: error: <cause>: <cause>…` on stderr (with `--log-format json`, as
/// a JSON object), scrubbed of the process's secrets, and returns failure.
pub fn report_error(job: &str, error: &anyhow::Error) -> ExitCode {
    let line = secrets::scrub(&format!("{error:#}")).replace(['\n', '\r'], " ");
    error_line(job, &line);
    ExitCode::FAILURE
}
