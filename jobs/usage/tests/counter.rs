//! Counters with idempotency keys, on a real PostgreSQL server and on SQLite.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use upsert_kit::db::connect_pg;
use upsert_kit::{Error, Retry};
use upsert_kit_support::{race, TestDb, TestSqlite};
use usage_tracking::counter::{
    increment, increment_coalesced, prune_idempotency_keys, MAX_IDEMPOTENCY_KEY_LEN,
};
use usage_tracking::schema::{usage_events, usage_periods};
use usage_tracking::{
    get_or_create_usage_period, naive, set_usage_limits, Usage, UsageConnection, MAX_AMOUNT,
    PG_MIGRATIONS, SQLITE_MIGRATIONS,
};

const ACCOUNT: i64 = 7;

fn at() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

fn big_limits() -> Usage {
    Usage {
        tokens: MAX_AMOUNT,
        reports: MAX_AMOUNT,
        chats: MAX_AMOUNT,
    }
}

fn tokens_used<C>(conn: &mut C, account: i64) -> i64
where
    C: UsageConnection,
{
    get_or_create_usage_period(conn, account, at())
        .unwrap()
        .row
        .tokens_used
}

fn ledger_rows(conn: &mut PgConnection) -> i64 {
    usage_events::table.count().get_result(conn).unwrap()
}

fn url_with_app_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Waits until a session named `application_name` matches `condition` in pg_stat_activity.
fn wait_for_session(conn: &mut PgConnection, application_name: &str, condition: &str) -> i32 {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let query =
        format!("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND {condition}");
    for _ in 0..1000 {
        let found: Vec<Pid> = diesel::sql_query(&query)
            .bind::<diesel::sql_types::Text, _>(application_name)
            .load(conn)
            .unwrap();
        if let Some(p) = found.first() {
            return p.pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{application_name} never reached: {condition}");
}

fn terminate(conn: &mut PgConnection, pid: i32) {
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .execute(conn)
        .unwrap();
}

/// RELIABILITY 7: 16 threads, released by a barrier, × 500 increments of 3 end exactly at
/// 16·500·3 = 24,000, with one ledger row per key. The naive read-add-write, raced the same way
/// on a fresh account per round, loses increments; the test fails only if it loses none in 10
/// rounds.
#[test]
fn sixteen_threads_of_500_increments_sum_exactly_while_read_add_write_loses_some() {
    const THREADS: usize = 16;
    const EACH: i64 = 500;
    const D: i64 = 3;
    const NAIVE_ROUNDS: i64 = 10;
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    // Commits need not wait for the disk here: what is tested is how concurrent increments
    // interleave, which asynchronous commit does not change; it keeps the many commits quick.
    conn.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = off",
        db.name()
    ))
    .unwrap();
    let pool = db.pool(THREADS as u32);
    set_usage_limits(&mut conn, 1, big_limits(), at()).unwrap();

    let p = pool.clone();
    let errors = race(THREADS, move |t| {
        let mut c = p.get().unwrap();
        let mut errors = Vec::new();
        for n in 0..EACH {
            if let Err(e) = increment(&mut c, 1, &format!("t{t}-{n}"), at(), Usage::tokens(D)) {
                errors.push(format!("{e:?}"));
            }
        }
        errors
    });
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    assert!(errors.is_empty(), "no increment may fail: {errors:?}");

    let expected = THREADS as i64 * EACH;
    let mut naive_rounds = 0;
    let mut naive_total = expected;
    for account in 2..2 + NAIVE_ROUNDS {
        naive_rounds += 1;
        set_usage_limits(&mut conn, account, big_limits(), at()).unwrap();
        let naive_period = get_or_create_usage_period(&mut conn, account, at())
            .unwrap()
            .row
            .id;
        let p = pool.clone();
        race(THREADS, move |_| {
            let mut c = p.get().unwrap();
            for _ in 0..EACH {
                naive::increment_read_add_write(&mut c, naive_period, 1).unwrap();
            }
        });
        naive_total = tokens_used(&mut conn, account);
        assert!(naive_total <= expected, "nothing is counted twice");
        if naive_total < expected {
            break;
        }
    }

    let atomic = tokens_used(&mut conn, 1);
    eprintln!(
        "{THREADS} threads × {EACH} increments: atomic increment {atomic} of {} (lost {}); naive \
         read-add-write {naive_total} of {expected} in round {naive_rounds} (lost {})",
        expected * D,
        expected * D - atomic,
        expected - naive_total
    );
    assert_eq!(atomic, expected * D, "N·k·d exactly");
    assert_eq!(ledger_rows(&mut conn), expected, "one ledger row per key");
    assert!(
        naive_total < expected,
        "the naive read-add-write lost no increment in {naive_rounds} rounds of {THREADS} threads \
         × {EACH}: final = {naive_total}, expected {expected}"
    );
}

/// RELIABILITY 8: one key from 8 threads at once and 3 sequential retries: applied once, one
/// ledger row, every caller told the same result.
#[test]
fn one_idempotency_key_from_8_threads_and_3_sequential_retries_is_applied_once() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let pool = db.pool(8);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    let amounts = Usage {
        tokens: 120,
        reports: 1,
        chats: 2,
    };
    let p = pool.clone();
    let mut results = race(8, move |_| {
        increment(&mut p.get().unwrap(), ACCOUNT, "job-42", at(), amounts).unwrap()
    });
    for _ in 0..3 {
        results.push(increment(&mut conn, ACCOUNT, "job-42", at(), amounts).unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.applied).count(), 1);
    let first = results.iter().find(|r| r.applied).unwrap();
    assert_eq!(first.totals, amounts);
    for r in &results {
        assert_eq!(
            (r.event_id, r.period_id, r.totals),
            (first.event_id, first.period_id, first.totals)
        );
    }
    let period = get_or_create_usage_period(&mut conn, ACCOUNT, at())
        .unwrap()
        .row;
    assert_eq!(period.used(), amounts);
    assert_eq!(ledger_rows(&mut conn), 1);
}

/// Through the coalescing writer: 8 threads x 25 increments, each key delivered twice (a
/// retry); every key counts once, each caller is told its own increment, and the totals are
/// exact.
#[test]
fn increments_through_the_coalescing_writer_count_each_key_once() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    let writer = upsert_kit::coalesce::Coalescer::new(db.pool(2));
    let w = writer.clone();
    let told = race(8, move |t| {
        (0..25)
            .flat_map(|i| {
                let key = format!("req-{t}-{i}");
                // The request and its retry.
                [0, 1].map(|_| {
                    increment_coalesced(&w, (ACCOUNT, &key, at()), Usage::tokens(3)).unwrap()
                })
            })
            .collect::<Vec<_>>()
    });
    let told: Vec<_> = told.into_iter().flatten().collect();
    assert_eq!(told.iter().filter(|r| r.applied).count(), 8 * 25);
    let mut totals: Vec<i64> = told
        .iter()
        .filter(|r| r.applied)
        .map(|r| r.totals.tokens)
        .collect();
    totals.sort_unstable();
    assert_eq!(totals, (1..=200).map(|n| 3 * n).collect::<Vec<_>>());
    assert_eq!(tokens_used(&mut conn, ACCOUNT), 600);
    assert_eq!(ledger_rows(&mut conn), 200);
}

#[test]
fn a_key_reused_with_other_amounts_is_a_conflict_and_changes_nothing() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(10)).unwrap();
    let err = increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(11)).unwrap_err();
    assert!(
        matches!(err, Error::IdempotencyConflict { ref key } if key == "k"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // Keys are scoped per account: another account may use the same key.
    set_usage_limits(&mut conn, ACCOUNT + 1, big_limits(), at()).unwrap();
    assert!(
        increment(&mut conn, ACCOUNT + 1, "k", at(), Usage::tokens(11))
            .unwrap()
            .applied
    );
    assert_eq!(tokens_used(&mut conn, ACCOUNT), 10);
    assert_eq!(tokens_used(&mut conn, ACCOUNT + 1), 11);
    assert_eq!(ledger_rows(&mut conn), 2);
}

/// RELIABILITY 21: zero or negative amounts, an empty or over-long key, an unknown account, an
/// instant out of range: a typed error, and nothing written.
#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    let far = NaiveDate::from_ymd_opt(10_000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let invalid = [
        (
            "zero",
            increment(&mut conn, ACCOUNT, "k", at(), Usage::default()),
        ),
        (
            "negative",
            increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(-1)),
        ),
        (
            "too large",
            increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(MAX_AMOUNT + 1)),
        ),
        (
            "empty key",
            increment(&mut conn, ACCOUNT, "", at(), Usage::tokens(1)),
        ),
        (
            "blank key",
            increment(&mut conn, ACCOUNT, " \t", at(), Usage::tokens(1)),
        ),
        (
            "long key",
            increment(&mut conn, ACCOUNT, &long_key, at(), Usage::tokens(1)),
        ),
        (
            "far future",
            increment(&mut conn, ACCOUNT, "k", far, Usage::tokens(1)),
        ),
    ];
    for (case, result) in invalid {
        assert!(
            matches!(result, Err(Error::InvalidInput(_))),
            "{case}: {result:?}"
        );
    }
    let unknown = increment(&mut conn, 999, "k", at(), Usage::tokens(1));
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    assert_eq!(ledger_rows(&mut conn), 0);
    let periods: i64 = usage_periods::table.count().get_result(&mut conn).unwrap();
    assert_eq!(periods, 0, "no period was created for bad input");
}

/// RELIABILITY 9 and 19: the backend of a connection is killed (`pg_terminate_backend`) while
/// its increment waits for the period row. Inside the caller's transaction the error is
/// "connection lost" before COMMIT: retryable, nothing applied. Alone, the increment statement
/// is its own transaction, so the outcome is unknown. Either way the retry helper runs it again
/// with the same key on a new connection (declared idempotent: it carries a key), and it counts
/// once.
#[test]
fn a_connection_killed_mid_increment_is_retried_with_the_same_key_and_counted_once() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut admin = db.conn();
    for (account, in_caller_tx) in [(1, true), (2, false)] {
        set_usage_limits(&mut admin, account, big_limits(), at()).unwrap();
        let period = get_or_create_usage_period(&mut admin, account, at())
            .unwrap()
            .row
            .id;

        // A blocker holds the period row, so the victim's increment stops at its UPDATE.
        let mut blocker = db.conn();
        blocker.batch_execute("BEGIN").unwrap();
        blocker
            .batch_execute(&format!(
                "SELECT 1 FROM usage_periods WHERE id = {period} FOR UPDATE"
            ))
            .unwrap();

        let app = format!("victim-increment-{account}");
        let victim_url = url_with_app_name(db.url(), &app);
        let url = db.url().to_owned();
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&attempts);
        let worker = std::thread::spawn(move || {
            let mut first_error = None;
            let result = Retry::new().idempotent().run(|attempt| {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut conn = connect_pg(if attempt == 0 { &victim_url } else { &url })?;
                let r = if in_caller_tx {
                    conn.transaction(|c| increment(c, account, "request-9", at(), Usage::tokens(5)))
                } else {
                    increment(&mut conn, account, "request-9", at(), Usage::tokens(5))
                };
                if let Err(e) = &r {
                    first_error.get_or_insert_with(|| format!("{e:?}"));
                }
                r
            });
            (result, first_error)
        });
        let pid = wait_for_session(&mut admin, &app, "wait_event_type = 'Lock'");
        terminate(&mut admin, pid);
        // Let the retry start, then free the row for it.
        std::thread::sleep(Duration::from_millis(50));
        blocker.batch_execute("ROLLBACK").unwrap();
        let (result, first_error) = worker.join().unwrap();
        let counted = result.unwrap();
        eprintln!(
            "in the caller's transaction: {in_caller_tx}; killed increment failed with \
             {first_error:?}; retried: {counted:?}"
        );
        let expected = if in_caller_tx {
            "ConnectionLost"
        } else {
            "OutcomeUnknown"
        };
        assert!(
            matches!(first_error.as_deref(), Some(e) if e.starts_with(expected)),
            "{first_error:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(counted.applied, "the killed attempt applied nothing");
        assert_eq!(counted.totals.tokens, 5);
        // One more retry of the same request: recognised, not counted.
        let again = increment(&mut admin, account, "request-9", at(), Usage::tokens(5)).unwrap();
        assert!(!again.applied);
        assert_eq!(tokens_used(&mut admin, account), 5);
    }
    assert_eq!(ledger_rows(&mut admin), 2);
}

/// RELIABILITY 9: the connection is lost while COMMIT is in flight (a deferred trigger keeps
/// the commit busy, and the backend is killed then): the outcome is unknown. The plain retry
/// policy does not retry it; the keyed increment, declared idempotent, is retried and counts
/// exactly once.
#[test]
fn a_connection_lost_during_commit_is_outcome_unknown_and_the_keyed_retry_counts_once() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut admin = db.conn();
    set_usage_limits(&mut admin, ACCOUNT, big_limits(), at()).unwrap();
    admin
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('application_name') = 'victim-commit' THEN
                 PERFORM pg_sleep(30);
               END IF;
               RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON usage_events
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .unwrap();
    let victim_url = url_with_app_name(db.url(), "victim-commit");
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let worker = std::thread::spawn(move || {
        // Not declared idempotent: an unknown outcome must not be retried.
        Retry::new().run(|_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut conn = connect_pg(&victim_url)?;
            increment(&mut conn, ACCOUNT, "request-10", at(), Usage::tokens(3))
        })
    });
    let pid = wait_for_session(&mut admin, "victim-commit", "wait_event = 'PgSleep'");
    terminate(&mut admin, pid);
    let err = worker.join().unwrap().unwrap_err();
    eprintln!("connection lost during COMMIT: {err}");
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an unknown outcome is not retried by default"
    );

    // The request carries its key: retry it as idempotent, on a healthy connection.
    let mut attempts = 0;
    let retried = Retry::new()
        .idempotent()
        .run(|_| {
            attempts += 1;
            increment(&mut admin, ACCOUNT, "request-10", at(), Usage::tokens(3))
        })
        .unwrap();
    assert_eq!(attempts, 1);
    let again = increment(&mut admin, ACCOUNT, "request-10", at(), Usage::tokens(3)).unwrap();
    assert_eq!(retried.totals, again.totals);
    assert_eq!(tokens_used(&mut admin, ACCOUNT), 3, "counted exactly once");
    assert_eq!(ledger_rows(&mut admin), 1);
}

#[test]
fn pruned_keys_are_forgotten_and_recent_ones_are_kept() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(1)).unwrap();
    let now = chrono::Utc::now().naive_utc();
    assert_eq!(
        prune_idempotency_keys(&mut conn, now - chrono::Duration::hours(1)).unwrap(),
        0
    );
    assert!(
        !increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(1))
            .unwrap()
            .applied
    );
    assert_eq!(
        prune_idempotency_keys(&mut conn, now + chrono::Duration::minutes(1)).unwrap(),
        1
    );
    assert!(
        increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(1))
            .unwrap()
            .applied
    );
    assert_eq!(tokens_used(&mut conn, ACCOUNT), 2);
}

/// SQLite: 8 connections on one file, each increment one `BEGIN IMMEDIATE` transaction: the sum
/// is exact and a key shared by every thread counts once.
#[test]
fn sqlite_increments_from_8_threads_sum_exactly_and_a_shared_key_counts_once() {
    const THREADS: usize = 8;
    const EACH: i64 = 40;
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let pool = db.pool(THREADS as u32);
    set_usage_limits(&mut db.conn(), ACCOUNT, big_limits(), at()).unwrap();
    let p = pool.clone();
    let shared = race(THREADS, move |t| {
        let mut c = p.get().unwrap();
        for n in 0..EACH {
            increment(
                &mut c,
                ACCOUNT,
                &format!("t{t}-{n}"),
                at(),
                Usage::tokens(1),
            )
            .unwrap();
        }
        increment(&mut c, ACCOUNT, "shared", at(), Usage::tokens(100)).unwrap()
    });
    assert_eq!(shared.iter().filter(|r| r.applied).count(), 1);
    assert!(shared.iter().all(|r| r.event_id == shared[0].event_id));
    let mut conn = db.conn();
    assert_eq!(tokens_used(&mut conn, ACCOUNT), THREADS as i64 * EACH + 100);
    let rows: i64 = usage_events::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, THREADS as i64 * EACH + 1);
}

/// The first increments of a month find no period row (the statement matches the period by
/// `(account, period_start)` and updates nothing); each then creates the period, or gets the
/// one a concurrent call created, and counts. From 8 threads at once, on both backends: one
/// period per month, every increment counted in it, every caller told the same period.
fn first_increments_of_a_month_at_once<C>(
    pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>,
) where
    C: diesel::r2d2::R2D2Connection + 'static,
    diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>: UsageConnection,
{
    const THREADS: usize = 8;
    const MONTHS: u32 = 4;
    set_usage_limits(&mut pool.get().unwrap(), ACCOUNT, big_limits(), at()).unwrap();
    let mut periods = Vec::new();
    for month in 1..=MONTHS {
        let when = NaiveDate::from_ymd_opt(2027, month, 9)
            .unwrap()
            .and_hms_opt(8, 0, 0)
            .unwrap();
        let p = pool.clone();
        let results = race(THREADS, move |t| {
            increment(
                &mut p.get().unwrap(),
                ACCOUNT,
                &format!("m{month}-t{t}"),
                when,
                Usage::tokens(5),
            )
            .unwrap()
        });
        assert!(results.iter().all(|r| r.applied));
        let mut conn = pool.get().unwrap();
        let period = get_or_create_usage_period(&mut conn, ACCOUNT, when).unwrap();
        assert!(!period.created, "the increments created the period");
        assert!(results.iter().all(|r| r.period_id == period.row.id));
        assert_eq!(period.row.tokens_used, 5 * THREADS as i64);
        periods.push(period.row.id);
        let mut totals: Vec<i64> = results.iter().map(|r| r.totals.tokens).collect();
        totals.sort_unstable();
        let expected: Vec<i64> = (1..=THREADS as i64).map(|n| 5 * n).collect();
        assert_eq!(
            totals, expected,
            "each increment saw the totals right after its own"
        );
    }
    periods.sort_unstable();
    periods.dedup();
    assert_eq!(
        periods.len(),
        MONTHS as usize,
        "a period of its own per month"
    );
}

#[test]
fn the_first_increments_of_a_month_from_8_threads_create_one_period_and_count_all() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    first_increments_of_a_month_at_once(db.pool(8));
}

#[test]
fn sqlite_first_increments_of_a_month_from_8_threads_create_one_period_and_count_all() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    first_increments_of_a_month_at_once(db.pool(8));
}

/// A period deleted between two increments (an operator's clean-up): the next increment
/// recreates it with the account's limits and counts there; nothing is lost or counted twice.
#[test]
fn an_increment_after_its_period_was_deleted_recreates_the_period_and_counts_once() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, ACCOUNT, big_limits(), at()).unwrap();
    let first = increment(&mut conn, ACCOUNT, "before", at(), Usage::tokens(4)).unwrap();
    diesel::delete(usage_periods::table.filter(usage_periods::id.eq(first.period_id)))
        .execute(&mut conn)
        .unwrap();
    let second = increment(&mut conn, ACCOUNT, "after", at(), Usage::tokens(6)).unwrap();
    assert!(second.applied);
    assert_ne!(second.period_id, first.period_id);
    assert_eq!(second.totals.tokens, 6);
    assert_eq!(tokens_used(&mut conn, ACCOUNT), 6);
    assert_eq!(
        ledger_rows(&mut conn),
        1,
        "the deleted period's ledger rows went with it"
    );
}
