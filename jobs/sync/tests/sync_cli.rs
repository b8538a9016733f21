//! End-to-end tests of the real `strava-sync` and `wakatime-sync` binaries, offline
//! (`--from-file`), on a fresh PostgreSQL database and on a temporary SQLite file.

mod sync_support;

use serde_json::Value;
use sync_support::*;
use upsert_kit_support::{TestDb, TestSqlite};

/// Runs `f` once on a fresh, unmigrated PostgreSQL database and once on a fresh SQLite file
/// (the binaries migrate on start).
fn on_both_backends(f: impl Fn(&str)) {
    let pg = TestDb::new();
    f(pg.url());
    let lite = TestSqlite::new();
    f(lite.url());
}

fn write_capture(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn edited(example_name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&example_text(example_name)).unwrap();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn strava_first_run_inserts_and_second_run_reports_unchanged_never_a_duplicate() {
    on_both_backends(|url| {
        let capture = example("strava.json");
        let first = job("strava-sync", url)
            .arg("--from-file")
            .arg(&capture)
            .output()
            .unwrap();
        let stdout = String::from_utf8(first.stdout.clone()).unwrap();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        assert!(
            stdout.contains(
                "stats: 3 inserted, 0 updated, 0 unchanged (ytd: inserted, all_time: inserted, recent: inserted)\nauth:  inserted"
            ),
            "human summary: {stdout}"
        );
        let second = summary(
            &job("strava-sync", url)
                .args(["--json", "--from-file"])
                .arg(&capture)
                .output()
                .unwrap(),
        );
        assert_eq!(
            second,
            serde_json::json!({"stats": {"inserted": 0, "updated": 0, "unchanged": 3}, "auth": "unchanged"})
        );
        assert_eq!(
            rows_per_type(url, "strava_stats"),
            [
                ("all_time".into(), 1),
                ("recent".into(), 1),
                ("ytd".into(), 1)
            ]
        );
    });
}

#[test]
fn wakatime_first_run_inserts_every_range_and_second_run_reports_unchanged() {
    on_both_backends(|url| {
        let capture = example("wakatime.json");
        let first = summary(
            &job("wakatime-sync", url)
                .args(["--json", "--from-file"])
                .arg(&capture)
                .output()
                .unwrap(),
        );
        assert_eq!(counts(&first), (5, 0, 0, "inserted".into()));
        let second = summary(
            &job("wakatime-sync", url)
                .args(["--json", "--from-file"])
                .arg(&capture)
                .output()
                .unwrap(),
        );
        assert_eq!(counts(&second), (0, 0, 5, "unchanged".into()));
        let ranges: Vec<String> = rows_per_type(url, "wakatime_stats")
            .into_iter()
            .map(|(t, n)| {
                assert_eq!(n, 1, "one row per range");
                t
            })
            .collect();
        assert_eq!(
            ranges,
            [
                "all_time",
                "last_30_days",
                "last_6_months",
                "last_7_days",
                "last_year"
            ]
        );
    });
}

#[test]
fn changed_stats_are_reported_updated_and_a_newer_token_replaces_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let changed = write_capture(
        &dir,
        "changed.json",
        &edited("strava.json", |v| {
            v["stats"]["ytd_run_totals"]["count"] = 122.into();
            v["token"]["expires_at"] = 1_796_021_600_i64.into();
            v["token"]["access_token"] = "rotated-access".into();
        }),
    );
    let older = write_capture(
        &dir,
        "older.json",
        &edited("strava.json", |v| {
            v["token"]["expires_at"] = 1_795_000_000_i64.into();
            v["token"]["access_token"] = "older-access".into();
        }),
    );
    on_both_backends(|url| {
        let run = |path: &str| {
            summary(
                &job("strava-sync", url)
                    .args(["--json", "--from-file", path])
                    .output()
                    .unwrap(),
            )
        };
        run(example("strava.json").to_str().unwrap());
        assert_eq!(counts(&run(&changed)), (0, 1, 2, "updated".into()));
        // An older token never overwrites a newer one; the stats go back to the example's.
        assert_eq!(counts(&run(&older)), (0, 1, 2, "unchanged".into()));
        let tokens: Vec<String> = snapshot(url)
            .into_iter()
            .filter(|l| l.starts_with("strava_auth|"))
            .collect();
        assert_eq!(tokens.len(), 1);
        assert!(tokens[0].contains("|rotated-access|"), "{tokens:?}");
        assert_eq!(rows_per_type(url, "strava_stats").len(), 3);
    });
}

#[test]
fn a_capture_on_stdin_is_read_with_a_dash() {
    let lite = TestSqlite::new();
    let out = job("strava-sync", lite.url())
        .args(["--json", "--from-file", "-"])
        .write_stdin(example_text("strava.json"))
        .output()
        .unwrap();
    assert_eq!(counts(&summary(&out)), (3, 0, 0, "inserted".into()));
    let out = job("wakatime-sync", lite.url())
        .args(["--json", "--from-file", "-"])
        .write_stdin(example_text("wakatime.json"))
        .output()
        .unwrap();
    assert_eq!(counts(&summary(&out)), (5, 0, 0, "inserted".into()));
}

#[test]
fn without_a_database_url_the_jobs_write_sync_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, capture) in [
        ("strava-sync", "strava.json"),
        ("wakatime-sync", "wakatime.json"),
    ] {
        let mut cmd = assert_cmd::Command::new(match bin {
            "strava-sync" => assert_cmd::cargo::cargo_bin!("strava-sync"),
            _ => assert_cmd::cargo::cargo_bin!("wakatime-sync"),
        });
        for var in JOB_ENV {
            cmd.env_remove(var);
        }
        let out = cmd
            .current_dir(dir.path())
            .arg("--from-file")
            .arg(example(capture))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("into sync.db (SQLite)"), "{stdout}");
    }
    let db = dir.path().join("sync.db");
    assert!(db.exists());
    let url = db.to_str().unwrap();
    assert_eq!(rows_per_type(url, "strava_stats").len(), 3);
    assert_eq!(rows_per_type(url, "wakatime_stats").len(), 5);
}

/// `(name, capture text, expected words of the error line)`.
fn strava_bad_captures() -> Vec<(&'static str, String, &'static str)> {
    let good = example_text("strava.json");
    vec![
        (
            "malformed JSON",
            r#"{"stats": {,}}"#.into(),
            "malformed JSON",
        ),
        (
            "truncated JSON",
            good[..good.len() / 2].into(),
            "truncated JSON",
        ),
        ("empty input", "".into(), "empty input"),
        (
            "not an object",
            "[1, 2]".into(),
            "the payload: expected an object, found an array",
        ),
        (
            "missing field",
            edited("strava.json", |v| {
                v["stats"].as_object_mut().unwrap().remove("ytd_run_totals");
            }),
            "stats.ytd_run_totals: missing field",
        ),
        (
            "wrong type",
            edited("strava.json", |v| {
                v["stats"]["ytd_ride_totals"]["distance"] = "far".into()
            }),
            "stats.ytd_ride_totals.distance: expected a number, found a string",
        ),
        (
            "NaN",
            good.replacen("\"distance\": 3318742.0", "\"distance\": NaN", 1),
            "non-finite number at line",
        ),
        (
            "Infinity",
            good.replacen(
                "\"elevation_gain\": 27411.0",
                "\"elevation_gain\": -Infinity",
                1,
            ),
            "non-finite number at line",
        ),
        (
            "out-of-range number",
            good.replacen("\"distance\": 3318742.0", "\"distance\": 1e999", 1),
            "number out of range",
        ),
        (
            "negative count",
            edited("strava.json", |v| {
                v["stats"]["ytd_run_totals"]["moving_time"] = (-5).into()
            }),
            "stats.ytd_run_totals.moving_time: expected a non-negative integer, found -5",
        ),
        (
            "token without access token",
            edited("strava.json", |v| {
                v["token"].as_object_mut().unwrap().remove("access_token");
            }),
            "token.access_token: missing field",
        ),
        (
            "expiry out of range",
            edited("strava.json", |v| {
                v["token"]["expires_at"] = 999_999_999_999_999_i64.into()
            }),
            "token.expires_at: 999999999999999 is not a Unix time",
        ),
        (
            "a NUL in the refresh token (found by fuzz/strava_capture)",
            edited("strava.json", |v| {
                v["token"]["refresh_token"] = "r3fr3sh\u{0}t0ken".into();
            }),
            "token.refresh_token: contains a NUL character (U+0000) at byte 7",
        ),
    ]
}

fn wakatime_bad_captures() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "unknown range",
            edited("wakatime.json", |v| {
                let s = v["stats"].as_object_mut().unwrap();
                let week = s.remove("last_7_days").unwrap();
                s.insert("last_week".into(), week);
            }),
            "stats.last_week: unknown stats range; expected one of last_7_days",
        ),
        (
            "range mismatch",
            edited("wakatime.json", |v| {
                v["stats"]["last_year"]["data"]["range"] = "last_30_days".into();
            }),
            "stats.last_year.data.range: the response is for \"last_30_days\", expected \"last_year\"",
        ),
        (
            "NaN seconds",
            example_text("wakatime.json").replacen(
                "\"total_seconds\": 98342.61",
                "\"total_seconds\": NaN",
                1,
            ),
            "non-finite number at line",
        ),
        (
            "an expiry past year 9999 only in UTC",
            edited("wakatime.json", |v| {
                v["token"]["expires_at"] = "9999-12-31T23:59:59-01:00".into();
            }),
            "token.expires_at: \"9999-12-31T23:59:59-01:00\" is +10000-01-01 00:59:59 in UTC, outside years 1970-9999",
        ),
        (
            "wrong type in a list",
            edited("wakatime.json", |v| {
                v["stats"]["all_time"]["data"]["languages"][1]["total_seconds"] = true.into();
            }),
            "stats.all_time.data.languages[1].total_seconds: expected a number, found a boolean",
        ),
        (
            "a NUL in a language's name",
            edited("wakatime.json", |v| {
                v["stats"]["all_time"]["data"]["languages"][0]["name"] = "Ru\u{0}st".into();
            }),
            "stats.all_time.data.languages[0].name: contains a NUL character (U+0000) at byte 2",
        ),
    ]
}

/// Asserts that no part of an error line (between `: `) of a dozen characters or more comes
/// twice: each cause is said once (`database error: X: X` is not).
fn assert_no_repeated_text(line: &str, case: &str) {
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() >= 12).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{case}: {p:?} is said twice in {line:?}"
        );
    }
}

fn assert_one_clear_line(bin: &str, out: &std::process::Output, expected: &str, case: &str) {
    assert!(!out.status.success(), "{case}: the run succeeded");
    assert!(out.stdout.is_empty(), "{case}: printed a summary");
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{case}: one line on stderr, got {stderr:?}");
    assert_no_repeated_text(lines[0], case);
    assert!(
        lines[0].starts_with(&format!("{bin}: error: ")) && lines[0].contains(expected),
        "{case}: expected {expected:?} in {:?}",
        lines[0]
    );
}

#[test]
fn every_bad_capture_fails_with_one_clear_line_and_leaves_the_database_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    on_both_backends(|url| {
        for (bin, good) in [
            ("strava-sync", "strava.json"),
            ("wakatime-sync", "wakatime.json"),
        ] {
            summary(
                &job(bin, url)
                    .args(["--json", "--from-file"])
                    .arg(example(good))
                    .output()
                    .unwrap(),
            );
        }
        let before = snapshot(url);
        assert_eq!(before.len(), 3 + 5 + 2);
        let cases = strava_bad_captures()
            .into_iter()
            .map(|c| ("strava-sync", c))
            .chain(
                wakatime_bad_captures()
                    .into_iter()
                    .map(|c| ("wakatime-sync", c)),
            );
        for (bin, (case, text, expected)) in cases {
            let path = write_capture(&dir, "bad.json", &text);
            let out = job(bin, url).args(["--from-file", &path]).output().unwrap();
            assert_one_clear_line(bin, &out, expected, case);
            assert!(
                out.status.code() == Some(1),
                "{case}: exit code {:?}",
                out.status.code()
            );
            assert_eq!(snapshot(url), before, "{case}: the database changed");
        }
        let out = job("strava-sync", url)
            .args(["--from-file", "/nonexistent/capture.json"])
            .output()
            .unwrap();
        assert_one_clear_line(
            "strava-sync",
            &out,
            "/nonexistent/capture.json: cannot read",
            "missing file",
        );
        let out = job("wakatime-sync", url)
            .args(["--range", "last_7_days,last_week"])
            .output()
            .unwrap();
        assert_one_clear_line(
            "wakatime-sync",
            &out,
            "invalid value '<value not shown>' for '--range <RANGE>': unknown stats range",
            "unknown --range",
        );
        assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
        assert_eq!(
            snapshot(url),
            before,
            "unknown --range: the database changed"
        );
    });
}

#[test]
fn a_database_that_does_not_answer_is_one_clear_line_without_the_password() {
    for bin in ["strava-sync", "wakatime-sync"] {
        let capture = if bin == "strava-sync" {
            "strava.json"
        } else {
            "wakatime.json"
        };
        let out = job(bin, "postgres://sync:hunter2@127.0.0.1:1/stats")
            .arg("--from-file")
            .arg(example(capture))
            .output()
            .unwrap();
        assert_one_clear_line(
            bin,
            &out,
            "opening the database: cannot connect to postgres://sync:***@127.0.0.1:1/stats",
            "refused port",
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    }
    let out = job("strava-sync", "/nonexistent-dir/sub/sync.db")
        .arg("--from-file")
        .arg(example("strava.json"))
        .output()
        .unwrap();
    assert_one_clear_line(
        "strava-sync",
        &out,
        "cannot open SQLite database \"/nonexistent-dir/sub/sync.db\"",
        "SQLite in a missing directory",
    );
}

#[test]
fn help_never_shows_the_database_url_or_secrets_from_the_environment() {
    for bin in ["strava-sync", "wakatime-sync"] {
        let out = job(bin, "unused.db")
            .env("DATABASE_URL", "postgres://sync:hunter2@db/stats")
            .env("STRAVA_CLIENT_SECRET", "client-secret-xyz")
            .env("WAKATIME_CLIENT_SECRET", "client-secret-xyz")
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains("--database-url")
                && help.contains("--from-file")
                && help.contains("--json")
        );
        assert!(
            !help.contains("hunter2") && !help.contains("client-secret-xyz"),
            "{help}"
        );
    }
}

#[test]
fn fields_the_jobs_do_not_use_are_only_required_to_be_json_even_nested_200_deep() {
    let nested = format!("{}\"deep\"{}", "{\"a\":[".repeat(200), "]}".repeat(200));
    let lite = TestSqlite::new();
    for (bin, name) in [
        ("strava-sync", "strava.json"),
        ("wakatime-sync", "wakatime.json"),
    ] {
        // Unused fields at the top, inside the token and inside a stats response.
        let mut text = example_text(name);
        let at = text.rfind('}').unwrap();
        text.insert_str(at, &format!(", \"unused\": {nested}"));
        let at = text.find("\"token\": {").unwrap() + "\"token\": {".len();
        text.insert_str(at, &format!("\"unused\": {nested}, "));
        let out = job(bin, lite.url())
            .args(["--json", "--from-file", "-"])
            .write_stdin(text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_write_the_schema_refuses_is_reported_once_in_one_line() {
    // A stats table that refuses every row: the run fails at the write, and says so once.
    let db = TestDb::new();
    summary(
        &job("strava-sync", db.url())
            .args(["--json", "--from-file"])
            .arg(example("strava.json"))
            .output()
            .unwrap(),
    );
    execute(db.url(), "DELETE FROM strava_stats");
    execute(
        db.url(),
        "ALTER TABLE strava_stats ADD CONSTRAINT refuse CHECK (stats_type = 'none')",
    );
    let out = job("strava-sync", db.url())
        .arg("--from-file")
        .arg(example("strava.json"))
        .output()
        .unwrap();
    assert_one_clear_line(
        "strava-sync",
        &out,
        "check constraint violated (constraint \"refuse\")",
        "check violation",
    );
}

/// MySQL commits each `CREATE TABLE` by itself, so a run killed while migrating leaves tables
/// without the migration recorded. The next run finishes the migration instead of failing on
/// `Table 'strava_stats' already exists` forever (found by killing runs mid-migration).
#[test]
fn on_mysql_a_migration_cut_off_after_its_first_table_is_finished_by_the_next_run() {
    use diesel::connection::SimpleConnection;
    let db = upsert_kit_support::TestMysql::new();
    db.conn()
        .batch_execute(
            "CREATE TABLE strava_stats (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             stats_type VARCHAR(64) NOT NULL UNIQUE CHECK (stats_type <> ''), data JSON NOT NULL, \
             created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), \
             updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)))",
        )
        .unwrap();
    let out = job("strava-sync", db.url())
        .args(["--json", "--from-file"])
        .arg(example("strava.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&summary(&out)), (3, 0, 0, "inserted".into()));
}

/// Eight runs started together on a fresh, unmigrated MySQL database: the migration runs once
/// under its lock, one run inserts the rows, the others find them unchanged.
#[test]
fn on_mysql_eight_runs_at_once_migrate_a_fresh_database_once() {
    let db = upsert_kit_support::TestMysql::new();
    let url = db.url().to_owned();
    let outs = upsert_kit_support::race(8, move |_| {
        job("strava-sync", &url)
            .args(["--json", "--from-file"])
            .arg(example("strava.json"))
            .output()
            .unwrap()
    });
    let mut inserted = 0;
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (i, u, n, _) = counts(&summary(out));
        assert_eq!((i + u + n, u), (3, 0));
        inserted += i;
    }
    assert_eq!(inserted, 3, "each stats row inserted by exactly one run");
}
