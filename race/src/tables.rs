//! The race crate's own tables that every backend has: the counter table [`race_counter`]
//! (declared for the library's counters as [`RaceCounter`]) and the library's ready-made
//! ledger, quota and reservation tables ([`upsert_kit::tables`]), created by [`create`].
//!
//! Each backend's other tables (the adopters' migrations, MySQL's claim queue) are its own:
//! see [`crate::backend`].

use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;
use upsert_kit::conn::WriteConnection;

diesel::table! {
    /// The counters of the `counter` ([`COUNTER`]), `lock` ([`LOCK_COUNTER`]) and
    /// `counter-retry` ([`RETRY_COUNTER`]) scenarios, declared for
    /// [`upsert_kit::counter`](mod@upsert_kit::counter) as [`RaceCounter`].
    race_counter (id) {
        /// The counter's id.
        id -> Int4,
        /// Its value.
        n -> Int8,
    }
}

upsert_kit::counter! {
    table = race_counter, key = (id: i32), amounts = (n);
    /// The race crate's counter table, [`race_counter`], declared for [`upsert_kit::counter`](mod@upsert_kit::counter).
    #[derive(Debug, Clone, Copy)]
    pub struct RaceCounter;
}

/// The row of [`race_counter`] of the `counter` scenario.
pub const COUNTER: i32 = 1;
/// The row of [`race_counter`] of the `lock` scenario.
pub const LOCK_COUNTER: i32 = 2;
/// The row of [`race_counter`] of the `counter-retry` scenario.
pub const RETRY_COUNTER: i32 = 3;

/// [`race_counter`] and its rows ([`COUNTER`], [`LOCK_COUNTER`], [`RETRY_COUNTER`]), in SQL
/// that PostgreSQL and MySQL read alike.
const COUNTER_SQL: &str = "
CREATE TABLE race_counter (id INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
INSERT INTO race_counter (id, n) VALUES (1, 0), (2, 0), (3, 0);
";

/// Creates [`race_counter`] with its rows and the library's ready-made tables
/// ([`upsert_kit::tables::create_tables`]) on `conn`'s database.
///
/// # Errors
/// When `race_counter` exists already or the server refuses.
pub fn create<C: WriteConnection + SimpleConnection>(conn: &mut C) -> Result<()> {
    conn.batch_execute(COUNTER_SQL)
        .context("create the race counter table")?;
    upsert_kit::tables::create_tables(conn)?;
    Ok(())
}
