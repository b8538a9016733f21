//! Atomic upserts on a real PostgreSQL server.

mod fixture;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::upsert::excluded;
use fixture::{stats, tokens};
use fixture::{Stats, Token};
use serde_json::json;
use std::sync::{Arc, Barrier};
use upsert_kit::{
    atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, upsert_model,
    ConstraintKind, Error, Upsert, UpsertMany, UpsertOutcome,
};
use upsert_kit_support::naive;
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
        data: json!({ "count": n, "distance": n as f64 * 1.5 }),
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

fn stored_stats(
    conn: &mut PgConnection,
) -> Vec<(String, serde_json::Value, NaiveDateTime, NaiveDateTime)> {
    stats::table
        .select((
            stats::stats_type,
            stats::data,
            stats::created_at,
            stats::updated_at,
        ))
        .order(stats::stats_type)
        .load(conn)
        .unwrap()
}

fn stored_token(conn: &mut PgConnection) -> (String, NaiveDateTime) {
    tokens::table
        .select((tokens::access_token, tokens::expires_at))
        .get_result(conn)
        .unwrap()
}

#[test]
fn upsert_of_a_new_key_reports_inserted() {
    let db = fixture::pg();
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert(&mut conn, &stats("ytd", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    let rows = stored_stats(&mut conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, json!({"count": 1, "distance": 1.5}));
}

#[test]
fn upsert_of_an_existing_key_updates_it_and_keeps_created_at() {
    let db = fixture::pg();
    let mut conn = db.conn();
    atomic_upsert(&mut conn, &stats("ytd", 1)).unwrap();
    assert_eq!(
        atomic_upsert(&mut conn, &stats("ytd", 2)).unwrap(),
        UpsertOutcome::Updated
    );
    let rows = stored_stats(&mut conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1["count"], 2);
    assert_eq!(rows[0].2, at(1), "created_at is a keep column");
    assert_eq!(rows[0].3, at(2), "updated_at follows the incoming row");
}

#[test]
fn upsert_with_a_false_condition_reports_unchanged_and_writes_nothing() {
    let db = fixture::pg();
    let mut conn = db.conn();
    atomic_upsert(&mut conn, &stats("ytd", 5)).unwrap();
    let outcome = Upsert::new(&stats("ytd", 3))
        .update_if(excluded(stats::updated_at).gt(stats::updated_at))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(outcome, UpsertOutcome::Unchanged);
    assert_eq!(stored_stats(&mut conn)[0].1["count"], 5);
}

#[test]
fn keep_leaves_a_column_alone_on_update() {
    let db = fixture::pg();
    let mut conn = db.conn();
    atomic_upsert(&mut conn, &stats("ytd", 1)).unwrap();
    Upsert::new(&stats("ytd", 2))
        .keep(stats::updated_at)
        .execute(&mut conn)
        .unwrap();
    let rows = stored_stats(&mut conn);
    assert_eq!(rows[0].1["count"], 2);
    assert_eq!(rows[0].3, at(1));
}

#[test]
fn stats_upsert_with_identical_data_reports_unchanged() {
    let db = fixture::pg();
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert_stats(&mut conn, &stats("ytd", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    let mut same = stats("ytd", 1);
    same.updated_at = at(9);
    assert_eq!(
        atomic_upsert_stats(&mut conn, &same).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(
        stored_stats(&mut conn)[0].3,
        at(1),
        "an unchanged row keeps its updated_at"
    );
    assert_eq!(
        atomic_upsert_stats(&mut conn, &stats("ytd", 2)).unwrap(),
        UpsertOutcome::Updated
    );
}

#[test]
fn auth_upsert_never_replaces_a_token_with_an_older_one() {
    let db = fixture::pg();
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t12", 12)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t11", 11)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t12b", 12)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(stored_token(&mut conn), ("t12".to_owned(), at(12)));
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("t13", 13)).unwrap(),
        UpsertOutcome::Updated
    );
    assert_eq!(stored_token(&mut conn), ("t13".to_owned(), at(13)));
}

#[test]
fn concurrent_token_writers_leave_the_newest_token() {
    let db = fixture::pg();
    let pool = db.pool(16);
    let outcomes = race(16, move |i| {
        let mut conn = pool.get().unwrap();
        // Expiries in a shuffled order: 0, 7, 14, 5, 12, …
        let hour = ((i * 7) % 16) as i64;
        atomic_upsert_auth(&mut conn, &token(&format!("t{hour}"), hour)).unwrap()
    });
    let mut conn = db.conn();
    assert_eq!(stored_token(&mut conn), ("t15".to_owned(), at(15)));
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == UpsertOutcome::Inserted)
            .count(),
        1
    );
}

// A test table with a composite key and a second unique index.
diesel::table! {
    daily_usage (account, day) {
        account -> Int8,
        day -> Date,
        label -> Text,
        tokens -> Int8,
        ratio -> Float8,
    }
}

upsert_model! {
    table = daily_usage, key = (account, day);
    #[derive(Debug, Clone)]
    struct DailyUsage {
        account: i64,
        day: NaiveDate,
        label: String,
        tokens: i64,
        ratio: f64,
    }
}

fn create_daily_usage(conn: &mut PgConnection) {
    conn.batch_execute(
        "CREATE TABLE daily_usage (
            account BIGINT NOT NULL,
            day DATE NOT NULL,
            label TEXT NOT NULL,
            tokens BIGINT NOT NULL CHECK (tokens >= 0),
            ratio DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, day),
            CONSTRAINT daily_usage_label_key UNIQUE (label)
        )",
    )
    .unwrap();
}

fn usage(account: i64, day: u32, tokens: i64) -> DailyUsage {
    DailyUsage {
        account,
        day: NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
        label: format!("{account}/{day}"),
        tokens,
        ratio: 0.5,
    }
}

#[test]
fn composite_keys_conflict_on_all_their_columns() {
    let db = fixture::pg();
    let mut conn = db.conn();
    create_daily_usage(&mut conn);
    assert_eq!(
        atomic_upsert(&mut conn, &usage(1, 1, 10)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &usage(1, 2, 20)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &usage(2, 1, 30)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &usage(1, 1, 11)).unwrap(),
        UpsertOutcome::Updated
    );
    let rows: Vec<(i64, NaiveDate, i64)> = daily_usage::table
        .select((daily_usage::account, daily_usage::day, daily_usage::tokens))
        .order((daily_usage::account, daily_usage::day))
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![11, 20, 30]
    );
}

#[test]
fn a_collision_on_a_second_unique_index_is_reported_with_its_name() {
    let db = fixture::pg();
    let mut conn = db.conn();
    create_daily_usage(&mut conn);
    atomic_upsert(&mut conn, &usage(1, 1, 10)).unwrap();
    atomic_upsert(&mut conn, &usage(1, 2, 10)).unwrap();
    // Updating (1, 2) to the label of (1, 1) breaks the second unique index.
    let mut clash = usage(1, 2, 10);
    clash.label = "1/1".into();
    let err = atomic_upsert(&mut conn, &clash).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Constraint {
                kind: ConstraintKind::Unique,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.constraint_name(), Some("daily_usage_label_key"));
    assert!(!err.is_retryable());
}

#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let db = fixture::pg();
    let mut conn = db.conn();
    create_daily_usage(&mut conn);

    let empty_key = stats("  ", 1);
    assert!(
        matches!(atomic_upsert(&mut conn, &empty_key), Err(Error::InvalidInput(e)) if e.field == "stats_type")
    );

    let mut nan = usage(1, 1, 1);
    nan.ratio = f64::NAN;
    assert!(
        matches!(atomic_upsert(&mut conn, &nan), Err(Error::InvalidInput(e)) if e.field == "ratio")
    );

    let mut ancient = stats("ytd", 1);
    ancient.updated_at = NaiveDate::from_ymd_opt(-5000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    assert!(
        matches!(atomic_upsert(&mut conn, &ancient), Err(Error::InvalidInput(e)) if e.field == "updated_at")
    );

    let too_long = stats(&"x".repeat(65), 1);
    let err = atomic_upsert(&mut conn, &too_long).unwrap_err();
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

    let negative = usage(1, 1, -1);
    let err = atomic_upsert(&mut conn, &negative).unwrap_err();
    assert_eq!(err.constraint_name(), Some("daily_usage_tokens_check"));

    let bad_row = vec![stats("ytd", 1), stats("", 2)];
    assert!(
        matches!(bulk_upsert(&mut conn, &bad_row), Err(Error::InvalidInput(e)) if e.field == "rows[1].stats_type")
    );

    assert!(stored_stats(&mut conn).is_empty());
    let usage_rows: i64 = daily_usage::table.count().get_result(&mut conn).unwrap();
    assert_eq!(usage_rows, 0);
}

#[test]
fn bulk_upsert_collapses_duplicate_keys_and_the_last_row_wins() {
    let db = fixture::pg();
    let mut conn = db.conn();
    atomic_upsert(&mut conn, &stats("recent", 1)).unwrap();
    let rows = vec![
        stats("ytd", 1),
        stats("all_time", 2),
        stats("ytd", 3),
        stats("recent", 4),
        stats("ytd", 5),
    ];
    let outcome = bulk_upsert(&mut conn, &rows).unwrap();
    assert_eq!(
        (
            outcome.inserted,
            outcome.updated,
            outcome.unchanged,
            outcome.collapsed
        ),
        (2, 1, 0, 2)
    );
    let stored = stored_stats(&mut conn);
    let counts: Vec<(String, i64)> = stored
        .iter()
        .map(|r| (r.0.clone(), r.1["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("all_time".into(), 2),
            ("recent".into(), 4),
            ("ytd".into(), 5)
        ]
    );
}

#[test]
fn bulk_upsert_larger_than_one_chunk_is_all_or_nothing() {
    let db = fixture::pg();
    let mut conn = db.conn();
    create_daily_usage(&mut conn);
    let rows: Vec<DailyUsage> = (0..1_050)
        .map(|i| usage(i, 1 + (i % 28) as u32, i))
        .collect();
    let outcome = UpsertMany::new(&rows)
        .chunk_size(100)
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        (outcome.inserted, outcome.updated, outcome.collapsed),
        (1_050, 0, 0)
    );

    // Second pass: half the rows change; one row in the last chunk violates a check constraint.
    let mut again: Vec<DailyUsage> = (0..1_050)
        .map(|i| usage(i, 1 + (i % 28) as u32, i + 1))
        .collect();
    again[1_049].tokens = -5;
    let err = UpsertMany::new(&again)
        .chunk_size(100)
        .execute(&mut conn)
        .unwrap_err();
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
    let tokens: Vec<i64> = daily_usage::table
        .select(daily_usage::tokens)
        .load(&mut conn)
        .unwrap();
    let sum: Option<i64> = Some(tokens.iter().sum());
    assert_eq!(
        sum,
        Some((0..1_050).sum::<i64>()),
        "the failed call changed nothing"
    );

    again[1_049].tokens = 5;
    let outcome = UpsertMany::new(&again)
        .chunk_size(100)
        .execute(&mut conn)
        .unwrap();
    assert_eq!((outcome.inserted, outcome.updated), (0, 1_050));
}

#[test]
fn many_threads_upserting_one_new_key_leave_one_row_and_no_error() {
    let db = fixture::pg();
    let pool = db.pool(16);
    let outcomes = race(16, move |i| {
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
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == UpsertOutcome::Updated)
            .count(),
        15
    );
    let mut conn = db.conn();
    let rows = stored_stats(&mut conn);
    assert_eq!(rows.len(), 1);
    let count = rows[0].1["count"].as_i64().unwrap();
    assert!((0..16).contains(&count), "the stored data is one writer's");
}

/// The naive query-then-insert and the atomic upsert, released by the same barrier on fresh
/// keys round after round: the naive one raises duplicate-key errors, the atomic one none.
#[test]
fn naive_query_then_insert_fails_where_the_atomic_upsert_does_not() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 30;
    let db = fixture::pg();
    let pool = db.pool(THREADS as u32);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let pool = pool.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().unwrap();
                let (mut naive_dupes, mut naive_other, mut atomic_errors) = (0, 0, 0);
                for round in 0..ROUNDS {
                    barrier.wait();
                    match naive::query_then_upsert(&mut conn, &stats(&format!("naive-{round}"), 1))
                    {
                        Ok(_) => {}
                        Err(Error::Constraint {
                            kind: ConstraintKind::Unique,
                            ..
                        }) => naive_dupes += 1,
                        Err(_) => naive_other += 1,
                    }
                    barrier.wait();
                    if atomic_upsert(&mut conn, &stats(&format!("atomic-{round}"), 1)).is_err() {
                        atomic_errors += 1;
                    }
                }
                (naive_dupes, naive_other, atomic_errors)
            })
        })
        .collect();
    let results: Vec<(i32, i32, i32)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let naive_dupes: i32 = results.iter().map(|r| r.0).sum();
    let naive_other: i32 = results.iter().map(|r| r.1).sum();
    let atomic_errors: i32 = results.iter().map(|r| r.2).sum();
    eprintln!(
        "{THREADS} threads x {ROUNDS} fresh keys: naive duplicate-key errors = {naive_dupes}, atomic errors = {atomic_errors}"
    );
    assert!(naive_dupes > 0, "the naive pattern should lose some races");
    assert_eq!(naive_other, 0);
    assert_eq!(atomic_errors, 0);
    let mut conn = db.conn();
    let per_key: Vec<(String, i64)> = stats::table
        .group_by(stats::stats_type)
        .select((stats::stats_type, diesel::dsl::count_star()))
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        per_key
            .iter()
            .filter(|k| k.0.starts_with("atomic-"))
            .count(),
        ROUNDS
    );
    assert!(per_key.iter().all(|k| k.1 == 1), "exactly one row per key");
}

/// T1 upserts k and holds its transaction; T2 upserts k and blocks; T1 commits → T2 updates
/// T1's row; or T1 rolls back → T2 inserts.
#[test]
fn a_blocked_upsert_sees_the_outcome_of_the_transaction_it_waited_for() {
    for commit in [true, false] {
        let db = fixture::pg();
        let mut t1 = db.conn();
        let url = db.url().to_owned();
        t1.batch_execute("BEGIN").unwrap();
        assert_eq!(
            atomic_upsert(&mut t1, &stats("ytd", 1)).unwrap(),
            UpsertOutcome::Inserted
        );
        let t2 = std::thread::spawn(move || {
            let mut t2 = PgConnection::establish(&url).unwrap();
            diesel::sql_query("SET application_name = 'upsert-t2'")
                .execute(&mut t2)
                .unwrap();
            atomic_upsert(&mut t2, &stats("ytd", 2)).unwrap()
        });
        // Wait until T2 is blocked on T1's row.
        let mut probe = db.conn();
        wait_until_blocked(&mut probe, "upsert-t2");
        t1.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .unwrap();
        let outcome = t2.join().unwrap();
        assert_eq!(
            outcome,
            if commit {
                UpsertOutcome::Updated
            } else {
                UpsertOutcome::Inserted
            }
        );
        let rows = stored_stats(&mut probe);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1["count"], 2, "T2's data");
    }
}

/// The "only if newer" condition is judged against the newest committed row: T2's older token
/// waits for T1's newer one, then is skipped.
#[test]
fn a_conditional_update_is_judged_against_the_newest_committed_row() {
    let db = fixture::pg();
    let mut setup = db.conn();
    atomic_upsert_auth(&mut setup, &token("t10", 10)).unwrap();
    let mut t1 = db.conn();
    t1.batch_execute("BEGIN").unwrap();
    assert_eq!(
        atomic_upsert_auth(&mut t1, &token("t12", 12)).unwrap(),
        UpsertOutcome::Updated
    );
    let url = db.url().to_owned();
    let t2 = std::thread::spawn(move || {
        let mut t2 = PgConnection::establish(&url).unwrap();
        diesel::sql_query("SET application_name = 'upsert-t2'")
            .execute(&mut t2)
            .unwrap();
        // Newer than the committed t10, older than T1's pending t12.
        atomic_upsert_auth(&mut t2, &token("t11", 11)).unwrap()
    });
    wait_until_blocked(&mut setup, "upsert-t2");
    t1.batch_execute("COMMIT").unwrap();
    assert_eq!(t2.join().unwrap(), UpsertOutcome::Unchanged);
    assert_eq!(stored_token(&mut setup), ("t12".to_owned(), at(12)));
}

fn wait_until_blocked(conn: &mut PgConnection, application_name: &str) {
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    for _ in 0..500 {
        let w: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<diesel::sql_types::Text, _>(application_name)
        .get_result(conn)
        .unwrap();
        if w.n > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{application_name} never blocked");
}

/// The upsert's text depends only on the model, so Diesel prepares it once per connection
/// and reuses it: the server parses and plans it once, not on every call.
#[test]
fn the_upsert_statement_is_prepared_once_per_connection() {
    let db = fixture::pg();
    let mut conn = db.conn();
    for i in 0..5 {
        atomic_upsert(&mut conn, &stats(&format!("k{i}"), i)).unwrap();
    }
    bulk_upsert(&mut conn, &[stats("a", 1), stats("b", 2)]).unwrap();
    bulk_upsert(&mut conn, &[stats("c", 1), stats("d", 2), stats("e", 3)]).unwrap();
    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let prepared: Vec<Prepared> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load(&mut conn)
        .unwrap();
    let upserts: Vec<&str> = prepared
        .iter()
        .map(|p| p.statement.as_str())
        .filter(|s| s.starts_with("INSERT INTO \"stats\""))
        .collect();
    assert_eq!(
        upserts.len(),
        2,
        "one single-row and one bulk statement: {upserts:#?}"
    );
    assert!(upserts.iter().any(|s| s.contains("unnest(")));
}

#[test]
fn a_stream_of_rows_is_upserted_chunk_by_chunk_and_the_last_row_of_a_key_wins() {
    use upsert_kit::upsert::{bulk_upsert_stream, Commit};
    let db = fixture::pg();
    let mut conn = db.conn();
    // 25 rows over 10 keys, in chunks of 4: keys repeat within and across chunks.
    let rows = || (0..25).map(|i| stats(&format!("key-{}", i % 10), i));
    let outcome = bulk_upsert_stream(&mut conn, rows(), 4, Commit::PerChunk).unwrap();
    assert_eq!(outcome.rows() + outcome.collapsed, 25);
    assert_eq!(outcome.inserted, 10, "{outcome:?}");
    let stored = stored_stats(&mut conn);
    assert_eq!(stored.len(), 10);
    for (kind, data, _, _) in &stored {
        let k: i64 = kind.strip_prefix("key-").unwrap().parse().unwrap();
        let last = (0..25).filter(|i| i % 10 == k).max().unwrap();
        assert_eq!(data["count"], json!(last), "{kind}");
    }

    // All or nothing: an invalid row late in the stream (named by its position) writes
    // nothing, though earlier chunks were valid; per chunk, the chunks before it stay.
    let bad = || rows().chain(std::iter::once(stats("", 99)));
    for (commit, expected_new) in [(Commit::AllOrNothing, 0), (Commit::PerChunk, 2)] {
        conn.batch_execute("TRUNCATE stats").unwrap();
        let e = bulk_upsert_stream(&mut conn, bad().skip(22), 2, commit).unwrap_err();
        assert!(
            matches!(e, upsert_kit::Error::InvalidInput(ref i) if i.field == "rows[3].stats_type"),
            "{e:?}"
        );
        assert_eq!(stored_stats(&mut conn).len(), expected_new, "{commit:?}");
    }
}
