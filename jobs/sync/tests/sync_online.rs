//! End-to-end tests of the real `strava-sync` and `wakatime-sync` binaries online, against a
//! scripted HTTP server on 127.0.0.1 (no outside network): token refresh, API errors, and
//! runs started together.

mod sync_support;

use diesel::RunQueryDsl;
use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use sync_jobs::db::{MYSQL_MIGRATIONS, PG_MIGRATIONS, SQLITE_MIGRATIONS};
use sync_jobs::SyncConnection;
use sync_support::*;
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

const ATHLETE: i64 = 134815;
const STATS_PATH: &str = "/athletes/134815/stats";
const CLIENT_SECRET: &str = "client-secret-xyz";
const BOOTSTRAP: &str = "bootstrap-refresh-token";

fn in_six_hours() -> i64 {
    chrono::Utc::now().timestamp() + 6 * 3600
}

fn strava_token(n: u32) -> String {
    json!({
        "token_type": "Bearer",
        "access_token": format!("fresh-access-{n}"),
        "refresh_token": format!("fresh-refresh-{n}"),
        "expires_at": in_six_hours() + i64::from(n),
        "expires_in": 21600
    })
    .to_string()
}

fn strava_stats() -> String {
    let capture: Value = serde_json::from_str(&example_text("strava.json")).unwrap();
    capture["stats"].to_string()
}

/// A scripted Strava: the token endpoint hands out `fresh-access-1`, the stats endpoint
/// answers with the example's stats.
fn strava_api() -> FakeApi {
    let api = FakeApi::start();
    api.on("POST", "/oauth/token", Reply::json(200, strava_token(1)));
    api.on("GET", STATS_PATH, Reply::json(200, strava_stats()));
    api
}

fn strava_online(api: &FakeApi, url: &str) -> assert_cmd::Command {
    let mut cmd = job("strava-sync", url);
    cmd.env("STRAVA_CLIENT_ID", "4242")
        .env("STRAVA_CLIENT_SECRET", CLIENT_SECRET)
        .env("STRAVA_REFRESH_TOKEN", BOOTSTRAP)
        .env("RUST_LOG", "trace")
        .args(["--json", "--timeout", "10", "--athlete-id"])
        .arg(ATHLETE.to_string())
        .arg("--api-base")
        .arg(api.url());
    cmd
}

/// Stores an already-expired token for account 1, as if the last refresh was long ago.
fn store_expired_strava_token(url: &str) {
    execute(url, "DELETE FROM strava_auth");
    execute(
        url,
        "INSERT INTO strava_auth (id, athlete_id, access_token, refresh_token, expires_at, updated_at) \
         VALUES (1, 134815, 'old-access', 'old-refresh', '2020-01-01 00:00:00', '2020-01-01 00:00:00')",
    );
}

fn assert_no_secret(out: &std::process::Output, secrets: &[&str]) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in secrets {
        assert!(!all.contains(s), "secret {s:?} printed: {all}");
    }
}

fn on_both_backends(f: impl Fn(&str)) {
    let pg = TestDb::migrated(PG_MIGRATIONS);
    f(pg.url());
    let lite = TestSqlite::migrated(SQLITE_MIGRATIONS);
    f(lite.url());
}

#[test]
fn strava_refreshes_a_missing_or_expiring_token_once_and_reuses_a_fresh_one() {
    on_both_backends(|url| {
        let api = strava_api();
        // No stored token: start from STRAVA_REFRESH_TOKEN.
        let out = strava_online(&api, url).output().unwrap();
        assert_no_secret(
            &out,
            &[
                CLIENT_SECRET,
                BOOTSTRAP,
                "fresh-access-1",
                "fresh-refresh-1",
            ],
        );
        assert_eq!(counts(&summary(&out)), (3, 0, 0, "inserted".into()));
        let seen = api.seen();
        let refresh = seen.iter().find(|s| s.path == "/oauth/token").unwrap();
        for field in [
            "client_id=4242",
            "client_secret=client-secret-xyz",
            "grant_type=refresh_token",
            "refresh_token=bootstrap-refresh-token",
        ] {
            assert!(
                refresh.body.contains(field),
                "{field} in {:?}",
                refresh.body
            );
        }
        let stats = seen.iter().find(|s| s.path == STATS_PATH).unwrap();
        assert_eq!(
            stats.authorization.as_deref(),
            Some("Bearer fresh-access-1")
        );

        // The stored token is fresh: no refresh, nothing new to write.
        let out = strava_online(&api, url).output().unwrap();
        assert_eq!(counts(&summary(&out)), (0, 0, 3, "none".into()));
        assert_eq!(api.count("POST", "/oauth/token"), 1);

        // The token is about to expire: refreshed with the stored refresh token, not the
        // bootstrap one, and the new access token is used.
        execute(
            url,
            "UPDATE strava_auth SET expires_at = '2020-01-01 00:00:00'",
        );
        api.on("POST", "/oauth/token", Reply::json(200, strava_token(2)));
        let out = strava_online(&api, url).output().unwrap();
        assert_eq!(counts(&summary(&out)), (0, 0, 3, "updated".into()));
        let seen = api.seen();
        let refreshes: Vec<_> = seen.iter().filter(|s| s.path == "/oauth/token").collect();
        assert_eq!(refreshes.len(), 2);
        assert!(refreshes[1].body.contains("refresh_token=fresh-refresh-1"));
        let last_stats = seen.iter().rev().find(|s| s.path == STATS_PATH).unwrap();
        assert_eq!(
            last_stats.authorization.as_deref(),
            Some("Bearer fresh-access-2")
        );
        assert_eq!(rows_per_type(url, "strava_stats").len(), 3);
    });
}

#[test]
fn api_errors_fail_with_one_clear_line_and_leave_the_database_unchanged() {
    on_both_backends(|url| {
        let api = strava_api();
        summary(&strava_online(&api, url).output().unwrap());
        let before = snapshot(url);
        let stats_cases = [
            (
                "401",
                Reply::json(401, r#"{"message":"Authorization Error"}"#),
                "answered 401 Unauthorized: the access token was refused",
            ),
            (
                "429 with Retry-After",
                Reply::json(429, r#"{"message":"Rate Limit Exceeded"}"#)
                    .header("Retry-After", "120"),
                "answered 429 Too Many Requests: rate limited, retry after 120 s",
            ),
            (
                "429 without Retry-After",
                Reply::json(429, "{}"),
                "rate limited, retry later (no Retry-After given)",
            ),
            (
                "500",
                Reply::json(500, r#"{"message":"Internal Server Error"}"#),
                "answered 500 (a server error at the API; try again later): Internal Server Error",
            ),
            (
                "truncated body",
                Reply::json(200, r#"{"recent_ride_totals": {"#),
                "truncated JSON",
            ),
            (
                "missing field",
                Reply::json(200, r#"{"recent_ride_totals": {}}"#),
                "recent_ride_totals.count: missing field",
            ),
        ];
        for (case, reply, expected) in stats_cases {
            api.on("GET", STATS_PATH, reply);
            let out = strava_online(&api, url).output().unwrap();
            assert_failed_with(
                &out,
                "strava-sync",
                &format!("GET {}{STATS_PATH}", api.url()),
                case,
            );
            assert_failed_with(&out, "strava-sync", expected, case);
            assert_eq!(snapshot(url), before, "{case}: the database changed");
        }

        // A refresh the API refuses: nothing is written, the old token stays.
        api.on("GET", STATS_PATH, Reply::json(200, strava_stats()));
        execute(
            url,
            "UPDATE strava_auth SET expires_at = '2020-01-01 00:00:00'",
        );
        let before = snapshot(url);
        for (case, reply, expected) in [
            (
                "refresh 400",
                Reply::json(
                    400,
                    r#"{"message":"Bad Request","errors":[{"resource":"RefreshToken","field":"refresh_token","code":"invalid"}]}"#,
                ),
                "/oauth/token answered 400: Bad Request",
            ),
            (
                "refresh 500",
                Reply::json(500, "<html>oops</html>"),
                "/oauth/token answered 500 (a server error at the API; try again later)",
            ),
            (
                "refresh without expiry",
                Reply::json(200, r#"{"access_token":"a","refresh_token":"r"}"#),
                "expires_at: missing field",
            ),
        ] {
            api.on("POST", "/oauth/token", reply);
            let out = strava_online(&api, url).output().unwrap();
            assert_failed_with(&out, "strava-sync", expected, case);
            assert_eq!(snapshot(url), before, "{case}: the database changed");
        }

        // Nothing listens: a transport error naming the request.
        let out = job("strava-sync", url)
            .env("STRAVA_CLIENT_ID", "4242")
            .env("STRAVA_CLIENT_SECRET", CLIENT_SECRET)
            .args(["--api-base", "http://127.0.0.1:1", "--timeout", "5"])
            .output()
            .unwrap();
        assert_failed_with(
            &out,
            "strava-sync",
            "POST http://127.0.0.1:1/oauth/token failed:",
            "refused",
        );
        assert_eq!(snapshot(url), before, "refused: the database changed");
    });
}

#[test]
fn a_refreshed_token_is_kept_when_the_stats_request_then_fails() {
    // The API retires the old refresh token when it hands out a new one: rolling the new one
    // back because the stats request failed would lock the account out.
    let lite = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let url = lite.url();
    let api = strava_api();
    store_expired_strava_token(url);
    api.on("GET", STATS_PATH, Reply::json(503, "{}"));
    let out = strava_online(&api, url).output().unwrap();
    assert_failed_with(&out, "strava-sync", "answered 503", "503 after refresh");
    let tokens: Vec<String> = snapshot(url)
        .into_iter()
        .filter(|l| l.starts_with("strava_auth|"))
        .collect();
    assert!(
        tokens[0].contains("|fresh-access-1|fresh-refresh-1|"),
        "{tokens:?}"
    );
    assert!(
        rows_per_type(url, "strava_stats").is_empty(),
        "no stats were written"
    );
}

#[test]
fn without_a_stored_token_or_a_refresh_token_the_run_says_what_to_set() {
    let lite = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let api = strava_api();
    let out = job("strava-sync", lite.url())
        .args(["--api-base", &api.url()])
        .output()
        .unwrap();
    assert_failed_with(
        &out,
        "strava-sync",
        "configuration: no Strava token is stored for account 1: set STRAVA_REFRESH_TOKEN",
        "no token",
    );
    assert_eq!(api.seen().len(), 0);
    assert!(snapshot(lite.url()).is_empty());
}

fn assert_failed_with(out: &std::process::Output, bin: &str, expected: &str, case: &str) {
    assert!(!out.status.success(), "{case}: the run succeeded");
    assert_no_secret(
        out,
        &[
            CLIENT_SECRET,
            BOOTSTRAP,
            "fresh-access",
            "fresh-refresh",
            "old-access",
            "old-refresh",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{bin}: error: ")))
        .collect();
    assert_eq!(errors.len(), 1, "{case}: one error line in {stderr}");
    assert!(
        errors[0].contains(expected),
        "{case}: expected {expected:?} in {:?}",
        errors[0]
    );
}

#[test]
fn wakatime_refreshes_its_token_and_fetches_each_configured_range() {
    on_both_backends(|url| {
        let api = FakeApi::start();
        let expires = chrono::DateTime::from_timestamp(in_six_hours(), 0).unwrap();
        api.on(
            "POST",
            "/oauth/token",
            // WakaTime answers token requests form-encoded unless it honours the Accept header.
            Reply::json(
                200,
                format!(
                    "access_token=waka-access-1&refresh_token=waka-refresh-1&uid=user-1\
                     &token_type=bearer&scope=read_stats&expires_at={}",
                    expires.format("%Y-%m-%dT%H%%3A%M%%3A%SZ")
                ),
            )
            .header("Content-Type", "application/x-www-form-urlencoded"),
        );
        let capture: Value = serde_json::from_str(&example_text("wakatime.json")).unwrap();
        for (range, response) in capture["stats"].as_object().unwrap() {
            api.on(
                "GET",
                &format!("/api/v1/users/current/stats/{range}"),
                Reply::json(200, response.to_string()),
            );
        }
        let run = || {
            job("wakatime-sync", url)
                .env("WAKATIME_CLIENT_ID", "app")
                .env("WAKATIME_CLIENT_SECRET", CLIENT_SECRET)
                .env("WAKATIME_REFRESH_TOKEN", BOOTSTRAP)
                .env("RUST_LOG", "trace")
                .args(["--json", "--range", "last_7_days,all_time"])
                .arg("--api-base")
                .arg(format!("{}/api/v1", api.url()))
                .arg("--oauth-base")
                .arg(api.url())
                .output()
                .unwrap()
        };
        let out = run();
        assert_no_secret(
            &out,
            &[CLIENT_SECRET, BOOTSTRAP, "waka-access-1", "waka-refresh-1"],
        );
        assert_eq!(counts(&summary(&out)), (2, 0, 0, "inserted".into()));
        assert_eq!(counts(&summary(&run())), (0, 0, 2, "none".into()));
        assert_eq!(api.count("POST", "/oauth/token"), 1);
        let refresh = api.seen().into_iter().find(|s| s.method == "POST").unwrap();
        assert!(
            refresh.body.contains("grant_type=refresh_token")
                && refresh
                    .body
                    .contains("refresh_token=bootstrap-refresh-token")
                && refresh.body.contains("client_id=app"),
            "{}",
            refresh.body
        );
        assert!(
            snapshot(url)
                .iter()
                .any(|l| l.starts_with("wakatime_auth|1|waka-access-1|waka-refresh-1|")),
            "the form-encoded token was stored"
        );
        let stats: Vec<_> = api
            .seen()
            .into_iter()
            .filter(|s| s.method == "GET")
            .collect();
        assert_eq!(stats.len(), 4);
        assert!(stats
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer waka-access-1")));
        assert_eq!(
            rows_per_type(url, "wakatime_stats"),
            [("all_time".into(), 1), ("last_7_days".into(), 1)]
        );

        api.on(
            "GET",
            "/api/v1/users/current/stats/all_time",
            Reply::json(429, "{}").header("Retry-After", "30"),
        );
        let before = snapshot(url);
        let out = run();
        assert_failed_with(
            &out,
            "wakatime-sync",
            "stats/all_time answered 429 Too Many Requests: rate limited, retry after 30 s",
            "429",
        );
        assert_eq!(snapshot(url), before, "429: the database changed");
    });
}

/// `runs` processes of the real binary released together; their outputs.
fn run_together(
    runs: usize,
    make: impl Fn() -> std::process::Command + Send + Sync + 'static,
) -> Vec<std::process::Output> {
    upsert_kit_support::race(runs, move |_| make().output().unwrap())
}

/// The naive refresh every run would do without the lock: read the token, see it expired, ask
/// the API for a new one, store it. The runs are released together, and a second barrier holds
/// each one between its read and its refresh until every run has read: the interleaving that
/// concurrent cron runs can hit, forced, so the count does not depend on timing. Returns how
/// many refreshes the runs made; the stored token is expired again afterwards.
fn naive_refreshes(url: &str, api: &FakeApi, runs: usize) -> usize {
    let before = api.count("POST", "/oauth/token");
    let all_read = Arc::new(Barrier::new(runs));
    let token_url = format!("{}/oauth/token", api.url());
    let db_url = url.to_owned();
    upsert_kit_support::race(runs, move |i| {
        let stored = match upsert_kit::db::BackendKind::of(&db_url) {
            upsert_kit::db::BackendKind::Mysql => upsert_kit::db::connect_mysql(&db_url)
                .unwrap()
                .strava_token(1),
            _ => upsert_kit::db::connect_pg(&db_url).unwrap().strava_token(1),
        }
        .unwrap()
        .unwrap();
        all_read.wait();
        if stored.expires_at < chrono::Utc::now().naive_utc() {
            ureq::post(&token_url)
                .send_form([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "old-refresh"),
                ])
                .unwrap();
            // The naive store: an unconditional UPDATE, whoever finishes last wins.
            let expires = chrono::Utc::now().naive_utc() + chrono::Duration::hours(6);
            let access = format!("naive-access-{i}");
            match upsert_kit::db::BackendKind::of(&db_url) {
                upsert_kit::db::BackendKind::Mysql => diesel::sql_query(
                    "UPDATE strava_auth SET access_token = ?, expires_at = ? WHERE id = 1",
                )
                .bind::<diesel::sql_types::Text, _>(access)
                .bind::<diesel::sql_types::Timestamp, _>(expires)
                .execute(&mut upsert_kit::db::connect_mysql(&db_url).unwrap()),
                _ => diesel::sql_query(
                    "UPDATE strava_auth SET access_token = $1, expires_at = $2 WHERE id = 1",
                )
                .bind::<diesel::sql_types::Text, _>(access)
                .bind::<diesel::sql_types::Timestamp, _>(expires)
                .execute(&mut upsert_kit::db::connect_pg(&db_url).unwrap()),
            }
            .unwrap();
        }
    });
    store_expired_strava_token(url);
    api.count("POST", "/oauth/token") - before
}

#[test]
fn eight_strava_sync_processes_started_together_refresh_the_token_once() {
    eight_runs_refresh_once(Where::Direct);
}

/// The same eight runs on MariaDB, where the token transaction runs inside the named lock
/// (`GET_LOCK`) of the account, at the server's default REPEATABLE READ.
#[test]
fn eight_strava_sync_processes_on_mariadb_refresh_the_token_once() {
    eight_runs_refresh_once(Where::Mysql);
}

/// Where [`eight_runs_refresh_once`] runs.
#[derive(Clone, Copy, PartialEq)]
enum Where {
    Direct,
    Pooler,
    Mysql,
}

/// The same eight runs through PgBouncer in transaction mode, with the crate's pooler mode on
/// (`?upsert_kit_pooler=transaction`): the token lock is transaction-scoped, so it holds
/// there too (RELIABILITY case 28).
#[test]
fn eight_strava_sync_processes_through_pgbouncer_in_pooler_mode_refresh_the_token_once() {
    eight_runs_refresh_once(Where::Pooler);
}

/// Eight `strava-sync` runs started together on an expired token, on the database directly or
/// through the test process's PgBouncer in pooler mode: one refresh, each row written once.
fn eight_runs_refresh_once(place: Where) {
    const RUNS: usize = 8;
    enum Db {
        Pg(TestDb),
        My(TestMysql),
    }
    let db = match place {
        Where::Mysql => {
            let db = TestMysql::new();
            sync_jobs::db::run_migrations(&mut db.conn()).unwrap();
            let _ = MYSQL_MIGRATIONS;
            Db::My(db)
        }
        _ => Db::Pg(TestDb::migrated(PG_MIGRATIONS)),
    };
    let direct_url = match &db {
        Db::Pg(db) => db.url().to_owned(),
        Db::My(db) => db.url().to_owned(),
    };
    let api = strava_api();
    // A slow token endpoint makes the runs overlap while the first one refreshes.
    api.on(
        "POST",
        "/oauth/token",
        Reply::json(200, strava_token(1)).delay(Duration::from_millis(300)),
    );
    store_expired_strava_token(&direct_url);
    let naive = naive_refreshes(&direct_url, &api, RUNS);

    let before = api.count("POST", "/oauth/token");
    let url = match (&db, place) {
        (Db::Pg(db), Where::Pooler) => db.pooled_url(),
        _ => direct_url.clone(),
    };
    let base = api.url();
    let outputs = run_together(RUNS, move || {
        let mut cmd = job_std("strava-sync", &url);
        cmd.env("STRAVA_CLIENT_ID", "4242")
            .env("STRAVA_CLIENT_SECRET", CLIENT_SECRET)
            .args(["--json", "--api-base", &base]);
        cmd
    });
    let refreshes = api.count("POST", "/oauth/token") - before;
    eprintln!(
        "{RUNS} runs started together with an expired token: naive read-refresh made {naive} \
         refreshes; strava-sync made {refreshes}"
    );
    let summaries: Vec<Value> = outputs.iter().map(summary).collect();
    assert_eq!(
        naive, RUNS,
        "every naive run read the expired token before any stored a new one, so each should \
         have refreshed; saw {naive} refreshes from {RUNS} runs"
    );
    assert_eq!(
        refreshes, 1,
        "{RUNS} strava-sync runs started together should refresh exactly once; saw {refreshes}"
    );
    let auth: Vec<&str> = summaries
        .iter()
        .map(|s| s["auth"].as_str().unwrap())
        .collect();
    assert_eq!(
        auth.iter().filter(|a| **a == "updated").count(),
        1,
        "{auth:?}"
    );
    assert_eq!(
        auth.iter().filter(|a| **a == "none").count(),
        RUNS - 1,
        "{auth:?}"
    );
    let total = |k: &str| {
        summaries
            .iter()
            .map(|s| s["stats"][k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (total("inserted"), total("updated"), total("unchanged")),
        (3, 0, 3 * RUNS as u64 - 3)
    );
    assert_eq!(
        rows_per_type(&direct_url, "strava_stats"),
        [
            ("all_time".into(), 1),
            ("recent".into(), 1),
            ("ytd".into(), 1)
        ]
    );
    let bearers: Vec<_> = api
        .seen()
        .into_iter()
        .filter(|s| s.path == STATS_PATH)
        .map(|s| s.authorization.unwrap())
        .collect();
    assert_eq!(bearers.len(), RUNS);
    assert!(
        bearers.iter().all(|b| b == "Bearer fresh-access-1"),
        "{bearers:?}"
    );
}

#[test]
fn eight_strava_sync_processes_on_one_sqlite_file_refresh_the_token_once() {
    const RUNS: usize = 8;
    let lite = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let api = strava_api();
    api.on(
        "POST",
        "/oauth/token",
        Reply::json(200, strava_token(1)).delay(Duration::from_millis(100)),
    );
    store_expired_strava_token(lite.url());
    let url = lite.url().to_owned();
    let base = api.url();
    let outputs = run_together(RUNS, move || {
        let mut cmd = job_std("strava-sync", &url);
        cmd.env("STRAVA_CLIENT_ID", "4242")
            .env("STRAVA_CLIENT_SECRET", CLIENT_SECRET)
            .args(["--json", "--api-base", &base]);
        cmd
    });
    let summaries: Vec<Value> = outputs.iter().map(summary).collect();
    assert_eq!(api.count("POST", "/oauth/token"), 1, "exactly one refresh");
    let total = |k: &str| {
        summaries
            .iter()
            .map(|s| s["stats"][k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (total("inserted"), total("updated"), total("unchanged")),
        (3, 0, 3 * RUNS as u64 - 3)
    );
    assert_eq!(rows_per_type(lite.url(), "strava_stats").len(), 3);
}

#[test]
fn eight_offline_runs_on_a_fresh_postgres_database_migrate_once_and_write_each_row_once() {
    const RUNS: usize = 8;
    let db = TestDb::new();
    let url = db.url().to_owned();
    let capture = example("wakatime.json");
    let outputs = run_together(RUNS, move || {
        let mut cmd = job_std("wakatime-sync", &url);
        cmd.arg("--json").arg("--from-file").arg(&capture);
        cmd
    });
    let summaries: Vec<Value> = outputs.iter().map(summary).collect();
    let total = |k: &str| {
        summaries
            .iter()
            .map(|s| s["stats"][k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (total("inserted"), total("updated"), total("unchanged")),
        (5, 0, 5 * RUNS as u64 - 5)
    );
    let auth_inserted = summaries.iter().filter(|s| s["auth"] == "inserted").count();
    assert_eq!(auth_inserted, 1);
    assert_eq!(rows_per_type(db.url(), "wakatime_stats").len(), 5);
}
