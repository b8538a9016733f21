//! `backfill_log` distributed by `year` (Citus; docs/citus.md), checked on plain PostgreSQL:
//! its keys include the year, and the scheduler on [`BackfillMonthByYear`] names the year in
//! every statement, claiming within the years its queue names.

use backfill_scheduler::{backfill, schedule_months, BackfillMonthByYear, MIGRATIONS};
use diesel::PgConnection;
use diesel_migrations::MigrationHarness;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::Queue;
use upsert_kit::Error;
use upsert_kit_support::citus::{capture, distribution_problems, unrouted, Placement};
use upsert_kit_support::{race, TestDb};

const TABLES: [(&str, Placement<'static>); 1] = [("backfill_log", Placement::Distributed("year"))];

#[test]
fn every_unique_key_of_backfill_log_includes_the_year() {
    let db = TestDb::migrated(MIGRATIONS);
    let mut conn = db.conn();
    assert_eq!(
        distribution_problems(&mut conn, &TABLES),
        Vec::<String>::new()
    );
    // The first migration alone: its surrogate primary key is what Citus refused.
    conn.revert_last_migration(MIGRATIONS).unwrap();
    assert_eq!(
        distribution_problems(&mut conn, &TABLES),
        ["backfill_log: constraint backfill_log_pkey on (id) does not include the distribution column year"]
    );
}

#[test]
fn the_scheduler_by_year_names_the_year_in_every_statement() {
    let db = TestDb::migrated(MIGRATIONS);
    let mut conn = db.conn();
    let queue = Queue::<BackfillMonthByYear>::new("s1")
        .unwrap()
        .tenant(2026)
        .tenant(2025);
    let (order, statements) = capture(&mut conn, |c| {
        schedule_months(c, (2024, 11), (2026, 2)).unwrap();
        let mut order = Vec::new();
        let report = backfill(c, &queue, |year, month| {
            order.push((year, month));
            if (year, month) == (2025, 12) {
                return Err("upstream 503");
            }
            Ok(())
        })
        .unwrap();
        assert_eq!((report.done, report.retried), (13, 1));
        order
    });
    // The years named, in their order; 2024 is not this queue's.
    let mut expected = vec![(2026, 1), (2026, 2)];
    expected.extend((1..=12).map(|m| (2025, m)));
    assert_eq!(order, expected);
    let missing = unrouted(&statements, "backfill_log", &["year"]);
    assert!(
        missing.is_empty(),
        "statements without the year: {missing:#?}"
    );
    assert!(statements.len() > 40, "{statements:#?}");
}

#[test]
fn eight_schedulers_by_year_process_each_month_of_their_years_exactly_once() {
    const SCHEDULERS: usize = 8;
    let db = TestDb::migrated(MIGRATIONS);
    schedule_months(&mut db.conn(), (2022, 1), (2025, 12)).unwrap();
    let seen = Arc::new(Mutex::new(HashMap::<(i32, u32), usize>::new()));
    let conns: Arc<Mutex<Vec<PgConnection>>> =
        Arc::new(Mutex::new((0..SCHEDULERS).map(|_| db.conn()).collect()));
    let record = Arc::clone(&seen);
    race(SCHEDULERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        // Each scheduler names the four years in its own order.
        let mut queue = Queue::<BackfillMonthByYear>::new(format!("s{i}"))
            .unwrap()
            .lease(Duration::from_secs(60));
        for k in 0..4 {
            queue = queue.tenant(2022 + ((i + k) % 4) as i32);
        }
        backfill(&mut conn, &queue, |year, month| {
            *record.lock().unwrap().entry((year, month)).or_default() += 1;
            std::thread::sleep(Duration::from_millis(2));
            Ok::<(), Error>(())
        })
        .unwrap();
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 48);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
}
