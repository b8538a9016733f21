//! Quota reservations and consumption, on a real PostgreSQL server and on SQLite.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use std::time::Duration;
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb, TestSqlite};
use usage_tracking::quota::{
    commit, expire_reservations, release, reserve, try_consume, MAX_RESERVATION_TTL,
};
use usage_tracking::schema::{usage_periods, usage_reservations};
use usage_tracking::{
    get_or_create_usage_period, naive, set_usage_limits, Metric, Usage, UsageConnection,
    UsagePeriod, MAX_AMOUNT, PG_MIGRATIONS, SQLITE_MIGRATIONS,
};

const TTL: Duration = Duration::from_secs(60);

fn t0() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

fn secs(s: i64) -> NaiveDateTime {
    t0() + chrono::Duration::seconds(s)
}

fn period<C: UsageConnection>(conn: &mut C, account: i64) -> UsagePeriod {
    get_or_create_usage_period(conn, account, t0()).unwrap().row
}

fn reservation_rows(conn: &mut PgConnection) -> i64 {
    usage_reservations::table.count().get_result(conn).unwrap()
}

/// RELIABILITY 10: 16 threads, released by a barrier, reserve 10 tokens at a time (then commit
/// them) against a limit of 1,000 with a demand of 1,600: `used` ends exactly at the limit, 100
/// reservations succeed and 60 are refused, and `used + reserved` never exceeds the limit. The
/// naive check-then-consume, raced the same way on a fresh account per round, overshoots the
/// limit; the test fails only if it never does in 10 rounds.
#[test]
fn sixteen_threads_reserving_fill_the_limit_exactly_while_check_then_consume_overshoots() {
    const THREADS: usize = 16;
    const TRIES: usize = 10;
    const LIMIT: i64 = 1_000;
    const NAIVE_ROUNDS: i64 = 10;
    let db = TestDb::migrated(PG_MIGRATIONS);
    let pool = db.pool(THREADS as u32);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(LIMIT), t0()).unwrap();

    let p = pool.clone();
    let outcomes = race(THREADS, move |_| {
        let mut c = p.get().unwrap();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..TRIES {
            match reserve(&mut c, 1, Metric::Tokens, 10, t0(), TTL) {
                Ok(r) => {
                    assert!(r.amount == 10 && r.period_id > 0);
                    let after = commit(&mut c, &r, 10, t0()).unwrap();
                    assert!(after.tokens_used + after.tokens_reserved <= LIMIT);
                    ok += 1;
                }
                Err(Error::QuotaExceeded { requested: 10, .. }) => refused += 1,
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        (ok, refused)
    });
    let ok: usize = outcomes.iter().map(|o| o.0).sum();
    let refused: usize = outcomes.iter().map(|o| o.1).sum();
    let atomic = period(&mut conn, 1);

    // The naive baseline: same threads, same demand, on a fresh account per round.
    let (mut rounds, mut naive_used, mut naive_granted) = (0, 0, 0);
    for account in 2..2 + NAIVE_ROUNDS {
        rounds += 1;
        set_usage_limits(&mut conn, account, Usage::tokens(LIMIT), t0()).unwrap();
        let naive_period = period(&mut conn, account).id;
        let p = pool.clone();
        let granted = race(THREADS, move |_| {
            let mut c = p.get().unwrap();
            (0..TRIES)
                .filter(|_| naive::try_consume_check_then_act(&mut c, naive_period, 10).unwrap())
                .count()
        });
        naive_granted = granted.iter().sum::<usize>();
        naive_used = period(&mut conn, account).tokens_used;
        assert_eq!(
            naive_used,
            10 * naive_granted as i64,
            "every grant was consumed"
        );
        if naive_used > LIMIT {
            break;
        }
    }
    eprintln!(
        "demand {} against a limit of {LIMIT}: reserve used {} ({ok} granted, {refused} \
         refused); naive check-then-consume used {naive_used} ({naive_granted} granted, \
         overshoot {}) in round {rounds}",
        THREADS * TRIES * 10,
        atomic.tokens_used,
        naive_used - LIMIT
    );
    assert_eq!(atomic.tokens_used, LIMIT, "the limit is filled exactly");
    assert_eq!(atomic.tokens_reserved, 0);
    assert_eq!((ok, refused), (100, 60));
    assert_eq!(reservation_rows(&mut conn), 0);
    assert!(
        naive_used > LIMIT,
        "the naive check-then-consume never overshot the limit of {LIMIT} in {rounds} rounds of \
         {THREADS} threads × {TRIES}: last round used {naive_used} ({naive_granted} granted)"
    );
}

/// 16 threads consume 1 token at a time against a limit of 500 while others hold reservations
/// that they release: consumption ends exactly at the limit.
#[test]
fn concurrent_try_consume_and_released_reservations_end_exactly_at_the_limit() {
    const LIMIT: i64 = 500;
    let db = TestDb::migrated(PG_MIGRATIONS);
    let pool = db.pool(16);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(LIMIT), t0()).unwrap();
    let p = pool.clone();
    let consumed = race(16, move |i| {
        let mut c = p.get().unwrap();
        let mut consumed = 0;
        for _ in 0..60 {
            if i % 4 == 0 {
                // Holds units for a moment, then gives them back.
                if let Ok(r) = reserve(&mut c, 1, Metric::Tokens, 5, t0(), TTL) {
                    assert!(release(&mut c, &r).unwrap());
                }
            } else if try_consume(&mut c, 1, Metric::Tokens, 1, t0()).is_ok() {
                consumed += 1;
            }
        }
        consumed
    });
    let total: i64 = consumed.iter().sum();
    let p = period(&mut conn, 1);
    eprintln!(
        "12 consumers × 60 against {LIMIT}: {total} consumed, used {}",
        p.tokens_used
    );
    assert_eq!(total, LIMIT);
    assert_eq!(p.tokens_used, LIMIT);
    assert_eq!(p.tokens_reserved, 0);
}

/// RELIABILITY 10: reserve, commit (a smaller actual amount), release, expiry: the sums hold at
/// every step.
#[test]
fn reserve_commit_release_and_expiry_keep_the_sums() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), t0()).unwrap();
    let sums = |conn: &mut PgConnection| {
        let p = period(conn, 1);
        (p.tokens_used, p.tokens_reserved)
    };

    let r1 = reserve(&mut conn, 1, Metric::Tokens, 40, t0(), TTL).unwrap();
    let r2 = reserve(&mut conn, 1, Metric::Tokens, 50, t0(), TTL).unwrap();
    assert_eq!(sums(&mut conn), (0, 90));
    let refused = reserve(&mut conn, 1, Metric::Tokens, 20, t0(), TTL).unwrap_err();
    assert!(
        matches!(
            refused,
            Error::QuotaExceeded {
                requested: 20,
                available: 10
            }
        ),
        "{refused:?}"
    );

    // Commit fewer units than reserved: the rest goes back.
    let after = commit(&mut conn, &r1, 30, t0()).unwrap();
    assert_eq!((after.tokens_used, after.tokens_reserved), (30, 50));
    assert!(matches!(
        commit(&mut conn, &r1, 30, t0()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        commit(&mut conn, &r2, 51, t0()),
        Err(Error::InvalidInput(_))
    ));

    assert!(release(&mut conn, &r2).unwrap());
    assert!(
        !release(&mut conn, &r2).unwrap(),
        "releasing twice gives back nothing"
    );
    assert!(matches!(
        commit(&mut conn, &r2, 1, t0()),
        Err(Error::NotFound(_))
    ));
    assert_eq!(sums(&mut conn), (30, 0));

    // r3 expires after 10 s. Until then it counts; afterwards a reservation that needs its units
    // sweeps it, and committing it is refused.
    let r3 = reserve(
        &mut conn,
        1,
        Metric::Tokens,
        60,
        t0(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(matches!(
        reserve(&mut conn, 1, Metric::Tokens, 50, secs(9), TTL),
        Err(Error::QuotaExceeded { available: 10, .. })
    ));
    let r4 = reserve(&mut conn, 1, Metric::Tokens, 50, secs(10), TTL).unwrap();
    assert_eq!(sums(&mut conn), (30, 50));
    assert!(matches!(
        commit(&mut conn, &r3, 60, secs(10)),
        Err(Error::NotFound(_))
    ));
    assert!(!release(&mut conn, &r3).unwrap());

    // The periodic sweep: r4 expires at 70 s.
    assert_eq!(expire_reservations(&mut conn, secs(69)).unwrap(), 0);
    assert_eq!(expire_reservations(&mut conn, secs(70)).unwrap(), 1);
    assert!(matches!(
        commit(&mut conn, &r4, 1, secs(70)),
        Err(Error::NotFound(_))
    ));
    assert_eq!(sums(&mut conn), (30, 0));
    assert_eq!(reservation_rows(&mut conn), 0);
    // try_consume sees the whole room again.
    let p = try_consume(&mut conn, 1, Metric::Tokens, 70, secs(70)).unwrap();
    assert_eq!((p.tokens_used, p.available(Metric::Tokens)), (100, 0));
}

/// RELIABILITY 21: bad amounts, TTLs and accounts are typed errors and write nothing.
#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(100), t0()).unwrap();
    let invalid = [
        ("zero", reserve(&mut conn, 1, Metric::Tokens, 0, t0(), TTL)),
        (
            "negative",
            reserve(&mut conn, 1, Metric::Tokens, -5, t0(), TTL),
        ),
        (
            "too large",
            reserve(&mut conn, 1, Metric::Tokens, MAX_AMOUNT + 1, t0(), TTL),
        ),
        (
            "no ttl",
            reserve(&mut conn, 1, Metric::Tokens, 5, t0(), Duration::ZERO),
        ),
        (
            "long ttl",
            reserve(
                &mut conn,
                1,
                Metric::Tokens,
                5,
                t0(),
                MAX_RESERVATION_TTL * 2,
            ),
        ),
    ];
    for (case, result) in invalid {
        assert!(
            matches!(result, Err(Error::InvalidInput(_))),
            "{case}: {result:?}"
        );
    }
    // A lease that would end after 9999-12-31 is refused as a bad `ttl`.
    let last_minute = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 30))
        .unwrap();
    assert!(matches!(
        reserve(&mut conn, 1, Metric::Tokens, 5, last_minute, TTL),
        Err(Error::InvalidInput(ref e)) if e.field == "ttl"
    ));
    assert!(matches!(
        try_consume(&mut conn, 1, Metric::Chats, 0, t0()),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        set_usage_limits(&mut conn, 2, Usage::tokens(-1), t0()),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        reserve(&mut conn, 999, Metric::Tokens, 5, t0(), TTL),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        try_consume(&mut conn, 999, Metric::Tokens, 5, t0()),
        Err(Error::NotFound(_))
    ));
    assert_eq!(reservation_rows(&mut conn), 0);
    let periods: i64 = usage_periods::table.count().get_result(&mut conn).unwrap();
    assert_eq!(periods, 0, "no period was created");
}

/// Limits changed by `set_usage_limits` apply to the open period at once.
#[test]
fn raising_a_limit_applies_to_the_current_period() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    set_usage_limits(&mut conn, 1, Usage::tokens(10), t0()).unwrap();
    try_consume(&mut conn, 1, Metric::Tokens, 10, t0()).unwrap();
    assert!(try_consume(&mut conn, 1, Metric::Tokens, 1, t0()).is_err());
    set_usage_limits(&mut conn, 1, Usage::tokens(11), t0()).unwrap();
    assert_eq!(
        try_consume(&mut conn, 1, Metric::Tokens, 1, t0())
            .unwrap()
            .tokens_used,
        11
    );
}

/// SQLite: 8 connections on one file reserve against a limit; every call is one immediate
/// transaction, so the limit is filled exactly and never exceeded.
#[test]
fn sqlite_reservations_from_8_threads_fill_the_limit_exactly() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    let pool = db.pool(8);
    set_usage_limits(&mut db.conn(), 1, Usage::tokens(100), t0()).unwrap();
    let p = pool.clone();
    let granted = race(8, move |_| {
        let mut c = p.get().unwrap();
        let mut granted = 0;
        for _ in 0..4 {
            match reserve(&mut c, 1, Metric::Tokens, 5, t0(), TTL) {
                Ok(r) => {
                    commit(&mut c, &r, 5, t0()).unwrap();
                    granted += 1;
                }
                Err(Error::QuotaExceeded { .. }) => {}
                // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        granted
    });
    assert_eq!(granted.iter().sum::<i32>(), 20);
    let p = period(&mut db.conn(), 1);
    assert_eq!((p.tokens_used, p.tokens_reserved), (100, 0));
}

/// A month's first calls find no period row (each statement matches the period by
/// `(account, period_start)`): the refused-or-missing call gets or creates the period and tries
/// again. From 12 threads at once on a month without a period, half reserving and half
/// consuming one token against a limit of 8: exactly 8 accepted, the 4 others refused with
/// nothing left, one period holding all of it.
fn first_calls_of_a_month_fill_the_limit_exactly<C>(
    pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>,
) where
    C: diesel::r2d2::R2D2Connection + 'static,
    diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>: UsageConnection,
{
    const THREADS: usize = 12;
    const LIMIT: i64 = 8;
    let when = NaiveDate::from_ymd_opt(2027, 3, 3)
        .unwrap()
        .and_hms_opt(3, 0, 0)
        .unwrap();
    set_usage_limits(&mut pool.get().unwrap(), 1, Usage::tokens(LIMIT), t0()).unwrap();
    let p = pool.clone();
    let outcomes = race(THREADS, move |t| {
        let mut c = p.get().unwrap();
        if t % 2 == 0 {
            reserve(&mut c, 1, Metric::Tokens, 1, when, TTL).map(|r| r.period_id)
        } else {
            try_consume(&mut c, 1, Metric::Tokens, 1, when).map(|p| p.id)
        }
    });
    let mut conn = pool.get().unwrap();
    let period = get_or_create_usage_period(&mut conn, 1, when).unwrap();
    assert!(!period.created, "the calls created the period");
    let mut accepted = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(period_id) => {
                assert_eq!(*period_id, period.row.id);
                accepted += 1;
            }
            Err(Error::QuotaExceeded {
                requested: 1,
                available: 0,
            }) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(accepted, LIMIT);
    assert_eq!(
        period.row.tokens_used + period.row.tokens_reserved,
        LIMIT,
        "the limit filled exactly"
    );
}

#[test]
fn the_first_calls_of_a_month_from_12_threads_fill_the_limit_exactly() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    first_calls_of_a_month_fill_the_limit_exactly(db.pool(12));
}

#[test]
fn sqlite_first_calls_of_a_month_from_12_threads_fill_the_limit_exactly() {
    let db = TestSqlite::migrated(SQLITE_MIGRATIONS);
    first_calls_of_a_month_fill_the_limit_exactly(db.pool(12));
}
