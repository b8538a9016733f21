//! Recorded increments (a ledger of counter increments with typed columns: the key within its
//! scope, a `BIGINT` fingerprint, the amounts, the totals after and the counter row's id) on a
//! counter found by a natural key, on PostgreSQL, SQLite and MySQL/MariaDB (at its default
//! REPEATABLE READ): RELIABILITY cases 7 and 8, each test written once in
//! [`record_guarantees!`] and run in a module per backend.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use upsert_kit::idempotency::{prune_records, IdempotencyKey, Idempotent, Record};
use upsert_kit::{ConstraintKind, Error};
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    meters (id) {
        id -> BigInt,
        account -> BigInt,
        day -> Date,
        tokens -> BigInt,
        calls -> BigInt,
    }
}

diesel::table! {
    meter_log (id) {
        id -> BigInt,
        account -> BigInt,
        request -> Text,
        request_hash -> BigInt,
        tokens -> BigInt,
        calls -> BigInt,
        tokens_after -> BigInt,
        calls_after -> BigInt,
        meter_id -> BigInt,
        logged_at -> Timestamp,
    }
}

upsert_kit::counter! {
    table = meters, key = (account: i64, day: NaiveDate), amounts = (tokens, calls);
    pub struct Meters;
}

upsert_kit::ledger! {
    table = meter_log, scope = (account: i64), key = request, fingerprint = request_hash: i64,
    created_at = logged_at, amounts = (tokens, calls), totals = (tokens_after, calls_after),
    row = meters(meter_id = id);
    pub struct MeterLog;
}

/// A ledger row, as the calls return it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = meter_log)]
struct Logged {
    id: i64,
    meter_id: i64,
    tokens_after: i64,
    calls_after: i64,
}

const PG_SQL: &str = "
CREATE TABLE meters (id BIGSERIAL PRIMARY KEY, account BIGINT NOT NULL, day DATE NOT NULL,
    tokens BIGINT NOT NULL DEFAULT 0, calls BIGINT NOT NULL DEFAULT 0, UNIQUE (account, day));
CREATE TABLE meter_log (id BIGSERIAL PRIMARY KEY, account BIGINT NOT NULL, request TEXT NOT NULL,
    request_hash BIGINT NOT NULL, tokens BIGINT NOT NULL, calls BIGINT NOT NULL,
    tokens_after BIGINT NOT NULL, calls_after BIGINT NOT NULL,
    meter_id BIGINT NOT NULL REFERENCES meters (id), logged_at TIMESTAMP NOT NULL,
    UNIQUE (account, request));
INSERT INTO meters (account, day) VALUES (7, '2026-12-01');";

const SQLITE_SQL: &str = "
CREATE TABLE meters (id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
    day DATE NOT NULL, tokens BIGINT NOT NULL DEFAULT 0, calls BIGINT NOT NULL DEFAULT 0,
    UNIQUE (account, day));
CREATE TABLE meter_log (id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
    request TEXT NOT NULL, request_hash BIGINT NOT NULL, tokens BIGINT NOT NULL,
    calls BIGINT NOT NULL, tokens_after BIGINT NOT NULL, calls_after BIGINT NOT NULL,
    meter_id BIGINT NOT NULL REFERENCES meters (id), logged_at TIMESTAMP NOT NULL,
    UNIQUE (account, request));
INSERT INTO meters (account, day) VALUES (7, '2026-12-01');";

const MYSQL_SQL: &str = "
CREATE TABLE meters (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, account BIGINT NOT NULL,
    day DATE NOT NULL, tokens BIGINT NOT NULL DEFAULT 0, calls BIGINT NOT NULL DEFAULT 0,
    UNIQUE (account, day));
CREATE TABLE meter_log (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, account BIGINT NOT NULL,
    request VARCHAR(255) COLLATE utf8mb4_bin NOT NULL, request_hash BIGINT NOT NULL,
    tokens BIGINT NOT NULL, calls BIGINT NOT NULL, tokens_after BIGINT NOT NULL,
    calls_after BIGINT NOT NULL, meter_id BIGINT NOT NULL, logged_at DATETIME(6) NOT NULL,
    UNIQUE (account, request), FOREIGN KEY (meter_id) REFERENCES meters (id));
INSERT INTO meters (account, day) VALUES (7, '2026-12-01');";

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
}

fn now() -> NaiveDateTime {
    day().and_hms_opt(10, 0, 0).unwrap()
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::new(k).unwrap()
}

/// A module `$backend` of the tests on the database `db` (its connection type `conn`).
macro_rules! record_guarantees {
    ($backend:ident, db = $db:expr, conn = $conn:ty) => {
        mod $backend {
            use super::*;

            /// `amounts` added to account `account`'s meter of [`day`] once per `k`, the
            /// fingerprint `hash`.
            fn count(
                conn: &mut $conn,
                account: i64,
                k: &str,
                hash: i64,
                amounts: [i64; 2],
            ) -> upsert_kit::Result<Option<Idempotent<Logged>>> {
                Record::<MeterLog, Meters>::new(
                    &account,
                    &key(k),
                    &hash,
                    &(account, day()),
                    amounts,
                    now(),
                )
                .run::<Logged, _>(conn)
            }

            fn meter(conn: &mut $conn, account: i64) -> Option<(i64, i64, i64)> {
                meters::table
                    .filter(meters::account.eq(account))
                    .select((meters::id, meters::tokens, meters::calls))
                    .first(conn)
                    .optional()
                    .unwrap()
            }

            fn log_rows(conn: &mut $conn) -> i64 {
                meter_log::table.count().get_result(conn).unwrap()
            }

            /// RELIABILITY 8: one key from 8 threads at once and 3 sequential retries: counted
            /// once, one ledger row, every caller told the same row.
            #[test]
            fn one_key_from_8_threads_and_3_sequential_retries_counts_once_and_all_get_its_row() {
                let db = $db;
                let pool = db.pool(8);
                let p = pool.clone();
                let mut results = race(8, move |_| {
                    count(&mut p.get().unwrap(), 7, "job-42", 1, [120, 1])
                        .unwrap()
                        .unwrap()
                });
                let mut conn = db.conn();
                for _ in 0..3 {
                    results.push(count(&mut conn, 7, "job-42", 1, [120, 1]).unwrap().unwrap());
                }
                assert_eq!(results.iter().filter(|r| r.applied).count(), 1);
                let (meter_id, tokens, calls) = meter(&mut conn, 7).unwrap();
                let first = &results.iter().find(|r| r.applied).unwrap().value;
                assert_eq!(
                    (first.meter_id, first.tokens_after, first.calls_after),
                    (meter_id, 120, 1)
                );
                assert!(results.iter().all(|r| &r.value == first));
                assert_eq!((tokens, calls), (120, 1));
                assert_eq!(log_rows(&mut conn), 1);
            }

            /// RELIABILITY 7: 16 threads × 25 keys of their own, each adding 3 tokens and one
            /// call, end exactly at 16·25·3 tokens, and each ledger row holds the totals right
            /// after its own increment: the totals recorded are exactly 3, 6, …, 1200.
            #[test]
            fn sixteen_threads_of_25_keyed_increments_sum_exactly_and_record_every_total_once() {
                const THREADS: usize = 16;
                const EACH: usize = 25;
                let db = $db;
                let pool = db.pool(THREADS as u32);
                let p = pool.clone();
                let rows = race(THREADS, move |t| {
                    let mut c = p.get().unwrap();
                    (0..EACH)
                        .map(|n| {
                            count(&mut c, 7, &format!("t{t}-{n}"), 1, [3, 1])
                                .unwrap()
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                });
                let rows: Vec<_> = rows.into_iter().flatten().collect();
                assert!(rows.iter().all(|r| r.applied));
                let mut totals: Vec<(i64, i64)> = rows
                    .iter()
                    .map(|r| (r.value.tokens_after, r.value.calls_after))
                    .collect();
                totals.sort_unstable();
                let n = (THREADS * EACH) as i64;
                assert_eq!(totals, (1..=n).map(|i| (3 * i, i)).collect::<Vec<_>>());
                let mut conn = db.conn();
                assert_eq!(meter(&mut conn, 7).unwrap().1, 3 * n);
                assert_eq!(log_rows(&mut conn), n);
            }

            #[test]
            fn a_repeat_with_another_fingerprint_or_other_amounts_is_a_conflict_and_changes_nothing()
            {
                let db = $db;
                let mut conn = db.conn();
                let first = count(&mut conn, 7, "k", 1, [10, 1]).unwrap().unwrap();
                for (hash, amounts) in [(2, [10, 1]), (1, [11, 1]), (1, [10, 2])] {
                    let err = count(&mut conn, 7, "k", hash, amounts).unwrap_err();
                    assert!(
                        matches!(err, Error::IdempotencyConflict { ref key } if key == "k"),
                        "{hash} {amounts:?}: {err:?}"
                    );
                }
                // A repeat is recognised by its key alone: the counter key is not compared.
                diesel::sql_query("INSERT INTO meters (account, day) VALUES (7, '2026-12-02')")
                    .execute(&mut conn)
                    .unwrap();
                let elsewhere = Record::<MeterLog, Meters>::new(
                    &7,
                    &key("k"),
                    &1,
                    &(7, day().succ_opt().unwrap()),
                    [10, 1],
                    now(),
                )
                .run::<Logged, _>(&mut conn)
                .unwrap()
                .unwrap();
                assert!(!elsewhere.applied);
                assert_eq!(elsewhere.value, first.value);
                assert_eq!(meter(&mut conn, 7).unwrap().1, 10);
                assert_eq!(log_rows(&mut conn), 1);
            }

            /// Keys are unique within their scope: another account's "k" is a key of its own.
            /// A missing counter row is `None`, nothing written; `creating` creates it.
            #[test]
            fn keys_are_scoped_and_a_missing_counter_row_is_none_unless_created() {
                let db = $db;
                let mut conn = db.conn();
                assert!(count(&mut conn, 7, "k", 1, [5, 0]).unwrap().unwrap().applied);
                assert_eq!(count(&mut conn, 8, "k", 1, [6, 0]).unwrap(), None);
                assert_eq!(meter(&mut conn, 8), None);
                assert_eq!(log_rows(&mut conn), 1);
                let created = Record::<MeterLog, Meters>::new(
                    &8,
                    &key("k"),
                    &1,
                    &(8, day()),
                    [6, 0],
                    now(),
                )
                .creating()
                .run::<Logged, _>(&mut conn)
                .unwrap()
                .unwrap();
                let (meter_id, tokens, _) = meter(&mut conn, 8).unwrap();
                assert!(created.applied);
                assert_eq!((created.value.meter_id, created.value.tokens_after), (meter_id, 6));
                assert_eq!(tokens, 6);
                assert_eq!(meter(&mut conn, 7).unwrap().1, 5);
                assert_eq!(log_rows(&mut conn), 2);
            }

            /// A unique violation of another index of the ledger is reported as such, not
            /// taken for a repeat: the key is read, and it is not there.
            #[test]
            fn a_unique_violation_of_another_index_is_an_error_and_not_a_replay() {
                let db = $db;
                let mut conn = db.conn();
                conn.batch_execute(
                    "CREATE UNIQUE INDEX one_request_per_hash ON meter_log (account, request_hash)",
                )
                .unwrap();
                count(&mut conn, 7, "k-1", 1, [5, 0]).unwrap().unwrap();
                let err = count(&mut conn, 7, "k-2", 1, [5, 0]).unwrap_err();
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
                assert_eq!(meter(&mut conn, 7).unwrap().1, 5, "the failed try counted nothing");
            }

            /// Inside the caller's transaction the increment is part of it, and a repeat does
            /// not abort it (a savepoint on PostgreSQL).
            #[test]
            fn inside_the_callers_transaction_a_repeat_leaves_the_transaction_usable() {
                let db = $db;
                let mut conn = db.conn();
                let (first, again) = conn
                    .transaction(|c| {
                        let first = count(c, 7, "k", 1, [4, 1])?.unwrap();
                        let again = count(c, 7, "k", 1, [4, 1])?.unwrap();
                        let after = meters::table.select(meters::tokens).first::<i64>(c)?;
                        assert_eq!(after, 4);
                        Ok::<_, upsert_kit::Error>((first, again))
                    })
                    .unwrap();
                assert!(first.applied && !again.applied);
                assert_eq!(first.value, again.value);
                assert_eq!(meter(&mut conn, 7).unwrap().1, 4);
            }

            #[test]
            fn pruned_keys_are_forgotten_and_count_again() {
                let db = $db;
                let mut conn = db.conn();
                count(&mut conn, 7, "k", 1, [1, 0]).unwrap().unwrap();
                assert_eq!(
                    prune_records::<MeterLog, _>(&mut conn, now() - chrono::Duration::hours(1))
                        .unwrap(),
                    0
                );
                assert!(!count(&mut conn, 7, "k", 1, [1, 0]).unwrap().unwrap().applied);
                assert_eq!(
                    prune_records::<MeterLog, _>(&mut conn, now() + chrono::Duration::seconds(1))
                        .unwrap(),
                    1
                );
                assert!(count(&mut conn, 7, "k", 1, [1, 0]).unwrap().unwrap().applied);
                assert_eq!(meter(&mut conn, 7).unwrap().1, 2);
            }
        }
    };
}

record_guarantees!(postgres, db = TestDb::with_sql(PG_SQL), conn = PgConnection);
record_guarantees!(
    sqlite,
    db = TestSqlite::with_sql(SQLITE_SQL),
    conn = SqliteConnection
);
record_guarantees!(
    mysql,
    db = TestMysql::with_sql(MYSQL_SQL),
    conn = MysqlConnection
);

/// A record's `Debug` says what it counts, never its idempotency key (which may be a secret).
#[test]
fn a_records_debug_output_leaves_the_key_out() {
    let k = key("secret-request-7f3a");
    let at = (7, day());
    let record = Record::<MeterLog, Meters>::new(&7, &k, &1, &at, [1, 0], now());
    let shown = format!("{record:?}");
    assert!(!shown.contains("secret-request-7f3a"), "{shown}");
    assert!(
        shown.contains("MeterLog") && shown.contains("[1, 0]"),
        "{shown}"
    );
}
