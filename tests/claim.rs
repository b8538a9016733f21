//! Work claims (`FOR UPDATE SKIP LOCKED` with leases) on real servers (RELIABILITY.md 16–18).
//!
//! Each guarantee is one test body, generic over the backend ([`Backend`]), run on PostgreSQL
//! (`postgres::…`) and on MySQL/MariaDB at the server's default isolation, REPEATABLE READ
//! (`mysql::…`): the same `Queue` calls on both. The queues are the tests' own: `jobs` with its
//! own column and status names, `tasks` with the defaults. A backend's own tests are in its
//! module.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::{ClaimConnection, ClaimQueue, Failed, Queue, QueueState, Reaped};
use upsert_kit::conn::WriteConnection;
use upsert_kit::Error;
use upsert_kit_support::{race, TestDatabase};

// A queue of the test's own, with its own column and status names, to show the claims are
// generic over the table. Only the columns the tests read are declared: the queue names the
// others through `ClaimQueue`, and their types are the backend's (see each `create_jobs`).
diesel::table! {
    jobs (job_id) {
        job_id -> BigInt,
        payload -> Integer,
        state -> Text,
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

// A queue with the default column names and statuses; as for `jobs`, only the columns the tests
// read are declared.
diesel::table! {
    tasks (id) {
        id -> BigInt,
        name -> Text,
        status -> Text,
        attempts -> Integer,
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

/// The `tasks` queue with its enqueue time declared, so that its state tells the age of the
/// oldest ready task.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = tasks)]
struct DatedTask {
    #[allow(dead_code)]
    name: String,
}

impl ClaimQueue for DatedTask {
    type Table = tasks::table;
    const CREATED_AT: Option<&'static str> = Some("created_at");
}

/// What the claim tests need of a backend beyond its test database: the queues' DDL and the
/// statements that differ.
trait Backend: 'static {
    /// The backend's test database.
    type Db: TestDatabase<Connection = Self::Conn>;
    /// Its connection, which claims run on.
    type Conn: ClaimConnection<Job>
        + ClaimConnection<Task>
        + ClaimConnection<DatedTask>
        + R2D2Connection
        + diesel::Connection<
            Backend = <Self::Conn as WriteConnection>::Backend,
            TransactionManager = diesel::connection::AnsiTransactionManager,
        > + Rows
        + Send
        + 'static;

    /// A session's isolation level by default, as [`Backend::isolation`] reads it.
    const DEFAULT_ISOLATION: &'static str;

    /// The empty `tasks` table.
    const TASKS: &'static str;

    /// Creates a `jobs` table named `table` with `items` queued jobs (payloads 1..=items).
    fn create_jobs(conn: &mut Self::Conn, table: &str, items: i32);

    /// Adds `n` pending tasks (`task-1`…).
    fn schedule(conn: &mut Self::Conn, n: i32);

    /// Makes a statement that waits for a row lock fail after 5 s instead of hanging.
    fn bound_lock_waits(conn: &mut Self::Conn);

    /// Ends every task's backoff, as time passing would: due a second ago, server time.
    fn end_backoffs(conn: &mut Self::Conn);

    /// The session's isolation level.
    fn isolation(conn: &mut Self::Conn) -> String;

    /// Ends the leases of tasks `ids` a second ago, server time, as time passing would.
    fn expire_leases(conn: &mut Self::Conn, ids: &[i64]);

    /// Sets the enqueue time of task `id` (of every task when `None`) to `seconds` before the
    /// server's clock.
    fn enqueued_ago(conn: &mut Self::Conn, id: Option<i64>, seconds: i64);
}

/// The tests' own reads and writes of the two queues: the same Diesel code on each backend's
/// connection (implemented by a macro, as the queries' bounds differ per backend).
trait Rows {
    /// How many jobs are in each state.
    fn job_states(&mut self) -> HashMap<String, i64>;
    /// Counts one run of job `id`: the work a worker does with its claim.
    fn run_job(&mut self, id: i64);
    /// How many jobs did not run exactly once.
    fn jobs_not_run_once(&mut self) -> i64;
    /// How many tasks are in each status.
    fn task_states(&mut self) -> HashMap<String, i64>;
    /// Task `id`'s status, attempts and last error.
    fn task(&mut self, id: i64) -> (String, i32, Option<String>);
    /// Sets task `id`'s attempts, as earlier claims would have.
    fn set_attempts(&mut self, id: i64, attempts: i32);
}

macro_rules! rows {
    ($($conn:ty),*) => {$(
        impl Rows for $conn {
            fn job_states(&mut self) -> HashMap<String, i64> {
                jobs::table
                    .group_by(jobs::state)
                    .select((jobs::state, diesel::dsl::count_star()))
                    .load::<(String, i64)>(self)
                    .unwrap()
                    .into_iter()
                    .collect()
            }

            fn run_job(&mut self, id: i64) {
                diesel::update(jobs::table.find(id))
                    .set(jobs::runs.eq(jobs::runs + 1))
                    .execute(self)
                    .unwrap();
            }

            fn jobs_not_run_once(&mut self) -> i64 {
                jobs::table
                    .filter(jobs::runs.ne(1))
                    .count()
                    .get_result(self)
                    .unwrap()
            }

            fn task_states(&mut self) -> HashMap<String, i64> {
                tasks::table
                    .group_by(tasks::status)
                    .select((tasks::status, diesel::dsl::count_star()))
                    .load::<(String, i64)>(self)
                    .unwrap()
                    .into_iter()
                    .collect()
            }

            fn task(&mut self, id: i64) -> (String, i32, Option<String>) {
                tasks::table
                    .find(id)
                    .select((tasks::status, tasks::attempts, tasks::last_error))
                    .get_result(self)
                    .unwrap()
            }

            fn set_attempts(&mut self, id: i64, attempts: i32) {
                diesel::update(tasks::table.find(id))
                    .set(tasks::attempts.eq(attempts))
                    .execute(self)
                    .unwrap();
            }
        }
    )*};
}

rows!(PgConnection, MysqlConnection);

/// A database with `n` pending tasks.
fn tasks_db<B: Backend>(n: i32) -> B::Db {
    let db = B::Db::with_sql(B::TASKS);
    B::schedule(&mut db.conn(), n);
    db
}

/// One connection per thread, opened before the race starts.
fn conns<D: TestDatabase>(db: &D, n: usize) -> Arc<Mutex<Vec<D::Connection>>> {
    Arc::new(Mutex::new((0..n).map(|_| db.conn()).collect()))
}

/// Eight workers drain a queue of `items` jobs, 20 claims at a time.
fn eight_workers_drain_a_queue_processing_each_item_exactly_once<B: Backend>(items: i32) {
    const WORKERS: usize = 8;
    let db = B::Db::new();
    let mut conn = db.conn();
    assert_eq!(
        B::isolation(&mut conn),
        B::DEFAULT_ISOLATION,
        "the server's default"
    );
    B::create_jobs(&mut conn, "jobs", items);

    let conns = conns(&db, WORKERS);
    let processed = race(WORKERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        let queue = Queue::<Job>::new(format!("worker-{i}")).unwrap();
        let mut mine = Vec::new();
        loop {
            let claims = queue.claim(&mut conn, 20).unwrap();
            if claims.is_empty() {
                // The claims changed no session's isolation level.
                assert_eq!(B::isolation(&mut conn), B::DEFAULT_ISOLATION);
                return mine;
            }
            for claim in claims {
                assert_eq!(claim.attempt, 1);
                assert_eq!(claim.holder, format!("worker-{i}"));
                conn.run_job(claim.id);
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
        "claim on {}: {total} items processed by {WORKERS} workers {per_worker:?}; {} distinct",
        B::Db::BACKEND,
        all.len()
    );
    assert_eq!(total, items as usize);
    assert_eq!(all, (1..=items).collect::<Vec<_>>());
    let mut conn = db.conn();
    assert_eq!(
        conn.job_states(),
        HashMap::from([("finished".into(), i64::from(items))])
    );
    assert_eq!(conn.jobs_not_run_once(), 0);
    assert_eq!(B::isolation(&mut conn), B::DEFAULT_ISOLATION);
}

fn an_empty_queue_returns_nothing_at_once_even_when_every_due_row_is_locked_elsewhere<
    B: Backend,
>() {
    let db = tasks_db::<B>(0);
    let mut conn = db.conn();
    // A claim that waited would fail here (after 5 s) instead of hanging.
    B::bound_lock_waits(&mut conn);
    let queue = Queue::<Task>::new("w").unwrap();

    assert!(queue.claim(&mut conn, 10).unwrap().is_empty());
    assert!(queue.claim(&mut conn, 0).unwrap().is_empty());
    assert_eq!(queue.reap_expired(&mut conn).unwrap().requeued, 0);

    B::schedule(&mut conn, 3);
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
    assert_eq!(B::isolation(&mut conn), B::DEFAULT_ISOLATION);
}

fn a_dead_workers_claims_are_reclaimed_after_the_lease_and_its_late_completion_is_refused<
    B: Backend,
>() {
    let db = tasks_db::<B>(5);
    let mut conn = db.conn();
    let lease = Duration::from_secs(1);
    let dead = Queue::<Task>::new("dead-worker").unwrap().lease(lease);
    let alive = Queue::<Task>::new("live-worker").unwrap().lease(lease);

    // The dead worker claims three items and never comes back.
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
    let (_, _, last_error) = conn.task(stale[0].id);
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
    assert_eq!(conn.task_states(), HashMap::from([("done".into(), 5)]));
}

fn failures_count_attempts_back_off_and_park_the_item_past_the_maximum<B: Backend>() {
    let db = tasks_db::<B>(1);
    let mut conn = db.conn();
    // Backoffs far longer than anything the test does, so "not due yet" holds however slow
    // the machine; each backoff is then ended by hand, as time passing would end it.
    let backoff = Duration::from_secs(60);
    let queue = Queue::<Task>::new("w")
        .unwrap()
        .max_attempts(3)
        .backoff(backoff, Duration::from_secs(90));

    for attempt in 1..=3 {
        let claims = queue.claim(&mut conn, 1).unwrap();
        assert_eq!(claims.len(), 1, "attempt {attempt}");
        let claim = &claims[0];
        assert_eq!(claim.attempt, attempt);
        let failed = queue
            .fail(&mut conn, claim, &format!("failure {attempt}"))
            .unwrap();
        let (status, attempts, error) = conn.task(claim.id);
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
            B::end_backoffs(&mut conn);
        } else {
            assert_eq!(failed, Failed::Parked);
            assert_eq!(status, "failed");
        }
    }
    B::end_backoffs(&mut conn);
    assert!(
        queue.claim(&mut conn, 1).unwrap().is_empty(),
        "parked item claimed"
    );
}

fn a_worker_that_keeps_dying_gets_its_item_parked_by_the_reaper<B: Backend>() {
    let db = tasks_db::<B>(1);
    let mut conn = db.conn();
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
    assert_eq!(conn.task_states(), HashMap::from([("failed".into(), 1)]));
}

fn extend_keeps_a_lease_alive_past_its_original_expiry_and_a_pooled_connection_claims_the_same<
    B: Backend,
>() {
    let db = tasks_db::<B>(2);
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
    // 900 ms after the claim, past its first lease: still ours.
    queue.complete(&mut conn, &claim).unwrap();
    // Inside a caller's transaction the claim runs in a savepoint of it.
    let inner = conn.transaction(|c| queue.claim(c, 5)).unwrap();
    assert_eq!(inner.len(), 1);
}

/// Ten tasks, one or more in each state, counted by one statement; then the reaper's counts,
/// and the state after it.
fn the_queue_state_counts_every_state_exactly_and_the_reaper_says_what_it_did<B: Backend>() {
    let db = tasks_db::<B>(0);
    let mut conn = db.conn();
    let monitor = Queue::<DatedTask>::new("monitor").unwrap();
    let undated = Queue::<Task>::new("monitor").unwrap();
    assert_eq!(
        monitor.state(&mut conn).unwrap(),
        QueueState::default(),
        "an empty queue"
    );

    B::schedule(&mut conn, 10);
    B::enqueued_ago(&mut conn, None, 0);
    // Long leases and backoffs: nothing expires or becomes due by itself during the test.
    let queue = Queue::<DatedTask>::new("w")
        .unwrap()
        .lease(Duration::from_secs(600))
        .max_attempts(2)
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600));
    let claims = queue.claim(&mut conn, 6).unwrap();
    assert_eq!(
        claims.iter().map(|c| c.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    queue.complete(&mut conn, &claims[0]).unwrap(); // 1: done
    assert!(matches!(
        queue.fail(&mut conn, &claims[1], "503").unwrap(),
        Failed::Retry { .. }
    )); // 2: waiting out its backoff
    let last_try = queue.clone().max_attempts(1);
    assert_eq!(
        last_try.fail(&mut conn, &claims[2], "bad input").unwrap(),
        Failed::Parked
    ); // 3: parked
    B::expire_leases(&mut conn, &[4, 5]); // 4, 5: expired, not reaped; 6: leased
    conn.set_attempts(5, 2); // 5 has used its last attempt: the reaper will park it
                             // 7-10 are ready; 7 was enqueued two hours ago, 8 one hour ago. 6, enqueued five hours
                             // ago, is leased: it does not count for the age of the oldest *ready* item.
    B::enqueued_ago(&mut conn, Some(7), 7200);
    B::enqueued_ago(&mut conn, Some(8), 3600);
    B::enqueued_ago(&mut conn, Some(6), 5 * 3600);

    let state = monitor.state(&mut conn).unwrap();
    let age = state.oldest_ready_age.expect("four tasks are ready");
    assert!(
        age >= Duration::from_secs(7200) && age < Duration::from_secs(7200 + 60),
        "oldest ready task enqueued {age:?} ago"
    );
    assert_eq!(
        state,
        QueueState {
            ready: 4,
            waiting: 1,
            leased: 1,
            expired: 2,
            parked: 1,
            oldest_ready_age: Some(age),
        }
    );
    // Without `CREATED_AT` the counts are the same and the age is unknown.
    assert_eq!(
        undated.state(&mut conn).unwrap(),
        QueueState {
            oldest_ready_age: None,
            ..state
        }
    );
    // A pooled connection reads the same.
    assert_eq!(
        undated.state(&mut db.pool(1).get().unwrap()).unwrap(),
        QueueState {
            oldest_ready_age: None,
            ..state
        }
    );

    // The reaper takes exactly the expired ones and says which it put back and which it parked.
    let reaped = queue.reap_expired(&mut conn).unwrap();
    assert_eq!(
        reaped,
        Reaped {
            requeued: 1,
            parked: 1
        }
    );
    let after = monitor.state(&mut conn).unwrap();
    assert_eq!(
        (
            after.ready,
            after.waiting,
            after.leased,
            after.expired,
            after.parked
        ),
        (5, 1, 1, 0, 2)
    );
    assert!(after.oldest_ready_age.unwrap() >= Duration::from_secs(7200));

    // Once the workers take the ready tasks, nothing is ready and no age is given.
    let taken = queue.claim(&mut conn, 10).unwrap();
    assert_eq!(taken.len(), 5);
    let drained = monitor.state(&mut conn).unwrap();
    assert_eq!(
        drained,
        QueueState {
            ready: 0,
            waiting: 1,
            leased: 6,
            expired: 0,
            parked: 2,
            oldest_ready_age: None,
        }
    );
    assert_eq!(
        conn.task_states(),
        HashMap::from([
            ("done".into(), 1),
            ("retry".into(), 1),
            ("processing".into(), 6),
            ("failed".into(), 2),
        ])
    );
}

/// The tests above, on backend `$backend`; `$items` is how many jobs the eight workers drain.
macro_rules! claim_tests {
    ($backend:ty, drained_items = $items:expr) => {
        upsert_kit_support::tests_on!($backend:
            eight_workers_drain_a_queue_processing_each_item_exactly_once($items),
            an_empty_queue_returns_nothing_at_once_even_when_every_due_row_is_locked_elsewhere(),
            a_dead_workers_claims_are_reclaimed_after_the_lease_and_its_late_completion_is_refused(),
            failures_count_attempts_back_off_and_park_the_item_past_the_maximum(),
            a_worker_that_keeps_dying_gets_its_item_parked_by_the_reaper(),
            extend_keeps_a_lease_alive_past_its_original_expiry_and_a_pooled_connection_claims_the_same(),
            the_queue_state_counts_every_state_exactly_and_the_reaper_says_what_it_did(),
        );
    };
}

mod postgres {
    use super::*;
    use upsert_kit_support::TestDb;

    /// PostgreSQL, at its default isolation (READ COMMITTED).
    pub struct Postgres;

    impl Backend for Postgres {
        type Db = TestDb;
        type Conn = PgConnection;

        const DEFAULT_ISOLATION: &'static str = "read committed";

        const TASKS: &'static str = "CREATE TABLE tasks (
                 id BIGSERIAL PRIMARY KEY,
                 name TEXT NOT NULL,
                 status TEXT NOT NULL DEFAULT 'pending',
                 attempts INT NOT NULL DEFAULT 0,
                 locked_until TIMESTAMPTZ,
                 holder TEXT,
                 last_error TEXT,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now());
             CREATE INDEX tasks_due ON tasks (id) WHERE status IN ('pending', 'retry');
             CREATE INDEX tasks_leased ON tasks (locked_until) WHERE status = 'processing';";

        fn create_jobs(conn: &mut PgConnection, table: &str, items: i32) {
            conn.batch_execute(&format!(
                "CREATE TABLE {table} (
                     job_id BIGSERIAL PRIMARY KEY,
                     payload INT NOT NULL,
                     state TEXT NOT NULL DEFAULT 'queued',
                     tries INT NOT NULL DEFAULT 0,
                     lease_until TIMESTAMPTZ,
                     worker TEXT,
                     error TEXT,
                     runs INT NOT NULL DEFAULT 0);
                 CREATE INDEX {table}_due ON {table} (job_id) WHERE state IN ('queued', 'again');
                 INSERT INTO {table} (payload) SELECT g FROM generate_series(1, {items}) g;"
            ))
            .unwrap();
        }

        fn schedule(conn: &mut PgConnection, n: i32) {
            conn.batch_execute(&format!(
                "INSERT INTO tasks (name) SELECT 'task-' || g FROM generate_series(1, {n}) g"
            ))
            .unwrap();
        }

        fn bound_lock_waits(conn: &mut PgConnection) {
            conn.batch_execute("SET statement_timeout = '5s'").unwrap();
        }

        fn end_backoffs(conn: &mut PgConnection) {
            conn.batch_execute(
                "UPDATE tasks SET locked_until = statement_timestamp() - interval '1 second'",
            )
            .unwrap();
        }

        fn isolation(conn: &mut PgConnection) -> String {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('transaction_isolation')",
            ))
            .get_result(conn)
            .unwrap()
        }

        fn expire_leases(conn: &mut PgConnection, ids: &[i64]) {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            conn.batch_execute(&format!(
                "UPDATE tasks SET locked_until = statement_timestamp() - interval '1 second' \
                 WHERE id IN ({})",
                ids.join(", ")
            ))
            .unwrap();
        }

        fn enqueued_ago(conn: &mut PgConnection, id: Option<i64>, seconds: i64) {
            let only = id.map(|id| format!(" WHERE id = {id}")).unwrap_or_default();
            conn.batch_execute(&format!(
                "UPDATE tasks SET created_at = statement_timestamp() - {seconds} * interval '1 second'{only}"
            ))
            .unwrap();
        }
    }

    claim_tests!(Postgres, drained_items = 5000);

    /// `tasks` with a tenant column, `account`.
    #[derive(Debug, QueryableByName)]
    #[diesel(table_name = tasks)]
    struct AccountTask {
        #[allow(dead_code)]
        name: String,
    }

    impl ClaimQueue for AccountTask {
        type Table = tasks::table;
        const TENANT: Option<&'static str> = Some("account");
    }

    #[test]
    fn the_state_of_a_tenant_queue_counts_the_tenants_its_handle_names_or_every_tenant() {
        let db = TestDb::with_sql(Postgres::TASKS);
        let mut conn = db.conn();
        conn.batch_execute(
            "ALTER TABLE tasks ADD COLUMN account BIGINT NOT NULL DEFAULT 0;
             INSERT INTO tasks (name, account)
             VALUES ('a', 1), ('b', 1), ('c', 1), ('d', 2), ('e', 2), ('f', 3);",
        )
        .unwrap();
        let worker = Queue::<AccountTask>::new("w").unwrap().tenant(1_i64);
        assert_eq!(worker.claim(&mut conn, 1).unwrap().len(), 1);

        let counts = |queue: Queue<AccountTask>, conn: &mut PgConnection| {
            let s = queue.state(conn).unwrap();
            (s.ready, s.leased)
        };
        let monitor = || Queue::<AccountTask>::new("monitor").unwrap();
        assert_eq!(counts(monitor().tenant(1_i64), &mut conn), (2, 1));
        assert_eq!(
            counts(monitor().tenant(1_i64).tenant(2_i64), &mut conn),
            (4, 1)
        );
        assert_eq!(counts(monitor().tenant(3_i64), &mut conn), (1, 0));
        assert_eq!(counts(monitor().tenant(4_i64), &mut conn), (0, 0));
        assert_eq!(counts(monitor(), &mut conn), (5, 1));
    }
}

mod mysql {
    use super::*;
    use upsert_kit_support::TestMysql;

    /// MySQL/MariaDB, at the server's default isolation (REPEATABLE READ).
    pub struct Mysql;

    impl Backend for Mysql {
        type Db = TestMysql;
        type Conn = MysqlConnection;

        const DEFAULT_ISOLATION: &'static str = "REPEATABLE-READ";

        const TASKS: &'static str = upsert_kit_support::mysql::TASKS_TABLE;

        fn create_jobs(conn: &mut MysqlConnection, table: &str, items: i32) {
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
            insert_values(conn, &format!("{table} (payload)"), items, |i| {
                format!("({i})")
            });
        }

        fn schedule(conn: &mut MysqlConnection, n: i32) {
            insert_values(conn, "tasks (name)", n, |i| format!("('task-{i}')"));
        }

        fn bound_lock_waits(conn: &mut MysqlConnection) {
            conn.batch_execute("SET SESSION innodb_lock_wait_timeout = 5")
                .unwrap();
        }

        fn end_backoffs(conn: &mut MysqlConnection) {
            conn.batch_execute(
                "UPDATE tasks SET locked_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND",
            )
            .unwrap();
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

        fn expire_leases(conn: &mut MysqlConnection, ids: &[i64]) {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            conn.batch_execute(&format!(
                "UPDATE tasks SET locked_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND \
                 WHERE id IN ({})",
                ids.join(", ")
            ))
            .unwrap();
        }

        fn enqueued_ago(conn: &mut MysqlConnection, id: Option<i64>, seconds: i64) {
            let only = id.map(|id| format!(" WHERE id = {id}")).unwrap_or_default();
            conn.batch_execute(&format!(
                "UPDATE tasks SET created_at = UTC_TIMESTAMP(6) - INTERVAL {seconds} SECOND{only}"
            ))
            .unwrap();
        }
    }

    /// Inserts rows `row(1)`, …, `row(n)` into `target` (a table and its columns) in one
    /// statement; nothing when `n` is 0.
    fn insert_values(
        conn: &mut MysqlConnection,
        target: &str,
        n: i32,
        row: impl Fn(i32) -> String,
    ) {
        if n > 0 {
            let values: Vec<String> = (1..=n).map(row).collect();
            conn.batch_execute(&format!(
                "INSERT INTO {target} VALUES {}",
                values.join(", ")
            ))
            .unwrap();
        }
    }

    claim_tests!(Mysql, drained_items = 3000);

    #[derive(QueryableByName)]
    struct IdRow {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
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

    /// What the claims are for: without `SKIP LOCKED` and a claim in one statement, eight
    /// workers at the server's default isolation take the same item.
    #[test]
    fn select_then_update_hands_out_duplicates_to_eight_workers_at_the_default_isolation() {
        const WORKERS: usize = 8;
        const NAIVE_ITEMS: i32 = 300;
        let db = TestMysql::new();
        let mut conn = db.conn();
        assert_eq!(
            Mysql::isolation(&mut conn),
            "REPEATABLE-READ",
            "the server's default"
        );
        Mysql::create_jobs(&mut conn, "naive_jobs", NAIVE_ITEMS);

        let conns = conns(&db, WORKERS);
        let handed_out = race(WORKERS, move |i| {
            let mut conn = conns.lock().unwrap().pop().unwrap();
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
            naive
        });

        let naive_total: i32 = handed_out.iter().sum();
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
            "naive select-then-update on MariaDB: {naive_total} hand-outs of {NAIVE_ITEMS} \
             items, {naive_twice} items processed more than once"
        );
        assert!(
            naive_twice > 0,
            "the naive pattern handed out no item twice"
        );
    }
}
