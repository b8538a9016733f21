//! The backfill scheduler on a real PostgreSQL server: its claims over `backfill_log`,
//! [`schedule_months`] and [`backfill`], each racy baseline of [`backfill_scheduler::naive`]
//! shown failing next to the scheduler that does not. The claims' generic guarantees
//! (RELIABILITY.md 16–18) are tested by the library itself, on tables of its tests' own.

use backfill_scheduler::schema::backfill_log;
use backfill_scheduler::{
    backfill, naive, schedule_months, BackfillMonth, BackfillReport, MIGRATIONS,
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::Queue;
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb};

/// How many times a race against a naive pattern is run, at most, before the test concludes
/// that the pattern could not be shown failing. Each round starts every thread on one barrier;
/// the first round nearly always shows the failure, the others absorb an unlucky schedule.
const NAIVE_ROUNDS: usize = 20;

fn month_states(conn: &mut PgConnection) -> HashMap<String, i64> {
    backfill_log::table
        .group_by(backfill_log::status)
        .select((backfill_log::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)
        .unwrap()
        .into_iter()
        .collect()
}

/// Empties `backfill_log` and schedules the months `from` to `to` again.
fn reschedule(conn: &mut PgConnection, from: (i32, u32), to: (i32, u32)) -> usize {
    conn.batch_execute("TRUNCATE backfill_log").unwrap();
    schedule_months(conn, from, to).unwrap()
}

/// One connection per thread, opened before the race starts.
fn conns(db: &TestDb, n: usize) -> Arc<Mutex<Vec<PgConnection>>> {
    Arc::new(Mutex::new((0..n).map(|_| db.conn()).collect()))
}

/// What one round of workers draining the queue saw.
#[derive(Debug, Default)]
struct Drained {
    /// Claims of a month someone else had claimed too.
    twice: usize,
    /// Distinct months claimed.
    distinct: usize,
    /// Naive claims that were chosen as a deadlock victim (and tried again).
    deadlocks: usize,
}

#[test]
fn the_lockless_select_then_update_claim_hands_items_out_twice_and_claim_never_does() {
    const WORKERS: usize = 8;
    const MONTHS: usize = 360;
    let (from, to) = ((2000, 1), (2029, 12));
    let db = TestDb::migrated(MIGRATIONS);
    let mut conn = db.conn();

    let run = |atomic: bool| -> Drained {
        let conns = conns(&db, WORKERS);
        let claimed = race(WORKERS, move |i| {
            let mut conn = conns.lock().unwrap().pop().unwrap();
            let holder = format!("w{i}");
            let queue = Queue::<BackfillMonth>::new(&holder).unwrap();
            let (mut mine, mut deadlocks) = (Vec::new(), 0);
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
                        // Overlapping lockless claims can deadlock each other: one more way
                        // the naive pattern fails. The victim's update was rolled back; it
                        // tries again.
                        Err(Error::Deadlock(_)) => {
                            deadlocks += 1;
                            continue;
                        }
                        Err(e) => panic!("naive claim: {e:?}"),
                    }
                };
                if ids.is_empty() {
                    return (mine, deadlocks);
                }
                mine.extend(ids);
            }
        });
        let deadlocks = claimed.iter().map(|c| c.1).sum();
        let all: Vec<i64> = claimed.into_iter().flat_map(|c| c.0).collect();
        let mut distinct = all.clone();
        distinct.sort_unstable();
        distinct.dedup();
        Drained {
            twice: all.len() - distinct.len(),
            distinct: distinct.len(),
            deadlocks,
        }
    };

    let mut naive_rounds = Vec::new();
    for _ in 0..NAIVE_ROUNDS {
        assert_eq!(reschedule(&mut conn, from, to), MONTHS);
        let drained = run(false);
        // Whatever else happened, every month was claimed by someone.
        assert_eq!(drained.distinct, MONTHS, "{drained:?}");
        let failed = drained.twice > 0 || drained.deadlocks > 0;
        naive_rounds.push(drained);
        if failed {
            break;
        }
    }
    let naive = naive_rounds.last().unwrap();
    assert_eq!(reschedule(&mut conn, from, to), MONTHS);
    let atomic = run(true);
    eprintln!(
        "{MONTHS} months, {WORKERS} workers: naive select-then-update handed out {} duplicate \
         claims and deadlocked {} times (round {} of at most {NAIVE_ROUNDS}); claim (SKIP \
         LOCKED) handed out {} duplicates",
        naive.twice,
        naive.deadlocks,
        naive_rounds.len(),
        atomic.twice
    );
    assert!(
        naive.twice > 0 || naive.deadlocks > 0,
        "the naive select-then-update claim was never seen failing: in {NAIVE_ROUNDS} rounds \
         of {WORKERS} workers draining {MONTHS} months it never handed a month out twice and \
         never deadlocked; rounds: {naive_rounds:?}"
    );
    assert_eq!(
        (atomic.twice, atomic.distinct, atomic.deadlocks),
        (0, MONTHS, 0)
    );
}

#[test]
fn the_naive_scheduler_processes_some_month_twice_and_backfill_processes_each_once() {
    const SCHEDULERS: usize = 8;
    const MONTHS: usize = 24;
    let (from, to) = ((2024, 1), (2025, 12));
    let db = TestDb::migrated(MIGRATIONS);
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
    let extra = |seen: &HashMap<(i32, u32), usize>| seen.values().map(|n| n - 1).sum::<usize>();

    let mut naive_rounds = Vec::new();
    for _ in 0..NAIVE_ROUNDS {
        assert_eq!(reschedule(&mut conn, from, to), MONTHS);
        let seen = run(false);
        // Whatever else happened, every month was processed and marked done.
        assert_eq!(seen.len(), MONTHS, "{seen:?}");
        assert_eq!(
            month_states(&mut conn),
            HashMap::from([("done".into(), MONTHS as i64)])
        );
        let again = extra(&seen);
        naive_rounds.push(again);
        if again > 0 {
            break;
        }
    }
    assert_eq!(reschedule(&mut conn, from, to), MONTHS);
    let atomic_seen = run(true);

    eprintln!(
        "{MONTHS} months, {SCHEDULERS} schedulers: naive query-then-lock processed {} months \
         again (round {} of at most {NAIVE_ROUNDS}); backfill processed {} again",
        naive_rounds.last().unwrap(),
        naive_rounds.len(),
        extra(&atomic_seen)
    );
    assert!(
        *naive_rounds.last().unwrap() > 0,
        "the naive query-then-lock scheduler was never seen processing a month twice: in \
         {NAIVE_ROUNDS} rounds of {SCHEDULERS} schedulers over {MONTHS} months, repeats per \
         round: {naive_rounds:?}"
    );
    assert_eq!(atomic_seen.len(), MONTHS);
    assert!(atomic_seen.values().all(|&n| n == 1), "{atomic_seen:?}");
    assert_eq!(
        month_states(&mut conn),
        HashMap::from([("done".into(), MONTHS as i64)])
    );
}

#[test]
fn backfill_records_failures_and_a_later_run_retries_them() {
    let db = TestDb::migrated(MIGRATIONS);
    let mut conn = db.conn();
    assert_eq!(
        schedule_months(&mut conn, (2025, 11), (2026, 2)).unwrap(),
        4
    );
    assert_eq!(
        schedule_months(&mut conn, (2025, 12), (2026, 3)).unwrap(),
        1
    );
    // A backoff far longer than the run: the failed month cannot come due again within it,
    // however slow the machine. Its backoff is then ended by hand, as time passing would.
    let queue = Queue::<BackfillMonth>::new("s")
        .unwrap()
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600));

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
    // Before its backoff ends, a run finds nothing due.
    let report = backfill(&mut conn, &queue, |_, _| Ok::<(), Error>(())).unwrap();
    assert_eq!(report, BackfillReport::default());
    let due_again = diesel::sql_query(
        "UPDATE backfill_log SET locked_until = statement_timestamp() - interval '1 second' \
         WHERE status = 'retry'",
    )
    .execute(&mut conn)
    .unwrap();
    assert_eq!(due_again, 1);
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
    let db = TestDb::migrated(MIGRATIONS);
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

/// Schedulers started together on a fresh database: every one's migration run succeeds, the
/// migrations are applied once between them (without the lock, the others failed on the
/// table the first was creating).
#[test]
fn schedulers_migrating_a_fresh_database_at_once_apply_the_migrations_once() {
    let db = TestDb::new();
    let url = db.url().to_owned();
    let applied = race(6, move |_| {
        let mut conn = PgConnection::establish(&url).unwrap();
        backfill_scheduler::run_migrations(&mut conn)
    });
    let applied: Vec<usize> = applied.into_iter().map(Result::unwrap).collect();
    assert_eq!(applied.iter().sum::<usize>(), 2, "{applied:?}");
    assert_eq!(
        applied.iter().filter(|&&n| n == 2).count(),
        1,
        "{applied:?}"
    );
}

#[test]
fn run_migrations_creates_the_backfill_table_once_and_then_has_nothing_to_do() {
    let db = TestDb::new();
    let mut conn = db.conn();
    assert_eq!(backfill_scheduler::run_migrations(&mut conn).unwrap(), 2);
    assert_eq!(backfill_scheduler::run_migrations(&mut conn).unwrap(), 0);
    assert_eq!(
        schedule_months(&mut conn, (2026, 1), (2026, 12)).unwrap(),
        12
    );
    assert_eq!(
        month_states(&mut conn),
        HashMap::from([("pending".into(), 12)])
    );
}
