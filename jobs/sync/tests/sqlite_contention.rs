//! SQLite under contention (RELIABILITY 26): 16 `wakatime-sync` processes released together on
//! one SQLite file, each with its own 30 MB capture (generated here, never committed). Every
//! run succeeds, or fails only with the retryable busy error naming the database, having
//! written nothing; the file passes `PRAGMA integrity_check`, and it holds exactly one row per
//! range and one token row, written by a run that succeeded.
//!
//! One round by default; `SYNC_CONTENTION_ROUNDS=5` runs more and prints the counts of each;
//! `SYNC_CONTENTION_BUSY_TIMEOUT_MS` sets the runs' busy timeout (the database URL's
//! `busy_timeout` parameter; default 5 s).

mod sync_support;

use diesel::sql_types::{Double, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use sync_support::*;
use upsert_kit_support::TestSqlite;

const RUNS: usize = 16;
/// The size of each capture.
const CAPTURE_BYTES: usize = 30 * 1024 * 1024;
const RANGES: [&str; 5] = [
    "last_7_days",
    "last_30_days",
    "last_6_months",
    "last_year",
    "all_time",
];

/// A valid WakaTime capture of about [`CAPTURE_BYTES`]: five ranges, each with a long list of
/// projects, and `total_seconds` = `run` so that every run writes different data.
fn big_capture(run: usize) -> String {
    let per_range = CAPTURE_BYTES / RANGES.len();
    let mut projects = String::with_capacity(per_range + 1024);
    projects.push('[');
    let mut i = 0usize;
    while projects.len() < per_range {
        if i > 0 {
            projects.push(',');
        }
        write!(
            projects,
            r#"{{"name":"project-{i:08}-of-a-large-capture","total_seconds":{}.5,"percent":0.001}}"#,
            i % 10_000
        )
        .unwrap();
        i += 1;
    }
    projects.push(']');
    let mut out = String::with_capacity(CAPTURE_BYTES + 4096);
    write!(
        out,
        r#"{{"token":{{"access_token":"contention-access-{run}","refresh_token":"contention-refresh-{run}","uid":"u1","expires_at":"2030-01-01T00:00:{:02}Z"}},"stats":{{"#,
        run % 60
    )
    .unwrap();
    for (n, range) in RANGES.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write!(
            out,
            r#""{range}":{{"data":{{"range":"{range}","total_seconds":{run},"languages":[{{"name":"Rust","total_seconds":{run}}}],"projects":{projects}}}}}"#
        )
        .unwrap();
    }
    out.push_str("}}");
    out
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    integrity_check: String,
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    stats_type: String,
    #[diesel(sql_type = Double)]
    total: f64,
}

/// What one round saw: runs that succeeded (their run numbers) and runs that failed busy.
struct Round {
    succeeded: Vec<usize>,
    busy: usize,
}

fn round(url: &str, captures: &[PathBuf]) -> Round {
    let url_owned = url.to_owned();
    let paths: Vec<PathBuf> = captures.to_vec();
    let outputs = upsert_kit_support::race(RUNS, move |i| {
        job_std("wakatime-sync", &url_owned)
            .arg("--json")
            .arg("--from-file")
            .arg(&paths[i])
            .output()
            .unwrap()
    });
    let mut succeeded = Vec::new();
    let mut busy = 0;
    for (i, out) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            succeeded.push(i);
            continue;
        }
        // The only failure allowed: the busy database, named, retryable, nothing written.
        let line = stderr
            .lines()
            .find(|l| l.starts_with("wakatime-sync: error: "))
            .unwrap_or_else(|| panic!("run {i} failed without an error line: {stderr}"));
        assert!(
            line.contains(&format!(
                "{}: database busy: ",
                upsert_kit::db::redact_url(url)
            )) && line.contains("nothing was applied, so retrying can succeed"),
            "run {i} failed otherwise than busy: {line}"
        );
        busy += 1;
    }
    Round { succeeded, busy }
}

fn check_file(url: &str, round: &Round) {
    let mut conn = SqliteConnection::establish(&upsert_kit::db::sqlite_path(url)).unwrap();
    let check: Vec<Check> = diesel::sql_query("PRAGMA integrity_check")
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        check
            .iter()
            .map(|c| c.integrity_check.as_str())
            .collect::<Vec<_>>(),
        ["ok"]
    );
    let stored: Vec<Stored> = diesel::sql_query(
        "SELECT stats_type, CAST(json_extract(data, '$.total_seconds') AS REAL) AS total \
         FROM wakatime_stats ORDER BY stats_type",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(stored.len(), RANGES.len(), "one row per range");
    // Each run writes all five rows in one transaction: the five rows are one run's, and a
    // run that succeeded (a busy run wrote nothing).
    let total = stored[0].total;
    assert!(
        stored.iter().all(|s| s.total == total),
        "rows of different runs: {:?}",
        stored
            .iter()
            .map(|s| (&s.stats_type, s.total))
            .collect::<Vec<_>>()
    );
    if !round.succeeded.is_empty() {
        assert!(
            round.succeeded.contains(&(total as usize)),
            "the stored rows are run {total}'s, which did not succeed ({:?})",
            round.succeeded
        );
    }
    #[derive(QueryableByName)]
    struct Tokens {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let tokens: Tokens = diesel::sql_query("SELECT COUNT(*) AS n FROM wakatime_auth")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(tokens.n, 1, "one token row");
}

fn write_captures(dir: &Path) -> Vec<PathBuf> {
    (0..RUNS)
        .map(|i| {
            let p = dir.join(format!("capture-{i}.json"));
            std::fs::write(&p, big_capture(i)).unwrap();
            p
        })
        .collect()
}

#[test]
fn sixteen_runs_with_30_mb_captures_on_one_sqlite_file_succeed_or_fail_busy_and_retryable() {
    let rounds: usize = std::env::var("SYNC_CONTENTION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let captures = write_captures(dir.path());
    let lite = TestSqlite::migrated(sync_jobs::db::SQLITE_MIGRATIONS);
    let url = match std::env::var("SYNC_CONTENTION_BUSY_TIMEOUT_MS") {
        Ok(ms) => format!("{}?busy_timeout={ms}", lite.url()),
        Err(_) => lite.url().to_owned(),
    };
    // A first run writes the rows, so that every round's runs update them.
    summary(
        &job("wakatime-sync", &url)
            .arg("--json")
            .arg("--from-file")
            .arg(&captures[0])
            .output()
            .unwrap(),
    );
    let mut totals = (0, 0);
    for n in 1..=rounds {
        let r = round(&url, &captures);
        check_file(&url, &r);
        eprintln!(
            "round {n}: {} of {RUNS} runs succeeded, {} failed busy (retryable)",
            r.succeeded.len(),
            r.busy
        );
        totals.0 += r.succeeded.len();
        totals.1 += r.busy;
    }
    eprintln!(
        "{rounds} round(s) of {RUNS} runs: {} succeeded, {} failed busy (retryable)",
        totals.0, totals.1
    );
}

#[test]
fn a_run_with_nothing_to_migrate_opens_the_file_without_its_write_lock() {
    use diesel::connection::SimpleConnection;
    let migrated = TestSqlite::migrated(sync_jobs::db::SQLITE_MIGRATIONS);
    let fresh = TestSqlite::new();
    for (lite, opens) in [(&migrated, true), (&fresh, false)] {
        // Another connection holds the write lock for the whole run; the run does not wait.
        let mut holder = SqliteConnection::establish(lite.url()).unwrap();
        holder.batch_execute("BEGIN IMMEDIATE").unwrap();
        let url = format!("{}?busy_timeout=0", lite.url());
        let out = job("wakatime-sync", &url)
            .arg("--from-file")
            .arg(example("wakatime.json"))
            .output()
            .unwrap();
        holder.batch_execute("ROLLBACK").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let busy = format!("{url}: database busy: ");
        if opens {
            // Opened with a read; only the run's write transaction met the lock.
            assert!(
                stderr.starts_with(&format!("wakatime-sync: error: {busy}")),
                "{stderr}"
            );
        } else {
            // A fresh file must be migrated, under the write lock.
            assert!(
                stderr.starts_with(&format!(
                    "wakatime-sync: error: opening the database: {busy}"
                )),
                "{stderr}"
            );
        }
        assert!(
            stderr.contains("nothing was applied, so retrying can succeed"),
            "{stderr}"
        );
    }
    assert!(rows_per_type(migrated.url(), "wakatime_stats").is_empty());
}
