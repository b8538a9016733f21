//! Helpers of the sync jobs' end-to-end tests: a scripted HTTP server on 127.0.0.1 standing in
//! for the Strava and WakaTime APIs, the binaries' commands, and database snapshots.
#![allow(dead_code)]

use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::db::BackendKind;

/// In a [`Reply`]'s body: replaced by the request's body, as it was received.
pub const ECHO_BODY: &str = "{{request_body}}";
/// In a [`Reply`]'s body: replaced by the request's body as the inside of a JSON string.
pub const ECHO_BODY_JSON: &str = "{{request_body_json}}";
/// In a [`Reply`]'s body: replaced by the request's `Authorization` header (JSON-escaped).
pub const ECHO_AUTHORIZATION: &str = "{{authorization}}";

/// One scripted answer. Its body may echo the request ([`ECHO_BODY`], [`ECHO_BODY_JSON`],
/// [`ECHO_AUTHORIZATION`]), as a token endpoint or a proxy error page may.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waits this long before answering (to make concurrent runs overlap).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct State {
    routes: HashMap<(String, String), Reply>,
    seen: Vec<Seen>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (one thread per connection, `Connection: close`),
/// answering `METHOD path` with the scripted [`Reply`] (404 otherwise) and recording every
/// request. Lives as long as the test process; each test starts its own.
pub struct FakeApi {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        FakeApi { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn on(&self, method: &str, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert((method.to_owned(), path.to_owned()), reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_owned();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let echo_body = String::from_utf8_lossy(&body).into_owned();
    let echo_auth = authorization.clone().unwrap_or_default();
    let json_inner = |s: &str| {
        let quoted = serde_json::to_string(s).unwrap();
        quoted[1..quoted.len() - 1].to_owned()
    };
    let mut reply = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            authorization,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        st.routes
            .get(&(method, path))
            .cloned()
            .unwrap_or_else(|| Reply::json(404, r#"{"message":"Record Not Found"}"#))
    };
    reply.body = reply
        .body
        .replace(ECHO_BODY_JSON, &json_inner(&echo_body))
        .replace(ECHO_BODY, &echo_body)
        .replace(ECHO_AUTHORIZATION, &json_inner(&echo_auth));
    std::thread::sleep(reply.delay);
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(reply.body.as_bytes())?;
    out.flush()
}

/// The crate's example captures.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(name)
}

pub fn example_text(name: &str) -> String {
    std::fs::read_to_string(example(name)).unwrap()
}

/// The environment variables the binaries read, removed so the tests are hermetic.
pub const JOB_ENV: &[&str] = &[
    "DATABASE_URL",
    "RUST_LOG",
    "STRAVA_CLIENT_ID",
    "STRAVA_CLIENT_SECRET",
    "STRAVA_REFRESH_TOKEN",
    "STRAVA_ACCOUNT",
    "STRAVA_ATHLETE_ID",
    "STRAVA_API_BASE",
    "WAKATIME_CLIENT_ID",
    "WAKATIME_CLIENT_SECRET",
    "WAKATIME_REDIRECT_URI",
    "WAKATIME_REFRESH_TOKEN",
    "WAKATIME_ACCOUNT",
    "WAKATIME_RANGES",
    "WAKATIME_API_BASE",
    "WAKATIME_OAUTH_BASE",
];

/// The real binary `bin` with a clean environment and `--database-url url`.
pub fn job(bin: &str, url: &str) -> assert_cmd::Command {
    let path = match bin {
        "strava-sync" => assert_cmd::cargo::cargo_bin!("strava-sync"),
        "wakatime-sync" => assert_cmd::cargo::cargo_bin!("wakatime-sync"),
        other => panic!("no binary {other}"),
    };
    let mut cmd = assert_cmd::Command::new(path);
    for var in JOB_ENV {
        cmd.env_remove(var);
    }
    cmd.arg("--database-url")
        .arg(url)
        .timeout(Duration::from_secs(60));
    cmd
}

/// The same as [`job`], as a `std::process::Command` (for processes started together).
pub fn job_std(bin: &str, url: &str) -> std::process::Command {
    let path = match bin {
        "strava-sync" => assert_cmd::cargo::cargo_bin!("strava-sync"),
        "wakatime-sync" => assert_cmd::cargo::cargo_bin!("wakatime-sync"),
        other => panic!("no binary {other}"),
    };
    let mut cmd = std::process::Command::new(path);
    for var in JOB_ENV {
        cmd.env_remove(var);
    }
    cmd.arg("--database-url").arg(url);
    cmd
}

/// The `--json` summary of a successful run.
pub fn summary(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `(inserted, updated, unchanged, auth)` of a summary.
pub fn counts(v: &serde_json::Value) -> (u64, u64, u64, String) {
    (
        v["stats"]["inserted"].as_u64().unwrap(),
        v["stats"]["updated"].as_u64().unwrap(),
        v["stats"]["unchanged"].as_u64().unwrap(),
        v["auth"].as_str().unwrap().to_owned(),
    )
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// Every row of the jobs' four tables, as text (stats with their data and timestamps, tokens
/// with theirs), sorted: equal snapshots mean an unchanged database.
pub fn snapshot(url: &str) -> Vec<String> {
    let (stats, auth) = match BackendKind::of(url) {
        BackendKind::Postgres => (
            "stats_type || '|' || data::text || '|' || created_at::text || '|' || updated_at::text",
            "id::text || '|' || access_token || '|' || refresh_token || '|' || expires_at::text || '|' || updated_at::text",
        ),
        BackendKind::Sqlite => (
            "stats_type || '|' || json(data) || '|' || created_at || '|' || updated_at",
            "id || '|' || access_token || '|' || refresh_token || '|' || expires_at || '|' || updated_at",
        ),
        BackendKind::Mysql => (
            "CONCAT_WS('|', stats_type, data, created_at, updated_at)",
            "CONCAT_WS('|', id, access_token, refresh_token, expires_at, updated_at)",
        ),
    };
    let concat = |prefix: &str, body: &str| match BackendKind::of(url) {
        BackendKind::Mysql => format!("CONCAT('{prefix}|', {body})"),
        _ => format!("'{prefix}|' || {body}"),
    };
    let sql = format!(
        "SELECT {} AS line FROM strava_stats \
         UNION ALL SELECT {} FROM wakatime_stats \
         UNION ALL SELECT {} FROM strava_auth \
         UNION ALL SELECT {} FROM wakatime_auth",
        concat("strava_stats", stats),
        concat("wakatime_stats", stats),
        concat("strava_auth", auth),
        concat("wakatime_auth", auth)
    );
    let mut lines: Vec<String> = match BackendKind::of(url) {
        BackendKind::Postgres => {
            let mut c = PgConnection::establish(url).unwrap();
            diesel::sql_query(sql).load::<Line>(&mut c).unwrap()
        }
        BackendKind::Sqlite => {
            let mut c = SqliteConnection::establish(url).unwrap();
            diesel::sql_query(sql).load::<Line>(&mut c).unwrap()
        }
        BackendKind::Mysql => {
            let mut c = upsert_kit::db::connect_mysql(url).unwrap();
            diesel::sql_query(sql).load::<Line>(&mut c).unwrap()
        }
    }
    .into_iter()
    .map(|l| l.line)
    .collect();
    lines.sort();
    lines
}

/// Rows per stats type in `table` (`strava_stats` or `wakatime_stats`).
pub fn rows_per_type(url: &str, table: &str) -> Vec<(String, i64)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        stats_type: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count = match BackendKind::of(url) {
        BackendKind::Mysql => "CAST(COUNT(*) AS SIGNED)",
        _ => "CAST(COUNT(*) AS BIGINT)",
    };
    let sql = format!(
        "SELECT stats_type, {count} AS n FROM {table} GROUP BY stats_type ORDER BY stats_type"
    );
    let rows = match BackendKind::of(url) {
        BackendKind::Postgres => {
            let mut c = PgConnection::establish(url).unwrap();
            diesel::sql_query(sql).load::<Row>(&mut c).unwrap()
        }
        BackendKind::Sqlite => {
            let mut c = SqliteConnection::establish(url).unwrap();
            diesel::sql_query(sql).load::<Row>(&mut c).unwrap()
        }
        BackendKind::Mysql => {
            let mut c = upsert_kit::db::connect_mysql(url).unwrap();
            diesel::sql_query(sql).load::<Row>(&mut c).unwrap()
        }
    };
    rows.into_iter().map(|r| (r.stats_type, r.n)).collect()
}

/// Runs `sql` (a fixed statement of the test's own) on the database.
pub fn execute(url: &str, sql: &str) {
    match BackendKind::of(url) {
        BackendKind::Postgres => {
            diesel::sql_query(sql)
                .execute(&mut PgConnection::establish(url).unwrap())
                .unwrap();
        }
        BackendKind::Sqlite => {
            diesel::sql_query(sql)
                .execute(&mut SqliteConnection::establish(url).unwrap())
                .unwrap();
        }
        BackendKind::Mysql => {
            diesel::sql_query(sql)
                .execute(&mut upsert_kit::db::connect_mysql(url).unwrap())
                .unwrap();
        }
    }
}
