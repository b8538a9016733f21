//! The sync jobs' PostgreSQL tables placed on Citus (docs/citus.md), checked on plain
//! PostgreSQL: every unique key includes the column each table is distributed by (the stats
//! tables by `stats_type`, their upserts' conflict target; the token tables by the account
//! `id`).

use diesel_migrations::MigrationHarness;
use sync_jobs::db::PG_MIGRATIONS;
use upsert_kit_support::citus::{distribution_problems, Placement};
use upsert_kit_support::TestDb;

const TABLES: [(&str, Placement<'static>); 4] = [
    ("strava_stats", Placement::Distributed("stats_type")),
    ("wakatime_stats", Placement::Distributed("stats_type")),
    ("strava_auth", Placement::Distributed("id")),
    ("wakatime_auth", Placement::Distributed("id")),
];

#[test]
fn every_unique_key_of_the_sync_tables_includes_its_distribution_column() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    assert_eq!(
        distribution_problems(&mut conn, &TABLES),
        Vec::<String>::new()
    );
    // The first migration alone: the stats tables' surrogate primary keys, which Citus refused.
    conn.revert_last_migration(PG_MIGRATIONS).unwrap();
    assert_eq!(
        distribution_problems(&mut conn, &TABLES),
        [
            "strava_stats: constraint strava_stats_pkey on (id) does not include the distribution column stats_type",
            "wakatime_stats: constraint wakatime_stats_pkey on (id) does not include the distribution column stats_type",
        ]
    );
}
