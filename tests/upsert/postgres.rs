//! The shared guarantees on PostgreSQL, on the fixture's tables, and what only PostgreSQL
//! has here: `upsert_model!` on a table with a second unique index and a CHECK, bulk upserts
//! past one chunk, prepared statements, streaming.

use super::fixture::{stats, tokens, Stats, Token};
use chrono::NaiveDate;
use upsert_kit::upsert_model;
use upsert_kit_support::{naive, TestDb};

fn db() -> TestDb {
    super::fixture::pg()
}

upsert_guarantees!(
    conn = PgConnection,
    too_long = Error::Constraint {
        kind: ConstraintKind::Check,
        ..
    }
);
row_lock_guarantees!(
    conn = PgConnection,
    naive = naive::query_then_upsert,
    other_naive_errors = false
);

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
    let db = db();
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
    let db = db();
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

/// The checks of the composite-key table (the stats table's are in `bad_input_writes_nothing`):
/// a NaN is refused before sending, a negative amount by the named CHECK constraint.
#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let db = db();
    let mut conn = db.conn();
    create_daily_usage(&mut conn);

    let mut nan = usage(1, 1, 1);
    nan.ratio = f64::NAN;
    assert!(
        matches!(atomic_upsert(&mut conn, &nan), Err(Error::InvalidInput(e)) if e.field == "ratio")
    );

    let negative = usage(1, 1, -1);
    let err = atomic_upsert(&mut conn, &negative).unwrap_err();
    assert_eq!(err.constraint_name(), Some("daily_usage_tokens_check"));

    let usage_rows: i64 = daily_usage::table.count().get_result(&mut conn).unwrap();
    assert_eq!(usage_rows, 0);
}

#[test]
fn bulk_upsert_larger_than_one_chunk_is_all_or_nothing() {
    let db = db();
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

/// The upsert's text depends only on the model, so Diesel prepares it once per connection
/// and reuses it: the server parses and plans it once, not on every call.
#[test]
fn the_upsert_statement_is_prepared_once_per_connection() {
    let db = db();
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
    let db = db();
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

/// Every outcome of every kind of upsert, as this thread's calls tell them: the single-row
/// upsert without and with a condition (the stats and auth helpers, `keep`), the per-row bulk
/// outcomes and the bulk counts. Each item is `(call, outcome)`.
fn every_outcome(conn: &mut PgConnection) -> Vec<(&'static str, String)> {
    use upsert_kit::{
        atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, UpsertMany,
    };
    let stats = |kind: &str, n: i64| Stats {
        stats_type: kind.into(),
        data: serde_json::json!({ "count": n }),
        created_at: super::at(0),
        updated_at: super::at(n),
    };
    let token = |access: &str, hour: i64| Token {
        id: 7,
        user_id: 70,
        access_token: access.into(),
        refresh_token: "r".into(),
        expires_at: super::at(hour),
        updated_at: super::at(hour),
    };
    let mut told = Vec::new();
    let mut one = |call: &'static str, outcome: upsert_kit::Result<upsert_kit::UpsertOutcome>| {
        told.push((call, format!("{:?}", outcome.unwrap())));
    };
    one("upsert, new key", atomic_upsert(conn, &stats("a", 1)));
    one("upsert, same values", atomic_upsert(conn, &stats("a", 1)));
    one(
        "stats, same data",
        atomic_upsert_stats(conn, &stats("a", 1)),
    );
    one("stats, new data", atomic_upsert_stats(conn, &stats("a", 2)));
    one("stats, new key", atomic_upsert_stats(conn, &stats("b", 1)));
    one("auth, new key", atomic_upsert_auth(conn, &token("t1", 5)));
    one(
        "auth, older token",
        atomic_upsert_auth(conn, &token("t0", 4)),
    );
    one(
        "auth, same expiry",
        atomic_upsert_auth(conn, &token("t0", 5)),
    );
    one(
        "auth, newer token",
        atomic_upsert_auth(conn, &token("t2", 6)),
    );
    let rows = [stats("c", 1), stats("a", 2), stats("b", 3), stats("c", 4)];
    let per_row = UpsertMany::new(&rows)
        .update_if(upsert_kit::upsert::Changed::<super::fixture::stats::data>::default())
        .execute_rows(conn)
        .unwrap();
    told.extend(
        per_row
            .iter()
            .map(|outcome| ("bulk rows", format!("{outcome:?}"))),
    );
    let counts = bulk_upsert(conn, &[stats("a", 2), stats("d", 1), stats("b", 5)]).unwrap();
    told.push(("bulk counts", format!("{counts:?}")));
    told
}

/// On PostgreSQL 18 the outcomes come from `RETURNING old` (the row before the statement), on
/// 15–17 from `xmax`: the server's own way is the one taken, and on 18 the two tell every
/// outcome of every kind of upsert alike (and as expected).
#[test]
fn returning_old_and_xmax_tell_every_outcome_alike_and_the_servers_own_way_is_taken() {
    use upsert_kit::__private::{last_outcome_source, with_xmax_outcomes};
    let by_default = db();
    let by_xmax = db();
    let version: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('server_version_num')",
    ))
    .get_result::<String>(&mut by_default.conn())
    .unwrap()
    .parse()
    .unwrap();

    let told = every_outcome(&mut by_default.conn());
    let expected_way = if version >= 180_000 {
        "returning_old"
    } else {
        "xmax"
    };
    assert_eq!(
        last_outcome_source(),
        Some(expected_way),
        "server {version}"
    );
    let told_by_xmax = with_xmax_outcomes(|| every_outcome(&mut by_xmax.conn()));
    assert_eq!(last_outcome_source(), Some("xmax"));
    assert_eq!(told, told_by_xmax, "server {version}");

    let expected = [
        ("upsert, new key", "Inserted"),
        ("upsert, same values", "Updated"),
        ("stats, same data", "Unchanged"),
        ("stats, new data", "Updated"),
        ("stats, new key", "Inserted"),
        ("auth, new key", "Inserted"),
        ("auth, older token", "Unchanged"),
        ("auth, same expiry", "Unchanged"),
        ("auth, newer token", "Updated"),
        ("bulk rows", "Superseded { by: 3 }"),
        ("bulk rows", "Unchanged"),
        ("bulk rows", "Updated"),
        ("bulk rows", "Inserted"),
        (
            "bulk counts",
            "BulkOutcome { inserted: 1, updated: 2, unchanged: 0, collapsed: 0 }",
        ),
    ];
    let told: Vec<(&str, &str)> = told.iter().map(|(c, o)| (*c, o.as_str())).collect();
    assert_eq!(told, expected);

    // Inside a caller's transaction the statement is the one every version knows.
    let mut conn = by_default.conn();
    conn.transaction(|c| {
        upsert_kit::atomic_upsert(
            c,
            &super::fixture::Stats {
                stats_type: "in-tx".into(),
                data: serde_json::json!({}),
                created_at: super::at(0),
                updated_at: super::at(0),
            },
        )
    })
    .unwrap();
    assert_eq!(last_outcome_source(), Some("xmax"));
}

/// A process that took its server for PostgreSQL 18 (its connections may reach servers of
/// different versions) and meets an older one: the statement with `RETURNING old` fails there,
/// outside a transaction, and is sent again with `xmax`, the caller told the right outcome. On
/// PostgreSQL 18 the same calls take `RETURNING old`.
#[test]
fn an_older_server_met_after_a_newer_one_gets_the_xmax_statement_again() {
    use upsert_kit::__private::{assume_returning_old, last_outcome_source};
    let db = db();
    let mut conn = db.conn();
    let version: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('server_version_num')",
    ))
    .get_result::<String>(&mut conn)
    .unwrap()
    .parse()
    .unwrap();
    let expected_way = if version >= 180_000 {
        "returning_old"
    } else {
        "xmax"
    };
    let row = |n: i64| Stats {
        stats_type: "way-back".into(),
        data: serde_json::json!({ "n": n }),
        created_at: super::at(0),
        updated_at: super::at(n),
    };
    for (n, expected) in [(1, "Inserted"), (2, "Updated")] {
        assume_returning_old();
        let outcome = upsert_kit::atomic_upsert(&mut conn, &row(n)).unwrap();
        assert_eq!(format!("{outcome:?}"), expected, "server {version}");
        assert_eq!(
            last_outcome_source(),
            Some(expected_way),
            "server {version}"
        );
    }
}
