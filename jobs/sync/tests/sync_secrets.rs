//! Secrets on every error path (RELIABILITY 22, 27): both binaries are driven down each of
//! their error paths while they hold a secret of every kind (the client secret, a bootstrap
//! refresh token, a stored access and refresh token, the tokens a refresh hands out, the
//! database password, an API base URL's password), at `RUST_LOG=trace`, and everything they
//! print (stdout and stderr) is searched for each secret, as written, percent-encoded and in
//! pieces. The database is the real PostgreSQL server (or a real SQLite file) and the API is
//! the scripted HTTP server of `sync_support`, which can echo what it was sent.

mod sync_support;

use serde_json::{json, Value};
use std::process::Output;
use sync_jobs::db::PG_MIGRATIONS;
use sync_support::*;
use upsert_kit_support::{TestDb, TestSqlite};

/// The database password, as a user types it without percent-encoding: every character that
/// breaks naive URL parsing, between pieces that are searched for on their own.
const DB_PASSWORD: &str = "Zq9Vx?Kp3Lm/Rt8Wy#Hj4Nb@Cd6Fg%25Tz7Qs:Mw2Ek&Yu5=Io8";
const CLIENT_SECRET: &str = "cs-Qw7Er5Ty3/Ui1?Op9+Lk2";
const BOOTSTRAP_REFRESH: &str = "rt-Boot4Strap8Refresh2";
const STORED_ACCESS: &str = "at-St0red6Access9";
const STORED_REFRESH: &str = "rt-St0red3Refresh5";
const NEW_ACCESS: &str = "at-N3wAccess7Token1";
const NEW_REFRESH: &str = "rt-N3wRefresh4Token8";
/// The password of an API base URL given with credentials.
const API_PASSWORD: &str = "ap-Pr0xy5Pass2";

const ALL_SECRETS: &[&str] = &[
    DB_PASSWORD,
    CLIENT_SECRET,
    BOOTSTRAP_REFRESH,
    STORED_ACCESS,
    STORED_REFRESH,
    NEW_ACCESS,
    NEW_REFRESH,
    API_PASSWORD,
];

/// Percent-encodes every byte but `A-Z a-z 0-9 - . _ ~`.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What must never be printed: each secret as written and percent-encoded, and each of its
/// pieces of four or more characters between punctuation (what a driver quoting part of a
/// malformed URL would show).
fn forbidden() -> Vec<String> {
    let mut all = Vec::new();
    for s in ALL_SECRETS {
        all.push((*s).to_owned());
        all.push(encode(s));
        all.extend(
            s.split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|p| p.len() >= 4)
                .map(str::to_owned),
        );
    }
    // `%25` is an encoded `%`: libpq decodes it, leaving `%Tz7Qs`.
    all.push("Tz7Qs".to_owned());
    all
}

/// Asserts that nothing `out` printed holds a secret, and that the run took the path the case
/// names: it failed (or not, for `expect_success`) and its output has `expected` in it.
fn assert_clean(case: &str, out: &Output, expected: &str) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in forbidden() {
        assert!(!all.contains(&f), "{case}: {f:?} printed:\n{all}");
    }
    assert!(!out.status.success(), "{case}: the run succeeded:\n{all}");
    assert!(
        all.contains(expected),
        "{case}: expected {expected:?} in:\n{all}"
    );
}

/// The test database's URL with `DB_PASSWORD` (percent-encoded, so that libpq can parse it;
/// the local server trusts the user, so any password logs in).
fn with_password(url: &str) -> String {
    let scheme_end = url.find("://").expect("a URL") + 3;
    let at = scheme_end
        + url[scheme_end..]
            .find('@')
            .unwrap_or_else(|| panic!("the test server's URL {url} has no user"));
    assert!(
        !url[scheme_end..at].contains(':'),
        "the test server's URL already has a password"
    );
    format!("{}:{}{}", &url[..at], encode(DB_PASSWORD), &url[at..])
}

/// The binary with a secret of every kind in its environment, logging everything.
fn armed(bin: &str, db_url: &str) -> assert_cmd::Command {
    let mut cmd = job(bin, db_url);
    let prefix = if bin == "strava-sync" {
        "STRAVA"
    } else {
        "WAKATIME"
    };
    cmd.env(format!("{prefix}_CLIENT_ID"), "4242")
        .env(format!("{prefix}_CLIENT_SECRET"), CLIENT_SECRET)
        .env(format!("{prefix}_REFRESH_TOKEN"), BOOTSTRAP_REFRESH)
        .env("RUST_LOG", "trace")
        .args(["--timeout", "10"]);
    cmd
}

fn capture_name(bin: &str) -> &'static str {
    if bin == "strava-sync" {
        "strava.json"
    } else {
        "wakatime.json"
    }
}

/// The example capture of `bin` with its token replaced by the new tokens.
fn capture_with_new_tokens(bin: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&example_text(capture_name(bin))).unwrap();
    v["token"]["access_token"] = NEW_ACCESS.into();
    v["token"]["refresh_token"] = NEW_REFRESH.into();
    edit(&mut v);
    v.to_string()
}

const STRAVA_STATS: &str = "/athletes/134815/stats";
const WAKA_STATS: &str = "/api/v1/users/current/stats/last_7_days";

fn token_response(bin: &str) -> String {
    let expires = chrono::Utc::now().timestamp() + 6 * 3600;
    if bin == "strava-sync" {
        json!({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_at": expires,
               "athlete": {"id": 134815}})
        .to_string()
    } else {
        json!({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "uid": "u1",
               "expires_in": 3600})
        .to_string()
    }
}

fn stats_path(bin: &str) -> &'static str {
    if bin == "strava-sync" {
        STRAVA_STATS
    } else {
        WAKA_STATS
    }
}

fn stats_response(bin: &str) -> String {
    let v: Value = serde_json::from_str(&example_text(capture_name(bin))).unwrap();
    if bin == "strava-sync" {
        v["stats"].to_string()
    } else {
        v["stats"]["last_7_days"].to_string()
    }
}

/// An online run of `bin` against `api`.
fn online(bin: &str, db_url: &str, api: &FakeApi) -> assert_cmd::Command {
    let mut cmd = armed(bin, db_url);
    if bin == "strava-sync" {
        cmd.args(["--athlete-id", "134815", "--api-base", &api.url()]);
    } else {
        cmd.args(["--range", "last_7_days"])
            .arg("--api-base")
            .arg(format!("{}/api/v1", api.url()))
            .arg("--oauth-base")
            .arg(api.url());
    }
    cmd
}

fn store_tokens(db_url: &str, bin: &str, expired: bool) {
    let expires = if expired {
        "2020-01-01 00:00:00"
    } else {
        "2999-01-01 00:00:00"
    };
    let (table, who) = if bin == "strava-sync" {
        ("strava_auth", "athlete_id")
    } else {
        ("wakatime_auth", "user_id")
    };
    let who_value = if bin == "strava-sync" {
        "134815"
    } else {
        "'u1'"
    };
    execute(db_url, &format!("DELETE FROM {table}"));
    execute(
        db_url,
        &format!(
            "INSERT INTO {table} (id, {who}, access_token, refresh_token, expires_at, updated_at) \
             VALUES (1, {who_value}, '{STORED_ACCESS}', '{STORED_REFRESH}', '{expires}', '2020-01-01 00:00:00')"
        ),
    );
}

/// An error body that echoes the whole request: the posted form (client secret, refresh token)
/// and the bearer token.
fn echoing(status: u16) -> Reply {
    Reply::json(
        status,
        format!(
            r#"{{"message":"rejected {ECHO_BODY_JSON} with {ECHO_AUTHORIZATION}","errors":[]}}"#
        ),
    )
}

/// Every error path of `bin`, each run once; the paths are listed in the module docs of the
/// crate's README ("Secrets").
fn drive_every_error_path(bin: &str) {
    let raw_url = |port: u16| format!("postgres://sync:{DB_PASSWORD}@127.0.0.1:{port}/stats");

    // --- Usage errors: a credential given where it does not belong. ---
    let pg_raw = raw_url(5432);
    let mut usage: Vec<(&str, Vec<String>)> = vec![
        ("a database URL as a stray argument", vec![pg_raw.clone()]),
        ("a token as a stray argument", vec![NEW_ACCESS.into()]),
        (
            "a database URL given to --timeout",
            vec!["--timeout".into(), pg_raw.clone()],
        ),
        (
            "a database URL given to --refresh-margin=",
            vec![format!("--refresh-margin={pg_raw}")],
        ),
        (
            "a token given to --account",
            vec!["--account".into(), STORED_REFRESH.into()],
        ),
        (
            "an unknown option carrying a password",
            vec![format!("--password={CLIENT_SECRET}")],
        ),
    ];
    if bin == "wakatime-sync" {
        usage.push((
            "a database URL given to --range",
            vec!["--range".into(), format!("last_7_days,{pg_raw}")],
        ));
    } else {
        usage.push((
            "a token given to --athlete-id",
            vec!["--athlete-id".into(), NEW_REFRESH.into()],
        ));
    }
    for (case, args) in usage {
        let out = armed(bin, "unused.db").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{case}: a usage error exits 2");
        assert_clean(case, &out, "(see --help)");
    }

    // --- The database cannot be opened. ---
    let capture = example(capture_name(bin));
    let encoded = format!("postgres://sync:{}@127.0.0.1:1/stats", encode(DB_PASSWORD));
    let bad_escape = format!("postgres://sync:{DB_PASSWORD}%zz@127.0.0.1:1/stats");
    let server = TestDb::new();
    let good = with_password(server.url());
    let no_database = upsert_kit_support::with_database(&good, "no_such_database_13");
    let no_role = good.replacen("://postgres:", "://no_such_role_13:", 1);
    for (case, url, expected) in [
        (
            "an unencoded password, nothing listening",
            raw_url(1),
            "opening the database: cannot connect to postgres://sync:***@127.0.0.1:1/stats",
        ),
        (
            "an encoded password, nothing listening",
            encoded,
            "opening the database: cannot connect to postgres://sync:***@127.0.0.1:1/stats",
        ),
        (
            "an invalid percent-escape in the password",
            bad_escape,
            "opening the database: cannot connect to postgres://sync:***@127.0.0.1:1/stats",
        ),
        (
            "the server refuses: no such database",
            no_database,
            "does not exist",
        ),
        (
            "the server refuses: no such role",
            no_role,
            "does not exist",
        ),
    ] {
        let out = armed(bin, &url)
            .arg("--from-file")
            .arg(&capture)
            .output()
            .unwrap();
        assert_clean(case, &out, expected);
    }
    let out = armed(bin, "/nonexistent-dir/sub/sync.db")
        .arg("--from-file")
        .arg(&capture)
        .output()
        .unwrap();
    assert_clean(
        "an SQLite file that cannot be created",
        &out,
        "cannot open SQLite database",
    );

    // --- Migrations fail: a table of the same name is in the way. ---
    let blocked =
        TestDb::with_sql("CREATE TABLE strava_stats (x int); CREATE TABLE wakatime_stats (x int);");
    let out = armed(bin, &with_password(blocked.url()))
        .arg("--from-file")
        .arg(&capture)
        .output()
        .unwrap();
    assert_clean("a migration fails", &out, "migration failed");

    // --- Offline: bad captures, a write the schema refuses. ---
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let db = TestDb::migrated(PG_MIGRATIONS);
    let db_url = with_password(db.url());
    let echoed_token = if bin == "strava-sync" {
        // A token whose athlete is a string: the message names the field, not the tokens.
        capture_with_new_tokens(bin, |v| v["token"]["athlete"]["id"] = NEW_ACCESS.into())
    } else {
        // An expiry that echoes a token: the message quotes the expiry it could not read.
        capture_with_new_tokens(bin, |v| v["token"]["expires_at"] = NEW_ACCESS.into())
    };
    let path = write("echo.json", &echoed_token);
    let out = armed(bin, &db_url)
        .arg("--from-file")
        .arg(&path)
        .output()
        .unwrap();
    assert_clean("a capture whose token is invalid", &out, "token.");
    let truncated = capture_with_new_tokens(bin, |_| {});
    let path = write("truncated.json", &truncated[..truncated.len() - 3]);
    let out = armed(bin, &db_url)
        .arg("--from-file")
        .arg(&path)
        .output()
        .unwrap();
    assert_clean("a truncated capture", &out, "truncated JSON");
    let out = armed(bin, &db_url)
        .args(["--from-file", "/nonexistent/capture.json"])
        .output()
        .unwrap();
    assert_clean("a capture that cannot be read", &out, "cannot read");
    let table = if bin == "strava-sync" {
        "strava_auth"
    } else {
        "wakatime_auth"
    };
    execute(
        db.url(),
        &format!("ALTER TABLE {table} ADD CONSTRAINT refuse_tokens CHECK (access_token = 'x')"),
    );
    let path = write("good.json", &capture_with_new_tokens(bin, |_| {}));
    let out = armed(bin, &db_url)
        .arg("--from-file")
        .arg(&path)
        .output()
        .unwrap();
    assert_clean("the schema refuses the token row", &out, "check constraint");
    execute(
        db.url(),
        &format!("ALTER TABLE {table} DROP CONSTRAINT refuse_tokens"),
    );

    // --- Online: every answer of the token and stats endpoints that fails the run. ---
    let lite = TestSqlite::migrated(sync_jobs::db::SQLITE_MIGRATIONS);
    for db_url in [db_url.as_str(), lite.url()] {
        let api = FakeApi::start();
        api.on(
            "GET",
            stats_path(bin),
            Reply::json(200, stats_response(bin)),
        );
        // No stored token: the bootstrap refresh token is posted.
        execute(db_url_plain(db_url, &db), &format!("DELETE FROM {table}"));
        for (case, reply, expected) in [
            (
                "the token endpoint echoes the form (400)",
                echoing(400),
                "answered 400",
            ),
            (
                "the token endpoint echoes the form (500)",
                echoing(500),
                "answered 500",
            ),
            (
                "the token endpoint echoes the form in HTML",
                Reply::json(502, format!("<html>{ECHO_BODY}</html>"))
                    .header("Content-Type", "text/html"),
                "answered 502",
            ),
            (
                "the token endpoint answers 401",
                echoing(401),
                "answered 401",
            ),
            (
                "the token endpoint answers 429",
                echoing(429).header("Retry-After", "5"),
                "answered 429",
            ),
            (
                "the token endpoint's answer has no expiry",
                Reply::json(
                    200,
                    json!({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH}).to_string(),
                ),
                "expires_at",
            ),
            (
                "the token endpoint's answer echoes a token as its expiry",
                Reply::json(
                    200,
                    json!({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH,
                           "expires_at": format!("{NEW_ACCESS}/{CLIENT_SECRET}")})
                    .to_string(),
                ),
                "expires_at",
            ),
            (
                "the token endpoint answers a form without an access token",
                Reply::json(200, format!("refresh_token={NEW_REFRESH}&expires_in=3600"))
                    .header("Content-Type", "application/x-www-form-urlencoded"),
                "missing field",
            ),
            (
                "the token endpoint's answer is not JSON",
                Reply::json(200, format!("{{\"access_token\": \"{NEW_ACCESS}\", ")),
                "truncated JSON",
            ),
        ] {
            api.on("POST", "/oauth/token", reply);
            let out = online(bin, db_url, &api).output().unwrap();
            assert_clean(case, &out, expected);
        }

        // An expired stored token: the stored refresh token is posted.
        store_tokens(db_url_plain(db_url, &db), bin, true);
        api.on("POST", "/oauth/token", echoing(400));
        let out = online(bin, db_url, &api).output().unwrap();
        assert_clean(
            "the token endpoint echoes the stored refresh token",
            &out,
            "answered 400",
        );

        // A fresh stored token: the stored access token is sent to the stats endpoint.
        store_tokens(db_url_plain(db_url, &db), bin, false);
        for (case, reply, expected) in [
            (
                "the stats endpoint echoes the bearer (401)",
                echoing(401),
                "answered 401",
            ),
            (
                "the stats endpoint echoes the bearer (403)",
                echoing(403),
                "answered 403",
            ),
            (
                "the stats endpoint echoes the bearer (429)",
                echoing(429),
                "answered 429",
            ),
            (
                "the stats endpoint echoes the bearer (500)",
                echoing(500),
                "answered 500",
            ),
            (
                "the stats endpoint's answer is invalid",
                Reply::json(200, json!({"data": {"range": STORED_ACCESS}}).to_string()),
                if bin == "strava-sync" {
                    "missing field"
                } else {
                    "data.range"
                },
            ),
        ] {
            api.on("GET", stats_path(bin), reply);
            let out = online(bin, db_url, &api).output().unwrap();
            assert_clean(case, &out, expected);
        }

        // A refreshed token, then a failing stats request: the new tokens are held.
        store_tokens(db_url_plain(db_url, &db), bin, true);
        api.on(
            "POST",
            "/oauth/token",
            Reply::json(200, token_response(bin)),
        );
        api.on("GET", stats_path(bin), echoing(503));
        let out = online(bin, db_url, &api).output().unwrap();
        assert_clean(
            "the stats endpoint echoes a freshly refreshed bearer",
            &out,
            "answered 503",
        );

        // Nothing listens, at an API base with credentials of its own.
        store_tokens(db_url_plain(db_url, &db), bin, true);
        let mut cmd = armed(bin, db_url);
        cmd.arg("--api-base")
            .arg(format!("http://proxyuser:{API_PASSWORD}@127.0.0.1:1/api"));
        if bin == "strava-sync" {
            cmd.args(["--athlete-id", "1"]);
        } else {
            cmd.arg("--oauth-base")
                .arg(format!("http://proxyuser:{API_PASSWORD}@127.0.0.1:1"))
                .args(["--range", "all_time"]);
        }
        let out = cmd.output().unwrap();
        assert_clean(
            "the API does not answer (credentials in its URL)",
            &out,
            "failed:",
        );
    }

    // --- Configuration errors, with the secrets in the environment. ---
    let lite = TestSqlite::migrated(sync_jobs::db::SQLITE_MIGRATIONS);
    let api = FakeApi::start();
    let out = online(bin, lite.url(), &api)
        .env_remove(if bin == "strava-sync" {
            "STRAVA_REFRESH_TOKEN"
        } else {
            "WAKATIME_REFRESH_TOKEN"
        })
        .output()
        .unwrap();
    assert_clean(
        "no token stored and no refresh token",
        &out,
        "configuration:",
    );
    let out = online(bin, lite.url(), &api)
        .env_remove(if bin == "strava-sync" {
            "STRAVA_CLIENT_ID"
        } else {
            "WAKATIME_CLIENT_ID"
        })
        .output()
        .unwrap();
    assert_clean("no client id", &out, "configuration:");

    // --- A panic: printing the summary to a full device. ---
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full (Linux)");
    let prefix = if bin == "strava-sync" {
        "STRAVA"
    } else {
        "WAKATIME"
    };
    let out = job_std(bin, &with_password(db.url()))
        .env(format!("{prefix}_CLIENT_SECRET"), CLIENT_SECRET)
        .env(format!("{prefix}_REFRESH_TOKEN"), BOOTSTRAP_REFRESH)
        .env("RUST_LOG", "trace")
        .arg("--from-file")
        .arg(&capture)
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "a panic exits 101");
    assert_clean(
        "a panic (stdout is a full device)",
        &out,
        "error: internal error: failed printing to stdout",
    );
}

/// The URL the test itself uses to reach `db_url`'s database (without the password).
fn db_url_plain<'a>(db_url: &'a str, pg: &'a TestDb) -> &'a str {
    if db_url.starts_with("postgres") {
        pg.url()
    } else {
        db_url
    }
}

#[test]
fn strava_sync_prints_no_secret_on_any_error_path_even_at_trace_level() {
    drive_every_error_path("strava-sync");
}

#[test]
fn wakatime_sync_prints_no_secret_on_any_error_path_even_at_trace_level() {
    drive_every_error_path("wakatime-sync");
}

#[test]
fn a_successful_run_at_trace_level_prints_no_secret_either() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    for bin in ["strava-sync", "wakatime-sync"] {
        let api = FakeApi::start();
        api.on(
            "POST",
            "/oauth/token",
            Reply::json(200, token_response(bin)),
        );
        api.on(
            "GET",
            stats_path(bin),
            Reply::json(200, stats_response(bin)),
        );
        let out = online(bin, &with_password(db.url()), &api)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{bin}: {all}");
        for f in forbidden() {
            assert!(!all.contains(&f), "{bin}: {f:?} printed:\n{all}");
        }
        assert!(
            all.contains("TRACE") || all.contains("DEBUG"),
            "{bin}: logs at trace: {all}"
        );
    }
}

/// A MySQL/MariaDB URL's password (every character that breaks naive URL parsing, percent-
/// encoded in the URL) is never printed: not by a run that succeeds at trace level as a user
/// with that password, nor when the password is refused, nor when the server does not answer.
#[test]
fn a_mysql_urls_password_is_never_printed_on_success_or_on_failure() {
    use diesel::RunQueryDsl;
    let db = upsert_kit_support::TestMysql::new();
    let user = format!("sync_{}", &db.name()[db.name().len().saturating_sub(10)..]);
    let mut admin = db.conn();
    // The password has no quote or backslash, so it can stand in the statement as a literal
    // (CREATE USER takes no bind parameters).
    assert!(!DB_PASSWORD.contains(['\'', '\\']));
    for sql in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{DB_PASSWORD}'"),
        format!("CREATE USER '{user}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}'"),
        format!("CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'"),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name()),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'localhost'", db.name()),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'127.0.0.1'", db.name()),
    ] {
        diesel::sql_query(sql).execute(&mut admin).unwrap();
    }
    let (scheme, rest) = db.url().split_once("://").unwrap();
    let (_, host_and_db) = rest.split_once('@').unwrap();
    let url = format!("{scheme}://{user}:{}@{host_and_db}", encode(DB_PASSWORD));
    let wrong = format!("{scheme}://{user}:{}x@{host_and_db}", encode(DB_PASSWORD));
    let nowhere = format!(
        "{scheme}://{user}:{}@127.0.0.1:1/nowhere",
        encode(DB_PASSWORD)
    );

    for bin in ["strava-sync", "wakatime-sync"] {
        let capture = example(capture_name(bin));
        let out = armed(bin, &url)
            .arg("--from-file")
            .arg(&capture)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{bin} on MySQL failed:\n{all}");
        assert!(all.contains("MySQL/MariaDB"), "{all}");
        for f in forbidden() {
            assert!(!all.contains(&f), "{bin}: {f:?} printed:\n{all}");
        }
        let refused = armed(bin, &wrong)
            .arg("--from-file")
            .arg(&capture)
            .output()
            .unwrap();
        assert_clean(
            &format!("{bin}: refused password"),
            &refused,
            "Access denied",
        );
        let unanswered = armed(bin, &nowhere)
            .arg("--from-file")
            .arg(&capture)
            .output()
            .unwrap();
        assert_clean(&format!("{bin}: no server"), &unanswered, "cannot connect");
    }
    for host in ["%", "localhost", "127.0.0.1"] {
        diesel::sql_query(format!("DROP USER '{user}'@'{host}'"))
            .execute(&mut admin)
            .unwrap();
    }
}

/// [`online`] with `--log-format json`, and the API reached through a base URL with credentials
/// (`API_PASSWORD`: a secret of the command line).
fn online_json_logs(bin: &str, db_url: &str, api: &FakeApi) -> assert_cmd::Command {
    let base = api
        .url()
        .replacen("http://", &format!("http://proxy:{API_PASSWORD}@"), 1);
    let mut cmd = armed(bin, db_url);
    cmd.args(["--log-format", "json"]);
    if bin == "strava-sync" {
        cmd.args(["--athlete-id", "134815", "--api-base", &base]);
    } else {
        cmd.args(["--range", "last_7_days"])
            .arg("--api-base")
            .arg(format!("{base}/api/v1"))
            .arg("--oauth-base")
            .arg(&base);
    }
    cmd
}

/// `--log-format json` at trace level: every line on stderr is a JSON object and none holds a
/// secret (each value of a line is scrubbed decoded, see `secrets::scrub_json_line`), on a run
/// that refreshes its token and succeeds, and on one whose token endpoint answers with the
/// posted form (client secret, refresh token) and the bearer echoed in its error body, whose
/// error line is then a JSON object too. On PostgreSQL, as a user with a password, through an
/// API base URL with a password.
#[test]
fn json_logs_at_trace_level_are_json_lines_without_a_secret() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let url = with_password(db.url());
    for bin in ["strava-sync", "wakatime-sync"] {
        let json_lines = |case: &str, out: &Output| -> Vec<Value> {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            for f in forbidden() {
                assert!(!all.contains(&f), "{bin}, {case}: {f:?} printed:\n{all}");
            }
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(|line| {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("{bin}, {case}: not JSON ({e}): {line}"))
                })
                .collect()
        };

        let api = FakeApi::start();
        api.on("POST", "/oauth/token", echoing(400));
        let out = online_json_logs(bin, &url, &api).output().unwrap();
        assert!(!out.status.success(), "{bin}: {out:?}");
        let lines = json_lines("refused refresh", &out);
        let last = lines.last().expect("an error line");
        assert_eq!(last["level"], "ERROR");
        let message = last["fields"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{bin}: error: ")), "{message}");
        assert_eq!(
            api.count("POST", "/oauth/token"),
            1,
            "{bin}: the refresh was tried"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "DEBUG" || l["level"] == "TRACE"),
            "{bin}: logs at trace: {lines:?}"
        );

        let api = FakeApi::start();
        api.on(
            "POST",
            "/oauth/token",
            Reply::json(200, token_response(bin)),
        );
        api.on(
            "GET",
            stats_path(bin),
            Reply::json(200, stats_response(bin)),
        );
        let out = online_json_logs(bin, &url, &api).output().unwrap();
        assert!(out.status.success(), "{bin}: {out:?}");
        let lines = json_lines("refresh and sync", &out);
        // Every line is inside the run's span (the outermost); the library's spans of its
        // calls (`exclusive_transaction`, …) may nest inside it.
        assert!(
            lines
                .iter()
                .all(|l| l["spans"][0]["name"] == "sync" && l["spans"][0]["source"] == "api"),
            "{bin}: {lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "token stored"),
            "{bin}: {lines:?}"
        );
    }
}
