//! The pool recovers when the server drops every connection under load, and retried upserts
//! are applied exactly once.

mod common;

use common::TestDb;
use diesel::prelude::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use upsert_kit::jobs::models::StravaStats;
use upsert_kit::schema::strava_stats;
use upsert_kit::{atomic_upsert, Error};

#[test]
fn the_pool_recovers_from_terminated_connections_and_nothing_is_applied_twice() {
    const WORKERS: usize = 4;
    const KILL_ROUNDS: usize = 20;
    let db = TestDb::new();
    let pool = db.pool(WORKERS as u32);
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WORKERS + 1));

    let killer = {
        let (url, stop, barrier) = (db.url().to_owned(), stop.clone(), barrier.clone());
        let name = db.name().to_owned();
        std::thread::spawn(move || {
            let mut admin = PgConnection::establish(&url).unwrap();
            barrier.wait();
            for _ in 0..KILL_ROUNDS {
                std::thread::sleep(Duration::from_millis(20));
                diesel::sql_query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind::<diesel::sql_types::Text, _>(&name)
                .execute(&mut admin)
                .unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        })
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (pool, barrier, interrupted) = (pool.clone(), barrier.clone(), interrupted.clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let now = chrono::Utc::now().naive_utc();
                // Work until the terminations are over, then report how many keys were written.
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let row = StravaStats {
                        stats_type: format!("w{w}-k{k}"),
                        data: json!({"worker": w, "key": k}),
                        created_at: now,
                        updated_at: now,
                    };
                    // An upsert is idempotent: re-running it after an unknown outcome is safe.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        assert!(attempts < 100, "no progress on w{w}-k{k}");
                        let result = pool
                            .get()
                            .map_err(Error::from)
                            .and_then(|mut conn| atomic_upsert(&mut conn, &row));
                        match result {
                            Ok(_) => break,
                            Err(e)
                                if e.is_retryable()
                                    || e.is_outcome_unknown()
                                    || matches!(e, Error::Pool(_)) =>
                            {
                                interrupted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("unexpected error: {e:?}"),
                        }
                    }
                    k += 1;
                }
                k
            })
        })
        .collect();
    killer.join().unwrap();
    let written: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let interrupted = interrupted.load(Ordering::Relaxed);
    eprintln!("{KILL_ROUNDS} rounds of terminations interrupted {interrupted} of {written} upserts; all retried");
    assert!(
        interrupted > 0,
        "the terminations should have hit some upserts"
    );

    let mut conn = pool
        .get()
        .expect("the pool hands out a working connection again");
    let per_key: Vec<(String, i64)> = strava_stats::table
        .group_by(strava_stats::stats_type)
        .select((strava_stats::stats_type, diesel::dsl::count_star()))
        .load(&mut conn)
        .unwrap();
    assert_eq!(per_key.len(), written);
    assert!(per_key.iter().all(|(_, n)| *n == 1));
}
