//! Plain Diesel's upserts: what a Diesel user writes without upsert-kit, on the same tables
//! and rows as the crate's side of each scenario.
//!
//! `insert_into(t).values(&row).on_conflict(key).do_update().set(…)` is atomic, as the
//! crate's upsert is: it is the peer the crate's speed is measured against, not a racy
//! baseline. It reports a row count, not whether the row was inserted or updated. Diesel marks
//! every `ON CONFLICT … DO UPDATE` statement unsafe to cache, so each call is parsed and
//! planned anew (≈ `pgbench -M extended`), and a multi-row `values(&vec)` has one bind
//! parameter per value (its text changes with the row count; 65,535 parameters at most), and
//! fails when two rows of one statement share a key.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::upsert::excluded;
use sync_jobs::models::{StravaStats, WakatimeStats};

/// The sync jobs' stats tables as a plain Diesel user on PostgreSQL declares them (`Jsonb`;
/// the jobs' own schema uses a JSON type that also maps to MySQL).
mod schema {
    diesel::table! {
        strava_stats (id) {
            id -> Int8,
            stats_type -> Text,
            data -> Jsonb,
            created_at -> Timestamp,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        wakatime_stats (id) {
            id -> Int8,
            stats_type -> Text,
            data -> Jsonb,
            created_at -> Timestamp,
            updated_at -> Timestamp,
        }
    }
}
use schema::{strava_stats, wakatime_stats};

macro_rules! plain_upsert {
    ($table:ident, $one:ident, $many:ident, $row:ty) => {
        /// Upserts one row: inserted, or its data and `updated_at` overwritten.
        ///
        /// # Errors
        /// Whatever the statement raises.
        pub fn $one(conn: &mut PgConnection, row: &$row) -> upsert_kit::Result<usize> {
            use $table::dsl::{created_at, data, stats_type, updated_at};
            Ok(diesel::insert_into($table::table)
                .values((
                    stats_type.eq(&row.stats_type),
                    data.eq(&row.data),
                    created_at.eq(row.created_at),
                    updated_at.eq(row.updated_at),
                ))
                .on_conflict(stats_type)
                .do_update()
                .set((data.eq(excluded(data)), updated_at.eq(excluded(updated_at))))
                .execute(conn)?)
        }

        /// Upserts many rows in one multi-row statement (`values(&vec)`).
        ///
        /// # Errors
        /// Whatever the statement raises (two rows with one key: "ON CONFLICT DO UPDATE
        /// command cannot affect row a second time").
        pub fn $many(conn: &mut PgConnection, rows: &[$row]) -> upsert_kit::Result<usize> {
            use $table::dsl::{created_at, data, stats_type, updated_at};
            let values: Vec<_> = rows
                .iter()
                .map(|row| {
                    (
                        stats_type.eq(&row.stats_type),
                        data.eq(&row.data),
                        created_at.eq(row.created_at),
                        updated_at.eq(row.updated_at),
                    )
                })
                .collect();
            Ok(diesel::insert_into($table::table)
                .values(&values)
                .on_conflict(stats_type)
                .do_update()
                .set((data.eq(excluded(data)), updated_at.eq(excluded(updated_at))))
                .execute(conn)?)
        }
    };
}

plain_upsert!(strava_stats, upsert_strava, bulk_upsert_strava, StravaStats);
plain_upsert!(
    wakatime_stats,
    upsert_wakatime,
    bulk_upsert_wakatime,
    WakatimeStats
);
