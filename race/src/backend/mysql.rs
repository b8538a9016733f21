//! The race on MySQL/MariaDB (`upsert-race --backend mysql`): the sync jobs' MySQL migrations
//! (`strava_stats`), a claim queue of the race crate's own ([`race_queue`], whose row type is
//! [`QueueItem`]), and the naive baselines in MySQL's SQL: the query-then-upsert of a stats row
//! and the lockless claim of the queue.
//!
//! Everything runs at the server's default isolation (REPEATABLE READ on MariaDB and MySQL).
//! The report has no plain-Diesel side here.

use super::{QueueCounts, RaceConnection};
use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_migrations::MigrationHarness;
use sync_jobs::models::StravaStats;
use sync_jobs::schema::JsonData;
use upsert_kit::claim::ClaimQueue;

diesel::table! {
    /// The queue of the `claim` scenario.
    race_queue (id) {
        /// Claim order.
        id -> BigInt,
        /// State.
        status -> Text,
        /// Claims so far.
        attempts -> Integer,
        /// Lease.
        locked_until -> Nullable<Datetime>,
        /// Lease holder.
        holder -> Nullable<Text>,
        /// Last failure.
        last_error -> Nullable<Text>,
    }
}

/// What a claim of [`race_queue`] reads.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = race_queue)]
pub struct QueueItem {
    /// The item.
    pub id: i64,
}

impl ClaimQueue for QueueItem {
    type Table = race_queue::table;
}

/// [`race_queue`], as the library's claims want it on MySQL.
const QUEUE_SQL: &str = "
CREATE TABLE race_queue (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    status VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    locked_until DATETIME(6) NULL,
    holder VARCHAR(200) NULL,
    last_error TEXT NULL,
    KEY race_queue_due (status, id));
";

/// Items queued per statement by [`RaceConnection::fill_queue`].
const QUEUE_BATCH: usize = 1000;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl RaceConnection for MysqlConnection {
    const BACKEND: &'static str = "mysql";
    type Server = upsert_kit_support::server::Mysql;
    type Queue = QueueItem;

    /// Applies the sync jobs' MySQL migrations and creates [`race_queue`].
    fn create_tables(&mut self) -> Result<()> {
        self.run_pending_migrations(sync_jobs::db::MYSQL_MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("migrate the race database (sync-jobs)")?;
        self.batch_execute(QUEUE_SQL)
            .context("create the race queue on MySQL")?;
        Ok(())
    }

    fn query_then_upsert(&mut self, row: &StravaStats) -> upsert_kit::Result<()> {
        upsert_kit::transaction(self, |conn| {
            let existing =
                diesel::sql_query("SELECT COUNT(*) AS n FROM strava_stats WHERE stats_type = ?")
                    .bind::<Text, _>(&row.stats_type)
                    .get_result::<Count>(conn)?
                    .n;
            if existing > 0 {
                diesel::sql_query(
                    "UPDATE strava_stats SET data = ?, updated_at = ? WHERE stats_type = ?",
                )
                .bind::<JsonData, _>(&row.data)
                .bind::<Timestamp, _>(row.updated_at)
                .bind::<Text, _>(&row.stats_type)
                .execute(conn)?;
            } else {
                diesel::sql_query(
                    "INSERT INTO strava_stats (stats_type, data, created_at, updated_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind::<Text, _>(&row.stats_type)
                .bind::<JsonData, _>(&row.data)
                .bind::<Timestamp, _>(row.created_at)
                .bind::<Timestamp, _>(row.updated_at)
                .execute(conn)?;
            }
            Ok(())
        })
    }

    fn fill_queue(&mut self, items: usize) -> Result<()> {
        self.batch_execute("TRUNCATE race_queue")?;
        let mut left = items;
        while left > 0 {
            let n = left.min(QUEUE_BATCH);
            let pending: Vec<_> = (0..n).map(|_| race_queue::status.eq("pending")).collect();
            diesel::insert_into(race_queue::table)
                .values(&pending)
                .execute(self)?;
            left -= n;
        }
        Ok(())
    }

    fn claim_select_then_update(&mut self, holder: &str) -> upsert_kit::Result<Vec<i64>> {
        let Some(id) = race_queue::table
            .filter(race_queue::status.eq("pending"))
            .order(race_queue::id)
            .select(race_queue::id)
            .first::<i64>(self)
            .optional()?
        else {
            return Ok(Vec::new());
        };
        diesel::update(race_queue::table.find(id))
            .set((
                race_queue::status.eq("processing"),
                race_queue::holder.eq(holder),
                race_queue::attempts.eq(race_queue::attempts + 1),
            ))
            .execute(self)?;
        Ok(vec![id])
    }

    fn mark_done(&mut self, id: i64) -> upsert_kit::Result<()> {
        diesel::update(race_queue::table.find(id))
            .set((
                race_queue::status.eq("done"),
                race_queue::holder.eq(None::<String>),
            ))
            .execute(self)?;
        Ok(())
    }

    fn queue_counts(&mut self) -> Result<QueueCounts> {
        Ok(diesel::sql_query(
            "SELECT CAST(COALESCE(SUM(GREATEST(attempts - 1, 0)), 0) AS SIGNED) AS repeated, \
             CAST(COALESCE(SUM(attempts), 0) AS SIGNED) AS handed_out, \
             CAST(COALESCE(SUM(status = 'processing'), 0) AS SIGNED) AS unfinished \
             FROM race_queue",
        )
        .get_result(self)?)
    }
}
