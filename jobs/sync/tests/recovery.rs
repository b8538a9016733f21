//! The pool recovers when the server terminates connections in the middle of upserts, and the
//! retried upserts are applied exactly once.
//!
//! Nothing here depends on timing: each round, a locker holds `LOCK TABLE strava_stats IN SHARE
//! MODE`, the workers are released together on a barrier into an upsert that queues behind it,
//! the killer waits until it *sees* every worker waiting on that lock, terminates exactly those
//! backends (and waits until they are gone), and only then releases the lock. Every first attempt
//! is therefore interrupted in flight, and every retry runs on a new connection from the pool.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use sync_jobs::db::PG_MIGRATIONS;
use sync_jobs::models::StravaStats;
use sync_jobs::schema::strava_stats;
use upsert_kit::{atomic_upsert, Error, UpsertOutcome};
use upsert_kit_support::{race, TestDb};

const WORKERS: usize = 4;
const ROUNDS: usize = 5;
/// How long the killer waits to see every worker queued on the lock before it reports what it
/// saw instead (a bound for a broken run, not a timing assumption).
const QUEUE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Terminated {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

/// What one worker saw in one round.
#[derive(Debug)]
struct WorkerRound {
    /// The upsert that was in flight when its connection was terminated.
    first: Result<UpsertOutcome, String>,
    /// The first attempt's error class: "retryable", "outcome unknown" or "other".
    first_class: &'static str,
    /// The retry, on a connection taken from the pool again.
    retry: Result<UpsertOutcome, String>,
}

/// What the killer did in one round: the backends it terminated, or why it could not.
type KillerRound = Result<usize, String>;

enum Report {
    Worker(Vec<WorkerRound>),
    Killer(Vec<KillerRound>),
}

fn row(worker: usize, round: usize) -> StravaStats {
    let now = chrono::Utc::now().naive_utc();
    StravaStats {
        stats_type: format!("w{worker}-r{round}"),
        data: json!({"worker": worker, "round": round}),
        created_at: now,
        updated_at: now,
    }
}

/// Waits until `expected` backends of this database wait on a lock; their pids.
fn queued_backends(admin: &mut PgConnection, expected: usize) -> Result<Vec<i32>, String> {
    let started = Instant::now();
    loop {
        // Autocommit: each poll is its own transaction, so pg_stat_activity is read afresh.
        let pids: Vec<i32> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND wait_event_type = 'Lock'
             ORDER BY pid",
        )
        .load::<Pid>(admin)
        .map_err(|e| format!("reading pg_stat_activity: {e}"))?
        .into_iter()
        .map(|p| p.pid)
        .collect();
        if pids.len() == expected {
            return Ok(pids);
        }
        if started.elapsed() > QUEUE_DEADLINE {
            return Err(format!(
                "after {QUEUE_DEADLINE:?}, {} of {expected} upserts were queued on the table \
                 lock (pids {pids:?})",
                pids.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One round of the killer: lock, wait for the queue, terminate it, release.
fn kill_round(url: &str, start: &Barrier) -> KillerRound {
    let mut locker = PgConnection::establish(url).map_err(|e| e.to_string())?;
    let mut admin = PgConnection::establish(url).map_err(|e| e.to_string())?;
    let mut started = false;
    let result = locker.transaction(|locker| {
        diesel::sql_query("LOCK TABLE strava_stats IN SHARE MODE").execute(locker)?;
        start.wait();
        started = true;
        let outcome = (|| {
            let pids = queued_backends(&mut admin, WORKERS)?;
            for pid in &pids {
                // With a timeout, pg_terminate_backend returns once the backend is gone.
                let gone = diesel::sql_query("SELECT pg_terminate_backend($1, 30000) AS ok")
                    .bind::<Integer, _>(pid)
                    .get_result::<Terminated>(&mut admin)
                    .map_err(|e| format!("terminating {pid}: {e}"))?
                    .ok;
                if !gone {
                    return Err(format!("backend {pid} did not exit within 30 s"));
                }
            }
            Ok(pids.len())
        })();
        // Commit either way: the lock is released and the retries can run.
        Ok::<_, diesel::result::Error>(outcome)
    });
    if !started {
        // The lock was never taken: release the workers anyway, so nobody waits forever.
        start.wait();
    }
    result.map_err(|e| format!("the locker's transaction failed: {e}"))?
}

#[test]
fn the_pool_recovers_from_terminated_connections_and_nothing_is_applied_twice() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let pool = db.pool(WORKERS as u32);
    // `start`: the lock is held, the upserts may go. `end`: the round is over for everyone.
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let end = Arc::new(Barrier::new(WORKERS + 1));
    let url = db.url().to_owned();

    let reports = {
        let pool = pool.clone();
        race(WORKERS + 1, move |i| {
            if i == WORKERS {
                let rounds = (0..ROUNDS)
                    .map(|_| {
                        let killed = kill_round(&url, &start);
                        end.wait();
                        killed
                    })
                    .collect();
                return Report::Killer(rounds);
            }
            let rounds = (0..ROUNDS)
                .map(|r| {
                    let row = row(i, r);
                    let upsert = || {
                        pool.get()
                            .map_err(Error::from)
                            .and_then(|mut conn| atomic_upsert(&mut conn, &row))
                    };
                    start.wait();
                    let first = upsert();
                    let first_class = match &first {
                        Err(e) if e.is_retryable() => "retryable",
                        Err(e) if e.is_outcome_unknown() => "outcome unknown",
                        _ => "other",
                    };
                    let retry = upsert().map_err(|e| format!("{e:?}"));
                    end.wait();
                    WorkerRound {
                        first: first.map_err(|e| format!("{e:?}")),
                        first_class,
                        retry,
                    }
                })
                .collect();
            Report::Worker(rounds)
        })
    };

    let mut interrupted = 0;
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    for (i, report) in reports.into_iter().enumerate() {
        match report {
            Report::Killer(rounds) => {
                for (r, killed) in rounds.into_iter().enumerate() {
                    assert_eq!(
                        killed,
                        Ok(WORKERS),
                        "round {r}: the killer should have terminated all {WORKERS} queued upserts"
                    );
                }
            }
            Report::Worker(rounds) => {
                for (r, seen) in rounds.into_iter().enumerate() {
                    assert!(
                        seen.first.is_err() && seen.first_class != "other",
                        "worker {i}, round {r}: the upsert in flight on a terminated connection \
                         should fail as retryable or outcome-unknown; saw {seen:?}"
                    );
                    interrupted += 1;
                    *classes.entry(seen.first_class).or_default() += 1;
                    assert_eq!(
                        seen.retry,
                        Ok(UpsertOutcome::Inserted),
                        "worker {i}, round {r}: the retry on a connection from the pool should \
                         insert the row (the interrupted attempt applied nothing); saw {seen:?}"
                    );
                }
            }
        }
    }
    assert_eq!(interrupted, WORKERS * ROUNDS);
    eprintln!(
        "{ROUNDS} rounds of terminations interrupted {interrupted} upserts in flight \
         ({classes:?}); each was retried once, on a new pooled connection"
    );

    let mut conn = pool
        .get()
        .expect("the pool hands out a working connection again");
    let per_key: Vec<(String, i64)> = strava_stats::table
        .group_by(strava_stats::stats_type)
        .select((strava_stats::stats_type, diesel::dsl::count_star()))
        .order_by(strava_stats::stats_type)
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        per_key.len(),
        WORKERS * ROUNDS,
        "one row per (worker, round): {per_key:?}"
    );
    assert!(
        per_key.iter().all(|(_, n)| *n == 1),
        "no key written twice: {per_key:?}"
    );
}
