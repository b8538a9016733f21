//! The backfill scheduler behind PgBouncer 1.18 in transaction pool mode, the way hosted
//! PostgreSQL is usually reached (the harness starts the PgBouncer; without one this test fails
//! and says how to provide it). Claims hold by their lease, a row of the table, not by a
//! session: they need no server connection of their own between transactions, which a
//! transaction-mode pooler does not give. Session locks, which do, are refused there.

use backfill_scheduler::schema::backfill_log;
use backfill_scheduler::{backfill, schedule_months, BackfillMonth, MIGRATIONS};
use diesel::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::Queue;
use upsert_kit::db::{connect_pg, is_pooler_mode};
use upsert_kit::lock::{self, LockKey};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb};

const SCHEDULERS: usize = 8;

#[test]
fn eight_schedulers_through_pgbouncer_in_pooler_mode_process_each_month_exactly_once() {
    const MONTHS: usize = 36;
    let db = TestDb::migrated(MIGRATIONS);
    let url = db.pooled_url();
    let mut conn = connect_pg(&url).unwrap();
    assert!(is_pooler_mode(&mut conn));
    assert_eq!(
        schedule_months(&mut conn, (2023, 1), (2025, 12)).unwrap(),
        MONTHS
    );

    // What the scheduler must not rely on behind this pooler: a session lock, which another
    // client could be handed with the server connection. It is refused before anything is sent.
    match lock::lock(&mut conn, LockKey::new("backfill", 2024)) {
        Err(e @ Error::SessionStateUnavailable { .. }) => {
            assert!(e.to_string().contains("claim"), "{e}");
        }
        other => panic!("expected SessionStateUnavailable, got {other:?}"),
    }

    let seen = Arc::new(Mutex::new(HashMap::<(i32, u32), usize>::new()));
    let conns: Arc<Mutex<Vec<PgConnection>>> = Arc::new(Mutex::new(
        (0..SCHEDULERS).map(|_| connect_pg(&url).unwrap()).collect(),
    ));
    let record = Arc::clone(&seen);
    let reports = race(SCHEDULERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let queue = Queue::<BackfillMonth>::new(format!("pooled-{i}"))
            .unwrap()
            .lease(Duration::from_secs(60));
        backfill(&mut conn, &queue, |year, month| {
            *record.lock().unwrap().entry((year, month)).or_default() += 1;
            // Long enough for the schedulers to overlap.
            std::thread::sleep(Duration::from_millis(5));
            Ok::<(), Error>(())
        })
        .unwrap()
    });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), MONTHS);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let done: usize = reports.iter().map(|r| r.done).sum();
    assert_eq!(done, MONTHS);
    assert!(
        reports.iter().all(|r| r.lost == 0 && r.retried == 0),
        "{reports:?}"
    );
    let statuses: Vec<String> = backfill_log::table
        .select(backfill_log::status)
        .distinct()
        .load(&mut db.conn())
        .unwrap();
    assert_eq!(statuses, ["done"]);
}

/// A claim's lease is data: taken in one transaction, it keeps other schedulers off the month
/// in the following ones, whichever server connection the pooler gives each of them, and only
/// its holder can complete it.
#[test]
fn a_claim_taken_through_the_pooler_holds_across_transactions_without_a_session() {
    let db = TestDb::migrated(MIGRATIONS);
    let url = db.pooled_url();
    let (mut a, mut b) = (connect_pg(&url).unwrap(), connect_pg(&url).unwrap());
    schedule_months(&mut a, (2026, 1), (2026, 1)).unwrap();
    let qa = Queue::<BackfillMonth>::new("a").unwrap();
    let qb = Queue::<BackfillMonth>::new("b").unwrap();
    let claim = qa.claim(&mut a, 1).unwrap().pop().unwrap();
    for _ in 0..3 {
        // Other transactions, through the pooler, on whatever server connection: nothing due.
        assert!(qb.claim(&mut b, 1).unwrap().is_empty());
        assert_eq!(qb.reap_expired(&mut b).unwrap().requeued, 0);
    }
    // Not b's claim to complete.
    let stolen = upsert_kit::claim::Claim {
        holder: "b".into(),
        ..claim.clone()
    };
    assert!(matches!(
        qb.complete(&mut b, &stolen),
        Err(Error::NotFound(_))
    ));
    qa.complete(&mut a, &claim).unwrap();
    assert!(qb.claim(&mut b, 1).unwrap().is_empty());
}
