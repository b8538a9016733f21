//! SQLite under contention (RELIABILITY 26): 16 `wakatime-sync` processes released together on
//! one SQLite file, each with its own large capture (generated here, never committed), all with
//! the binaries' default `--busy-timeout`. Each run holds the file's write lock for as long as it
//! writes its capture, so the last ones wait for all the others: every run exits 0, the file
//! passes `PRAGMA integrity_check`, it holds exactly one row per range and one token row, the
//! rows are exactly the data of the run that committed last, and the token is the newest one
//! offered.
//!
//! The captures are 6 MB by default: big enough that the runs queue for seconds (with the
//! library's 5 s default busy timeout about half of them fail busy), small enough for the test
//! to stay short. `SYNC_CONTENTION_CAPTURE_MB=30` uses captures of the size of the report;
//! `SYNC_CONTENTION_ROUNDS=5` runs more rounds; `SYNC_CONTENTION_BUSY_TIMEOUT_MS` sets the runs'
//! busy timeout through the URL's `busy_timeout` parameter instead (`5000` shows the failures
//! the default prevents).

mod sync_support;

use diesel::sql_types::Text;
use diesel::{Connection, QueryDsl, QueryableByName, RunQueryDsl, SqliteConnection};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use sync_jobs::schema::{wakatime_auth, wakatime_stats};
use sync_jobs::wakatime::WakatimeCapture;
use sync_support::*;
use upsert_kit_support::TestSqlite;

const RUNS: usize = 16;
/// The size of each capture unless `SYNC_CONTENTION_CAPTURE_MB` says otherwise.
const DEFAULT_CAPTURE_MB: usize = 6;
const RANGES: [&str; 5] = [
    "last_7_days",
    "last_30_days",
    "last_6_months",
    "last_year",
    "all_time",
];

fn capture_bytes() -> usize {
    std::env::var("SYNC_CONTENTION_CAPTURE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CAPTURE_MB)
        * 1024
        * 1024
}

/// A valid WakaTime capture of about `bytes`: five ranges, each with a long list of projects,
/// `total_seconds` = `run` so that every run writes different data, and a token that expires
/// `run` seconds after the others' base, so that run 15's is the newest.
fn big_capture(run: usize, bytes: usize) -> String {
    let per_range = bytes / RANGES.len();
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
    let mut out = String::with_capacity(bytes + 4096);
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

/// Runs the 16 jobs together; returns each one's `--json` summary, after checking that every
/// run exited 0 (the failures, if any, are shown whole).
fn round(url: &str, captures: &[PathBuf]) -> Vec<serde_json::Value> {
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
    let failed: Vec<String> = outputs
        .iter()
        .enumerate()
        .filter(|(_, out)| !out.status.success())
        .map(|(i, out)| {
            format!(
                "run {i} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {RUNS} overlapping runs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            assert!(
                out.stderr.is_empty(),
                "run {i} printed on stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            summary(out)
        })
        .collect()
}

/// Checks the file after a round in which every run succeeded: intact, one row per range, all
/// five rows exactly the data of one run (each run writes them in one transaction: the last to
/// commit), and the newest token (run 15's: a token never replaces a newer one). Returns the
/// run whose rows are stored.
fn check_file(url: &str, captures: &[PathBuf]) -> usize {
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
    let stored: Vec<(String, serde_json::Value)> = wakatime_stats::table
        .select((wakatime_stats::stats_type, wakatime_stats::data))
        .order_by(wakatime_stats::stats_type)
        .load(&mut conn)
        .unwrap();
    assert_eq!(stored.len(), RANGES.len(), "one row per range");
    let last = stored[0].1["total_seconds"]
        .as_f64()
        .expect("total_seconds is a number") as usize;
    assert!(last < RUNS, "total_seconds {last} is no run's");
    let text = std::fs::read_to_string(&captures[last]).unwrap();
    let capture = WakatimeCapture::parse("capture", &text).unwrap();
    for (stats_type, data) in &stored {
        let expected = capture
            .stats
            .iter()
            .find(|s| &s.range == stats_type)
            .unwrap_or_else(|| panic!("a row for {stats_type}, which run {last} did not write"));
        // Compared whole, not by a field: every project of every range as run `last` wrote it.
        assert!(
            *data == serde_json::to_value(expected).unwrap(),
            "{stats_type}: the stored data is not exactly run {last}'s"
        );
    }
    let tokens: Vec<(String, chrono::NaiveDateTime)> = wakatime_auth::table
        .select((wakatime_auth::access_token, wakatime_auth::expires_at))
        .load(&mut conn)
        .unwrap();
    let newest = RUNS - 1;
    assert_eq!(
        tokens,
        [(
            format!("contention-access-{newest}"),
            chrono::NaiveDate::from_ymd_opt(2030, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, newest as u32)
                .unwrap()
        )],
        "one token row, the newest offered"
    );
    last
}

/// Each summary as the run's data allows: every row was stored before the round (by run 0's
/// data), so a run updates all five rows, except run 0 when it committed first (its data was
/// stored already: five unchanged); run 15's token is newer than any other and is stored.
fn check_summaries(summaries: &[serde_json::Value]) {
    for (i, s) in summaries.iter().enumerate() {
        let stats = (
            s["stats"]["inserted"].as_u64().unwrap(),
            s["stats"]["updated"].as_u64().unwrap(),
            s["stats"]["unchanged"].as_u64().unwrap(),
        );
        let allowed: &[(u64, u64, u64)] = if i == 0 {
            &[(0, 5, 0), (0, 0, 5)]
        } else {
            &[(0, 5, 0)]
        };
        assert!(allowed.contains(&stats), "run {i}: {s}");
        let auth = s["auth"].as_str().unwrap();
        if i == RUNS - 1 {
            assert_eq!(auth, "updated", "run {i}: {s}");
        } else {
            assert!(auth == "updated" || auth == "unchanged", "run {i}: {s}");
        }
    }
}

fn write_captures(dir: &Path) -> Vec<PathBuf> {
    let bytes = capture_bytes();
    (0..RUNS)
        .map(|i| {
            let p = dir.join(format!("capture-{i}.json"));
            std::fs::write(&p, big_capture(i, bytes)).unwrap();
            p
        })
        .collect()
}

#[test]
fn sixteen_overlapping_runs_with_large_captures_on_one_sqlite_file_all_succeed() {
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
    for n in 1..=rounds {
        // Run 0 writes the rows and an old token first, so that the round's runs update them.
        let first = summary(
            &job("wakatime-sync", &url)
                .arg("--json")
                .arg("--from-file")
                .arg(&captures[0])
                .output()
                .unwrap(),
        );
        assert_eq!(
            first["stats"]["inserted"].as_u64().unwrap()
                + first["stats"]["updated"].as_u64().unwrap()
                + first["stats"]["unchanged"].as_u64().unwrap(),
            5,
            "{first}"
        );
        if n > 1 {
            // Back to run 0's rows; the token stays run 15's (never replaced by an older one).
            assert_eq!(first["auth"], "unchanged", "{first}");
        }
        let summaries = round(&url, &captures);
        check_summaries(&summaries);
        let last = check_file(&url, &captures);
        eprintln!(
            "round {n}: {RUNS} of {RUNS} runs succeeded ({} MB captures); run {last} committed last",
            capture_bytes() / (1024 * 1024)
        );
    }
}

#[test]
fn a_run_that_gives_up_on_the_write_lock_says_how_long_it_waited() {
    use diesel::connection::SimpleConnection;
    let lite = TestSqlite::migrated(sync_jobs::db::SQLITE_MIGRATIONS);
    // Another connection holds the write lock for the whole run.
    let mut holder = SqliteConnection::establish(lite.url()).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let out = job("wakatime-sync", lite.url())
        .arg("--busy-timeout")
        .arg("1")
        .arg("--from-file")
        .arg(example("wakatime.json"))
        .output()
        .unwrap();
    holder.batch_execute("ROLLBACK").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "wakatime-sync: error: {}: gave up after waiting 1 s (--busy-timeout 1) for the \
             write lock: database busy: another connection held the SQLite write lock past the \
             busy timeout; nothing was applied, so retrying can succeed: database is locked\n",
            lite.url()
        )
    );
    assert!(rows_per_type(lite.url(), "wakatime_stats").is_empty());
    // With the lock free, the same run succeeds.
    let done = summary(
        &job("wakatime-sync", lite.url())
            .arg("--json")
            .arg("--busy-timeout")
            .arg("1")
            .arg("--from-file")
            .arg(example("wakatime.json"))
            .output()
            .unwrap(),
    );
    assert_eq!(done["stats"]["inserted"], 5, "{done}");
    // The option is bounded: an hour at most.
    let out = job("wakatime-sync", lite.url())
        .arg("--busy-timeout")
        .arg("3601")
        .arg("--from-file")
        .arg(example("wakatime.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--busy-timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
        let busy = format!(
            "{url}: gave up after waiting 0 ms (the URL's busy_timeout=0) for the write lock: \
             database busy: "
        );
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
