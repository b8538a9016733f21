//! The sync jobs' library side: one transaction per run on both backends, the summary's JSON
//! shape, and secrets kept out of `Debug`.

use chrono::Utc;
use diesel::{PgConnection, QueryDsl, RunQueryDsl, SqliteConnection};
use serde_json::json;
use sync_jobs::db::{PG_MIGRATIONS, SQLITE_MIGRATIONS};
use sync_jobs::models::StravaStats;
use sync_jobs::schema::strava_stats;
use sync_jobs::strava::{StravaCapture, StravaToken};
use sync_jobs::{AuthOutcome, JobError, SyncConnection, SyncSummary};
use upsert_kit::{atomic_upsert_stats, UpsertOutcome};
use upsert_kit_support::{TestDb, TestSqlite};

fn row(kind: &str, n: i64) -> StravaStats {
    let now = Utc::now().naive_utc();
    StravaStats {
        stats_type: kind.into(),
        data: json!({ "count": n }),
        created_at: now,
        updated_at: now,
    }
}

fn count_pg(conn: &mut PgConnection) -> i64 {
    strava_stats::table.count().get_result(conn).unwrap()
}

fn count_sqlite(conn: &mut SqliteConnection) -> i64 {
    strava_stats::table.count().get_result(conn).unwrap()
}

#[test]
fn upserts_inside_a_run_on_sqlite_join_its_transaction_and_roll_back_with_it() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let mut conn = db.conn();
    // A failing run: both upserts happen inside the run's BEGIN IMMEDIATE, then it fails.
    let failed = conn.sync_transaction(|c| -> Result<(), JobError> {
        assert_eq!(
            atomic_upsert_stats(c, &row("ytd", 1))?,
            UpsertOutcome::Inserted
        );
        assert_eq!(
            atomic_upsert_stats(c, &row("ytd", 1))?,
            UpsertOutcome::Unchanged
        );
        assert_eq!(
            atomic_upsert_stats(c, &row("recent", 2))?,
            UpsertOutcome::Inserted
        );
        Err(JobError::Config("the run fails after writing".into()))
    });
    assert!(matches!(failed, Err(JobError::Config(_))));
    assert_eq!(
        count_sqlite(&mut conn),
        0,
        "nothing of the failed run is left"
    );
    // A successful run commits everything.
    conn.sync_transaction(|c| {
        atomic_upsert_stats(c, &row("ytd", 1))?;
        atomic_upsert_stats(c, &row("recent", 2))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(count_sqlite(&mut conn), 2);
    // Outside a run, an upsert still opens its own immediate transaction.
    assert_eq!(
        atomic_upsert_stats(&mut conn, &row("ytd", 3)).unwrap(),
        UpsertOutcome::Updated
    );
}

#[test]
fn upserts_inside_a_run_on_postgres_roll_back_with_it() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    let failed = conn.sync_transaction(|c| -> Result<(), JobError> {
        assert_eq!(
            atomic_upsert_stats(c, &row("ytd", 1))?,
            UpsertOutcome::Inserted
        );
        assert_eq!(
            atomic_upsert_stats(c, &row("ytd", 2))?,
            UpsertOutcome::Updated
        );
        Err(JobError::Config("the run fails after writing".into()))
    });
    assert!(failed.is_err());
    assert_eq!(count_pg(&mut conn), 0);
}

#[test]
fn the_summary_serialises_exactly_as_documented_for_every_auth_outcome() {
    for (auth, text) in [
        (AuthOutcome::Inserted, "inserted"),
        (AuthOutcome::Updated, "updated"),
        (AuthOutcome::Unchanged, "unchanged"),
        (AuthOutcome::None, "none"),
    ] {
        let mut s = SyncSummary::new();
        s.record_stats("ytd", UpsertOutcome::Inserted);
        s.record_stats("all_time", UpsertOutcome::Updated);
        s.record_stats("recent", UpsertOutcome::Unchanged);
        s.auth = auth;
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"stats": {"inserted": 1, "updated": 1, "unchanged": 1}, "auth": text})
        );
    }
}

#[test]
fn tokens_never_appear_in_debug_output_or_errors() {
    let capture = StravaCapture::parse(
        "capture",
        &std::fs::read_to_string("examples/data/strava.json").unwrap(),
    )
    .unwrap();
    let token: &StravaToken = capture.token.as_ref().unwrap();
    let debug = format!("{capture:?} {token:?}");
    assert!(!debug.contains(token.access_token.expose()), "{debug}");
    assert!(!debug.contains(token.refresh_token.expose()), "{debug}");
    assert!(debug.contains("<redacted>"));
    // A bad token value is named by its field, never quoted.
    let err = StravaToken::from_json(
        "capture",
        "token",
        &json!({"access_token": "s3cret-access", "refresh_token": 7, "expires_at": 1}),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "capture: token.refresh_token: expected a string, found a number"
    );
}
