//! Idempotency keys on a ledger these tests declare themselves (RELIABILITY cases 8 and 9):
//! concurrent and sequential repeats applied once, a changed payload refused, a repeat while
//! the first call is in flight, failed first calls, pruning, on PostgreSQL, SQLite and
//! MySQL/MariaDB (at its default REPEATABLE READ).

use diesel::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use upsert_kit::idempotency::{increment_once, prune, run, IdempotencyKey, Idempotent};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    /// A ledger with column names of its own.
    request_log (request_id) {
        request_id -> Text,
        request_hash -> Text,
        response -> Nullable<Text>,
        first_seen -> Timestamp,
    }
}

diesel::table! {
    visits (page) {
        page -> Text,
        n -> BigInt,
    }
}

diesel::table! {
    orders (id) {
        id -> BigInt,
        note -> Text,
    }
}

upsert_kit::ledger! {
    table = request_log, key = request_id, fingerprint = request_hash, result = response, created_at = first_seen;
    pub struct RequestLog;
}

upsert_kit::counter! {
    table = visits, key = (page: String), amounts = (n);
    pub struct Visits;
}

const PG_SQL: &str = "
CREATE TABLE request_log (request_id TEXT PRIMARY KEY, request_hash TEXT NOT NULL,
    response TEXT, first_seen TIMESTAMP NOT NULL);
CREATE TABLE visits (page TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL);";

const SQLITE_SQL: &str = "
CREATE TABLE request_log (request_id TEXT PRIMARY KEY NOT NULL, request_hash TEXT NOT NULL,
    response TEXT, first_seen TIMESTAMP NOT NULL);
CREATE TABLE visits (page TEXT PRIMARY KEY NOT NULL, n BIGINT NOT NULL DEFAULT 0);
CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL);";

const MYSQL_SQL: &str = "
CREATE TABLE request_log (request_id VARCHAR(255) NOT NULL PRIMARY KEY, request_hash TEXT NOT NULL,
    response TEXT, first_seen DATETIME(6) NOT NULL);
CREATE TABLE visits (page VARCHAR(255) NOT NULL PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
CREATE TABLE orders (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, note TEXT NOT NULL);";

fn now() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap()
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::new(k).unwrap()
}

/// Places an order (the write made idempotent) and returns its id as the stored result.
fn place_order<C>(conn: &mut C, note: &str) -> upsert_kit::Result<serde_json::Value>
where
    C: diesel::Connection,
    C::Backend: diesel::backend::Backend,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query(format!("INSERT INTO orders (note) VALUES ('{note}')")).execute(conn)?;
    Ok(serde_json::json!({ "note": note }))
}

fn ledger_rows_pg(conn: &mut PgConnection) -> i64 {
    request_log::table.count().get_result(conn).unwrap()
}

#[test]
fn eight_concurrent_repeats_and_three_sequential_ones_run_the_write_once_on_postgres() {
    let db = TestDb::with_sql(PG_SQL);
    let pool = db.pool(8);
    let runs = Arc::new(AtomicUsize::new(0));
    let (p, r) = (pool.clone(), runs.clone());
    let mut outcomes: Vec<Idempotent<serde_json::Value>> = race(8, move |_| {
        let mut conn = p.get().unwrap();
        let r = r.clone();
        run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), move |c| {
            r.fetch_add(1, Ordering::SeqCst);
            place_order(c, "a")
        })
        .unwrap()
    });
    let mut conn = db.conn();
    for _ in 0..3 {
        let r = runs.clone();
        outcomes.push(
            run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), move |c| {
                r.fetch_add(1, Ordering::SeqCst);
                place_order(c, "a")
            })
            .unwrap(),
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| o.applied).count(), 1);
    assert!(outcomes
        .iter()
        .all(|o| o.value == serde_json::json!({ "note": "a" })));
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    assert_eq!((orders, ledger_rows_pg(&mut conn)), (1, 1));
}

/// Delivers the keyed increment `hit-1` (+5 to `home`) from 8 pooled connections released
/// together, then 3 times more on a connection of its own, and checks it was applied once, every
/// caller told the same totals, the counter at 5. Returns that connection. A macro because the
/// call's bounds differ per backend.
macro_rules! repeat_hit_8_at_once_and_3_after {
    ($db:expr, $pool:expr) => {{
        let p = $pool.clone();
        let mut outcomes = race(8, move |_| {
            let mut conn = p.get().unwrap();
            increment_once::<RequestLog, Visits, _>(
                &mut conn,
                &key("hit-1"),
                &"home".into(),
                [5],
                now(),
            )
            .unwrap()
        });
        let mut conn = $db.conn();
        for _ in 0..3 {
            outcomes.push(
                increment_once::<RequestLog, Visits, _>(
                    &mut conn,
                    &key("hit-1"),
                    &"home".into(),
                    [5],
                    now(),
                )
                .unwrap(),
            );
        }
        assert_eq!(outcomes.iter().filter(|o| o.applied).count(), 1);
        assert!(outcomes.iter().all(|o| o.value == [5]));
        let n: i64 = visits::table
            .select(visits::n)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(n, 5);
        conn
    }};
}

#[test]
fn a_keyed_increment_repeated_8_times_at_once_and_3_times_after_counts_once_in_one_statement() {
    let db = TestDb::with_sql(PG_SQL);
    let pool = db.pool(8);
    let mut conn = repeat_hit_8_at_once_and_3_after!(db, pool);
    assert_eq!(ledger_rows_pg(&mut conn), 1);
    // Other keys count, each once.
    for k in ["hit-2", "hit-3", "hit-2"] {
        increment_once::<RequestLog, Visits, _>(&mut conn, &key(k), &"home".into(), [1], now())
            .unwrap();
    }
    let n: i64 = visits::table
        .select(visits::n)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(n, 7);
}

#[test]
fn a_repeated_keyed_increment_inside_a_transaction_leaves_the_transaction_usable() {
    let db = TestDb::with_sql(PG_SQL);
    let mut conn = db.conn();
    increment_once::<RequestLog, Visits, _>(&mut conn, &key("k"), &"p".into(), [2], now()).unwrap();
    let totals = upsert_kit::transaction(&mut conn, |c| {
        let again = increment_once::<RequestLog, Visits, _>(c, &key("k"), &"p".into(), [2], now())?;
        assert!(!again.applied);
        let other =
            increment_once::<RequestLog, Visits, _>(c, &key("k2"), &"p".into(), [3], now())?;
        Ok::<_, Error>(other.value)
    })
    .unwrap();
    assert_eq!(totals, [5]);
}

#[test]
fn a_changed_payload_under_the_same_key_is_a_conflict_and_writes_nothing() {
    let db = TestDb::with_sql(PG_SQL);
    let mut conn = db.conn();
    run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), |c| {
        place_order(c, "a")
    })
    .unwrap();
    let changed = run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=b", now(), |c| {
        place_order(c, "b")
    });
    assert!(matches!(changed, Err(Error::IdempotencyConflict { ref key }) if key == "order-1"));
    // A key may be a secret: neither the error's message nor its Debug output shows it, nor
    // the key's own Debug.
    let e = changed.unwrap_err();
    for shown in [
        e.to_string(),
        format!("{e:?}"),
        format!("{:?}", key("order-1")),
    ] {
        assert!(!shown.contains("order-1"), "{shown}");
    }
    increment_once::<RequestLog, Visits, _>(&mut conn, &key("hit"), &"home".into(), [1], now())
        .unwrap();
    let other_amount =
        increment_once::<RequestLog, Visits, _>(&mut conn, &key("hit"), &"home".into(), [2], now());
    assert!(matches!(
        other_amount,
        Err(Error::IdempotencyConflict { .. })
    ));
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    let n: i64 = visits::table
        .select(visits::n)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!((orders, n), (1, 1));

    let sqlite = TestSqlite::with_sql(SQLITE_SQL);
    let mut conn = sqlite.conn();
    run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), |c| {
        place_order(c, "a")
    })
    .unwrap();
    let changed = run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=b", now(), |c| {
        place_order(c, "b")
    });
    assert!(matches!(changed, Err(Error::IdempotencyConflict { .. })));
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    assert_eq!(orders, 1);
}

#[test]
fn a_repeat_while_the_first_call_is_in_flight_waits_for_it_and_returns_its_result() {
    let db = TestDb::with_sql(PG_SQL);
    let both_started = Arc::new(Barrier::new(2));
    let url = db.url().to_owned();
    let (b, u) = (both_started.clone(), url.clone());
    let first = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&u).unwrap();
        let waited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b2, w2) = (b.clone(), waited.clone());
        let outcome = run::<RequestLog, _, _, _>(&mut conn, &key("slow"), "x", now(), move |c| {
            let value = place_order(c, "first")?;
            w2.store(true, Ordering::SeqCst);
            b2.wait();
            // Hold the key, uncommitted, until the repeat is seen waiting on a lock.
            let mut watcher = PgConnection::establish(&u).unwrap();
            #[derive(QueryableByName)]
            struct Waiting {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            loop {
                let w: Waiting = diesel::sql_query(
                    "SELECT count(*) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .get_result(&mut watcher)
                .unwrap();
                if w.n > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(value)
        });
        // A first call that failed before the barrier must not leave the repeat waiting.
        if !waited.load(Ordering::SeqCst) {
            b.wait();
        }
        outcome.unwrap()
    });
    let repeat_ran = Arc::new(AtomicUsize::new(0));
    let r = repeat_ran.clone();
    let mut conn = PgConnection::establish(&url).unwrap();
    both_started.wait();
    let repeat = run::<RequestLog, _, _, _>(&mut conn, &key("slow"), "x", now(), move |c| {
        r.fetch_add(1, Ordering::SeqCst);
        place_order(c, "repeat")
    })
    .unwrap();
    let first = first.join().unwrap();
    assert!(first.applied && !repeat.applied);
    assert_eq!(repeat.value, first.value);
    assert_eq!(repeat_ran.load(Ordering::SeqCst), 0);
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    assert_eq!(orders, 1);
}

#[test]
fn a_failed_first_call_frees_its_key_and_a_retry_after_an_unknown_outcome_applies_once() {
    let db = TestDb::with_sql(PG_SQL);
    let mut conn = db.conn();
    let failed = run::<RequestLog, _, serde_json::Value, _>(
        &mut conn,
        &key("order-9"),
        "sku=a",
        now(),
        |c| {
            place_order(c, "a")?;
            Err(Error::invalid("sku", "out of stock"))
        },
    );
    assert!(matches!(failed, Err(Error::InvalidInput(_))));
    assert_eq!(ledger_rows_pg(&mut conn), 0, "a failed call leaves no key");
    // The call commits, but say its reply never reached the caller (outcome unknown): the
    // caller retries with the same key, as `Error::is_outcome_unknown` allows.
    let applied = run::<RequestLog, _, _, _>(&mut conn, &key("order-9"), "sku=a", now(), |c| {
        place_order(c, "a")
    })
    .unwrap();
    let retried = upsert_kit::Retry::new()
        .idempotent()
        .run(|_| {
            run::<RequestLog, _, _, _>(&mut conn, &key("order-9"), "sku=a", now(), |c| {
                place_order(c, "a")
            })
        })
        .unwrap();
    assert!(applied.applied && !retried.applied);
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    assert_eq!(orders, 1);
}

#[test]
fn pruning_forgets_keys_older_than_the_retention_and_a_forgotten_key_runs_again() {
    let db = TestDb::with_sql(PG_SQL);
    let mut conn = db.conn();
    let old = now() - chrono::Duration::days(8);
    for k in ["a", "b"] {
        run::<RequestLog, _, _, _>(&mut conn, &key(k), "", old, |_| Ok(())).unwrap();
    }
    run::<RequestLog, _, _, _>(&mut conn, &key("c"), "", now(), |_| Ok(())).unwrap();
    let week_ago = now() - chrono::Duration::days(7);
    assert_eq!(prune::<RequestLog, _>(&mut conn, week_ago).unwrap(), 2);
    assert_eq!(prune::<RequestLog, _>(&mut conn, week_ago).unwrap(), 0);
    assert_eq!(ledger_rows_pg(&mut conn), 1);
    let again = run::<RequestLog, _, _, _>(&mut conn, &key("a"), "", now(), |_| Ok(())).unwrap();
    assert!(again.applied);
    let kept = run::<RequestLog, _, _, _>(&mut conn, &key("c"), "", now(), |_| Ok(())).unwrap();
    assert!(!kept.applied);
}

#[test]
fn eight_concurrent_repeats_and_three_sequential_ones_count_once_on_one_sqlite_file() {
    let db = TestSqlite::with_sql(SQLITE_SQL);
    let pool = db.pool(8);
    let mut conn = repeat_hit_8_at_once_and_3_after!(db, pool);
    let rows: i64 = request_log::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 1);
    let old = now() - chrono::Duration::days(30);
    assert_eq!(prune::<RequestLog, _>(&mut conn, old).unwrap(), 0);
    assert_eq!(
        prune::<RequestLog, _>(&mut conn, now() + chrono::Duration::seconds(1)).unwrap(),
        1
    );
}

#[test]
fn eight_concurrent_repeats_and_three_sequential_ones_count_once_on_mysql() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    let pool = db.pool(8);
    let mut conn = repeat_hit_8_at_once_and_3_after!(db, pool);
    let rows: i64 = request_log::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        prune::<RequestLog, _>(&mut conn, now() + chrono::Duration::seconds(1)).unwrap(),
        1
    );
}

#[test]
fn eight_concurrent_repeats_and_three_sequential_ones_run_the_write_once_on_mysql() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    let pool = db.pool(8);
    let runs = Arc::new(AtomicUsize::new(0));
    let (p, r) = (pool.clone(), runs.clone());
    let mut outcomes: Vec<Idempotent<serde_json::Value>> = race(8, move |_| {
        let mut conn = p.get().unwrap();
        let r = r.clone();
        run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), move |c| {
            r.fetch_add(1, Ordering::SeqCst);
            place_order(c, "a")
        })
        .unwrap()
    });
    let mut conn = db.conn();
    for _ in 0..3 {
        outcomes.push(
            run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=a", now(), |c| {
                place_order(c, "a")
            })
            .unwrap(),
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| o.applied).count(), 1);
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    let ledger: i64 = request_log::table.count().get_result(&mut conn).unwrap();
    assert_eq!((orders, ledger), (1, 1));

    let changed = run::<RequestLog, _, _, _>(&mut conn, &key("order-1"), "sku=b", now(), |c| {
        place_order(c, "b")
    });
    assert!(matches!(changed, Err(Error::IdempotencyConflict { .. })));
    let failed = run::<RequestLog, _, serde_json::Value, _>(
        &mut conn,
        &key("order-9"),
        "sku=a",
        now(),
        |c| {
            place_order(c, "x")?;
            Err(Error::invalid("sku", "out of stock"))
        },
    );
    assert!(matches!(failed, Err(Error::InvalidInput(_))));
    let orders: i64 = orders::table.count().get_result(&mut conn).unwrap();
    let ledger: i64 = request_log::table.count().get_result(&mut conn).unwrap();
    assert_eq!(
        (orders, ledger),
        (1, 1),
        "a failed call leaves no key and no write"
    );
    let totals = upsert_kit::transaction(&mut conn, |c| {
        increment_once::<RequestLog, Visits, _>(c, &key("k"), &"p".into(), [2], now())?;
        let again = increment_once::<RequestLog, Visits, _>(c, &key("k"), &"p".into(), [2], now())?;
        assert!(!again.applied);
        Ok::<_, Error>(again.value)
    })
    .unwrap();
    assert_eq!(totals, [2]);
}

/// RELIABILITY 9 on MySQL: the session is killed at the end of the first call's write (the
/// statement storing its result then finds the connection gone: lost before COMMIT, InnoDB
/// rolls the transaction back); the retry with the same key, on a new connection, leaves the
/// write applied exactly once. (A loss during COMMIT itself, outcome unknown, is raised in
/// `errors_mysql.rs`.)
#[test]
fn on_mysql_a_retry_after_the_session_is_lost_mid_write_applies_once() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    let mut admin = db.conn();
    let mut conn = db.conn();
    let id: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "CAST(CONNECTION_ID() AS SIGNED)",
    ))
    .get_result(&mut conn)
    .unwrap();
    let lost = run::<RequestLog, _, _, _>(&mut conn, &key("order-7"), "sku=a", now(), |c| {
        let value = place_order(c, "a")?;
        diesel::sql_query(format!("KILL {id}"))
            .execute(&mut admin)
            .unwrap();
        Ok(value)
    })
    .unwrap_err();
    assert!(matches!(lost, Error::ConnectionLost(_)), "{lost:?}");
    assert!(lost.is_retryable());
    let mut fresh = db.conn();
    let retried = upsert_kit::Retry::new()
        .idempotent()
        .run(|_| {
            run::<RequestLog, _, _, _>(&mut fresh, &key("order-7"), "sku=a", now(), |c| {
                place_order(c, "a")
            })
        })
        .unwrap();
    assert_eq!(retried.value, serde_json::json!({ "note": "a" }));
    let orders: i64 = orders::table.count().get_result(&mut fresh).unwrap();
    let ledger: i64 = request_log::table.count().get_result(&mut fresh).unwrap();
    assert_eq!((orders, ledger), (1, 1), "applied once");
}
