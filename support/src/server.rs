//! One test-database type for every database server: [`ServerDb`], over a [`Server`] that says
//! how that server's databases are made and dropped. [`TestDb`](crate::TestDb) is
//! `ServerDb<Postgres>` and [`TestMysql`](crate::TestMysql) is `ServerDb<Mysql>`; SQLite's
//! file-per-test is [`TestSqlite`](crate::TestSqlite).

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel::RunQueryDsl;
use std::marker::PhantomData;
use upsert_kit::redact::redact_url;

/// A database server the tests make databases on.
pub trait Server: Send + Sync + 'static {
    /// The server's connection.
    type Connection: R2D2Connection + SimpleConnection + Send + 'static;

    /// The server as messages name it.
    const BACKEND: &'static str;

    /// The URL of a user allowed to `CREATE DATABASE` on the test server, found or started as
    /// the server's harness says ([`crate::admin_url`], [`crate::mysql_admin_url`]).
    fn admin_url() -> String;

    /// A connection to `url`.
    ///
    /// # Errors
    /// The library's error (its message never holds the URL's password).
    fn connect(url: &str) -> upsert_kit::Result<Self::Connection>;

    /// A pool of `size` connections to `url`.
    ///
    /// # Errors
    /// As [`Server::connect`].
    fn pool(url: &str, size: u32) -> upsert_kit::Result<Pool<ConnectionManager<Self::Connection>>>;

    /// Creates the database `name` (ours, made of `[a-z0-9_]` only: identifiers cannot be
    /// bound).
    ///
    /// # Errors
    /// The server's message.
    fn create(admin: &mut Self::Connection, name: &str) -> Result<(), String>;

    /// Drops the database `name` and ends the sessions still on it.
    ///
    /// # Errors
    /// The server's message.
    fn drop(admin: &mut Self::Connection, name: &str) -> Result<(), String>;
}

/// A fresh database of its own on a test server, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct ServerDb<S: Server> {
    name: String,
    url: String,
    admin_url: String,
    _server: PhantomData<fn() -> S>,
}

impl<S: Server> ServerDb<S> {
    /// A new, empty database on [`Server::admin_url`]'s server.
    ///
    /// # Panics
    /// When there is no server or the database cannot be created.
    pub fn new() -> Self {
        Self::on(&S::admin_url()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new database in which `sql` (statements separated by `;`) has run: test-only tables.
    ///
    /// # Panics
    /// As [`ServerDb::new`], and when the SQL fails.
    pub fn with_sql(sql: &str) -> Self {
        let db = Self::new();
        db.conn()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("cannot set up test database {}: {e}", db.name));
        db
    }

    /// A new, empty database on the server of `admin_url` (a URL whose user may
    /// `CREATE DATABASE`), for tools that are told their server: the race report's
    /// `--database-url`. Dropped, with its connections, on drop.
    ///
    /// # Errors
    /// A message (never holding the URL's password) when the server does not answer or
    /// refuses to create the database.
    pub fn on(admin_url: &str) -> Result<Self, String> {
        let name = crate::unique_database_name();
        let mut admin = S::connect(admin_url).map_err(|e| e.to_string())?;
        S::create(&mut admin, &name).map_err(|e| {
            format!(
                "cannot create test database {name} on {}: {e}",
                redact_url(admin_url)
            )
        })?;
        Ok(ServerDb {
            url: crate::with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
            _server: PhantomData,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the database, for [`upsert_kit::db`] and the binaries' `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the database.
    pub fn conn(&self) -> S::Connection {
        S::connect(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new pool of `size` connections to the database.
    pub fn pool(&self, size: u32) -> Pool<ConnectionManager<S::Connection>> {
        S::pool(&self.url, size).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<S: Server> Default for ServerDb<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Server> Drop for ServerDb<S> {
    fn drop(&mut self) {
        // Errors are ignored: a leftover database is harmless and is reported here only.
        let dropped = S::connect(&self.admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut admin| S::drop(&mut admin, &self.name));
        if let Err(e) = dropped {
            eprintln!(
                "upsert-kit tests: cannot drop test database {}: {e}",
                self.name
            );
        }
    }
}

/// PostgreSQL: [`crate::admin_url`]'s server.
#[derive(Debug)]
pub struct Postgres;

impl Server for Postgres {
    type Connection = diesel::PgConnection;
    const BACKEND: &'static str = "PostgreSQL";

    fn admin_url() -> String {
        crate::admin_url()
    }

    fn connect(url: &str) -> upsert_kit::Result<Self::Connection> {
        upsert_kit::db::connect_pg(url)
    }

    fn pool(url: &str, size: u32) -> upsert_kit::Result<Pool<ConnectionManager<Self::Connection>>> {
        upsert_kit::db::pg_pool(url, size)
    }

    fn create(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        let create = format!("CREATE DATABASE \"{name}\"");
        // CREATE DATABASE fails while another session is connected to the template database
        // (someone's psql on template1): wait a little for it to go away.
        let mut attempt = 0;
        loop {
            match diesel::sql_query(&create).execute(admin) {
                Ok(_) => return Ok(()),
                Err(e)
                    if attempt < 20 && e.to_string().contains("being accessed by other users") =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn drop(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        // FORCE ends the connections still open (pools, threads of a failed test).
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(admin)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A PostgreSQL test server: its databases are PostgreSQL's ([`ServerDb::migrated`],
/// [`ServerDb::through_pooler`]) and it has a PgBouncer of its own.
pub trait PgServer: Server<Connection = diesel::PgConnection> {
    /// This test process's PgBouncer in front of the server ([`crate::pgbouncer`]).
    fn pgbouncer() -> &'static crate::pooler::PgBouncer;
}

impl PgServer for Postgres {
    fn pgbouncer() -> &'static crate::pooler::PgBouncer {
        crate::pgbouncer()
    }
}

/// MySQL/MariaDB: [`crate::mysql_admin_url`]'s server.
#[derive(Debug)]
pub struct Mysql;

impl Server for Mysql {
    type Connection = diesel::MysqlConnection;
    const BACKEND: &'static str = "MySQL/MariaDB";

    fn admin_url() -> String {
        crate::mysql::mysql_admin_url()
    }

    fn connect(url: &str) -> upsert_kit::Result<Self::Connection> {
        upsert_kit::db::connect_mysql(url)
    }

    fn pool(url: &str, size: u32) -> upsert_kit::Result<Pool<ConnectionManager<Self::Connection>>> {
        upsert_kit::db::mysql_pool(url, size)
    }

    fn create(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        diesel::sql_query(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(admin)
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn drop(admin: &mut Self::Connection, name: &str) -> Result<(), String> {
        // MySQL has no DROP DATABASE … FORCE: end the database's other sessions first, or the
        // drop waits for their metadata locks.
        #[derive(diesel::QueryableByName)]
        struct Session {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let sessions: Vec<Session> = diesel::sql_query(
            "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND ID <> CONNECTION_ID()",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .load(admin)
        .unwrap_or_default();
        for s in sessions {
            let _ = diesel::sql_query(format!("KILL {}", s.id)).execute(admin);
        }
        diesel::sql_query(format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(admin)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
