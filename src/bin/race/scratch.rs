//! A scratch PostgreSQL database of this process: created on an admin URL, dropped when the
//! value is dropped. Shared by `upsert-race` and the criterion benches (included by path), so
//! both measure on a database of their own and never touch any other.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use upsert_kit::db::{connect_pg, redact_url};

/// The admin URL used when neither `--database-url` nor `DATABASE_URL` names one.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL: `explicit`, else `DATABASE_URL` when set and not empty, else
/// [`DEFAULT_ADMIN_URL`].
#[allow(dead_code)]
pub fn admin_url(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` naming the database `database` instead of its own; the query string is kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..]
        .find('/')
        .map_or(head.len(), |i| authority + i);
    format!("{}/{database}{query}", &head[..path])
}

/// A database created for this process and dropped (with its connections) on drop.
pub struct ScratchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDb {
    /// Creates `<prefix>_<pid>` on the server of `admin_url`, dropping a leftover of the same
    /// name first (a crashed earlier run of a process with the same pid: the name is ours).
    pub fn create(admin_url: &str, prefix: &str) -> Result<ScratchDb, String> {
        let name = format!("{prefix}_{}", std::process::id());
        // The name is made of a fixed prefix and digits, so it is a safe identifier.
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        let mut admin = connect_pg(admin_url).map_err(|e| e.to_string())?;
        // Two statements: a multi-statement string runs as one transaction, which
        // CREATE/DROP DATABASE refuse.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .map_err(|e| {
                format!(
                    "cannot create database {name} on {}: {e}",
                    redact_url(admin_url)
                )
            })?;
        Ok(ScratchDb {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// The scratch database's URL (it contains the admin URL's password: never print it).
    #[allow(dead_code)]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The scratch database's name.
    #[allow(dead_code)]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to the scratch database.
    pub fn conn(&self) -> upsert_kit::Result<PgConnection> {
        connect_pg(&self.url)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let dropped = connect_pg(&self.admin_url).and_then(|mut admin| {
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .map_err(upsert_kit::Error::from)
        });
        if let Err(e) = dropped {
            eprintln!("warning: could not drop database {}: {e}", self.name);
        }
    }
}
