//! Generic counters on tables these tests declare themselves, on PostgreSQL, SQLite and
//! MySQL/MariaDB (at its default REPEATABLE READ):
//! exact sums under concurrency, first increments of a fresh key, bounds never crossed, and the
//! naive read-add-write losing counts on the same schedule (RELIABILITY case 7). Each test is
//! written once, in [`counter_guarantees!`], and run in a module per backend: `postgres::…`,
//! `sqlite::…`, `mysql::…`.

use diesel::prelude::*;
use std::sync::{Arc, Barrier};
use upsert_kit::counter::{increment, upsert_increment, Increment};
use upsert_kit::{BoundKind, Error};
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    /// Page views and bytes served, with a limit per column.
    hits (page) {
        page -> Text,
        views -> BigInt,
        bytes -> BigInt,
        max_views -> BigInt,
        max_bytes -> BigInt,
    }
}

diesel::table! {
    /// Calls per user and day: a two-column key, an INTEGER amount.
    daily (user_id, day) {
        user_id -> BigInt,
        day -> Date,
        calls -> Integer,
    }
}

upsert_kit::counter! {
    table = hits, key = (page: String), amounts = (views, bytes), limits = (max_views, max_bytes);
    pub struct Hits;
}

upsert_kit::counter! {
    table = daily, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls);
    pub struct Daily;
}

const PG_SQL: &str = "
CREATE TABLE hits (page TEXT PRIMARY KEY, views BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0, max_views BIGINT NOT NULL DEFAULT 0,
    max_bytes BIGINT NOT NULL DEFAULT 0);
CREATE TABLE daily (user_id BIGINT NOT NULL, day DATE NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user_id, day));";

const SQLITE_SQL: &str = PG_SQL;

const MYSQL_SQL: &str = "
CREATE TABLE hits (page VARCHAR(255) PRIMARY KEY, views BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0, max_views BIGINT NOT NULL DEFAULT 0,
    max_bytes BIGINT NOT NULL DEFAULT 0);
CREATE TABLE daily (user_id BIGINT NOT NULL, day DATE NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user_id, day));";

fn day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
}

/// A module `$backend` of the counter tests on the database `db` (its connection type `conn`),
/// with the backend's figures: `increments` per thread on one row, and `first_increments` per
/// thread on a fresh key (one write lock for the whole SQLite file makes its rounds dearer). A
/// macro because the calls' bounds differ per backend.
macro_rules! counter_guarantees {
    ($backend:ident, db = $db:expr, conn = $conn:ty, increments = $increments:expr,
     first_increments = $first_increments:expr) => {
        mod $backend {
            use super::*;

            fn views(conn: &mut $conn, page: &str) -> i64 {
                hits::table
                    .filter(hits::page.eq(page))
                    .select(hits::views)
                    .get_result(conn)
                    .unwrap()
            }

            fn bytes(conn: &mut $conn, page: &str) -> i64 {
                hits::table
                    .filter(hits::page.eq(page))
                    .select(hits::bytes)
                    .get_result(conn)
                    .unwrap()
            }

            #[test]
            fn sixteen_threads_of_increments_on_one_row_sum_exactly() {
                const K: i64 = $increments;
                let db = $db;
                let pool = db.pool(16);
                let mut conn = db.conn();
                diesel::sql_query("INSERT INTO hits (page) VALUES ('home')")
                    .execute(&mut conn)
                    .unwrap();
                let p = pool.clone();
                let totals = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let key = "home".to_owned();
                    let mut last = [0, 0];
                    for _ in 0..K {
                        last = increment::<Hits, _>(&mut conn, &key, [1, 10])
                            .unwrap()
                            .unwrap();
                    }
                    last
                });
                assert_eq!(views(&mut conn, "home"), 16 * K);
                assert_eq!(bytes(&mut conn, "home"), 16 * K * 10);
                // The thread that finished last saw the final total.
                assert_eq!(totals.iter().map(|t| t[0]).max(), Some(16 * K));
            }

            /// The naive read-add-write loses counts on the barrier's schedule; the increment
            /// loses none, and its totals are each caller's own.
            #[test]
            fn the_naive_read_add_write_loses_counts_where_the_increment_loses_none() {
                const THREADS: usize = 16;
                const ROUNDS: usize = 20;
                let db = $db;
                let pool = db.pool(THREADS as u32);
                let mut conn = db.conn();
                diesel::sql_query("INSERT INTO hits (page) VALUES ('naive'), ('atomic')")
                    .execute(&mut conn)
                    .unwrap();
                // Every round, all threads read, wait for each other, then write: the schedule
                // that loses counts, made certain by the barrier.
                let barrier = Arc::new(Barrier::new(THREADS));
                let (p, b) = (pool.clone(), barrier.clone());
                race(THREADS, move |_| {
                    let mut conn = p.get().unwrap();
                    for _ in 0..ROUNDS {
                        let seen = views(&mut conn, "naive");
                        b.wait();
                        diesel::update(hits::table.filter(hits::page.eq("naive")))
                            .set(hits::views.eq(seen + 1))
                            .execute(&mut conn)
                            .unwrap();
                        b.wait();
                    }
                });
                assert_eq!(
                    views(&mut conn, "naive"),
                    ROUNDS as i64,
                    "each round's 16 read-add-writes count as one"
                );
                let (p, b) = (pool.clone(), barrier);
                let totals = race(THREADS, move |_| {
                    let mut conn = p.get().unwrap();
                    let key = "atomic".to_owned();
                    let mut seen = Vec::new();
                    for _ in 0..ROUNDS {
                        b.wait();
                        seen.push(
                            increment::<Hits, _>(&mut conn, &key, [1, 10])
                                .unwrap()
                                .unwrap()[0],
                        );
                        b.wait();
                    }
                    seen
                });
                assert_eq!(views(&mut conn, "atomic"), (THREADS * ROUNDS) as i64);
                let mut all: Vec<i64> = totals.into_iter().flatten().collect();
                all.sort_unstable();
                assert_eq!(
                    all,
                    (1..=(THREADS * ROUNDS) as i64).collect::<Vec<_>>(),
                    "every caller got the totals of its own increment"
                );
            }

            #[test]
            fn first_increments_of_a_fresh_key_from_16_threads_create_one_row_and_lose_nothing() {
                const K: i64 = $first_increments;
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let totals = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    (0..K)
                        .map(|_| upsert_increment::<Daily, _>(&mut conn, &(7, day()), [3]).unwrap()[0])
                        .collect::<Vec<i64>>()
                });
                let mut sorted: Vec<i64> = totals.into_iter().flatten().collect();
                sorted.sort_unstable();
                assert_eq!(sorted, (1..=16 * K).map(|i| i * 3).collect::<Vec<i64>>());
                let mut conn = db.conn();
                let rows: Vec<i32> = daily::table.select(daily::calls).load(&mut conn).unwrap();
                assert_eq!(rows, vec![48 * K as i32]);
            }

            #[test]
            fn a_ceiling_is_never_crossed_by_16_threads_and_is_reached_exactly() {
                let db = $db;
                let pool = db.pool(16);
                let mut conn = db.conn();
                diesel::sql_query(
                    "INSERT INTO hits (page, max_views, max_bytes) VALUES ('p', 100, 1000000)",
                )
                .execute(&mut conn)
                .unwrap();
                let p = pool.clone();
                let outcomes = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let key = "p".to_owned();
                    let (mut ok, mut refused) = (0_i64, 0_i64);
                    for _ in 0..20 {
                        match Increment::<Hits>::new(&key, [1, 1])
                            .within_limits()
                            .run(&mut conn)
                        {
                            Ok(Some(t)) => {
                                assert!(t[0] <= 100);
                                ok += 1;
                            }
                            Err(Error::CounterBound {
                                column,
                                bound: BoundKind::Limit,
                                limit: 100,
                                ..
                            }) if column == "views" => refused += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    (ok, refused)
                });
                let ok: i64 = outcomes.iter().map(|o| o.0).sum();
                let refused: i64 = outcomes.iter().map(|o| o.1).sum();
                assert_eq!((ok, refused), (100, 16 * 20 - 100));
                assert_eq!(views(&mut conn, "p"), 100);
                assert_eq!(
                    bytes(&mut conn, "p"),
                    100,
                    "a refused increment writes no column at all"
                );
                let zero = increment::<Hits, _>(&mut conn, &"p".to_owned(), [0, 0]).unwrap();
                assert_eq!(zero, Some([100, 100]), "a zero increment reads the row");
            }

            #[test]
            fn a_floor_of_zero_is_never_crossed_by_16_threads_taking_units() {
                let db = $db;
                let pool = db.pool(16);
                let mut conn = db.conn();
                diesel::sql_query("INSERT INTO hits (page, views) VALUES ('stock', 50)")
                    .execute(&mut conn)
                    .unwrap();
                let p = pool.clone();
                let taken = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let key = "stock".to_owned();
                    let mut taken = 0;
                    for _ in 0..10 {
                        match Increment::<Hits>::new(&key, [-1, 0])
                            .at_least(0)
                            .run(&mut conn)
                        {
                            Ok(Some(t)) => {
                                assert!(t[0] >= 0);
                                taken += 1;
                            }
                            Err(Error::CounterBound {
                                bound: BoundKind::Floor,
                                current: 0,
                                delta: -1,
                                ..
                            }) => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    taken
                });
                assert_eq!(taken.iter().sum::<i64>(), 50);
                assert_eq!(views(&mut conn, "stock"), 0);
            }

            /// A bounded creating increment from 16 threads on a fresh key: the ceiling of 20
            /// is reached exactly, never crossed; the refused ones say so and write nothing.
            #[test]
            fn a_creating_increment_under_a_ceiling_from_16_threads_fills_a_fresh_key_exactly() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let outcomes = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let key = (8, day());
                    let (mut ok, mut refused) = (0, 0);
                    for _ in 0..5 {
                        match Increment::<Daily>::new(&key, [1])
                            .at_most(20)
                            .creating()
                            .run(&mut conn)
                        {
                            Ok(Some(t)) => {
                                assert!(t[0] <= 20);
                                ok += 1;
                            }
                            Err(Error::CounterBound {
                                bound: BoundKind::Ceiling,
                                current: 20,
                                ..
                            }) => refused += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    (ok, refused)
                });
                let ok: i32 = outcomes.iter().map(|o| o.0).sum();
                let refused: i32 = outcomes.iter().map(|o| o.1).sum();
                assert_eq!((ok, refused), (20, 16 * 5 - 20));
                let mut conn = db.conn();
                let calls: i32 = daily::table
                    .filter(daily::user_id.eq(8))
                    .select(daily::calls)
                    .get_result(&mut conn)
                    .unwrap();
                assert_eq!(calls, 20);
            }

            #[test]
            fn an_increment_of_a_missing_row_is_none_and_writes_nothing() {
                let db = $db;
                let mut conn = db.conn();
                assert_eq!(
                    increment::<Hits, _>(&mut conn, &"nowhere".to_owned(), [1, 1]).unwrap(),
                    None
                );
                assert_eq!(
                    Increment::<Hits>::new(&"nowhere".to_owned(), [1, 1])
                        .at_most(5)
                        .run(&mut conn)
                        .unwrap(),
                    None
                );
                let rows: i64 = hits::table.count().get_result(&mut conn).unwrap();
                assert_eq!(rows, 0);
            }

            #[test]
            fn a_constant_ceiling_refuses_a_fresh_row_that_would_start_above_it() {
                let db = $db;
                let mut conn = db.conn();
                let key = (1, day());
                let too_big = Increment::<Daily>::new(&key, [11])
                    .at_most(10)
                    .creating()
                    .run(&mut conn)
                    .unwrap();
                assert_eq!(too_big, None, "no row is created above the ceiling");
                let ok = Increment::<Daily>::new(&key, [10])
                    .at_most(10)
                    .creating()
                    .run(&mut conn)
                    .unwrap();
                assert_eq!(ok, Some([10]));
                let refused = Increment::<Daily>::new(&key, [1])
                    .at_most(10)
                    .creating()
                    .run(&mut conn);
                assert!(matches!(
                    refused,
                    Err(Error::CounterBound { bound: BoundKind::Ceiling, current: 10, delta: 1, limit: 10, ref column }) if column == "calls"
                ));
                let zero = Increment::<Daily>::new(&key, [0])
                    .at_most(10)
                    .creating()
                    .run(&mut conn)
                    .unwrap();
                assert_eq!(
                    zero,
                    Some([10]),
                    "a zero increment is no move towards the bound"
                );
            }

            #[test]
            fn limits_are_refused_on_a_counter_without_limit_columns_and_on_creation() {
                let db = $db;
                let mut conn = db.conn();
                let no_limits = Increment::<Daily>::new(&(1, day()), [1])
                    .within_limits()
                    .run(&mut conn);
                assert!(matches!(no_limits, Err(Error::InvalidInput(_))));
                let creating = Increment::<Hits>::new(&"p".to_owned(), [1, 1])
                    .within_limits()
                    .creating()
                    .run(&mut conn);
                assert!(matches!(creating, Err(Error::InvalidInput(_))));
                let empty_key = increment::<Hits, _>(&mut conn, &String::new(), [1, 1]);
                assert!(matches!(empty_key, Err(Error::InvalidInput(ref e)) if e.field == "page"));
            }

            #[test]
            fn the_same_calls_run_on_a_plain_connection() {
                let db = $db;
                let mut conn = db.conn();
                let key = (3, day());
                assert_eq!(increment::<Daily, _>(&mut conn, &key, [1]).unwrap(), None);
                assert_eq!(
                    upsert_increment::<Daily, _>(&mut conn, &key, [2]).unwrap(),
                    [2]
                );
                assert_eq!(
                    increment::<Daily, _>(&mut conn, &key, [-2]).unwrap(),
                    Some([0])
                );
                let refused = Increment::<Daily>::new(&key, [-1])
                    .at_least(0)
                    .run(&mut conn);
                assert!(matches!(
                    refused,
                    Err(Error::CounterBound {
                        bound: BoundKind::Floor,
                        ..
                    })
                ));
            }
        }
    };
}

counter_guarantees!(
    postgres,
    db = TestDb::with_sql(PG_SQL),
    conn = PgConnection,
    increments = 500,
    first_increments = 1
);
counter_guarantees!(
    sqlite,
    db = TestSqlite::with_sql(SQLITE_SQL),
    conn = SqliteConnection,
    increments = 50,
    first_increments = 50
);
counter_guarantees!(
    mysql,
    db = TestMysql::with_sql(MYSQL_SQL),
    conn = MysqlConnection,
    increments = 100,
    first_increments = 1
);
