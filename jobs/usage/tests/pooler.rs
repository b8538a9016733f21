//! Usage tracking through PgBouncer 1.18 in transaction pool mode with the crate's pooler mode
//! on (`?upsert_kit_pooler=transaction`), the way hosted PostgreSQL is usually reached: the
//! period's get-or-create, keyed increments and quota reservations keep their guarantees from 8
//! clients at once. (The harness starts the PgBouncer; without one this test fails and says how
//! to provide it.)

use chrono::{NaiveDate, NaiveDateTime};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::db::{connect_pg, is_pooler_mode};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb};
use usage_tracking::counter::increment;
use usage_tracking::quota::{commit, reserve};
use usage_tracking::{get_or_create_usage_period, set_usage_limits, Metric, Usage, PG_MIGRATIONS};

const CLIENTS: usize = 8;
const ACCOUNT: i64 = 7;

fn at() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

#[test]
fn periods_increments_and_reservations_hold_through_pgbouncer_in_pooler_mode() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let url = db.pooled_url();
    let mut conn = connect_pg(&url).unwrap();
    assert!(is_pooler_mode(&mut conn));
    set_usage_limits(
        &mut conn,
        ACCOUNT,
        Usage {
            tokens: 1000,
            reports: 0,
            chats: 0,
        },
        at(),
    )
    .unwrap();
    let conns = Arc::new(Mutex::new(
        (0..CLIENTS)
            .map(|_| connect_pg(&url).unwrap())
            .collect::<Vec<_>>(),
    ));

    // One period, one creator.
    let c = Arc::clone(&conns);
    let created = race(CLIENTS, move |_| {
        let mut conn = c.lock().unwrap().pop().unwrap();
        let got = get_or_create_usage_period(&mut conn, ACCOUNT, at()).unwrap();
        c.lock().unwrap().push(conn);
        (got.created, got.row.id)
    });
    assert_eq!(created.iter().filter(|(c, _)| *c).count(), 1);
    assert!(created.iter().all(|(_, id)| *id == created[0].1));

    // 8 clients × 20 increments of 1 token, each key delivered twice: counted once each.
    let c = Arc::clone(&conns);
    let applied = race(CLIENTS, move |i| {
        let mut conn = c.lock().unwrap().pop().unwrap();
        let mut applied = 0;
        for n in 0..20 {
            for _ in 0..2 {
                let key = format!("req-{i}-{n}");
                if increment(&mut conn, ACCOUNT, &key, at(), Usage::tokens(1))
                    .unwrap()
                    .applied
                {
                    applied += 1;
                }
            }
        }
        c.lock().unwrap().push(conn);
        applied
    });
    assert_eq!(applied.iter().sum::<usize>(), CLIENTS * 20);
    let period = get_or_create_usage_period(&mut conn, ACCOUNT, at())
        .unwrap()
        .row;
    assert_eq!(period.tokens_used, (CLIENTS * 20) as i64);

    // 840 tokens left; 8 clients × 15 reservations of 10: exactly 84 granted, then committed.
    let c = Arc::clone(&conns);
    let granted = race(CLIENTS, move |_| {
        let mut conn = c.lock().unwrap().pop().unwrap();
        let mut granted = 0;
        for _ in 0..15 {
            match reserve(
                &mut conn,
                ACCOUNT,
                Metric::Tokens,
                10,
                at(),
                Duration::from_secs(60),
            ) {
                Ok(held) => {
                    commit(&mut conn, &held, 10, at()).unwrap();
                    granted += 1;
                }
                Err(Error::QuotaExceeded { .. }) => {}
                // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                Err(e) => panic!("{e}"),
            }
        }
        granted
    });
    assert_eq!(granted.iter().sum::<usize>(), 84);
    let period = get_or_create_usage_period(&mut conn, ACCOUNT, at())
        .unwrap()
        .row;
    assert_eq!((period.tokens_used, period.tokens_reserved), (1000, 0));
}
