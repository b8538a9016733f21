//! The race on PostgreSQL: the adopters' migrations ([`MIGRATIONS`]), the naive upsert of the
//! workspace's test harness ([`naive::query_then_upsert`]), plain Diesel's upsert
//! ([`crate::plain`]), and the backfill scheduler's queue (`backfill_log`, its lockless claim
//! `backfill_scheduler::naive::claim_select_then_update`) for `claim`.

use super::{QueueCounts, RaceConnection};
use crate::naive;
use crate::plain;
use crate::scenario::{Pattern, ALL_PATTERNS, UPSERT_COALESCED};
use anyhow::{Context, Result};
use backfill_scheduler::schema::backfill_log;
use backfill_scheduler::{schedule_months, BackfillMonth};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use sync_jobs::models::StravaStats;

/// The migrations of the race database on PostgreSQL, in the order they are applied: the sync
/// jobs' stats tables (`upsert`, `first-insert`, `bulk`, `hot-key`), the usage tables
/// (`usage-counter`, `usage-counter-retry`, `usage-quota`, `get-or-create`) and the backfill
/// queue (`claim`). The tables of `counter`, `counter-retry`, `quota` and `lock` are the race
/// crate's own ([`crate::tables`]).
pub const MIGRATIONS: [(&str, EmbeddedMigrations); 3] = [
    ("sync-jobs", sync_jobs::db::PG_MIGRATIONS),
    ("usage-tracking", usage_tracking::PG_MIGRATIONS),
    ("backfill-scheduler", backfill_scheduler::MIGRATIONS),
];

impl RaceConnection for PgConnection {
    const BACKEND: &'static str = "postgresql";
    type Server = upsert_kit_support::server::Postgres;
    type Queue = BackfillMonth;
    const UPSERT_PATTERNS: &'static [Pattern] = ALL_PATTERNS;
    const SINGLE_UPSERT_PATTERNS: &'static [Pattern] = UPSERT_COALESCED;
    /// The months of years 1000 to 9999.
    const MAX_QUEUE_ITEMS: usize = 9_000 * 12;

    /// Applies [`MIGRATIONS`].
    fn create_tables(&mut self) -> Result<()> {
        for (crate_name, migrations) in MIGRATIONS {
            self.run_pending_migrations(migrations)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("migrate the race database ({crate_name})"))?;
        }
        Ok(())
    }

    fn query_then_upsert(&mut self, row: &StravaStats) -> upsert_kit::Result<()> {
        naive::query_then_upsert(self, row)?;
        Ok(())
    }

    fn plain_upsert(&mut self, row: &StravaStats) -> upsert_kit::Result<()> {
        plain::upsert_strava(self, row)?;
        Ok(())
    }

    fn plain_bulk_upsert(&mut self, rows: &[StravaStats]) -> upsert_kit::Result<()> {
        plain::bulk_upsert_strava(self, rows)?;
        Ok(())
    }

    /// Queues `items` months from January 1000 on.
    fn fill_queue(&mut self, items: usize) -> Result<()> {
        self.batch_execute("TRUNCATE backfill_log")?;
        let last = 1000 * 12 + items as i32 - 1;
        schedule_months(
            self,
            (1000, 1),
            (last.div_euclid(12), (last.rem_euclid(12) + 1) as u32),
        )?;
        Ok(())
    }

    fn claim_select_then_update(&mut self, holder: &str) -> upsert_kit::Result<Vec<i64>> {
        let claimed = backfill_scheduler::naive::claim_select_then_update(self, holder, 1)?;
        Ok(claimed.into_iter().map(|(id, _year, _month)| id).collect())
    }

    fn mark_done(&mut self, id: i64) -> upsert_kit::Result<()> {
        diesel::update(backfill_log::table.find(id))
            .set(backfill_log::status.eq("done"))
            .execute(self)?;
        Ok(())
    }

    fn queue_counts(&mut self) -> Result<QueueCounts> {
        Ok(diesel::sql_query(
            "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8 AS repeated, \
             coalesce(sum(attempts), 0)::int8 AS handed_out, \
             count(*) FILTER (WHERE status = 'processing') AS unfinished FROM backfill_log",
        )
        .get_result(self)?)
    }
}
