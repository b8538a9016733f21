//! Atomic upserts on SQLite: the same calls as on PostgreSQL.

mod fixture;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel::upsert::excluded;
use fixture::{stats, tokens};
use fixture::{Stats, Token};
use serde_json::json;
use upsert_kit::{
    atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, ConstraintKind, Error,
    Upsert, UpsertMany, UpsertOutcome,
};
use upsert_kit_support::race;

fn at(hour: i64) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        + Duration::hours(hour)
}

fn stats(kind: &str, n: i64) -> Stats {
    Stats {
        stats_type: kind.to_owned(),
        data: json!({ "count": n }),
        created_at: at(n),
        updated_at: at(n),
    }
}

fn token(access: &str, expires_hour: i64) -> Token {
    Token {
        id: 1,
        user_id: 42,
        access_token: access.to_owned(),
        refresh_token: format!("refresh-{access}"),
        expires_at: at(expires_hour),
        updated_at: at(0),
    }
}

fn stored(conn: &mut SqliteConnection) -> Vec<(String, serde_json::Value, NaiveDateTime)> {
    stats::table
        .select((stats::stats_type, stats::data, stats::created_at))
        .order(stats::stats_type)
        .load(conn)
        .unwrap()
}

#[test]
fn insert_update_and_unchanged_are_reported_as_on_postgres() {
    let db = fixture::sqlite();
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert(&mut conn, &stats("ytd", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &stats("ytd", 2)).unwrap(),
        UpsertOutcome::Updated
    );
    let skipped = Upsert::new(&stats("ytd", 1))
        .update_if(excluded(stats::updated_at).gt(stats::updated_at))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(skipped, UpsertOutcome::Unchanged);
    let rows = stored(&mut conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, json!({"count": 2}));
    assert_eq!(rows[0].2, at(1), "created_at is kept");
}

#[test]
fn stats_and_auth_helpers_behave_as_on_postgres() {
    let db = fixture::sqlite();
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert_stats(&mut conn, &stats("ytd", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert_stats(&mut conn, &stats("ytd", 1)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(
        atomic_upsert_stats(&mut conn, &stats("ytd", 3)).unwrap(),
        UpsertOutcome::Updated
    );

    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t12", 12)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t11", 11)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t13", 13)).unwrap(),
        UpsertOutcome::Updated
    );
    let (access, expires): (String, NaiveDateTime) = tokens::table
        .select((tokens::access_token, tokens::expires_at))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!((access.as_str(), expires), ("t13", at(13)));
}

#[test]
fn bulk_upsert_collapses_duplicates_and_is_all_or_nothing() {
    let db = fixture::sqlite();
    let mut conn = db.conn();
    atomic_upsert(&mut conn, &stats("recent", 1)).unwrap();
    let rows = vec![stats("ytd", 1), stats("recent", 2), stats("ytd", 3)];
    let outcome = bulk_upsert(&mut conn, &rows).unwrap();
    assert_eq!(
        (outcome.inserted, outcome.updated, outcome.collapsed),
        (1, 1, 1)
    );
    assert_eq!(stored(&mut conn)[1].1, json!({"count": 3}));

    let many: Vec<Stats> = (0..2_000)
        .map(|i| stats(&format!("k{i:04}"), i % 50))
        .collect();
    let outcome = UpsertMany::new(&many)
        .chunk_size(100)
        .execute(&mut conn)
        .unwrap();
    assert_eq!(outcome.inserted, 2_000);

    let mut broken: Vec<Stats> = (0..2_000).map(|i| stats(&format!("k{i:04}"), 7)).collect();
    broken[1_999].stats_type = "y".repeat(65);
    let err = bulk_upsert(&mut conn, &broken).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Constraint {
                kind: ConstraintKind::Check,
                ..
            }
        ),
        "{err:?}"
    );
    let sevens: i64 = stats::table
        .filter(stats::created_at.eq(at(7)))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        sevens, 40,
        "only the first pass's rows with n = 7 have that created_at"
    );
    assert_eq!(stored(&mut conn).len(), 2_002);
}

#[test]
fn bad_input_writes_nothing() {
    let db = fixture::sqlite();
    let mut conn = db.conn();
    assert!(matches!(
        atomic_upsert(&mut conn, &stats("", 1)),
        Err(Error::InvalidInput(_))
    ));
    let err = atomic_upsert(&mut conn, &stats(&"z".repeat(65), 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Constraint {
                kind: ConstraintKind::Check,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(stored(&mut conn).is_empty());
}

/// SQLite has one writer: concurrent upserts from a pool queue on the write lock (busy
/// timeout) and each runs whole; one row, no error.
#[test]
fn concurrent_upserts_of_one_new_key_leave_one_row() {
    let db = fixture::sqlite();
    let pool = db.pool(8);
    let outcomes = race(8, move |i| {
        let mut conn = pool.get().unwrap();
        atomic_upsert(&mut conn, &stats("ytd", i as i64))
    });
    let outcomes: Vec<UpsertOutcome> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == UpsertOutcome::Inserted)
            .count(),
        1
    );
    assert_eq!(stored(&mut db.conn()).len(), 1);
}

diesel::table! {
    /// Daily totals per user: a two-column key whose columns are not the first ones.
    daily_totals (user_id, day) {
        note -> Text,
        user_id -> BigInt,
        total -> BigInt,
        day -> Date,
    }
}

#[derive(Debug, Clone, upsert_kit::Upsert)]
#[upsert(table = daily_totals, key(user_id, day))]
struct DailyTotal {
    note: String,
    user_id: i64,
    total: i64,
    day: NaiveDate,
}

#[test]
fn a_two_column_key_in_the_middle_of_the_row_updates_only_its_own_row() {
    let db = upsert_kit_support::TestSqlite::with_sql(
        "CREATE TABLE daily_totals (note TEXT NOT NULL, user_id BIGINT NOT NULL,
            total BIGINT NOT NULL, day DATE NOT NULL, PRIMARY KEY (user_id, day));",
    );
    let mut conn = db.conn();
    let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    let row = |user_id, d, total| DailyTotal {
        note: format!("{user_id}/{d}: {total}"),
        user_id,
        total,
        day: day(d),
    };
    for (user, d) in [(1, 1), (1, 2), (2, 1)] {
        assert_eq!(
            atomic_upsert(&mut conn, &row(user, d, 10)).unwrap(),
            UpsertOutcome::Inserted
        );
    }
    assert_eq!(
        atomic_upsert(&mut conn, &row(1, 2, 20)).unwrap(),
        UpsertOutcome::Updated
    );
    let skipped = Upsert::new(&row(2, 1, 5))
        .update_if(excluded(daily_totals::total).gt(daily_totals::total))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(skipped, UpsertOutcome::Unchanged);
    let stored: Vec<(i64, NaiveDate, i64, String)> = daily_totals::table
        .select((
            daily_totals::user_id,
            daily_totals::day,
            daily_totals::total,
            daily_totals::note,
        ))
        .order((daily_totals::user_id, daily_totals::day))
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        stored,
        vec![
            (1, day(1), 10, "1/1: 10".to_owned()),
            (1, day(2), 20, "1/2: 20".to_owned()),
            (2, day(1), 10, "2/1: 10".to_owned()),
        ]
    );
}
