//! The naive patterns against the atomic functions under one forced interleaving, on a real
//! PostgreSQL server: no timing, no luck.
//!
//! A blocking session holds the period row (or an uncommitted period) in an open transaction;
//! N threads then run the operation, and each one does its reads, which the blocker does not
//! stop, and then waits for the blocker at its first write. Only when all N are seen waiting
//! for a lock (`pg_stat_activity`) does the blocker end its transaction. Every thread has
//! therefore read before any thread wrote: the worst case of a race, made certain. The naive
//! patterns fail every time in these tests; the atomic functions hold their invariants, since
//! their decision is taken by the write itself, against the newest committed row.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::time::{Duration, Instant};
use upsert_kit::{ConstraintKind, Error};
use upsert_kit_support::TestDb;
use usage_tracking::counter::increment;
use usage_tracking::quota::{reserve, try_consume};
use usage_tracking::{
    get_or_create_usage_period, monthly_period, naive, set_usage_limits, Metric, Usage,
    UsagePeriod, MAX_AMOUNT, PG_MIGRATIONS,
};

const THREADS: usize = 8;

fn at() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

fn period(conn: &mut PgConnection, account: i64) -> UsagePeriod {
    get_or_create_usage_period(conn, account, at()).unwrap().row
}

/// Waits until `n` sessions of this database wait for a lock; `false` after 30 s.
fn lock_waiters_reach(admin: &mut PgConnection, n: i64) -> bool {
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let waiting: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result(admin)
        .unwrap();
        if waiting.n >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Runs `f(conn, i)` for `i` in `0..THREADS`, each on a connection of its own, while `blocker`
/// holds its open transaction; ends that transaction with `end` (`COMMIT` or `ROLLBACK`) once
/// every thread waits for a lock, and returns the results in index order.
fn gated<T: Send>(
    db: &TestDb,
    blocker: &mut PgConnection,
    end: &str,
    f: impl Fn(&mut PgConnection, usize) -> T + Sync,
) -> Vec<T> {
    let mut admin = db.conn();
    let conns: Vec<PgConnection> = (0..THREADS).map(|_| db.conn()).collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| s.spawn(move || f(&mut c, i)))
            .collect();
        let all_waiting = lock_waiters_reach(&mut admin, THREADS as i64);
        // End the blocker's transaction in any case, so that no thread stays blocked.
        blocker.batch_execute(end).unwrap();
        let results: Vec<T> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            all_waiting,
            "the {THREADS} threads were never all seen waiting for the blocker's lock"
        );
        results
    })
}

/// Begins a transaction on `blocker` that holds `period_id`'s row lock.
fn hold_period_row(blocker: &mut PgConnection, period_id: i64) {
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM usage_periods WHERE id = {period_id} FOR UPDATE"
        ))
        .unwrap();
}

/// RELIABILITY 7 under the worst interleaving: 8 read-add-write increments that all read before
/// any writes keep one increment of 8 (each writes 0 + 1); 8 keyed increments under the same
/// interleaving count all 8, and each reports its own total.
#[test]
fn when_every_increment_reads_before_any_writes_read_add_write_keeps_one_and_increment_counts_all()
{
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    let mut blocker = db.conn();
    let unlimited = Usage {
        tokens: MAX_AMOUNT,
        reports: MAX_AMOUNT,
        chats: MAX_AMOUNT,
    };
    set_usage_limits(&mut conn, 1, unlimited, at()).unwrap();
    set_usage_limits(&mut conn, 2, unlimited, at()).unwrap();

    let naive_period = period(&mut conn, 2).id;
    hold_period_row(&mut blocker, naive_period);
    let written = gated(&db, &mut blocker, "ROLLBACK", |c, _| {
        naive::increment_read_add_write(c, naive_period, 1).unwrap()
    });
    let naive_total = period(&mut conn, 2).tokens_used;
    eprintln!("{THREADS} naive read-add-write increments, all read first: wrote {written:?}, final {naive_total}");
    assert_eq!(
        written,
        vec![1; THREADS],
        "every naive increment read 0 and wrote 1"
    );
    assert_eq!(
        naive_total, 1,
        "the naive read-add-write kept one increment"
    );

    let atomic_period = period(&mut conn, 1).id;
    hold_period_row(&mut blocker, atomic_period);
    let counted = gated(&db, &mut blocker, "ROLLBACK", |c, i| {
        increment(c, 1, &format!("request-{i}"), at(), Usage::tokens(1)).unwrap()
    });
    let mut totals: Vec<i64> = counted.iter().map(|r| r.totals.tokens).collect();
    totals.sort_unstable();
    assert!(counted.iter().all(|r| r.applied));
    assert_eq!(totals, (1..=THREADS as i64).collect::<Vec<_>>());
    assert_eq!(period(&mut conn, 1).tokens_used, THREADS as i64);
}

/// RELIABILITY 10 under the worst interleaving: 8 requests of 10 tokens against a limit of 10
/// that all check before any consumes: the naive check-then-consume grants all 8 (used 80);
/// `try_consume` grants exactly one, and so does `reserve`.
#[test]
fn when_every_request_checks_before_any_consumes_check_then_act_overspends_and_the_quota_holds() {
    const LIMIT: i64 = 10;
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    let mut blocker = db.conn();
    for account in 1..=3 {
        set_usage_limits(&mut conn, account, Usage::tokens(LIMIT), at()).unwrap();
    }

    let naive_period = period(&mut conn, 3).id;
    hold_period_row(&mut blocker, naive_period);
    let granted = gated(&db, &mut blocker, "ROLLBACK", |c, _| {
        naive::try_consume_check_then_act(c, naive_period, LIMIT).unwrap()
    });
    let naive_used = period(&mut conn, 3).tokens_used;
    eprintln!(
        "{THREADS} naive check-then-consume of {LIMIT} against {LIMIT}, all checked first: used {naive_used}"
    );
    assert!(granted.iter().all(|&g| g), "every naive check saw room");
    assert_eq!(
        naive_used,
        LIMIT * THREADS as i64,
        "the naive pattern overspent"
    );

    let consume_period = period(&mut conn, 1).id;
    hold_period_row(&mut blocker, consume_period);
    let consumed = gated(&db, &mut blocker, "ROLLBACK", |c, _| {
        try_consume(c, 1, Metric::Tokens, LIMIT, at())
    });
    let reserve_period = period(&mut conn, 2).id;
    hold_period_row(&mut blocker, reserve_period);
    let reserved = gated(&db, &mut blocker, "ROLLBACK", |c, _| {
        reserve(c, 2, Metric::Tokens, LIMIT, at(), Duration::from_secs(60))
    });
    for (what, oks, refusals) in [
        (
            "try_consume",
            consumed.iter().filter(|r| r.is_ok()).count(),
            consumed
                .iter()
                .filter(|r| {
                    matches!(
                        r,
                        Err(Error::QuotaExceeded {
                            requested: LIMIT,
                            available: 0
                        })
                    )
                })
                .count(),
        ),
        (
            "reserve",
            reserved.iter().filter(|r| r.is_ok()).count(),
            reserved
                .iter()
                .filter(|r| {
                    matches!(
                        r,
                        Err(Error::QuotaExceeded {
                            requested: LIMIT,
                            available: 0
                        })
                    )
                })
                .count(),
        ),
    ] {
        assert_eq!(
            (oks, refusals),
            (1, THREADS - 1),
            "{what}: one grant, the rest refused"
        );
    }
    let consumed_period = period(&mut conn, 1);
    assert_eq!(
        (consumed_period.tokens_used, consumed_period.tokens_reserved),
        (LIMIT, 0)
    );
    let reserved_period = period(&mut conn, 2);
    assert_eq!(
        (reserved_period.tokens_used, reserved_period.tokens_reserved),
        (0, LIMIT)
    );
}

/// RELIABILITY 3 under the worst interleaving: another session has inserted the period and not
/// committed yet when 8 requests look for it; none sees it, all insert and wait for that
/// session. After its commit the naive select-then-insert fails with a duplicate key in all 8;
/// `get_or_create_usage_period` returns the committed row to all 8, none claiming to have
/// created it.
#[test]
fn when_a_creator_commits_after_every_lookup_select_then_insert_fails_and_get_or_create_returns_its_row(
) {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    let mut blocker = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), at()).unwrap();
    set_usage_limits(&mut conn, 2, Usage::tokens(100), at()).unwrap();
    let (start, end) = monthly_period(at()).unwrap();
    let begin_creating = |blocker: &mut PgConnection, account: i64| -> i64 {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        blocker.batch_execute("BEGIN").unwrap();
        diesel::sql_query(
            "INSERT INTO usage_periods \
             (account, period_start, period_end, tokens_limit, reports_limit, chats_limit) \
             VALUES ($1, $2, $3, 100, 0, 0) RETURNING id",
        )
        .bind::<diesel::sql_types::BigInt, _>(account)
        .bind::<diesel::sql_types::Timestamp, _>(start)
        .bind::<diesel::sql_types::Timestamp, _>(end)
        .get_result::<Id>(blocker)
        .unwrap()
        .id
    };

    begin_creating(&mut blocker, 2);
    let naive = gated(&db, &mut blocker, "COMMIT", |c, _| {
        naive::get_or_create_usage_period_select_then_insert(c, 2, at())
    });
    eprintln!(
        "{THREADS} naive select-then-insert after a concurrent creation: {} failed, the first \
         with {:?}",
        naive.iter().filter(|r| r.is_err()).count(),
        naive.iter().find_map(|r| r.as_ref().err())
    );
    for r in &naive {
        assert!(
            matches!(
                r,
                Err(Error::Constraint {
                    kind: ConstraintKind::Unique,
                    ..
                })
            ),
            "every naive lookup missed the row and its insert collided: {r:?}"
        );
    }

    let creator = begin_creating(&mut blocker, 1);
    let got = gated(&db, &mut blocker, "COMMIT", |c, _| {
        get_or_create_usage_period(c, 1, at()).unwrap()
    });
    assert!(
        got.iter().all(|g| !g.created && g.row.id == creator),
        "every caller gets the committed row, none claims it: {got:?}"
    );
}
