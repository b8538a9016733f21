//! `--log-format json` of the real `strava-sync` and `wakatime-sync` binaries: every line they
//! write on stderr is one JSON object with the event's fields and the run's span, on SQLite,
//! PostgreSQL and MySQL/MariaDB; the text format stays the default; a bad value is a usage
//! error. (That no secret reaches a JSON line is tested with the other secrets, in
//! `sync_secrets.rs`.)

mod sync_support;

use serde_json::Value;
use std::collections::BTreeSet;
use sync_support::*;
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

const BINS: [&str; 2] = ["strava-sync", "wakatime-sync"];

fn capture(bin: &str) -> std::path::PathBuf {
    example(if bin == "strava-sync" {
        "strava.json"
    } else {
        "wakatime.json"
    })
}

/// Every line of `stderr` as a JSON object, each checked to have the fields every event has:
/// `timestamp` (RFC 3339), `level`, `target` and `fields.message`.
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(stderr.to_vec()).expect("stderr is UTF-8");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nstderr:\n{text}"));
            assert!(v.is_object(), "{line}");
            let timestamp = v["timestamp"].as_str().unwrap_or_else(|| panic!("{line}"));
            chrono::DateTime::parse_from_rfc3339(timestamp)
                .unwrap_or_else(|e| panic!("timestamp {timestamp:?}: {e}"));
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap()),
                "{line}"
            );
            assert!(v["target"].is_string(), "{line}");
            assert!(v["fields"]["message"].is_string(), "{line}");
            v
        })
        .collect()
}

/// One offline run of each binary at `RUST_LOG=trace` with `--log-format json` on `url`:
/// every line is JSON and carries the run's span (`sync`: job, account, backend, source); the
/// steps' events have their fields; stdout is the summary as without the option.
fn every_line_is_json_with_the_runs_span(url: &str, backend: &str) {
    for bin in BINS {
        let out = job(bin, url)
            .env("RUST_LOG", "trace")
            .args(["--log-format", "json", "--json", "--account", "7"])
            .arg("--from-file")
            .arg(capture(bin))
            .output()
            .unwrap();
        let summary = summary(&out);
        let (inserted, updated, unchanged, _) = counts(&summary);
        assert_eq!(
            (updated, unchanged),
            (0, 0),
            "{bin} on {backend}: a first run"
        );
        let lines = json_lines(&out.stderr);
        assert!(
            !lines.is_empty(),
            "{bin} on {backend}: no log line at trace"
        );
        let expected_span = serde_json::json!({
            "name": "sync",
            "job": bin,
            "account": 7,
            "backend": backend,
            "source": "file",
        });
        for line in &lines {
            // The run's span is the outermost; the library's spans of its calls (an
            // `exclusive_transaction`, say) nest inside it, with their own fields.
            let spans = line["spans"].as_array().unwrap();
            assert_eq!(spans[0], expected_span, "{bin} on {backend}: {line}");
            assert_eq!(&line["span"], spans.last().unwrap(), "{line}");
            for inner in &spans[1..] {
                assert_eq!(inner["db.system.name"], backend_system(backend), "{line}");
            }
        }
        let messages = |message: &str| -> Vec<&Value> {
            lines
                .iter()
                .filter(|l| l["fields"]["message"] == message)
                .collect()
        };
        let opened = messages("database open, migrations applied");
        assert_eq!(opened.len(), 1, "{bin} on {backend}");
        // The first binary migrates the database; the second finds nothing left to apply.
        assert!(opened[0]["fields"]["applied"].is_u64(), "{}", opened[0]);
        assert_eq!(opened[0]["level"], "INFO");
        let rows = messages("stats row");
        assert_eq!(rows.len() as u64, inserted, "{bin} on {backend}");
        let types: BTreeSet<&str> = rows
            .iter()
            .map(|r| {
                assert_eq!(r["fields"]["outcome"], "inserted", "{r}");
                r["fields"]["stats_type"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            types.len() as u64,
            inserted,
            "{bin}: one line per stats row"
        );
        if bin == "strava-sync" {
            assert_eq!(types, BTreeSet::from(["all_time", "recent", "ytd"]));
        }
    }
}

#[test]
fn json_log_lines_carry_their_fields_and_the_runs_span_on_sqlite() {
    let db = TestSqlite::new();
    every_line_is_json_with_the_runs_span(db.url(), "sqlite");
}

#[test]
fn json_log_lines_carry_their_fields_and_the_runs_span_on_postgresql() {
    let db = TestDb::new();
    every_line_is_json_with_the_runs_span(db.url(), "postgresql");
}

#[test]
fn json_log_lines_carry_their_fields_and_the_runs_span_on_mysql() {
    let db = TestMysql::new();
    every_line_is_json_with_the_runs_span(db.url(), "mysql");
}

#[test]
fn text_stays_the_default_log_format_with_the_runs_span_in_each_line() {
    let db = TestSqlite::new();
    for bin in BINS {
        for format in [None, Some("text")] {
            let mut cmd = job(bin, db.url());
            cmd.env("RUST_LOG", "info")
                .arg("--from-file")
                .arg(capture(bin));
            if let Some(format) = format {
                cmd.args(["--log-format", format]);
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{out:?}");
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(!stderr.is_empty());
            for line in stderr.lines() {
                assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
                assert!(
                    line.contains(&format!(
                        "sync{{job=\"{bin}\" account=1 backend=\"sqlite\" source=\"file\"}}"
                    )),
                    "{format:?}: {line}"
                );
            }
        }
    }
}

#[test]
fn with_json_logs_the_error_line_is_a_json_object_too() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("truncated.json");
    std::fs::write(&bad, "{\"stats\": {").unwrap();
    let db = TestSqlite::new();
    for bin in BINS {
        // At the default level (warn) the error is the only line.
        let out = job(bin, db.url())
            .args(["--log-format", "json", "--from-file"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty());
        let lines = json_lines(&out.stderr);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["target"], bin);
        let message = lines[0]["fields"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{bin}: error: ")) && message.contains("truncated.json"),
            "{message}"
        );
    }
}

#[test]
fn a_bad_log_format_is_a_usage_error_naming_the_option_and_the_formats() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.db");
    let url = file.to_str().unwrap();
    for bin in BINS {
        for (args, expected) in [
            (
                vec!["--log-format", "xml"],
                "invalid value '<value not shown>' for '--log-format <FORMAT>' \
                 [possible values: text, json]",
            ),
            (
                vec!["--log-format=JSON"],
                "invalid value '<value not shown>' for '--log-format <FORMAT>' \
                 [possible values: text, json]",
            ),
            (
                vec!["--log-format"],
                "a value is required for '--log-format <FORMAT>' but none was supplied \
                 [possible values: text, json]",
            ),
        ] {
            let out = job(bin, url)
                .args(&args)
                .arg("--from-file")
                .arg(capture(bin))
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            assert!(out.stdout.is_empty());
            assert_eq!(
                String::from_utf8(out.stderr).unwrap(),
                format!("{bin}: error: {expected} (see --help)\n"),
                "{args:?}"
            );
            assert!(!file.exists(), "{args:?}: a usage error wrote the database");
        }
        let help = job(bin, url).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(help.contains("--log-format <FORMAT>"), "{help}");
        assert!(help.contains("json"), "{help}");
    }
}

/// The library's `db.system.name` of a backend as the tests name it.
fn backend_system(backend: &str) -> &'static str {
    match backend {
        "postgresql" => "postgresql",
        "mysql" => "mysql",
        _ => "sqlite",
    }
}
