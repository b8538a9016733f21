//! Work claims (`FOR UPDATE SKIP LOCKED` with leases) on a real PostgreSQL server
//! (RELIABILITY.md 16–18), on two queues of the tests' own: `jobs` with its own column and
//! status names, `tasks` with the defaults.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::{ClaimQueue, Failed, Queue};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb};

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

// A queue with the default column names and statuses.
diesel::table! {
    tasks (id) {
        id -> Int8,
        name -> Text,
        status -> Text,
        attempts -> Int4,
        locked_until -> Nullable<Timestamptz>,
        holder -> Nullable<Text>,
        last_error -> Nullable<Text>,
    }
}

#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = tasks)]
struct Task {
    #[allow(dead_code)]
    name: String,
}

impl ClaimQueue for Task {
    type Table = tasks::table;
}

/// A database with an empty `tasks` queue.
fn tasks_db() -> TestDb {
    TestDb::with_sql(
        "CREATE TABLE tasks (
             id BIGSERIAL PRIMARY KEY,
             name TEXT NOT NULL,
             status TEXT NOT NULL DEFAULT 'pending',
             attempts INT NOT NULL DEFAULT 0,
             locked_until TIMESTAMPTZ,
             holder TEXT,
             last_error TEXT);
         CREATE INDEX tasks_due ON tasks (id) WHERE status IN ('pending', 'retry');
         CREATE INDEX tasks_leased ON tasks (locked_until) WHERE status = 'processing';",
    )
}

/// Adds `n` pending tasks.
fn schedule(conn: &mut PgConnection, n: i32) {
    conn.batch_execute(&format!(
        "INSERT INTO tasks (name) SELECT 'task-' || g FROM generate_series(1, {n}) g"
    ))
    .unwrap();
}

fn task_states(conn: &mut PgConnection) -> HashMap<String, i64> {
    tasks::table
        .group_by(tasks::status)
        .select((tasks::status, diesel::dsl::count_star()))
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
fn an_empty_queue_returns_nothing_at_once_even_when_every_due_row_is_locked_elsewhere() {
    let db = tasks_db();
    let mut conn = db.conn();
    // A claim that waited would fail here instead of hanging.
    conn.batch_execute("SET statement_timeout = '5s'").unwrap();
    let queue = Queue::<Task>::new("w").unwrap();

    assert!(queue.claim(&mut conn, 10).unwrap().is_empty());
    assert!(queue.claim(&mut conn, 0).unwrap().is_empty());
    assert_eq!(queue.reap_expired(&mut conn).unwrap().requeued, 0);

    schedule(&mut conn, 3);
    let mut other = db.conn();
    other
        .transaction(|other| {
            // Another transaction holds every due row's lock (a claim in flight, say).
            other.batch_execute("SELECT id FROM tasks FOR UPDATE")?;
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
    let db = tasks_db();
    let mut conn = db.conn();
    schedule(&mut conn, 5);
    let lease = Duration::from_secs(1);
    let dead = Queue::<Task>::new("dead-worker").unwrap().lease(lease);
    let alive = Queue::<Task>::new("live-worker").unwrap().lease(lease);

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
    let last_error: Option<String> = tasks::table
        .find(stale[0].id)
        .select(tasks::last_error)
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
    assert_eq!(task_states(&mut conn), HashMap::from([("done".into(), 5)]));
}

#[test]
fn failures_count_attempts_back_off_and_park_the_item_past_the_maximum() {
    let db = tasks_db();
    let mut conn = db.conn();
    schedule(&mut conn, 1);
    // Backoffs far longer than anything the test does, so "not due yet" holds however slow
    // the machine; each backoff is then ended by hand, as time passing would end it.
    let backoff = Duration::from_secs(60);
    let queue = Queue::<Task>::new("w")
        .unwrap()
        .max_attempts(3)
        .backoff(backoff, Duration::from_secs(90));
    let end_backoffs = |conn: &mut PgConnection| {
        conn.batch_execute(
            "UPDATE tasks SET locked_until = statement_timestamp() - interval '1 second'",
        )
        .unwrap();
    };

    for attempt in 1..=3 {
        let claims = queue.claim(&mut conn, 1).unwrap();
        assert_eq!(claims.len(), 1, "attempt {attempt}");
        let claim = &claims[0];
        assert_eq!(claim.attempt, attempt);
        let failed = queue
            .fail(&mut conn, claim, &format!("failure {attempt}"))
            .unwrap();
        let (status, attempts, error): (String, i32, Option<String>) = tasks::table
            .find(claim.id)
            .select((tasks::status, tasks::attempts, tasks::last_error))
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
            assert!(wait > queue.backoff_for(attempt) / 2, "due in {wait:?}");
            // …and due after it.
            end_backoffs(&mut conn);
        } else {
            assert_eq!(failed, Failed::Parked);
            assert_eq!(status, "failed");
        }
    }
    end_backoffs(&mut conn);
    assert!(
        queue.claim(&mut conn, 1).unwrap().is_empty(),
        "parked item claimed"
    );
}

#[test]
fn a_worker_that_keeps_dying_gets_its_item_parked_by_the_reaper() {
    let db = tasks_db();
    let mut conn = db.conn();
    schedule(&mut conn, 1);
    let lease = Duration::from_millis(500);
    let queue = Queue::<Task>::new("crashy")
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
        task_states(&mut conn),
        HashMap::from([("failed".into(), 1)])
    );
}

#[test]
fn extend_keeps_a_lease_alive_past_its_original_expiry() {
    let db = tasks_db();
    let mut conn = db.conn();
    schedule(&mut conn, 1);
    let lease = Duration::from_millis(600);
    let queue = Queue::<Task>::new("slow").unwrap().lease(lease);
    let reaper = Queue::<Task>::new("reaper").unwrap();

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
