//! `upsert-race` end to end: the real binary against a real server, tiny settings.

use assert_cmd::Command;
use serde_json::Value;

const SCENARIOS: &[&str] = &[
    "upsert",
    "first-insert",
    "counter",
    "counter-retry",
    "quota",
    "get-or-create",
    "lock",
    "bulk",
    "hot-key",
    "claim",
    "usage-counter",
    "usage-counter-retry",
    "usage-quota",
];

/// The scenarios with a plain-Diesel side.
const WITH_DIESEL: &[&str] = &["upsert", "first-insert", "bulk", "hot-key"];

/// The scenarios with a side through the coalescing writer.
const WITH_COALESCED: &[&str] = &[
    "upsert",
    "first-insert",
    "hot-key",
    "counter",
    "usage-counter",
];

/// The patterns a scenario runs on PostgreSQL.
fn patterns_of(scenario: &str) -> Vec<&'static str> {
    let mut patterns = vec!["naive"];
    if WITH_DIESEL.contains(&scenario) {
        patterns.push("diesel");
    }
    patterns.push("atomic");
    if WITH_COALESCED.contains(&scenario) {
        patterns.push("coalesced");
    }
    patterns
}

fn field(row: &Value, name: &str) -> i64 {
    row[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing in {row}"))
}

#[test]
fn every_atomic_pattern_runs_clean_and_every_cell_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("race.json");
    let plot = dir.path().join("race.svg");
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .args(["--database-url", &upsert_kit_support::admin_url()])
        .args([
            "--workers",
            "2",
            "--ops",
            "50",
            "--batch",
            "20",
            "--bulk-keys",
            "400",
            "--claim-items",
            "500",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "upsert-race failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        rows.len(),
        SCENARIOS.len() * 2 + WITH_DIESEL.len() + WITH_COALESCED.len(),
        "one row per scenario and pattern"
    );
    for scenario in SCENARIOS {
        for pattern in patterns_of(scenario) {
            let row = rows
                .iter()
                .find(|r| r["scenario"] == *scenario && r["pattern"] == pattern)
                .unwrap_or_else(|| panic!("no row for {scenario}/{pattern}"));
            assert_eq!(field(row, "workers"), 2);
            assert_eq!(
                field(row, "operations"),
                100,
                "{scenario}/{pattern}: 2 workers x 50 ops"
            );
            assert!(row["per_sec"].as_f64().unwrap() > 0.0);
            assert!(stdout.contains(scenario), "the table shows {scenario}");
            if pattern != "naive" {
                for anomaly in [
                    "errors",
                    "duplicate_rows",
                    "lost_updates",
                    "double_counted",
                    "over_limit",
                ] {
                    assert_eq!(
                        field(row, anomaly),
                        0,
                        "{scenario}/{pattern}: {anomaly} in {row}"
                    );
                }
            }
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("first-insert"),
        "an SVG plot of the run"
    );
}

#[test]
fn a_retried_request_is_counted_twice_by_the_naive_counter_and_once_by_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("retry.json");
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .args(["--database-url", &upsert_kit_support::admin_url()])
        .args([
            "--scenario",
            "counter-retry,usage-counter-retry",
            "--workers",
            "1,4",
            "--ops",
            "20",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // The library's generic `increment_once`, and the usage-tracking example's counter.
    for scenario in ["counter-retry", "usage-counter-retry"] {
        let counted_twice = |pattern: &str, workers: i64| {
            let row = rows
                .iter()
                .find(|r| {
                    r["scenario"] == scenario
                        && r["pattern"] == pattern
                        && field(r, "workers") == workers
                })
                .unwrap_or_else(|| panic!("no row for {scenario}/{pattern}/{workers}"));
            (field(row, "double_counted"), field(row, "lost_updates"))
        };
        for workers in [1, 4] {
            eprintln!(
                "{scenario}, {workers} workers x 20 requests each delivered twice: naive \
                 (doubled, lost) = {:?}; atomic = {:?}",
                counted_twice("naive", workers),
                counted_twice("atomic", workers)
            );
            assert_eq!(counted_twice("atomic", workers), (0, 0), "{scenario}");
        }
        assert_eq!(
            counted_twice("naive", 1),
            (20, 0),
            "{scenario}: one worker, no race, every retry counted"
        );
        // Four workers: every retry is still counted again, whatever the race loses besides;
        // the two kinds of damage are reported apart, never netted against each other.
        let (doubled, lost) = counted_twice("naive", 4);
        assert_eq!(doubled, 80, "{scenario}: 4 x 20 retries counted again");
        assert!(lost >= 0, "{scenario}: {lost}");
    }
}

#[test]
fn an_unknown_scenario_is_refused_with_the_known_ones() {
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .args(["--scenario", "upsrt", "--ops", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown scenario \"upsrt\"") && stderr.contains("first-insert"),
        "{stderr}"
    );
}

#[test]
fn a_report_is_redrawn_from_its_json_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rows.json");
    let plot = dir.path().join("rows.svg");
    let row = |pattern: &str, per_sec: f64, errors: u64| {
        serde_json::json!({
            "scenario": "first-insert", "pattern": pattern, "workers": 8, "operations": 100,
            "unit": "ops", "per_sec": per_sec, "p50_us": 900.0, "p99_us": 4000.0,
            "errors": errors, "error_rate": errors as f64 / 100.0, "error_kinds": {},
            "duplicate_rows": 0, "lost_updates": 0, "over_limit": 0, "seconds": 1.0
        })
    };
    let rows = serde_json::json!([row("naive", 1000.0, 57), row("atomic", 2000.0, 0)]);
    std::fs::write(&json, rows.to_string()).unwrap();
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .args(["--database-url", "postgres://postgres@127.0.0.1:1/postgres"])
        .arg("--from-json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("first-insert x8: 2.00"), "{stdout}");
    assert!(std::fs::read_to_string(&plot)
        .unwrap()
        .contains("error rate"));
}

#[test]
fn without_a_database_url_and_with_no_local_server_it_runs_on_a_throwaway_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("throwaway.json");
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .env_remove("DATABASE_URL")
        // Nothing listens on port 1: the harness starts a cluster of the run's own.
        .env(
            upsert_kit_support::PROBE_URL_VAR,
            "postgres://postgres@127.0.0.1:1/postgres",
        )
        .args(["--scenario", "counter", "--workers", "2", "--ops", "10"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("throwaway cluster"), "{stderr}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 3, "naive, atomic and coalesced: {rows:?}");
    for pattern in ["atomic", "coalesced"] {
        let row = rows.iter().find(|r| r["pattern"] == pattern).unwrap();
        assert_eq!(field(row, "operations"), 20);
        assert_eq!(field(row, "lost_updates"), 0);
    }
}

#[test]
fn a_server_that_does_not_answer_is_an_error_that_keeps_the_password_secret() {
    let output = Command::cargo_bin("upsert-race")
        .unwrap()
        .args([
            "--database-url",
            "postgres://postgres:s3cret-pw@127.0.0.1:1/postgres",
        ])
        .args(["--scenario", "counter", "--ops", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "names the server: {stderr}");
    assert!(
        !stderr.contains("s3cret-pw"),
        "leaks the password: {stderr}"
    );
}

#[test]
fn on_mysql_the_atomic_patterns_are_exact_and_every_row_names_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("race-mysql.json");
    Command::cargo_bin("upsert-race")
        .unwrap()
        .args([
            "--backend",
            "mysql",
            "--mysql-url",
            &upsert_kit_support::mysql_admin_url(),
            "--scenario",
            "counter,claim",
            "--workers",
            "4",
            "--ops",
            "25",
            "--claim-items",
            "50",
            "--no-progress",
        ])
        .arg("--json")
        .arg(&json)
        .assert()
        .success();
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        rows.len(),
        5,
        "counter: naive, atomic, coalesced; claim: naive, atomic"
    );
    for row in &rows {
        assert_eq!(row["backend"], "mysql");
        if row["pattern"] != "naive" {
            assert_eq!(field(row, "lost_updates"), 0, "{row}");
            assert_eq!(field(row, "duplicate_rows"), 0, "{row}");
            assert_eq!(field(row, "errors"), 0, "{row}");
        }
    }
}
