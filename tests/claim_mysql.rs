//! Work claims (`FOR UPDATE SKIP LOCKED` with leases) on MySQL/MariaDB, at the server's default
//! isolation (REPEATABLE READ): the same `Queue` calls as on PostgreSQL (RELIABILITY.md 16–18).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::{ClaimQueue, Failed, Queue};
use upsert_kit::Error;
use upsert_kit_support::{race, TestMysql};

// A queue with its own column and status names.
diesel::table! {
    jobs (job_id) {
        job_id -> BigInt,
        payload -> Integer,
        state -> Text,
        tries -> Integer,
        lease_until -> Nullable<Datetime>,
        worker -> Nullable<Text>,
        error -> Nullable<Text>,
        runs -> Integer,
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

/// A `jobs` table named `table` with `items` queued jobs (payloads 1..=items).
fn jobs_table(conn: &mut MysqlConnection, table: &str, items: i32) {
    conn.batch_execute(&format!(
        "CREATE TABLE {table} (
             job_id BIGINT AUTO_INCREMENT PRIMARY KEY,
             payload INT NOT NULL,
             state VARCHAR(16) NOT NULL DEFAULT 'queued',
             tries INT NOT NULL DEFAULT 0,
             lease_until DATETIME(6) NULL,
             worker VARCHAR(200) NULL,
             error TEXT NULL,
             runs INT NOT NULL DEFAULT 0,
             KEY {table}_due (state, job_id))"
    ))
    .unwrap();
    let values: Vec<String> = (1..=items).map(|i| format!("({i})")).collect();
    conn.batch_execute(&format!(
        "INSERT INTO {table} (payload) VALUES {}",
        values.join(", ")
    ))
    .unwrap();
}

fn states(conn: &mut MysqlConnection) -> HashMap<String, i64> {
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
        id -> BigInt,
        name -> Text,
        status -> Text,
        attempts -> Integer,
        locked_until -> Nullable<Datetime>,
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

/// A database with `n` pending tasks.
fn tasks_db(n: i32) -> TestMysql {
    let db = TestMysql::with_sql(
        "CREATE TABLE tasks (
             id BIGINT AUTO_INCREMENT PRIMARY KEY,
             name TEXT NOT NULL,
             status VARCHAR(16) NOT NULL DEFAULT 'pending',
             attempts INT NOT NULL DEFAULT 0,
             locked_until DATETIME(6) NULL,
             holder VARCHAR(200) NULL,
             last_error TEXT NULL,
             KEY tasks_due (status, id))",
    );
    if n > 0 {
        let values: Vec<String> = (1..=n).map(|i| format!("('task-{i}')")).collect();
        db.conn()
            .batch_execute(&format!(
                "INSERT INTO tasks (name) VALUES {}",
                values.join(", ")
            ))
            .unwrap();
    }
    db
}

fn task_states(conn: &mut MysqlConnection) -> HashMap<String, i64> {
    tasks::table
        .group_by(tasks::status)
        .select((tasks::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)
        .unwrap()
        .into_iter()
        .collect()
}

fn isolation(conn: &mut MysqlConnection) -> String {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "@@tx_isolation",
    ))
    .get_result(conn)
    .or_else(|_| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "@@transaction_isolation",
        ))
        .get_result(conn)
    })
    .unwrap()
}

/// The naive queue: read the first queued id, then mark it running, in two statements.
fn naive_take(conn: &mut MysqlConnection, worker: &str) -> Option<i64> {
    let id: Option<i64> = diesel::sql_query(
        "SELECT job_id AS id FROM naive_jobs WHERE state = 'queued' ORDER BY job_id LIMIT 1",
    )
    .get_result::<IdRow>(conn)
    .optional()
    .unwrap()
    .map(|r| r.id);
    let id = id?;
    diesel::sql_query("UPDATE naive_jobs SET state = 'running', worker = ? WHERE job_id = ?")
        .bind::<diesel::sql_types::Text, _>(worker)
        .bind::<diesel::sql_types::BigInt, _>(id)
        .execute(conn)
        .unwrap();
    Some(id)
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

#[test]
fn eight_workers_drain_three_thousand_items_each_exactly_once_where_select_then_update_hands_out_duplicates(
) {
    const WORKERS: usize = 8;
    const ITEMS: i32 = 3000;
    const NAIVE_ITEMS: i32 = 300;
    let db = TestMysql::new();
    let mut conn = db.conn();
    assert_eq!(
        isolation(&mut conn),
        "REPEATABLE-READ",
        "the server's default"
    );
    jobs_table(&mut conn, "jobs", ITEMS);
    jobs_table(&mut conn, "naive_jobs", NAIVE_ITEMS);

    let conns: Vec<_> = (0..WORKERS).map(|_| db.conn()).collect();
    let conns = Arc::new(Mutex::new(conns));
    let processed = race(WORKERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        // The naive pattern first, all workers at once.
        let mut naive = 0;
        while let Some(id) = naive_take(&mut conn, &format!("worker-{i}")) {
            diesel::sql_query(
                "UPDATE naive_jobs SET runs = runs + 1, state = 'finished' WHERE job_id = ?",
            )
            .bind::<diesel::sql_types::BigInt, _>(id)
            .execute(&mut conn)
            .unwrap();
            naive += 1;
        }
        // Then the claims.
        let queue = Queue::<Job>::new(format!("worker-{i}")).unwrap();
        let mut mine = Vec::new();
        loop {
            let claims = queue.claim(&mut conn, 20).unwrap();
            if claims.is_empty() {
                return (naive, mine);
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

    let naive_total: i32 = processed.iter().map(|(n, _)| n).sum();
    let per_worker: Vec<usize> = processed.iter().map(|(_, m)| m.len()).collect();
    let mut all: Vec<i32> = processed.into_iter().flat_map(|(_, m)| m).collect();
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    let mut conn = db.conn();
    #[derive(QueryableByName)]
    struct Dup {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let naive_twice = diesel::sql_query("SELECT COUNT(*) AS n FROM naive_jobs WHERE runs > 1")
        .get_result::<Dup>(&mut conn)
        .unwrap()
        .n;
    eprintln!(
        "claim on MariaDB: {total} items processed by 8 workers {per_worker:?}, {} distinct; \
         naive select-then-update: {naive_total} hand-outs of {NAIVE_ITEMS} items, \
         {naive_twice} items processed more than once",
        all.len()
    );
    assert!(
        naive_twice > 0,
        "the naive pattern handed out no item twice"
    );
    assert_eq!(total, ITEMS as usize);
    assert_eq!(all, (1..=ITEMS).collect::<Vec<_>>());
    assert_eq!(
        states(&mut conn),
        HashMap::from([("finished".into(), ITEMS as i64)])
    );
    let not_once: i64 = jobs::table
        .filter(jobs::runs.ne(1))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(not_once, 0);
    // The claims changed no session's isolation level.
    assert_eq!(isolation(&mut conn), "REPEATABLE-READ");
}

#[test]
fn an_empty_queue_returns_nothing_at_once_even_when_every_due_row_is_locked_elsewhere() {
    let db = tasks_db(0);
    let mut conn = db.conn();
    // A claim that waited would fail here (after 5 s) instead of hanging.
    conn.batch_execute("SET SESSION innodb_lock_wait_timeout = 5")
        .unwrap();
    let queue = Queue::<Task>::new("w").unwrap();

    assert!(queue.claim(&mut conn, 10).unwrap().is_empty());
    assert!(queue.claim(&mut conn, 0).unwrap().is_empty());
    assert_eq!(queue.reap_expired(&mut conn).unwrap().requeued, 0);

    conn.batch_execute("INSERT INTO tasks (name) VALUES ('a'), ('b'), ('c')")
        .unwrap();
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
    assert_eq!(isolation(&mut conn), "REPEATABLE-READ");
}

#[test]
fn a_dead_workers_claims_are_reclaimed_after_the_lease_and_its_late_completion_is_refused() {
    let db = tasks_db(5);
    let mut conn = db.conn();
    let lease = Duration::from_secs(1);
    let dead = Queue::<Task>::new("dead-worker").unwrap().lease(lease);
    let alive = Queue::<Task>::new("live-worker").unwrap().lease(lease);

    let mut dead_conn = db.conn();
    let stale = dead.claim(&mut dead_conn, 3).unwrap();
    assert_eq!(stale.len(), 3);
    drop(dead_conn);

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
    let db = tasks_db(1);
    let mut conn = db.conn();
    let backoff = Duration::from_secs(60);
    let queue = Queue::<Task>::new("w")
        .unwrap()
        .max_attempts(3)
        .backoff(backoff, Duration::from_secs(90));
    let end_backoffs = |conn: &mut MysqlConnection| {
        conn.batch_execute("UPDATE tasks SET locked_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
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
            assert!(queue.claim(&mut conn, 1).unwrap().is_empty());
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            assert!(wait <= queue.backoff_for(attempt));
            assert!(wait > queue.backoff_for(attempt) / 2, "due in {wait:?}");
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
fn extend_keeps_a_lease_alive_and_a_pooled_connection_claims_the_same() {
    let db = tasks_db(2);
    let pool = db.pool(2);
    let lease = Duration::from_millis(600);
    let queue = Queue::<Task>::new("slow").unwrap().lease(lease);
    let reaper = Queue::<Task>::new("reaper").unwrap();

    let mut conn = pool.get().unwrap();
    let mut claim = queue.claim(&mut conn, 1).unwrap().remove(0);
    let first_until = claim.locked_until;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        queue.extend(&mut conn, &mut claim).unwrap();
        assert_eq!(
            reaper
                .reap_expired(&mut pool.get().unwrap())
                .unwrap()
                .requeued,
            0
        );
    }
    assert!(claim.locked_until > first_until);
    queue.complete(&mut conn, &claim).unwrap();
    // Inside a caller's transaction the claim runs in a savepoint of it.
    let inner = conn.transaction(|c| queue.claim(c, 5)).unwrap();
    assert_eq!(inner.len(), 1);
}
