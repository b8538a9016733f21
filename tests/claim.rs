//! Work claims (`FOR UPDATE SKIP LOCKED` with leases) on a real PostgreSQL server
//! (RELIABILITY.md 16–18) and the backfill scheduler.

mod common;

use common::{race, TestDb};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::{
    backfill, schedule_months, BackfillMonth, BackfillReport, ClaimQueue, Failed, Queue,
};
use upsert_kit::schema::backfill_log;
use upsert_kit::{naive, Error};

// A queue of the test's own, with its own column and status names, to show the claims are
// generic over the table.
diesel::table! {
    jobs (job_id) {
        job_id -> Int8,
        payload -> Int4,
        state -> Text,
        tries -> Int4,
        lease_until -> Nullable<Timestamptz>,
        worker -> Nullable<Text>,
        error -> Nullable<Text>,
        runs -> Int4,
    }
}

#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = jobs)]
struct Job {
    payload: i32,
}

impl ClaimQueue for Job {
    type Table = jobs::table;
    const ID: &'static str = "job_id";
    const STATUS: &'static str = "state";
    const ATTEMPTS: &'static str = "tries";
    const LOCKED_UNTIL: &'static str = "lease_until";
    const HOLDER: &'static str = "worker";
    const LAST_ERROR: &'static str = "error";
    const PENDING: &'static str = "queued";
    const RETRY: &'static str = "again";
    const PROCESSING: &'static str = "running";
    const DONE: &'static str = "finished";
    const FAILED: &'static str = "dead";
}

fn jobs_table(conn: &mut PgConnection, items: i32) {
    conn.batch_execute(&format!(
        "CREATE TABLE jobs (
             job_id BIGSERIAL PRIMARY KEY,
             payload INT NOT NULL,
             state TEXT NOT NULL DEFAULT 'queued',
             tries INT NOT NULL DEFAULT 0,
             lease_until TIMESTAMPTZ,
             worker TEXT,
             error TEXT,
             runs INT NOT NULL DEFAULT 0);
         CREATE INDEX jobs_due ON jobs (job_id) WHERE state IN ('queued', 'again');
         INSERT INTO jobs (payload) SELECT g FROM generate_series(1, {items}) g;"
    ))
    .unwrap();
}

fn states(conn: &mut PgConnection) -> HashMap<String, i64> {
    jobs::table
        .group_by(jobs::state)
        .select((jobs::state, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)
        .unwrap()
        .into_iter()
        .collect()
}

fn month_states(conn: &mut PgConnection) -> HashMap<String, i64> {
    backfill_log::table
        .group_by(backfill_log::status)
        .select((backfill_log::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)
        .unwrap()
        .into_iter()
        .collect()
}

/// One connection per thread, opened before the race starts.
fn conns(db: &TestDb, n: usize) -> Arc<Mutex<Vec<PgConnection>>> {
    Arc::new(Mutex::new((0..n).map(|_| db.conn()).collect()))
}

#[test]
fn eight_workers_drain_five_thousand_items_each_exactly_once() {
    const WORKERS: usize = 8;
    const ITEMS: i32 = 5000;
    let db = TestDb::new();
    jobs_table(&mut db.conn(), ITEMS);

    let conns = conns(&db, WORKERS);
    let processed = race(WORKERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let queue = Queue::<Job>::new(format!("worker-{i}")).unwrap();
        let mut mine = Vec::new();
        loop {
            let claims = queue.claim(&mut conn, 20).unwrap();
            if claims.is_empty() {
                return mine;
            }
            for claim in claims {
                assert_eq!(claim.attempt, 1);
                assert_eq!(claim.holder, format!("worker-{i}"));
                diesel::update(jobs::table.find(claim.id))
                    .set(jobs::runs.eq(jobs::runs + 1))
                    .execute(&mut conn)
                    .unwrap();
                mine.push(claim.item.payload);
                queue.complete(&mut conn, &claim).unwrap();
            }
        }
    });

    let per_worker: Vec<usize> = processed.iter().map(Vec::len).collect();
    let mut all: Vec<i32> = processed.into_iter().flatten().collect();
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    eprintln!(
        "claim: {total} items processed by 8 workers {per_worker:?}; {} distinct",
        all.len()
    );
    assert_eq!(total, ITEMS as usize);
    assert_eq!(all, (1..=ITEMS).collect::<Vec<_>>());
    let mut conn = db.conn();
    assert_eq!(
        states(&mut conn),
        HashMap::from([("finished".into(), 5000)])
    );
    let not_once: i64 = jobs::table
        .filter(jobs::runs.ne(1))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(not_once, 0);
}

#[test]
fn the_lockless_select_then_update_claim_hands_items_out_twice_and_claim_never_does() {
    const WORKERS: usize = 8;
    let db = TestDb::new();
    let mut conn = db.conn();

    let run = |atomic: bool| -> (usize, usize) {
        let conns = conns(&db, WORKERS);
        let claimed = race(WORKERS, move |i| {
            let mut conn = conns.lock().unwrap().pop().unwrap();
            let holder = format!("w{i}");
            let queue = Queue::<BackfillMonth>::new(&holder).unwrap();
            let mut mine = Vec::new();
            loop {
                let ids: Vec<i64> = if atomic {
                    queue
                        .claim(&mut conn, 5)
                        .unwrap()
                        .into_iter()
                        .map(|c| c.id)
                        .collect()
                } else {
                    match naive::claim_select_then_update(&mut conn, &holder, 5) {
                        Ok(claimed) => claimed.into_iter().map(|c| c.0).collect(),
                        // Overlapping lockless claims can also deadlock each other: one more
                        // way the naive pattern fails. The victim tries again.
                        Err(Error::Deadlock(_)) => continue,
                        Err(e) => panic!("naive claim: {e:?}"),
                    }
                };
                if ids.is_empty() {
                    return mine;
                }
                mine.extend(ids);
            }
        });
        let all: Vec<i64> = claimed.into_iter().flatten().collect();
        let mut distinct = all.clone();
        distinct.sort_unstable();
        distinct.dedup();
        (all.len() - distinct.len(), distinct.len())
    };

    schedule_months(&mut conn, (2000, 1), (2029, 12)).unwrap(); // 360 months
    let (naive_twice, naive_distinct) = run(false);
    conn.batch_execute("TRUNCATE backfill_log").unwrap();
    schedule_months(&mut conn, (2000, 1), (2029, 12)).unwrap();
    let (atomic_twice, atomic_distinct) = run(true);
    eprintln!(
        "360 months, 8 workers: naive select-then-update handed out {naive_twice} duplicate \
         claims; claim (SKIP LOCKED) handed out {atomic_twice}"
    );
    assert_eq!(naive_distinct, 360);
    assert!(
        naive_twice > 0,
        "the naive claim never handed an item out twice"
    );
    assert_eq!((atomic_twice, atomic_distinct), (0, 360));
}

#[test]
fn the_naive_scheduler_processes_some_month_twice_and_backfill_processes_each_once() {
    const SCHEDULERS: usize = 8;
    const MONTHS: usize = 24;
    let db = TestDb::new();
    let mut conn = db.conn();

    let run = |atomic: bool| -> HashMap<(i32, u32), usize> {
        let seen = Arc::new(Mutex::new(HashMap::<(i32, u32), usize>::new()));
        let record = {
            let seen = Arc::clone(&seen);
            move |year: i32, month: u32| {
                *seen.lock().unwrap().entry((year, month)).or_default() += 1;
                // The month's work: long enough for the schedulers to overlap.
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let conns = conns(&db, SCHEDULERS);
        race(SCHEDULERS, move |i| {
            let mut conn = conns.lock().unwrap().pop().unwrap();
            let mut record = record.clone();
            if atomic {
                let queue = Queue::<BackfillMonth>::new(format!("scheduler-{i}")).unwrap();
                let report = backfill(&mut conn, &queue, |y, m| {
                    record(y, m);
                    Ok::<(), Error>(())
                })
                .unwrap();
                assert_eq!((report.retried, report.parked, report.lost), (0, 0, 0));
            } else {
                naive::backfill_query_then_lock(&mut conn, &mut record).unwrap();
            }
        });
        let seen = seen.lock().unwrap().clone();
        seen
    };

    schedule_months(&mut conn, (2024, 1), (2025, 12)).unwrap();
    let naive_seen = run(false);
    conn.batch_execute("TRUNCATE backfill_log").unwrap();
    schedule_months(&mut conn, (2024, 1), (2025, 12)).unwrap();
    let atomic_seen = run(true);

    let extra = |seen: &HashMap<(i32, u32), usize>| seen.values().map(|n| n - 1).sum::<usize>();
    eprintln!(
        "{MONTHS} months, {SCHEDULERS} schedulers: naive query-then-lock processed {} months \
         again (worst month {} times); backfill processed {} again",
        extra(&naive_seen),
        naive_seen.values().max().unwrap(),
        extra(&atomic_seen)
    );
    assert_eq!(naive_seen.len(), MONTHS);
    assert!(
        naive_seen.values().any(|&n| n > 1),
        "no month processed twice"
    );
    assert_eq!(atomic_seen.len(), MONTHS);
    assert!(atomic_seen.values().all(|&n| n == 1), "{atomic_seen:?}");
    assert_eq!(
        month_states(&mut conn),
        HashMap::from([("done".into(), MONTHS as i64)])
    );
}

#[test]
fn an_empty_queue_returns_nothing_at_once_even_when_every_due_row_is_locked_elsewhere() {
    let db = TestDb::new();
    let mut conn = db.conn();
    // A claim that waited would fail here instead of hanging.
    conn.batch_execute("SET statement_timeout = '5s'").unwrap();
    let queue = Queue::<BackfillMonth>::new("w").unwrap();

    assert!(queue.claim(&mut conn, 10).unwrap().is_empty());
    assert!(queue.claim(&mut conn, 0).unwrap().is_empty());
    assert_eq!(queue.reap_expired(&mut conn).unwrap().requeued, 0);

    schedule_months(&mut conn, (2026, 1), (2026, 3)).unwrap();
    let mut other = db.conn();
    other
        .transaction(|other| {
            // Another transaction holds every due row's lock (a claim in flight, say).
            other.batch_execute("SELECT id FROM backfill_log FOR UPDATE")?;
            assert!(queue.claim(&mut conn, 10)?.is_empty());
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(queue.claim(&mut conn, 10).unwrap().len(), 3);
    // Everything is claimed: nothing is due.
    assert!(queue.claim(&mut conn, 10).unwrap().is_empty());
}

#[test]
fn a_dead_workers_claims_are_reclaimed_after_the_lease_and_its_late_completion_is_refused() {
    let db = TestDb::new();
    let mut conn = db.conn();
    schedule_months(&mut conn, (2026, 1), (2026, 5)).unwrap();
    let lease = Duration::from_secs(1);
    let dead = Queue::<BackfillMonth>::new("dead-worker")
        .unwrap()
        .lease(lease);
    let alive = Queue::<BackfillMonth>::new("live-worker")
        .unwrap()
        .lease(lease);

    // The dead worker claims three months and never comes back.
    let mut dead_conn = db.conn();
    let stale = dead.claim(&mut dead_conn, 3).unwrap();
    assert_eq!(stale.len(), 3);
    drop(dead_conn);

    // Before the lease expires the others get only the rest, and nothing is reaped.
    assert_eq!(alive.reap_expired(&mut conn).unwrap().requeued, 0);
    let rest = alive.claim(&mut conn, 10).unwrap();
    assert_eq!(rest.len(), 2);
    for c in &rest {
        alive.complete(&mut conn, c).unwrap();
    }
    assert!(alive.claim(&mut conn, 10).unwrap().is_empty());

    std::thread::sleep(lease + Duration::from_millis(300));
    let reaped = alive.reap_expired(&mut conn).unwrap();
    assert_eq!((reaped.requeued, reaped.parked), (3, 0));
    let last_error: Option<String> = backfill_log::table
        .find(stale[0].id)
        .select(backfill_log::last_error)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(last_error.as_deref(), Some("lease of dead-worker expired"));

    let retaken = alive.claim(&mut conn, 10).unwrap();
    assert_eq!(
        retaken.iter().map(|c| c.id).collect::<Vec<_>>(),
        stale.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    assert!(retaken.iter().all(|c| c.attempt == 2));

    // The dead worker's late completion, failure or heartbeat cannot touch the new claims.
    let mut late = db.conn();
    assert!(matches!(
        dead.complete(&mut late, &stale[0]),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        dead.fail(&mut late, &stale[1], "late"),
        Err(Error::NotFound(_))
    ));
    let mut third = stale[2].clone();
    assert!(matches!(
        dead.extend(&mut late, &mut third),
        Err(Error::NotFound(_))
    ));
    for c in &retaken {
        alive.complete(&mut conn, c).unwrap();
    }
    assert_eq!(month_states(&mut conn), HashMap::from([("done".into(), 5)]));
}

#[test]
fn failures_count_attempts_back_off_and_park_the_item_past_the_maximum() {
    let db = TestDb::new();
    let mut conn = db.conn();
    schedule_months(&mut conn, (2026, 1), (2026, 1)).unwrap();
    let backoff = Duration::from_millis(200);
    let queue = Queue::<BackfillMonth>::new("w")
        .unwrap()
        .max_attempts(3)
        .backoff(backoff, Duration::from_millis(300));

    for attempt in 1..=3 {
        let claims = queue.claim(&mut conn, 1).unwrap();
        assert_eq!(claims.len(), 1, "attempt {attempt}");
        let claim = &claims[0];
        assert_eq!(claim.attempt, attempt);
        let failed = queue
            .fail(&mut conn, claim, &format!("failure {attempt}"))
            .unwrap();
        let (status, attempts, error): (String, i32, Option<String>) = backfill_log::table
            .find(claim.id)
            .select((
                backfill_log::status,
                backfill_log::attempts,
                backfill_log::last_error,
            ))
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(attempts, attempt);
        assert_eq!(error, Some(format!("failure {attempt}")));
        if attempt < 3 {
            let Failed::Retry { at } = failed else {
                panic!("attempt {attempt} parked")
            };
            assert_eq!(status, "retry");
            // Not due before its backoff…
            assert!(queue.claim(&mut conn, 1).unwrap().is_empty());
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            assert!(wait <= queue.backoff_for(attempt));
            // …and due after it.
            std::thread::sleep(wait + Duration::from_millis(50));
        } else {
            assert_eq!(failed, Failed::Parked);
            assert_eq!(status, "failed");
        }
    }
    std::thread::sleep(Duration::from_millis(350));
    assert!(
        queue.claim(&mut conn, 1).unwrap().is_empty(),
        "parked item claimed"
    );
}

#[test]
fn a_worker_that_keeps_dying_gets_its_item_parked_by_the_reaper() {
    let db = TestDb::new();
    let mut conn = db.conn();
    schedule_months(&mut conn, (2026, 6), (2026, 6)).unwrap();
    let lease = Duration::from_millis(500);
    let queue = Queue::<BackfillMonth>::new("crashy")
        .unwrap()
        .lease(lease)
        .max_attempts(2);
    let mut parked = 0;
    for attempt in 1..=2 {
        let claims = queue.claim(&mut conn, 1).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].attempt, attempt);
        // … the worker dies here …
        std::thread::sleep(lease + Duration::from_millis(150));
        let reaped = queue.reap_expired(&mut conn).unwrap();
        assert_eq!(reaped.requeued + reaped.parked, 1);
        parked += reaped.parked;
    }
    assert_eq!(parked, 1);
    assert!(queue.claim(&mut conn, 1).unwrap().is_empty());
    assert_eq!(
        month_states(&mut conn),
        HashMap::from([("failed".into(), 1)])
    );
}

#[test]
fn extend_keeps_a_lease_alive_past_its_original_expiry() {
    let db = TestDb::new();
    let mut conn = db.conn();
    schedule_months(&mut conn, (2026, 7), (2026, 7)).unwrap();
    let lease = Duration::from_millis(600);
    let queue = Queue::<BackfillMonth>::new("slow").unwrap().lease(lease);
    let reaper = Queue::<BackfillMonth>::new("reaper").unwrap();

    let mut claim = queue.claim(&mut conn, 1).unwrap().remove(0);
    let first_until = claim.locked_until;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        queue.extend(&mut conn, &mut claim).unwrap();
        assert_eq!(reaper.reap_expired(&mut db.conn()).unwrap().requeued, 0);
    }
    assert!(claim.locked_until > first_until);
    // 900 ms after the claim, past its first lease: still ours.
    queue.complete(&mut conn, &claim).unwrap();
}

#[test]
fn backfill_records_failures_and_a_later_run_retries_them() {
    let db = TestDb::new();
    let mut conn = db.conn();
    assert_eq!(
        schedule_months(&mut conn, (2025, 11), (2026, 2)).unwrap(),
        4
    );
    assert_eq!(
        schedule_months(&mut conn, (2025, 12), (2026, 3)).unwrap(),
        1
    );
    let queue = Queue::<BackfillMonth>::new("s")
        .unwrap()
        .backoff(Duration::from_millis(100), Duration::from_millis(100));

    let report = backfill(&mut conn, &queue, |year, month| {
        if (year, month) == (2025, 12) {
            Err("upstream returned 503")
        } else {
            Ok(())
        }
    })
    .unwrap();
    assert_eq!(
        report,
        BackfillReport {
            done: 4,
            retried: 1,
            ..BackfillReport::default()
        }
    );
    std::thread::sleep(Duration::from_millis(150));
    let mut seen = Vec::new();
    let report = backfill(&mut conn, &queue, |year, month| {
        seen.push((year, month));
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(seen, [(2025, 12)]);
    assert_eq!(report.done, 1);
    assert_eq!(month_states(&mut conn), HashMap::from([("done".into(), 5)]));

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Integer)]
        attempts: i32,
    }
    let row = diesel::sql_query(
        "SELECT count(*) AS n, max(attempts) AS attempts FROM backfill_log \
         WHERE year = 2025 AND month = 12",
    )
    .get_result::<Row>(&mut conn)
    .unwrap();
    assert_eq!((row.n, row.attempts), (1, 2));
}

#[test]
fn schedule_months_rejects_impossible_months_and_writes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    for (from, to) in [
        ((2026, 0), (2026, 1)),
        ((2026, 1), (2026, 13)),
        ((0, 1), (1, 1)),
    ] {
        assert!(matches!(
            schedule_months(&mut conn, from, to),
            Err(Error::InvalidInput(_))
        ));
    }
    assert!(matches!(
        schedule_months(&mut conn, (2026, 2), (2026, 1)),
        Err(Error::InvalidInput(_))
    ));
    assert!(month_states(&mut conn).is_empty());
    assert_eq!(
        schedule_months(&mut conn, (1999, 12), (2000, 1)).unwrap(),
        2
    );
}
