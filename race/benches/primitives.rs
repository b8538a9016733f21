//! Criterion benches of the usage, lock and claim primitives, each against its naive baseline
//! (`usage_tracking::naive`, `backfill_scheduler::naive`, PostgreSQL only) where one exists, on
//! PostgreSQL (a database of its own from `upsert_kit_support`, on the server it finds, dropped
//! at the end) and on SQLite (a temporary file) where the primitive exists there.
//!
//! ```text
//! cargo bench -p upsert-race --bench primitives                          # about 2 minutes here (2 cores)
//! UPSERT_KIT_BENCH_QUICK=1 cargo bench -p upsert-race --bench primitives # a shorter run
//! cargo bench -p upsert-race --bench primitives -- --test               # CI smoke run: each bench once
//! ```
//!
//! Groups (operations per second, one connection, sequential):
//! - `get_or_create/{pg,sqlite}`: a usage period that exists (`existing`) and a new month on
//!   every call (`create`): `naive::get_or_create_usage_period_select_then_insert` vs
//!   `usage_tracking::get_or_create_usage_period`.
//! - `increment/{pg,sqlite}`: `naive::increment_read_add_write` vs `counter::increment` with a
//!   fresh key (`atomic`) and with a key already counted (`idempotent_replay`).
//! - `quota/{pg,sqlite}`: `naive::try_consume_check_then_act` vs `quota::try_consume` and
//!   `quota::reserve` + `quota::commit`.
//! - `session_lock/pg`: `lock::lock` + `SessionLock::release`, `lock::try_lock` + release
//!   (the transaction-scoped locks are in the `upsert` bench's `lock/pg`).
//! - `claim/pg`: `naive::claim_select_then_update` + mark done vs `Queue::claim` +
//!   `Queue::complete`, one item per claim, on a queue refilled (unmeasured) before each sample.
//! - `*/mysql`: on MySQL/MariaDB (`MYSQL_DATABASE_URL`, else 127.0.0.1:3306, else a throwaway
//!   `mariadbd`; `UPSERT_KIT_BENCH_MYSQL=0` leaves them out), on the race's tables on MySQL
//!   (`upsert_race::backend::mysql`, `upsert_race::tables`): `upsert` (`atomic_upsert` of an
//!   existing key of `strava_stats`), `bulk` (one
//!   `bulk_upsert` of 1,000 rows), `increment` (`counter::increment`), `quota`
//!   (`quota::try_consume`), `session_lock` (`GET_LOCK` + `RELEASE_LOCK`) and `claim`
//!   (`Queue::claim` + `Queue::complete`, one item per claim).

use backfill_scheduler::schema::backfill_log;
use backfill_scheduler::{schedule_months, BackfillMonth};
use chrono::{NaiveDate, NaiveDateTime};
use criterion::{Criterion, SamplingMode, Throughput};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::time::{Duration, Instant};
use upsert_kit::claim::Queue;
use upsert_kit::lock::{self, LockKey};
use upsert_kit_support::{TestDb, TestSqlite};
use usage_tracking::counter::increment;
use usage_tracking::naive;
use usage_tracking::quota::{commit, reserve, try_consume};
use usage_tracking::{
    get_or_create_usage_period, set_usage_limits, Metric, Usage, UsageConnection, MAX_AMOUNT,
};

fn quick() -> bool {
    std::env::var("UPSERT_KIT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The instant every counted operation carries.
fn now() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 29)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
}

/// Month `i` counted from January of year 1 (years 1 to 9999: 119,988 months).
fn month(i: u64) -> NaiveDateTime {
    let i = i % (9_999 * 12);
    NaiveDate::from_ymd_opt((i / 12 + 1) as i32, (i % 12 + 1) as u32, 15)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid month")
}

/// Accounts: one per group and side, so that no bench sees another's rows.
const HOT: i64 = 1;
const NAIVE_CREATE: i64 = 2;
const ATOMIC_CREATE: i64 = 3;

fn unlimited() -> Usage {
    Usage {
        tokens: MAX_AMOUNT,
        reports: MAX_AMOUNT,
        chats: MAX_AMOUNT,
    }
}

/// Registers the accounts; returns the hot account's period id for `now()`.
fn setup_usage<C: UsageConnection>(conn: &mut C) -> i64 {
    for account in [HOT, NAIVE_CREATE, ATOMIC_CREATE] {
        set_usage_limits(conn, account, unlimited(), now()).expect("limits");
    }
    get_or_create_usage_period(conn, HOT, now())
        .expect("the hot period")
        .row
        .id
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    // Single operations take a millisecond or more (a durable commit): flat sampling keeps
    // each bench within its measurement time.
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    g
}

fn get_or_create_pg(c: &mut Criterion, conn: &mut PgConnection) {
    let mut g = group(c, "get_or_create/pg");
    g.bench_function("existing/naive_select_then_insert", |b| {
        b.iter(|| naive::get_or_create_usage_period_select_then_insert(conn, HOT, now()).unwrap())
    });
    g.bench_function("existing/atomic", |b| {
        b.iter(|| get_or_create_usage_period(conn, HOT, now()).unwrap())
    });
    let mut i = 0_u64;
    g.bench_function("create/naive_select_then_insert", |b| {
        b.iter(|| {
            i += 1;
            naive::get_or_create_usage_period_select_then_insert(conn, NAIVE_CREATE, month(i))
                .unwrap()
        })
    });
    let mut i = 0_u64;
    g.bench_function("create/atomic", |b| {
        b.iter(|| {
            i += 1;
            get_or_create_usage_period(conn, ATOMIC_CREATE, month(i)).unwrap()
        })
    });
    g.finish();
}

fn get_or_create_sqlite(c: &mut Criterion, conn: &mut SqliteConnection) {
    let mut g = group(c, "get_or_create/sqlite");
    g.bench_function("existing/atomic", |b| {
        b.iter(|| get_or_create_usage_period(conn, HOT, now()).unwrap())
    });
    let mut i = 0_u64;
    g.bench_function("create/atomic", |b| {
        b.iter(|| {
            i += 1;
            get_or_create_usage_period(conn, ATOMIC_CREATE, month(i)).unwrap()
        })
    });
    g.finish();
}

/// `atomic` and `idempotent_replay` of `counter::increment` on either backend.
fn increments<C: UsageConnection>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    conn: &mut C,
    prefix: &str,
) {
    let mut i = 0_u64;
    g.bench_function("atomic", |b| {
        b.iter(|| {
            i += 1;
            increment(conn, HOT, &format!("{prefix}-{i}"), now(), Usage::tokens(1)).unwrap()
        })
    });
    let key = format!("{prefix}-replayed");
    let first = increment(conn, HOT, &key, now(), Usage::tokens(1)).unwrap();
    g.bench_function("idempotent_replay", |b| {
        b.iter(|| {
            let again = increment(conn, HOT, &key, now(), Usage::tokens(1)).unwrap();
            assert!(!again.applied && again.event_id == first.event_id);
        })
    });
}

fn increment_pg(c: &mut Criterion, conn: &mut PgConnection, period: i64) {
    let mut g = group(c, "increment/pg");
    g.bench_function("naive_read_add_write", |b| {
        b.iter(|| naive::increment_read_add_write(conn, period, 1).unwrap())
    });
    increments(&mut g, conn, "pg");
    g.finish();
}

fn increment_sqlite(c: &mut Criterion, conn: &mut SqliteConnection) {
    let mut g = group(c, "increment/sqlite");
    increments(&mut g, conn, "sqlite");
    g.finish();
}

/// `try_consume` and `reserve` + `commit` on either backend.
fn quotas<C: UsageConnection>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    conn: &mut C,
) {
    g.bench_function("try_consume", |b| {
        b.iter(|| try_consume(conn, HOT, Metric::Reports, 1, now()).unwrap())
    });
    g.bench_function("reserve_commit", |b| {
        b.iter(|| {
            let held =
                reserve(conn, HOT, Metric::Chats, 2, now(), Duration::from_secs(600)).unwrap();
            commit(conn, &held, 1, now()).unwrap()
        })
    });
}

fn quota_pg(c: &mut Criterion, conn: &mut PgConnection, period: i64) {
    let mut g = group(c, "quota/pg");
    g.bench_function("naive_check_then_act", |b| {
        b.iter(|| assert!(naive::try_consume_check_then_act(conn, period, 1).unwrap()))
    });
    quotas(&mut g, conn);
    g.finish();
}

fn quota_sqlite(c: &mut Criterion, conn: &mut SqliteConnection) {
    let mut g = group(c, "quota/sqlite");
    quotas(&mut g, conn);
    g.finish();
}

fn session_lock_pg(c: &mut Criterion, conn: &mut PgConnection) {
    let key = LockKey::new("bench", 2);
    let mut g = group(c, "session_lock/pg");
    g.bench_function("lock_release", |b| {
        b.iter(|| lock::lock(&mut *conn, key).unwrap().release().unwrap())
    });
    g.bench_function("try_lock_release", |b| {
        b.iter(|| {
            lock::try_lock(&mut *conn, key)
                .unwrap()
                .expect("the lock is free")
                .release()
                .unwrap()
        })
    });
    g.finish();
}

/// Empties the queue and schedules `n` months (at most 108,000).
fn refill(conn: &mut PgConnection, n: u64) {
    conn.batch_execute("TRUNCATE backfill_log").unwrap();
    let last = 1000 * 12 + n.clamp(1, 108_000) as i32 - 1;
    schedule_months(conn, (1000, 1), (last / 12, (last % 12 + 1) as u32)).unwrap();
}

fn claim_pg(c: &mut Criterion, conn: &mut PgConnection) {
    let mut g = group(c, "claim/pg");
    g.bench_function("naive_select_then_update_done", |b| {
        b.iter_custom(|iters| {
            refill(conn, iters);
            let t0 = Instant::now();
            for _ in 0..iters {
                for (id, _, _) in
                    backfill_scheduler::naive::claim_select_then_update(conn, "bench", 1).unwrap()
                {
                    diesel::update(backfill_log::table.find(id))
                        .set(backfill_log::status.eq("done"))
                        .execute(conn)
                        .unwrap();
                }
            }
            t0.elapsed()
        })
    });
    let queue = Queue::<BackfillMonth>::new("bench").unwrap();
    g.bench_function("claim_complete", |b| {
        b.iter_custom(|iters| {
            refill(conn, iters);
            let t0 = Instant::now();
            for _ in 0..iters {
                for claim in queue.claim(conn, 1).unwrap() {
                    queue.complete(conn, &claim).unwrap();
                }
            }
            t0.elapsed()
        })
    });
    g.finish();
}

fn mysql_enabled() -> bool {
    std::env::var("UPSERT_KIT_BENCH_MYSQL").map_or(true, |v| v != "0")
}

fn mysql_benches(c: &mut Criterion, conn: &mut diesel::MysqlConnection) {
    use sync_jobs::models::StravaStats;
    use upsert_kit::tables::Quotas;
    use upsert_race::backend::mysql::QueueItem;
    use upsert_race::backend::RaceConnection;
    let data = upsert_race::payload::stats_payload(0);
    let rows: Vec<StravaStats> = (0..1000)
        .map(|i| StravaStats {
            stats_type: format!("key-{i}"),
            data: data.clone(),
            created_at: now(),
            updated_at: now(),
        })
        .collect();
    upsert_kit::bulk_upsert(conn, &rows).unwrap();
    // `race_counter` has its rows already.
    conn.batch_execute(
        "INSERT INTO upsert_kit_quotas (quota_key, quota_limit) VALUES ('bench', 9223372036854775807)",
    )
    .unwrap();

    let mut g = group(c, "upsert/mysql");
    let mut i = 0;
    g.bench_function("atomic_upsert_existing_key", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            upsert_kit::atomic_upsert(&mut *conn, &rows[i]).unwrap()
        })
    });
    g.finish();

    let mut g = group(c, "bulk/mysql");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("bulk_upsert_1000", |b| {
        b.iter(|| upsert_kit::bulk_upsert(&mut *conn, &rows).unwrap())
    });
    g.finish();

    let mut g = group(c, "increment/mysql");
    g.bench_function("atomic", |b| {
        b.iter(|| {
            upsert_kit::counter::increment::<upsert_race::tables::RaceCounter, _>(
                &mut *conn,
                &1,
                [1],
            )
            .unwrap()
        })
    });
    g.finish();

    let mut g = group(c, "quota/mysql");
    let quota_key = "bench".to_owned();
    g.bench_function("try_consume", |b| {
        b.iter(|| {
            upsert_kit::quota::try_consume::<Quotas, _>(&mut *conn, &quota_key, 1, now()).unwrap()
        })
    });
    g.finish();

    let key = LockKey::new("bench", 2);
    let mut g = group(c, "session_lock/mysql");
    g.bench_function("lock_release", |b| {
        b.iter(|| lock::lock(&mut *conn, key).unwrap().release().unwrap())
    });
    g.bench_function("try_lock_release", |b| {
        b.iter(|| {
            lock::try_lock(&mut *conn, key)
                .unwrap()
                .expect("the lock is free")
                .release()
                .unwrap()
        })
    });
    g.finish();

    let mut g = group(c, "claim/mysql");
    let queue = Queue::<QueueItem>::new("bench").unwrap();
    g.bench_function("claim_complete", |b| {
        b.iter_custom(|iters| {
            conn.fill_queue(iters as usize).unwrap();
            let t0 = Instant::now();
            for _ in 0..iters {
                for claim in queue.claim(&mut *conn, 1).unwrap() {
                    queue.complete(&mut *conn, &claim).unwrap();
                }
            }
            t0.elapsed()
        })
    });
    g.finish();
}

fn main() {
    // The usage tables and the backfill queue; the SQLite file gets the usage tables only
    // (claims are PostgreSQL-only).
    let db = TestDb::new();
    let mut pg = db.conn();
    usage_tracking::run_migrations(&mut pg).expect("migrate usage-tracking");
    backfill_scheduler::run_migrations(&mut pg).expect("migrate backfill-scheduler");
    let sqlite_db = TestSqlite::migrated(usage_tracking::SQLITE_MIGRATIONS);
    let mut sqlite = sqlite_db.conn();
    let pg_period = setup_usage(&mut pg);
    setup_usage(&mut sqlite);

    let base = if quick() {
        Criterion::default()
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1))
    } else {
        Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    let mut c = base.configure_from_args();

    get_or_create_pg(&mut c, &mut pg);
    get_or_create_sqlite(&mut c, &mut sqlite);
    increment_pg(&mut c, &mut pg, pg_period);
    increment_sqlite(&mut c, &mut sqlite);
    quota_pg(&mut c, &mut pg, pg_period);
    quota_sqlite(&mut c, &mut sqlite);
    session_lock_pg(&mut c, &mut pg);
    claim_pg(&mut c, &mut pg);
    let mysql_db = mysql_enabled().then(|| {
        let db = upsert_kit_support::TestMysql::new();
        let mut conn = db.conn();
        upsert_race::backend::RaceConnection::create_tables(&mut conn)
            .expect("the race tables on MySQL");
        upsert_race::tables::create(&mut conn).expect("the race tables on MySQL");
        mysql_benches(&mut c, &mut conn);
        db
    });

    c.final_summary();
    drop((pg, sqlite));
    drop((db, sqlite_db, mysql_db));
}
