//! The MySQL/MariaDB side of the harness: a fresh database per test on a real server.
//!
//! Which server, decided once per test process by [`mysql_admin_url`]:
//!
//! 1. `MYSQL_DATABASE_URL`, when set (and not empty). It must answer, or every MySQL test
//!    fails; its user must be allowed to `CREATE DATABASE`.
//! 2. Else the server at `UPSERT_KIT_TEST_MYSQL_PROBE_URL`, by default
//!    `mysql://root@127.0.0.1:3306/test`, when it answers within 2 s. Point the variable where
//!    nothing listens (`mysql://root@127.0.0.1:1/test`) to force the next step; it exists to
//!    test the harness itself.
//! 3. Else a throwaway MariaDB server: `mariadb-install-db` into a temporary directory, then
//!    `mariadbd` on its own port and socket, root without a password. As root it runs with
//!    `--user=mysql` (mariadbd refuses to run as root otherwise). It is stopped and its
//!    directory removed when the test process exits, however it exits (see [`throwaway`]).
//!
//! With none of these the tests fail and say how to provide a server: they never skip.
//!
//! Every [`TestMysql`](crate::TestMysql) is its own database (`upsert_kit_t_<pid>_<counter>_<random>`), dropped
//! when the value is dropped.

use diesel::MysqlConnection;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use upsert_kit::db::{connect_mysql, redact_url, BackendKind};

/// The server tried when `MYSQL_DATABASE_URL` is not set.
pub const DEFAULT_MYSQL_PROBE_URL: &str = "mysql://root@127.0.0.1:3306/test";
/// Overrides [`DEFAULT_MYSQL_PROBE_URL`]; point it where nothing listens to test the throwaway
/// server.
pub const MYSQL_PROBE_URL_VAR: &str = "UPSERT_KIT_TEST_MYSQL_PROBE_URL";
/// The claim tests' `tasks` queue on MySQL/MariaDB: the claim module's documented table with
/// the default column names (`created_at` defaulting to a fixed instant).
pub const TASKS_TABLE: &str = "CREATE TABLE tasks (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    name TEXT NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    locked_until DATETIME(6) NULL,
    holder VARCHAR(200) NULL,
    last_error TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT '2000-01-01 00:00:00',
    KEY tasks_due (status, id))";

/// How long the probed server has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

struct Server {
    url: String,
    /// The throwaway server's watchdog: holding its stdin open keeps the server alive.
    _watchdog: Option<Mutex<std::process::Child>>,
}

/// The MySQL/MariaDB server the tests create their databases on (a URL whose user may
/// `CREATE DATABASE`), found once per process as the module documentation describes.
///
/// # Panics
/// When `MYSQL_DATABASE_URL` is set but does not answer, or when no server can be had at all;
/// the message says how to provide one.
pub fn mysql_admin_url() -> String {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(find_server) {
        Ok(server) => server.url.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Connects to `url` when its host and port accept a TCP connection within `timeout`
/// (Diesel's MySQL connection has no connect timeout of its own).
fn connect_within(url: &str, timeout: Duration) -> Result<MysqlConnection, String> {
    if let Some(addr) = tcp_address(url) {
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .collect();
        let reached = addrs
            .iter()
            .any(|a| std::net::TcpStream::connect_timeout(a, timeout).is_ok());
        if !reached {
            return Err(format!("nothing accepts connections on {addr}"));
        }
    }
    connect_mysql(url).map_err(|e| e.to_string())
}

/// `host:port` of a `mysql://` URL (port 3306 by default), unless it names a Unix socket.
fn tcp_address(url: &str) -> Option<String> {
    if url.contains("unix_socket=") {
        return None;
    }
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    Some(if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else {
        format!("{host_port}:3306")
    })
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn find_server() -> Result<Server, String> {
    if let Some(url) = non_empty_var("MYSQL_DATABASE_URL") {
        if BackendKind::of(&url) != BackendKind::Mysql {
            return Err(format!(
                "MYSQL_DATABASE_URL={} is not a MySQL URL; the MySQL tests need one \
                 (mysql://user:password@host:port/database) or MYSQL_DATABASE_URL unset",
                redact_url(&url)
            ));
        }
        return match connect_within(&url, Duration::from_secs(10)) {
            Ok(_) => Ok(Server {
                url,
                _watchdog: None,
            }),
            Err(e) => Err(format!(
                "MYSQL_DATABASE_URL is set but its server does not answer: {e}\n\
                 Start that server, fix MYSQL_DATABASE_URL, or unset it (the tests then use \
                 {DEFAULT_MYSQL_PROBE_URL}, or start a throwaway MariaDB server from the \
                 binaries mariadb-install-db and mariadbd)."
            )),
        };
    }

    let probe =
        non_empty_var(MYSQL_PROBE_URL_VAR).unwrap_or_else(|| DEFAULT_MYSQL_PROBE_URL.to_owned());
    let probe_error = match connect_within(&probe, PROBE_TIMEOUT) {
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
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "upsert-kit tests: no MySQL server at {} ({probe_error}); started a throwaway \
                 MariaDB server at {url}, removed when this test process exits",
                redact_url(&probe)
            );
            Ok(Server {
                url,
                _watchdog: Some(Mutex::new(watchdog)),
            })
        }
        Err(e) => Err(format!(
            "no MySQL/MariaDB server for the tests:\n\
             - MYSQL_DATABASE_URL is not set;\n\
             - {} does not answer: {probe_error};\n\
             - no throwaway server could be started: {e}\n\
             Provide one: set MYSQL_DATABASE_URL=mysql://user:password@host:port/database (a \
             user allowed to CREATE DATABASE), run a server on 127.0.0.1:3306 that accepts root \
             without a password, or install MariaDB's server (apt-get install mariadb-server: \
             mariadb-install-db, mariadbd).",
            redact_url(&probe)
        )),
    }
}

/// A throwaway MariaDB server for the test process.
///
/// `mariadb-install-db` makes a data directory in a new temporary directory (root without a
/// password, reachable over TCP on 127.0.0.1); `mariadbd` runs on a free port, with its socket,
/// log and pid file in that directory and `--no-defaults` (the machine's `my.cnf` is not read).
/// It runs under a small `sh` watchdog whose stdin is a pipe the test process holds open for its
/// whole life: when the process ends, the kernel closes the pipe, and the watchdog stops the
/// server (`SIGTERM`, then `SIGKILL` after 30 s) and removes the directory. As root, the
/// directory belongs to the `mysql` system user and both programs get `--user=mysql`.
pub mod throwaway {
    use crate::throwaway::{command_output, is_executable, on_path};
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// How long the server may take to accept connections.
    const START_TIMEOUT: Duration = Duration::from_secs(60);
    /// Attempts when another process takes the chosen port before the server binds it.
    const PORT_ATTEMPTS: usize = 3;

    /// The watchdog. `$1` the directory, `$2` the port, `$3` the `mariadbd` binary, `$4` the
    /// `--user=…` option or nothing.
    const WATCHDOG: &str = r#"
dir=$1
"$3" --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --port="$2" --socket="$dir/mysqld.sock" \
    --bind-address=127.0.0.1 --pid-file="$dir/mariadbd.pid" --log-error="$dir/mariadbd.log" \
    --skip-log-bin --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 \
    --max-connections=300 --skip-name-resolve $4 \
    </dev/null >>"$dir/mariadbd.log" 2>&1 &
server=$!
exec 3<&0
(
    cat <&3 >/dev/null
    : >"$dir/stop"
    kill -TERM "$server" 2>/dev/null
    n=0
    while [ "$n" -lt 30 ] && kill -0 "$server" 2>/dev/null; do sleep 1; n=$((n + 1)); done
    kill -0 "$server" 2>/dev/null && kill -KILL "$server"
) &
reader=$!
exec 3<&-
wait "$server"
kill "$reader" 2>/dev/null
if [ -e "$dir/stop" ]; then
    case "$dir" in */upsert-kit-mariadb-*) rm -rf "$dir" ;; esac
fi
"#;

    /// Starts a server; returns its admin URL and the watchdog, whose stdin must stay open as
    /// long as the server is wanted.
    ///
    /// # Errors
    /// Why no server could be started (binaries missing, install or start failed, with the
    /// server's log).
    pub fn start() -> Result<(String, Child), String> {
        let install = find("mariadb-install-db", &["mysql_install_db"])?;
        let server = find("mariadbd", &["mysqld"])?;
        let as_root = command_output("id", &["-u"])? == "0";
        let owner = if as_root { Some(mysql_user()?) } else { None };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match start_once(&install, &server, owner) {
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

    fn start_once(
        install: &Path,
        server: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(String, Child), Failure> {
        let other = Failure::Other;
        let temp = tempfile::Builder::new()
            .prefix("upsert-kit-mariadb-")
            .tempdir()
            .map_err(|e| other(format!("cannot create a temporary directory: {e}")))?;
        let dir = temp.path().to_owned();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| other(format!("cannot restrict {}: {e}", dir.display())))?;
        }
        // A temporary directory of its own: two servers bootstrapping at once in the shared
        // /tmp can collide on their temporary tables' names.
        let tmp = dir.join("tmp");
        fs::create_dir(&tmp).map_err(|e| other(format!("cannot create {}: {e}", tmp.display())))?;
        let user_option = if let Some((uid, gid)) = owner {
            for d in [&dir, &tmp] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).map_err(|e| {
                    other(format!(
                        "cannot give {} to the mysql user: {e}",
                        d.display()
                    ))
                })?;
            }
            "--user=mysql"
        } else {
            ""
        };

        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if !user_option.is_empty() {
            cmd.arg(user_option);
        }
        let out = cmd
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| other(format!("cannot run {}: {e}", install.display())))?;
        if !out.status.success() {
            return Err(other(format!(
                "{} failed ({}):\n{}{}",
                install.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| other(format!("cannot find a free port: {e}")))?
            .port();
        let mut watchdog = {
            use std::os::unix::process::CommandExt;
            Command::new("/bin/sh")
                .args(["-c", WATCHDOG, "upsert-kit-mariadb-watchdog"])
                .arg(&dir)
                .arg(port.to_string())
                .arg(server)
                .arg(user_option)
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

        let url = format!("mysql://root@127.0.0.1:{port}/mysql");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if super::connect_within(&url, Duration::from_secs(2)).is_ok() {
                return Ok((url, watchdog));
            }
            let exited = watchdog.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(dir.join("mariadbd.log")).unwrap_or_default();
                drop(watchdog.stdin.take());
                if exited.is_some() {
                    let _ = fs::remove_dir_all(&dir);
                }
                return Err(
                    if log.contains("Address already in use")
                        || log.contains("Can't start server: Bind")
                    {
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

    /// `name` (or one of its older names) on `PATH`, else in `/usr/sbin` or `/usr/bin`.
    fn find(name: &str, older: &[&str]) -> Result<PathBuf, String> {
        for n in std::iter::once(&name).chain(older) {
            if let Some(p) = on_path(n) {
                return Ok(p);
            }
            for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
                let p = Path::new(dir).join(n);
                if is_executable(&p) {
                    return Ok(p);
                }
            }
        }
        Err(format!(
            "{name} is not on PATH nor in /usr/sbin, /usr/bin (install MariaDB's server: \
             apt-get install mariadb-server)"
        ))
    }

    /// The `mysql` system user's uid and gid (the server refuses to run as root).
    fn mysql_user() -> Result<(u32, u32), String> {
        let id = |flag| {
            command_output("id", &[flag, "mysql"])?
                .parse::<u32>()
                .map_err(|e| format!("id {flag} mysql: {e}"))
        };
        match (id("-u"), id("-g")) {
            (Ok(uid), Ok(gid)) => Ok((uid, gid)),
            (Err(e), _) | (_, Err(e)) => Err(format!(
                "running as root, and there is no mysql system user for mariadbd's --user \
                 ({e}); create one (useradd --system mysql) or run the tests as another user"
            )),
        }
    }
}
