//! What differs between the backends the race runs on, and only that: [`RaceConnection`], with
//! one implementation per backend in a file of its own, [`pg`] and [`mysql`].
//!
//! A backend says where its server is and how a scratch database is made there (the test
//! harness's [`Server`]), which tables it has besides the race crate's own
//! ([`crate::tables`]), the naive baselines whose SQL is its own (the query-then-upsert of a
//! stats row, the lockless claim of its queue), plain Diesel's upsert where the report has it,
//! and the counts of its queue after a `claim` cell. Everything else a scenario does, it does
//! through the library's generic calls and the statements every backend shares
//! ([`RaceSql`]), written once in [`crate::scenarios`] and [`crate::generic`].

pub mod mysql;
pub mod pg;

use crate::scenario::{Pattern, NAIVE_AND_ATOMIC, WITH_COALESCED};
use crate::sql::RaceSql;
use anyhow::Result;
use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use sync_jobs::models::StravaStats;
use upsert_kit::claim::ClaimQueue;
use upsert_kit::conn::WriteConnection;
use upsert_kit_support::server::Server;

/// A connection the race runs on: `PgConnection` ([`pg`]) or `MysqlConnection` ([`mysql`]).
pub trait RaceConnection:
    WriteConnection<Raw = Self>
    + diesel::r2d2::R2D2Connection
    + RaceSql
    + SimpleConnection
    + Send
    + Sized
    + 'static
{
    /// The backend's name in [`Row::backend`](crate::Row::backend): `postgresql`, `mysql`.
    const BACKEND: &'static str;

    /// The test harness's server of this backend: how it is found or started when no URL is
    /// given, and how a scratch database is made there and dropped.
    type Server: Server<Connection = Self>;

    /// The row type of the `claim` scenario's queue.
    type Queue: ClaimQueue;

    /// The most items the queue can hold ([`RaceConnection::fill_queue`]).
    const MAX_QUEUE_ITEMS: usize = usize::MAX;

    /// The sides of the upsert scenarios (`upsert`, `first-insert`, `bulk`, `hot-key`): naive
    /// and atomic, and plain Diesel's ([`RaceConnection::plain_upsert`]) where the backend has it.
    const UPSERT_PATTERNS: &'static [Pattern] = NAIVE_AND_ATOMIC;

    /// The sides of the single-row upsert scenarios (`upsert`, `first-insert`, `hot-key`):
    /// [`RaceConnection::UPSERT_PATTERNS`] and the coalescing writer.
    const SINGLE_UPSERT_PATTERNS: &'static [Pattern] = WITH_COALESCED;

    /// Opens a connection to `url`.
    ///
    /// # Errors
    /// When the server does not answer or refuses the login.
    fn connect(url: &str) -> upsert_kit::Result<Self> {
        Self::Server::connect(url)
    }

    /// Creates, on a fresh database, the tables of this backend's scenarios besides the race
    /// crate's own ([`crate::tables::create`]): the adopters' migrations and the backend's own
    /// tables.
    ///
    /// # Errors
    /// The first migration or statement that fails.
    fn create_tables(&mut self) -> Result<()>;

    /// The naive upsert of a stats row of `strava_stats`: in a transaction, count the rows of
    /// its key, then update or insert. **Racy**: two callers that both count none both insert.
    ///
    /// # Errors
    /// Whatever the statements raise (the second insert of a key: a unique violation).
    fn query_then_upsert(&mut self, row: &StravaStats) -> upsert_kit::Result<()>;

    /// Plain Diesel's upsert of a stats row (`insert_into(t).values(&row).on_conflict(key)
    /// .do_update()`), where [`RaceConnection::UPSERT_PATTERNS`] has it.
    ///
    /// # Errors
    /// Whatever the statement raises; by default, that the backend has no such side.
    fn plain_upsert(&mut self, row: &StravaStats) -> upsert_kit::Result<()> {
        let _ = row;
        Err(crate::scenario::missing_side(
            crate::scenario::Pattern::Diesel,
        ))
    }

    /// Plain Diesel's upsert of many stats rows in one multi-row statement, where
    /// [`RaceConnection::UPSERT_PATTERNS`] has it.
    ///
    /// # Errors
    /// As [`RaceConnection::plain_upsert`].
    fn plain_bulk_upsert(&mut self, rows: &[StravaStats]) -> upsert_kit::Result<()> {
        let _ = rows;
        Err(crate::scenario::missing_side(
            crate::scenario::Pattern::Diesel,
        ))
    }

    /// Empties the queue of [`RaceConnection::Queue`] and queues `items` items.
    ///
    /// # Errors
    /// When the server refuses.
    fn fill_queue(&mut self, items: usize) -> Result<()>;

    /// The naive claim of one item: `SELECT` the first due item's id, then `UPDATE` it to
    /// processing under `holder`, counting the attempt. Returns the ids it claimed (none when
    /// the queue is empty). **Racy**: two workers that select before either updates both get
    /// the same item.
    ///
    /// # Errors
    /// Whatever the statements raise.
    fn claim_select_then_update(&mut self, holder: &str) -> upsert_kit::Result<Vec<i64>>;

    /// Marks item `id`, claimed by [`RaceConnection::claim_select_then_update`], done.
    ///
    /// # Errors
    /// Whatever the statement raises.
    fn mark_done(&mut self, id: i64) -> upsert_kit::Result<()>;

    /// How the queue's items were handed out, after a `claim` cell.
    ///
    /// # Errors
    /// When the server refuses.
    fn queue_counts(&mut self) -> Result<QueueCounts>;
}

/// How the items of a `claim` queue were handed out. Both sides count an attempt per hand-out.
#[derive(Debug, Clone, Copy, Default, QueryableByName)]
pub struct QueueCounts {
    /// Hand-outs beyond the first of their item (the sum of `attempts - 1` over the items
    /// handed out).
    #[diesel(sql_type = BigInt)]
    pub repeated: i64,
    /// Hand-outs in all (the sum of `attempts`).
    #[diesel(sql_type = BigInt)]
    pub handed_out: i64,
    /// Items left claimed (still `processing`).
    #[diesel(sql_type = BigInt)]
    pub unfinished: i64,
}

/// The server to run on when no URL is given: the test harness's choice for the backend
/// ([`Server::admin_url`]: for PostgreSQL `DATABASE_URL`, else the local server, else a
/// throwaway cluster; for MySQL `MYSQL_DATABASE_URL`, else the local server, else a throwaway
/// `mariadbd`), which lives as long as this process.
///
/// The harness reports a missing server by panicking; this turns that into an error, with the
/// process's panic hook silenced meanwhile, so call it before starting threads of your own.
///
/// # Errors
/// When none of these can be had; the message says how to provide a server.
pub fn default_admin_url<C: RaceConnection>() -> Result<String> {
    // The harness panics (its callers are tests); a tool wants the message as an error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(<C::Server as Server>::admin_url);
    std::panic::set_hook(hook);
    found.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "no {} server could be found or started",
                    <C::Server as Server>::BACKEND
                )
            });
        anyhow::anyhow!("{message}")
    })
}
