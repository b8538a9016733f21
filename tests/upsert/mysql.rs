//! The shared guarantees on MySQL/MariaDB, at the server's default isolation (REPEATABLE
//! READ), and the traps of `INSERT … ON DUPLICATE KEY UPDATE` shown failing in their naive form
//! next to the crate's (RELIABILITY, "MySQL / MariaDB"): the affected-rows count under
//! `CLIENT_FOUND_ROWS`, assignments judged left to right, a second unique key, packet limits;
//! and get-or-create on MySQL.

use chrono::NaiveDateTime;
use upsert_kit::{AuthModel, StatsModel};
use upsert_kit_support::TestMysql;

diesel::table! {
    stats (id) {
        id -> BigInt,
        stats_type -> Text,
        data -> Json,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        access_token -> Text,
        refresh_token -> Text,
        expires_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// A primary key and a second unique key (`email`).
    people (id) {
        id -> BigInt,
        email -> Text,
        name -> Text,
    }
}

const SQL: &str = "
CREATE TABLE stats (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    stats_type VARCHAR(64) NOT NULL,
    data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY stats_type_key (stats_type),
    CHECK (stats_type <> '')
);
CREATE TABLE tokens (
    id BIGINT NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    access_token VARCHAR(255) NOT NULL,
    refresh_token VARCHAR(255) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
);
CREATE TABLE people (
    id BIGINT NOT NULL PRIMARY KEY,
    email VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    UNIQUE KEY people_email (email)
);";

#[derive(Debug, Clone, PartialEq, Insertable, upsert_kit::UpsertModel)]
#[diesel(table_name = stats)]
#[upsert(key(stats_type), keep(created_at))]
struct Stats {
    stats_type: String,
    data: serde_json::Value,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl StatsModel for Stats {
    type Data = stats::data;
}

#[derive(Debug, Clone, PartialEq, upsert_kit::UpsertModel)]
#[diesel(table_name = tokens)]
#[upsert(key(id))]
struct Token {
    id: i64,
    user_id: i64,
    access_token: String,
    refresh_token: String,
    expires_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl AuthModel for Token {
    type ExpiresAt = tokens::expires_at;
}

#[derive(Debug, Clone, PartialEq, upsert_kit::UpsertModel)]
#[diesel(table_name = people)]
#[upsert(key(id))]
struct Person {
    id: i64,
    email: String,
    name: String,
}

fn db() -> TestMysql {
    TestMysql::with_sql(SQL)
}

upsert_guarantees!(
    conn = MysqlConnection,
    too_long = Error::Database(_) | Error::Constraint { .. }
);
row_lock_guarantees!(
    conn = MysqlConnection,
    naive = naive_query_then_insert,
    other_naive_errors = true
);

/// The naive query-then-insert: in one transaction, count the key's rows, then insert the row
/// or update it. Under REPEATABLE READ both callers see no row, both insert, one gets the
/// duplicate-key error.
fn naive_query_then_insert(conn: &mut MysqlConnection, row: &Stats) -> Result<usize, Error> {
    conn.transaction(|c| {
        let n: i64 = stats::table
            .filter(stats::stats_type.eq(&row.stats_type))
            .count()
            .get_result(c)?;
        if n == 0 {
            diesel::insert_into(stats::table).values(row).execute(c)
        } else {
            diesel::update(stats::table.filter(stats::stats_type.eq(&row.stats_type)))
                .set(stats::data.eq(&row.data))
                .execute(c)
        }
    })
    .map_err(Error::from)
}

/// Diesel's `MysqlConnection` sets `CLIENT_FOUND_ROWS`: the affected-rows count reads 1 for an
/// insert and 1 for a row the condition left alone, so an outcome taken from the count (the
/// naive reading) calls the unchanged row inserted. The crate's outcome is exact.
#[test]
fn the_affected_rows_count_cannot_tell_inserted_from_unchanged_but_the_outcome_does() {
    let db = db();
    let mut conn = db.conn();
    let naive = |conn: &mut MysqlConnection, data: &str| -> usize {
        diesel::sql_query(
            "INSERT INTO stats (stats_type, data, created_at, updated_at) VALUES ('k', ?, NOW(), NOW()) \
             ON DUPLICATE KEY UPDATE data = IF(NOT (data <=> VALUES(data)), VALUES(data), data)",
        )
        .bind::<diesel::sql_types::Text, _>(data)
        .execute(conn)
        .unwrap()
    };
    let inserted = naive(&mut conn, r#"{"count": 1}"#);
    let unchanged = naive(&mut conn, r#"{"count": 1}"#);
    let changed = naive(&mut conn, r#"{"count": 2}"#);
    assert_eq!((inserted, unchanged, changed), (1, 1, 2));
    assert_eq!(
        inserted, unchanged,
        "the naive count: unchanged reads as inserted"
    );

    let outcomes = [1, 1, 3].map(|n| atomic_upsert_stats(&mut conn, &stats("ytd", n)).unwrap());
    use UpsertOutcome::{Inserted, Unchanged, Updated};
    assert_eq!(
        outcomes,
        [Inserted, Unchanged, Updated],
        "the crate's outcome"
    );
}

/// MySQL assigns left to right: a condition written after `expires_at = VALUES(expires_at)`
/// compares the incoming expiry with itself, so the naive statement never replaces the access
/// token. The crate judges the condition once, on the stored row, before any assignment.
#[test]
fn an_update_condition_is_judged_on_the_stored_row_not_on_a_column_assigned_before_it() {
    let db = db();
    let mut conn = db.conn();
    conn.batch_execute(
        "INSERT INTO tokens VALUES (1, 42, 'old', 'r', '2026-11-01 10:00:00', '2026-11-01 00:00:00')",
    )
    .unwrap();
    diesel::sql_query(
        "INSERT INTO tokens VALUES (1, 42, 'new', 'r', '2026-11-01 12:00:00', '2026-11-01 00:00:00') \
         ON DUPLICATE KEY UPDATE expires_at = IF(VALUES(expires_at) > expires_at, VALUES(expires_at), expires_at), \
         access_token = IF(VALUES(expires_at) > expires_at, VALUES(access_token), access_token)",
    )
    .execute(&mut conn)
    .unwrap();
    let (access, expires): (String, NaiveDateTime) = tokens::table
        .select((tokens::access_token, tokens::expires_at))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        (access.as_str(), expires),
        ("old", at(12)),
        "naive: the expiry moved, the token did not"
    );

    // Back to the stored 10:00 token, then the crate's monotonic upsert (expires_at is the
    // model's fifth column, assigned before updated_at and after access_token: both orders).
    conn.batch_execute(
        "UPDATE tokens SET access_token = 'old', expires_at = '2026-11-01 10:00:00'",
    )
    .unwrap();
    assert_eq!(
        atomic_upsert_auth(&mut conn, &token("new", 12)).unwrap(),
        UpsertOutcome::Updated
    );
    let newer_only = |t: &Token| {
        Upsert::new(t)
            .update_if(incoming(tokens::expires_at).gt(tokens::expires_at))
            .execute(&mut db.conn())
            .unwrap()
    };
    assert_eq!(newer_only(&token("stale", 11)), UpsertOutcome::Unchanged);
    // A condition on a column assigned first (access_token precedes expires_at) and one after.
    let by_token = Upsert::new(&token("newest", 13))
        .update_if(
            incoming(tokens::access_token)
                .ne(tokens::access_token)
                .and(incoming(tokens::expires_at).gt(tokens::expires_at)),
        )
        .execute(&mut conn)
        .unwrap();
    assert_eq!(by_token, UpsertOutcome::Updated);
    let (access, expires): (String, NaiveDateTime) = tokens::table
        .select((tokens::access_token, tokens::expires_at))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!((access.as_str(), expires), ("newest", at(13)));
}

/// `ON DUPLICATE KEY` fires on any unique index. A row whose key (`id`) is new but whose
/// `email` is another row's: the naive statement overwrites that other row; the crate leaves it
/// alone and fails with the duplicate-key error naming `people_email`, as PostgreSQL's
/// `ON CONFLICT (id)` does. In bulk, nothing of the call is written.
#[test]
fn a_row_colliding_on_another_unique_index_is_refused_naming_it_and_the_other_row_is_untouched() {
    let db = db();
    let mut conn = db.conn();
    conn.batch_execute(
        "INSERT INTO people VALUES (1, 'ann@example.com', 'Ann'), (2, 'bob@example.com', 'Bob')",
    )
    .unwrap();

    let naive = diesel::sql_query(
        "INSERT INTO people (id, email, name) VALUES (3, 'ann@example.com', 'Mallory') \
         ON DUPLICATE KEY UPDATE email = VALUES(email), name = VALUES(name)",
    )
    .execute(&mut conn)
    .unwrap();
    assert_eq!(naive, 2, "naive: row 1 was overwritten");
    let ann: String = people::table
        .find(1)
        .select(people::name)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(ann, "Mallory");
    conn.batch_execute("UPDATE people SET name = 'Ann' WHERE id = 1")
        .unwrap();

    let intruder = Person {
        id: 3,
        email: "ann@example.com".into(),
        name: "Mallory".into(),
    };
    let err = atomic_upsert(&mut conn, &intruder).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Constraint {
                kind: ConstraintKind::Unique,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.constraint_name(), Some("people_email"), "{err}");
    assert!(!err.is_retryable());

    let batch = vec![
        Person {
            id: 2,
            email: "bob@example.com".into(),
            name: "Robert".into(),
        },
        intruder.clone(),
        Person {
            id: 4,
            email: "cy@example.com".into(),
            name: "Cy".into(),
        },
    ];
    let err = bulk_upsert(&mut conn, &batch).unwrap_err();
    assert_eq!(err.constraint_name(), Some("people_email"), "{err}");
    // Told row by row, the same: the index named, nothing written.
    let err = upsert_kit::bulk_upsert_rows(&mut conn, &batch).unwrap_err();
    assert_eq!(err.constraint_name(), Some("people_email"), "{err}");
    let all: Vec<(i64, String, String)> = people::table.order(people::id).load(&mut conn).unwrap();
    assert_eq!(
        all,
        [
            (1, "ann@example.com".into(), "Ann".into()),
            (2, "bob@example.com".into(), "Bob".into())
        ],
        "nothing of the refused call was written"
    );

    // RELIABILITY 4: the key exists and its update would take another row's email: the
    // unique violation comes back naming that index, nothing changed.
    let err = atomic_upsert(
        &mut conn,
        &Person {
            id: 1,
            email: "bob@example.com".into(),
            name: "Ann".into(),
        },
    )
    .unwrap_err();
    assert_eq!(err.constraint_name(), Some("people_email"), "{err}");

    // The key's own conflict still updates; a new key with a new email inserts.
    assert_eq!(
        bulk_upsert(&mut conn, &[batch[0].clone(), batch[2].clone()])
            .unwrap()
            .rows(),
        2
    );
}

/// 4 columns × 20,000 rows in one chunk would be 80,000 placeholders, past MySQL's 65,535;
/// 40 rows of 1 MiB each, 40 MiB, past `max_allowed_packet`. Both are split.
#[test]
fn bulk_chunks_stay_under_the_placeholder_limit_and_max_allowed_packet() {
    let db = db();
    let mut conn = db.conn();
    let many: Vec<Stats> = (0..20_000)
        .map(|i| stats(&format!("p{i:05}"), i % 24))
        .collect();
    let outcome = UpsertMany::new(&many)
        .chunk_size(50_000)
        .execute(&mut conn)
        .unwrap();
    assert_eq!(outcome.inserted, 20_000);

    let max_packet: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "CAST(@@max_allowed_packet AS SIGNED)",
    ))
    .get_result(&mut conn)
    .unwrap();
    let big = "x".repeat(1 << 20);
    let n = (max_packet / (1 << 20) + 8).min(80);
    let large: Vec<Stats> = (0..n)
        .map(|i| Stats {
            data: json!({ "blob": big }),
            ..stats(&format!("big{i:03}"), 1)
        })
        .collect();
    let outcome = bulk_upsert(&mut conn, &large).unwrap();
    assert_eq!(
        outcome.inserted, n as usize,
        "{n} MiB, max_allowed_packet {max_packet}"
    );
    let outcome = bulk_upsert(&mut conn, &large).unwrap();
    assert_eq!(outcome.updated, n as usize);
    // Told row by row: the per-row statements are cut below the packet limit too.
    let told = upsert_kit::bulk_upsert_rows(&mut conn, &large).unwrap();
    assert_eq!(told, vec![upsert_kit::RowOutcome::Updated; n as usize]);
}

// Get-or-create on MySQL.

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = stats)]
struct StoredStats {
    id: i64,
    stats_type: String,
    data: serde_json::Value,
}

#[derive(Debug, Clone, upsert_kit::UpsertModel)]
#[diesel(table_name = stats)]
#[upsert(key(stats_type))]
struct NewStats {
    stats_type: String,
    data: serde_json::Value,
}

fn new_stats(kind: &str, n: i64) -> NewStats {
    NewStats {
        stats_type: kind.to_owned(),
        data: json!({ "n": n }),
    }
}

/// RELIABILITY 3 with the naive query-then-insert in the same test: 8 sessions at once get one
/// row, the same id each, exactly one told "created"; the naive SELECT-then-INSERT from 8
/// sessions, all reading before any writes, gets 7 duplicate-key errors.
#[test]
fn get_or_create_from_8_threads_returns_one_row_and_one_creator_where_the_naive_one_fails() {
    use upsert_kit::get_or_create::{get_or_create, Obtained};
    let db = db();
    let pool = db.pool(8);
    // Every session reads before any writes (the barrier between makes the losing schedule
    // certain): all see no row, all insert, all but one fail.
    let all_read = Arc::new(Barrier::new(8));
    let (p, b) = (pool.clone(), all_read.clone());
    let naive_errors: usize = race(8, move |i| {
        let mut conn = p.get().unwrap();
        let found: Option<StoredStats> = stats::table
            .filter(stats::stats_type.eq("naive"))
            .select(StoredStats::as_select())
            .first(&mut conn)
            .optional()
            .unwrap();
        b.wait();
        if found.is_some() {
            return 0;
        }
        let inserted = diesel::insert_into(stats::table)
            .values(&stats("naive", i as i64))
            .execute(&mut conn);
        usize::from(inserted.is_err())
    })
    .into_iter()
    .sum();
    let p = pool.clone();
    let got: Vec<Obtained<StoredStats>> = race(8, move |i| {
        get_or_create(&mut p.get().unwrap(), &new_stats("ytd", i as i64)).unwrap()
    });
    eprintln!("MariaDB get-or-create x8: naive duplicate-key errors = {naive_errors}, atomic creators = {}",
        got.iter().filter(|g| g.created).count());
    assert!(naive_errors > 0, "the naive pattern should lose the race");
    assert_eq!(naive_errors, 7, "every naive caller but one fails");
    assert_eq!(got.iter().filter(|g| g.created).count(), 1);
    let creator = got.iter().find(|g| g.created).unwrap();
    assert!(got.iter().all(|g| g.row == creator.row));
    let mut conn = db.conn();
    let again: Obtained<StoredStats> = get_or_create(&mut conn, &new_stats("ytd", 99)).unwrap();
    assert!(!again.created);
    assert_eq!(again.row, creator.row, "the stored row, not the new values");
}

/// RELIABILITY 6 on MySQL: inside a REPEATABLE READ transaction whose snapshot predates another
/// session's creation of the row, get-or-create still finds that row (its read is a locking
/// read, which sees the newest committed row): no serialization failure, nothing to retry. The
/// naive consistent read in the same transaction does not see it.
#[test]
fn under_repeatable_read_get_or_create_finds_a_row_committed_after_the_snapshot() {
    use upsert_kit::get_or_create::{get_or_create, Obtained};
    let db = db();
    let mut conn = db.conn();
    let mut other = db.conn();
    let got = upsert_kit::transaction(&mut conn, |c| {
        let before: i64 = stats::table.count().get_result(c)?; // takes the snapshot
        assert_eq!(before, 0);
        let elsewhere: Obtained<StoredStats> = get_or_create(&mut other, &new_stats("ytd", 1))?;
        assert!(elsewhere.created);
        let naive: i64 = stats::table
            .filter(stats::stats_type.eq("ytd"))
            .count()
            .get_result(c)?;
        assert_eq!(naive, 0, "the snapshot's read misses the row");
        get_or_create::<_, _, StoredStats>(c, &new_stats("ytd", 2))
    })
    .unwrap();
    assert!(!got.created);
    assert_eq!(got.row.data, json!({ "n": 1 }));
}

#[test]
fn get_or_create_reports_other_constraints_and_rejects_invalid_rows() {
    use upsert_kit::get_or_create::{get_or_create, Obtained};
    let db = db();
    let mut conn = db.conn();
    let err =
        get_or_create::<_, _, StoredStats>(&mut conn, &new_stats(&"x".repeat(65), 1)).unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let err = get_or_create::<_, _, StoredStats>(&mut conn, &new_stats(" ", 1)).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let rows: i64 = stats::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0);

    #[derive(Debug, PartialEq, Queryable, Selectable)]
    #[diesel(table_name = people)]
    struct Stored {
        id: i64,
        email: String,
    }
    conn.batch_execute("INSERT INTO people VALUES (1, 'ann@example.com', 'Ann')")
        .unwrap();
    let got: Obtained<Stored> = get_or_create(
        &mut conn,
        &Person {
            id: 1,
            email: "other@example.com".into(),
            name: "x".into(),
        },
    )
    .unwrap();
    assert!(!got.created);
    assert_eq!(got.row.email, "ann@example.com");
    let err = get_or_create::<_, _, Stored>(
        &mut conn,
        &Person {
            id: 2,
            email: "ann@example.com".into(),
            name: "x".into(),
        },
    )
    .unwrap_err();
    assert_eq!(err.constraint_name(), Some("people_email"), "{err}");
}
