//! Atomic upserts on PostgreSQL, SQLite and MySQL/MariaDB (at its default REPEATABLE READ).
//!
//! Each guarantee the backends share is written once, in [`upsert_guarantees!`] (every
//! backend) and [`row_lock_guarantees!`] (the servers, where one session waits on another's
//! row lock), and instantiated in a module per backend: `postgres::…`, `sqlite::…`, `mysql::…`.
//! What only one backend has (PostgreSQL's prepared statements, MySQL's `CLIENT_FOUND_ROWS`,
//! its second unique keys and packet limits, …) stays in that backend's module.

#[path = "../fixture/mod.rs"]
mod fixture;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

fn at(hour: i64) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        + Duration::hours(hour)
}

fn new_year(year: i32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(year, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
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

/// The same DDL on every backend.
const DAILY_TOTALS_SQL: &str = "CREATE TABLE daily_totals (note TEXT NOT NULL,
    user_id BIGINT NOT NULL, total BIGINT NOT NULL, day DATE NOT NULL, PRIMARY KEY (user_id, day))";

#[derive(Debug, Clone, upsert_kit::UpsertModel)]
#[upsert(table = daily_totals, key(user_id, day))]
struct DailyTotal {
    note: String,
    user_id: i64,
    total: i64,
    day: NaiveDate,
}

/// A session of a server, seen from another: who it is and whether it waits on a lock.
trait Session: Connection {
    /// The server's id of this session.
    fn session_id(&mut self) -> i64;
    /// Whether the session `id` is waiting on a lock now.
    fn is_waiting_on_a_lock(&mut self, id: i64) -> bool;
    /// How long to wait between two looks.
    const POLL: std::time::Duration = std::time::Duration::from_millis(10);
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Session for PgConnection {
    fn session_id(&mut self) -> i64 {
        diesel::select(diesel::dsl::sql::<BigInt>("pg_backend_pid()::bigint"))
            .get_result(self)
            .unwrap()
    }

    fn is_waiting_on_a_lock(&mut self, id: i64) -> bool {
        let waiting: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<BigInt, _>(id)
        .get_result(self)
        .unwrap();
        waiting.n > 0
    }
}

impl Session for MysqlConnection {
    /// InnoDB refreshes what `INNODB_TRX` shows only when nobody read it for 100 ms (counted
    /// from the last read by any session): a probe looking more often sees the first answer for
    /// ever, and so do two probes of concurrent tests whose reads together come closer than
    /// that (seen in CI: two tests at once, neither saw its session wait within 30 s). So the
    /// probes of this process take turns, each read at least `POLL` after the last one.
    const POLL: std::time::Duration = std::time::Duration::from_millis(150);

    fn session_id(&mut self) -> i64 {
        diesel::select(diesel::dsl::sql::<BigInt>(
            "CAST(CONNECTION_ID() AS SIGNED)",
        ))
        .get_result(self)
        .unwrap()
    }

    fn is_waiting_on_a_lock(&mut self, id: i64) -> bool {
        static LAST_READ: std::sync::Mutex<Option<std::time::Instant>> =
            std::sync::Mutex::new(None);
        let mut last = LAST_READ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(since) = last.map(|at| at.elapsed()) {
            std::thread::sleep(Self::POLL.saturating_sub(since));
        }
        let waiting: Count = diesel::sql_query(
            "SELECT CAST(COUNT(*) AS SIGNED) AS n FROM information_schema.INNODB_TRX \
             WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT'",
        )
        .bind::<BigInt, _>(id)
        .get_result(self)
        .unwrap();
        *last = Some(std::time::Instant::now());
        waiting.n > 0
    }
}

/// Returns once the session `id` waits on a lock; panics if it never does (within 30 s: on a
/// loaded machine the other thread may take seconds to send its statement).
fn wait_until_waiting<S: Session>(probe: &mut S, id: i64) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        if probe.is_waiting_on_a_lock(id) {
            return;
        }
        std::thread::sleep(S::POLL);
    }
    panic!("session {id} never waited on a lock");
}

/// The tests of the guarantees every backend gives, expanded inside a backend's module. That
/// module has in scope the tables `stats` and `tokens`, their models `Stats` and `Token`, and
/// `db()`, a fresh database holding them; `conn` is its connection type and `too_long` the
/// error a stats key longer than its column raises there. A macro because the calls' bounds
/// differ per backend.
macro_rules! upsert_guarantees {
    (conn = $conn:ty, too_long = $too_long:pat) => {
        use super::{at, new_year, DailyTotal, DAILY_TOTALS_SQL};
        use diesel::connection::SimpleConnection;
        use diesel::prelude::*;
        use serde_json::json;
        use upsert_kit::upsert::incoming;
        use upsert_kit::{
            atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, ConstraintKind,
            Error, Upsert, UpsertMany, UpsertOutcome,
        };
        use upsert_kit_support::race;

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

        type StatsRow = (
            String,
            serde_json::Value,
            chrono::NaiveDateTime,
            chrono::NaiveDateTime,
        );

        fn stored_stats(conn: &mut $conn) -> Vec<StatsRow> {
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

        fn stored_token(conn: &mut $conn) -> (String, chrono::NaiveDateTime) {
            tokens::table
                .select((tokens::access_token, tokens::expires_at))
                .get_result(conn)
                .unwrap()
        }

        #[test]
        fn upsert_of_a_new_key_reports_inserted() {
            let db = db();
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
            let db = db();
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
        fn an_upsert_of_identical_values_without_a_condition_reports_updated() {
            let db = db();
            let mut conn = db.conn();
            atomic_upsert(&mut conn, &stats("ytd", 2)).unwrap();
            // No condition stopped it: `Updated` on every backend, whatever MySQL's
            // affected-rows count says of a row written with its own values.
            assert_eq!(
                atomic_upsert(&mut conn, &stats("ytd", 2)).unwrap(),
                UpsertOutcome::Updated
            );
        }

        #[test]
        fn upsert_with_a_false_condition_reports_unchanged_and_writes_nothing() {
            let db = db();
            let mut conn = db.conn();
            atomic_upsert(&mut conn, &stats("ytd", 1)).unwrap();
            atomic_upsert(&mut conn, &stats("ytd", 5)).unwrap();
            let outcome = Upsert::new(&stats("ytd", 3))
                .update_if(incoming(stats::updated_at).gt(stats::updated_at))
                .execute(&mut conn)
                .unwrap();
            assert_eq!(outcome, UpsertOutcome::Unchanged);
            let rows = stored_stats(&mut conn);
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].1, json!({"count": 5, "distance": 7.5}));
            assert_eq!(rows[0].2, at(1), "created_at is kept");
        }

        #[test]
        fn keep_leaves_a_column_alone_on_update() {
            let db = db();
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
            use UpsertOutcome::{Inserted, Unchanged};
            let db = db();
            let mut conn = db.conn();
            // The same data, then the same data with a later updated_at.
            let same = Stats {
                updated_at: at(9),
                ..stats("ytd", 1)
            };
            let outcomes = [stats("ytd", 1), stats("ytd", 1), same]
                .map(|row| atomic_upsert_stats(&mut conn, &row).unwrap());
            assert_eq!(outcomes, [Inserted, Unchanged, Unchanged]);
            assert_eq!(
                stored_stats(&mut conn)[0].3,
                at(1),
                "an unchanged row keeps its updated_at"
            );
            assert_eq!(
                atomic_upsert_stats(&mut conn, &stats("ytd", 3)).unwrap(),
                UpsertOutcome::Updated
            );
        }

        #[test]
        fn auth_upsert_never_replaces_a_token_with_an_older_one() {
            use UpsertOutcome::{Inserted, Unchanged};
            let db = db();
            let mut conn = db.conn();
            // A token, an older one, one as old.
            let outcomes = [("t12", 12), ("t11", 11), ("t12b", 12)]
                .map(|(access, hour)| atomic_upsert_auth(&mut conn, &token(access, hour)).unwrap());
            assert_eq!(outcomes, [Inserted, Unchanged, Unchanged]);
            assert_eq!(stored_token(&mut conn), ("t12".to_owned(), at(12)));
            assert_eq!(
                atomic_upsert_auth(&mut conn, &token("t13", 13)).unwrap(),
                UpsertOutcome::Updated
            );
            assert_eq!(stored_token(&mut conn), ("t13".to_owned(), at(13)));
        }

        /// RELIABILITY 5: concurrent monotonic token upserts end on the newest expiry whatever
        /// the order, never a regression.
        #[test]
        fn concurrent_token_writers_leave_the_newest_token() {
            let db = db();
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

        /// RELIABILITY 1. On SQLite the writers queue on the write lock (busy timeout) and each
        /// runs whole.
        #[test]
        fn many_threads_upserting_one_new_key_leave_one_row_and_no_error() {
            let db = db();
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

        #[test]
        fn bulk_upsert_collapses_duplicate_keys_and_the_last_row_wins() {
            let db = db();
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
        fn bulk_upsert_rows_tells_each_input_rows_outcome_in_input_order() {
            use upsert_kit::upsert::{bulk_upsert_stream_rows, Changed, Commit};
            use upsert_kit::{BulkOutcome, RowOutcome};
            let db = db();
            let mut conn = db.conn();
            atomic_upsert(&mut conn, &stats("recent", 1)).unwrap();
            atomic_upsert(&mut conn, &stats("same", 5)).unwrap();
            // New, changed, unchanged and repeated keys, unsorted.
            let rows = vec![
                stats("ytd", 1),
                stats("recent", 2),
                stats("ytd", 3),
                stats("same", 5),
                stats("brand", 9),
                stats("recent", 4),
            ];
            let told = UpsertMany::new(&rows)
                .update_if(Changed::<stats::data>::default())
                .execute_rows(&mut conn)
                .unwrap();
            assert_eq!(
                told,
                [
                    RowOutcome::Superseded { by: 2 },
                    RowOutcome::Superseded { by: 5 },
                    RowOutcome::Inserted,
                    RowOutcome::Unchanged,
                    RowOutcome::Inserted,
                    RowOutcome::Updated,
                ]
            );
            let counts = BulkOutcome::tally(&told);
            assert_eq!(
                (counts.inserted, counts.updated, counts.unchanged, counts.collapsed),
                (2, 1, 1, 2)
            );
            assert_eq!(stored_stats(&mut conn)[1].1["count"], 4, "recent is the last row's");

            // Many rows over several statements (chunks of 40; MySQL tells 60 rows at most per
            // statement): keys k000..k149, the even ones stored before, half of those with the
            // same data; k000..k009 given twice (the second one wins).
            for i in (0..150).step_by(2) {
                atomic_upsert(&mut conn, &stats(&format!("k{i:03}"), i % 4)).unwrap();
            }
            let mut many: Vec<Stats> = (0..150).map(|i| stats(&format!("k{i:03}"), 0)).collect();
            many.extend((0..10).map(|i| stats(&format!("k{i:03}"), 0)));
            let told = UpsertMany::new(&many)
                .update_if(Changed::<stats::data>::default())
                .chunk_size(40)
                .execute_rows(&mut conn)
                .unwrap();
            let expected: Vec<RowOutcome> = (0..160)
                .map(|i| match i {
                    0..=9 => RowOutcome::Superseded { by: 150 + i },
                    150.. if (i - 150) % 2 == 1 => RowOutcome::Inserted,
                    150.. if (i - 150) % 4 == 0 => RowOutcome::Unchanged,
                    150.. => RowOutcome::Updated,
                    i if i % 2 == 1 => RowOutcome::Inserted,
                    i if i % 4 == 0 => RowOutcome::Unchanged,
                    _ => RowOutcome::Updated,
                })
                .collect();
            assert_eq!(told, expected);

            // An invalid row: nothing written, the row named.
            let mut broken = vec![stats("zz-first", 1), stats("zz-second", 1)];
            broken[1].stats_type = "y".repeat(65);
            let err = UpsertMany::new(&broken).execute_rows(&mut conn).unwrap_err();
            assert!(matches!(err, $too_long), "{err:?}");
            let first = stats::table.filter(stats::stats_type.eq("zz-first")).count();
            assert_eq!(first.get_result::<i64>(&mut conn).unwrap(), 0);

            // The stream tells each row once its chunk is written, positions in the stream.
            let keys = ["s-a", "s-b", "s-a", "s-a", "s-c", "s-b", "s-b"];
            let stream = keys.map(|k| stats(k, 3));
            let mut seen = Vec::new();
            let total = bulk_upsert_stream_rows(&mut conn, stream, 3, Commit::PerChunk, |i, o| {
                seen.push((i, o))
            })
            .unwrap();
            assert_eq!(
                seen,
                [
                    (0, RowOutcome::Superseded { by: 2 }),
                    (1, RowOutcome::Inserted),
                    (2, RowOutcome::Inserted),
                    (3, RowOutcome::Updated),
                    (4, RowOutcome::Inserted),
                    (5, RowOutcome::Updated),
                    (6, RowOutcome::Updated), // the third chunk: keys are not collapsed across
                ]
            );
            assert_eq!(
                (total.inserted, total.updated, total.unchanged, total.collapsed),
                (3, 3, 0, 1)
            );
        }

        #[test]
        fn bulk_upsert_collapses_duplicates_counts_exactly_and_is_all_or_nothing() {
            let db = db();
            let mut conn = db.conn();
            atomic_upsert(&mut conn, &stats("recent", 1)).unwrap();
            atomic_upsert(&mut conn, &stats("same", 5)).unwrap();
            let rows = vec![
                stats("ytd", 1),
                stats("recent", 2),
                stats("ytd", 3),
                stats("same", 5),
            ];
            let outcome = bulk_upsert(&mut conn, &rows).unwrap();
            assert_eq!(
                (
                    outcome.inserted,
                    outcome.updated,
                    outcome.unchanged,
                    outcome.collapsed
                ),
                (1, 2, 0, 1)
            );
            let stats_only = UpsertMany::new(&rows)
                .update_if(upsert_kit::upsert::Changed::<stats::data>::default())
                .execute(&mut conn)
                .unwrap();
            assert_eq!(
                (
                    stats_only.inserted,
                    stats_only.updated,
                    stats_only.unchanged
                ),
                (0, 0, 3)
            );
            assert_eq!(
                stored_stats(&mut conn)[2].1,
                json!({"count": 3, "distance": 4.5})
            );

            let many: Vec<Stats> = (0..2_000)
                .map(|i| stats(&format!("k{i:04}"), i % 50))
                .collect();
            let outcome = UpsertMany::new(&many)
                .chunk_size(100)
                .execute(&mut conn)
                .unwrap();
            assert_eq!(outcome.inserted, 2_000);

            let mut broken: Vec<Stats> =
                (0..2_000).map(|i| stats(&format!("k{i:04}"), 7)).collect();
            broken[1_999].stats_type = "y".repeat(65);
            let err = UpsertMany::new(&broken)
                .chunk_size(100)
                .execute(&mut conn)
                .unwrap_err();
            assert!(matches!(err, $too_long), "{err:?}");
            let sevens: i64 = stats::table
                .filter(stats::created_at.eq(at(7)))
                .count()
                .get_result(&mut conn)
                .unwrap();
            assert_eq!(
                sevens, 40,
                "the failed call left the first pass's rows as they were"
            );
            let updated_at_7: i64 = stats::table
                .filter(stats::updated_at.eq(at(7)))
                .count()
                .get_result(&mut conn)
                .unwrap();
            assert_eq!(updated_at_7, 40, "no chunk of the failed call stayed");
            assert_eq!(stored_stats(&mut conn).len(), 2_003);
        }

        #[test]
        fn bad_input_writes_nothing() {
            let db = db();
            let mut conn = db.conn();
            for blank in ["", "  "] {
                assert!(
                    matches!(atomic_upsert(&mut conn, &stats(blank, 1)), Err(Error::InvalidInput(e)) if e.field == "stats_type")
                );
            }
            let ancient = Stats {
                updated_at: new_year(-5000),
                ..stats("ytd", 1)
            };
            assert!(
                matches!(atomic_upsert(&mut conn, &ancient), Err(Error::InvalidInput(e)) if e.field == "updated_at")
            );
            let far = Stats {
                created_at: new_year(10_000),
                ..stats("far", 1)
            };
            assert!(
                matches!(atomic_upsert(&mut conn, &far), Err(Error::InvalidInput(e)) if e.field == "created_at")
            );
            let err = atomic_upsert(&mut conn, &stats(&"z".repeat(65), 1)).unwrap_err();
            assert!(matches!(err, $too_long), "{err:?}");
            let bad_row = vec![stats("ytd", 1), stats("", 2)];
            assert!(
                matches!(bulk_upsert(&mut conn, &bad_row), Err(Error::InvalidInput(e)) if e.field == "rows[1].stats_type")
            );
            assert!(stored_stats(&mut conn).is_empty());
        }

        #[test]
        fn a_two_column_key_in_the_middle_of_the_row_updates_only_its_own_row() {
            use super::daily_totals;
            let db = db();
            let mut conn = db.conn();
            conn.batch_execute(DAILY_TOTALS_SQL).unwrap();
            let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
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
                .update_if(incoming(daily_totals::total).gt(daily_totals::total))
                .execute(&mut conn)
                .unwrap();
            assert_eq!(skipped, UpsertOutcome::Unchanged);
            let stored: Vec<(i64, chrono::NaiveDate, i64, String)> = daily_totals::table
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

        #[test]
        fn pooled_connections_take_the_same_calls() {
            let db = db();
            let pool = db.pool(2);
            let mut conn = pool.get().unwrap();
            assert_eq!(
                atomic_upsert(&mut conn, &stats("pooled", 1)).unwrap(),
                UpsertOutcome::Inserted
            );
            assert_eq!(
                bulk_upsert(&mut conn, &[stats("pooled", 2)])
                    .unwrap()
                    .updated,
                1
            );
        }
    };
}

/// The tests of the guarantees where sessions of a server meet on a row: the naive
/// query-then-insert losing races the upsert wins, and an upsert waiting on another
/// transaction's row lock. Expanded after [`upsert_guarantees!`] in the module of a server
/// backend (`conn` must be a [`Session`]); `naive` is that backend's query-then-insert, called
/// as `naive(&mut conn, &row)`, and `other_naive_errors` whether it may fail otherwise than
/// on the duplicate key (MySQL's may, under REPEATABLE READ).
macro_rules! row_lock_guarantees {
    (conn = $conn:ty, naive = $naive:path, other_naive_errors = $other_naive_errors:expr) => {
        use std::sync::{Arc, Barrier};

        type Pooled = diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<$conn>>;

        /// T1 runs `first` in a transaction and holds it open; T2 runs `second`, and once T2
        /// is seen waiting on a lock T1 commits, or rolls back. Returns T2's result.
        fn while_held<T: Send + 'static>(
            pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<$conn>>,
            probe: &mut $conn,
            commit: bool,
            first: fn(&mut Pooled) -> Result<(), Error>,
            second: fn(&mut Pooled) -> T,
        ) -> T {
            use super::Session;
            let (holds, may_end) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
            let (p, h, m) = (pool.clone(), holds.clone(), may_end.clone());
            let t1 = std::thread::spawn(move || {
                let mut c = p.get().unwrap();
                upsert_kit::transaction(&mut c, |c| {
                    first(c)?;
                    h.wait();
                    m.wait();
                    if commit {
                        Ok(())
                    } else {
                        Err(Error::NotFound("roll back".into()))
                    }
                })
                .is_ok()
            });
            holds.wait();
            let (tx, rx) = std::sync::mpsc::channel();
            let t2 = std::thread::spawn(move || {
                let mut c = pool.get().unwrap();
                tx.send(c.session_id()).unwrap();
                second(&mut c)
            });
            super::wait_until_waiting(probe, rx.recv().unwrap());
            may_end.wait();
            assert_eq!(t1.join().unwrap(), commit, "T1 committed or rolled back");
            t2.join().unwrap()
        }

        /// The naive query-then-insert and the atomic upsert, released by the same barrier on
        /// fresh keys round after round: the naive one raises duplicate-key errors, the atomic
        /// one none, and exactly one caller per key is told `Inserted`.
        #[test]
        fn naive_query_then_insert_fails_where_the_atomic_upsert_does_not() {
            const THREADS: usize = 8;
            const ROUNDS: usize = 30;
            let db = db();
            let pool = db.pool(THREADS as u32);
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let pool = pool.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let mut conn = pool.get().unwrap();
                        let (mut naive_dupes, mut naive_other, mut atomic_errors, mut inserted) =
                            (0, 0, 0, 0);
                        for round in 0..ROUNDS {
                            barrier.wait();
                            match $naive(&mut conn, &stats(&format!("naive-{round}"), i as i64)) {
                                Ok(_) => {}
                                Err(Error::Constraint {
                                    kind: ConstraintKind::Unique,
                                    ..
                                }) => naive_dupes += 1,
                                Err(_) => naive_other += 1,
                            }
                            barrier.wait();
                            match atomic_upsert(&mut conn, &stats(&format!("atomic-{round}"), i as i64))
                            {
                                Ok(UpsertOutcome::Inserted) => inserted += 1,
                                Ok(_) => {}
                                Err(_) => atomic_errors += 1,
                            }
                        }
                        (naive_dupes, naive_other, atomic_errors, inserted)
                    })
                })
                .collect();
            let results: Vec<(i32, i32, i32, i32)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            let naive_dupes: i32 = results.iter().map(|r| r.0).sum();
            let naive_other: i32 = results.iter().map(|r| r.1).sum();
            let atomic_errors: i32 = results.iter().map(|r| r.2).sum();
            let inserted: i32 = results.iter().map(|r| r.3).sum();
            eprintln!(
                "{THREADS} threads x {ROUNDS} fresh keys: naive duplicate-key errors = {naive_dupes} \
                 (other errors {naive_other}), atomic errors = {atomic_errors}"
            );
            assert!(naive_dupes > 0, "the naive pattern should lose some races");
            if !$other_naive_errors {
                assert_eq!(naive_other, 0);
            }
            assert_eq!(atomic_errors, 0);
            assert_eq!(inserted, ROUNDS as i32, "one Inserted per key");
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

        /// RELIABILITY 2: T1 upserts k and holds its transaction; T2 upserts k and waits; T1
        /// commits → T2 updates T1's row; or T1 rolls back → T2 inserts. Either way one row,
        /// T2's data.
        #[test]
        fn a_blocked_upsert_sees_the_outcome_of_the_transaction_it_waited_for() {
            for commit in [true, false] {
                let db = db();
                let outcome = while_held(
                    db.pool(2),
                    &mut db.conn(),
                    commit,
                    |c| {
                        assert_eq!(atomic_upsert(c, &stats("ytd", 1))?, UpsertOutcome::Inserted);
                        Ok(())
                    },
                    |c| atomic_upsert(c, &stats("ytd", 2)).unwrap(),
                );
                assert_eq!(
                    outcome,
                    if commit {
                        UpsertOutcome::Updated
                    } else {
                        UpsertOutcome::Inserted
                    }
                );
                let rows = stored_stats(&mut db.conn());
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].1["count"], 2, "T2's data");
            }
        }

        /// RELIABILITY 5: the "only if newer" condition is judged against the newest committed
        /// row: T2's older token waits for T1's newer one, then is skipped.
        #[test]
        fn a_conditional_update_is_judged_against_the_newest_committed_row() {
            let db = db();
            let mut setup = db.conn();
            atomic_upsert_auth(&mut setup, &token("t10", 10)).unwrap();
            let outcome = while_held(
                db.pool(2),
                &mut setup,
                true,
                |c| {
                    assert_eq!(
                        atomic_upsert_auth(c, &token("t12", 12))?,
                        UpsertOutcome::Updated
                    );
                    Ok(())
                },
                // Newer than the committed t10, older than T1's pending t12.
                |c| atomic_upsert_auth(c, &token("t11", 11)).unwrap(),
            );
            assert_eq!(outcome, UpsertOutcome::Unchanged);
            assert_eq!(stored_token(&mut setup), ("t12".to_owned(), at(12)));
        }
    };
}

// After the macros: the backends' modules expand them.
mod mysql;
mod postgres;
mod sqlite;
