//! Criterion benches: each primitive against its naive baseline, on PostgreSQL (a database
//! of its own on the test harness's server, `upsert_kit_support::TestDb`: `DATABASE_URL`, else
//! the local server, else a throwaway cluster; dropped at the end) and on SQLite (a temporary
//! file), on the library tests' own `stats` table (`tests/fixture`).
//!
//! ```text
//! cargo bench --bench upsert                    # about 3 minutes here (2 cores)
//! UPSERT_KIT_BENCH_QUICK=1 cargo bench          # CI smoke run: short timings, smaller sizes
//! DATABASE_URL=postgres://… cargo bench         # another server (a user allowed to CREATE DATABASE)
//! ```
//!
//! Groups (throughput in operations or rows per second):
//! - `single_row/{pg,sqlite}`: `naive::query_then_upsert` vs `atomic_upsert` of a ~1 KB stats
//!   row over 64 existing keys, sequential and from 8 threads on an r2d2 pool.
//! - `bulk/{pg,sqlite}`: a loop of `atomic_upsert` vs one `bulk_upsert`, at 1,000 and 10,000 rows.
//! - `lock/pg`: an empty transaction vs one that takes `xact_lock` or `try_xact_lock`.
//!
//! The adopters' primitives (usage counters and quotas, session locks, the backfill claims)
//! are benched with the race report: `cargo bench -p upsert-race --bench primitives`.

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use fixture::{stats, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use upsert_kit::db::{connect_sqlite, pg_pool, sqlite_pool};
use upsert_kit::lock::{self, LockKey};
use upsert_kit::{atomic_upsert, bulk_upsert};
use upsert_kit_support::{naive, payload};

/// Keys of the single-row benches (the race report's `upsert` scenario uses as many).
const KEYS: usize = 64;
/// Threads of the concurrent single-row benches.
const THREADS: u64 = 8;

fn quick() -> bool {
    std::env::var("UPSERT_KIT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn bulk_sizes() -> &'static [usize] {
    if quick() {
        &[100, 1_000]
    } else {
        &[1_000, 10_000]
    }
}

fn rows(n: usize) -> Vec<Stats> {
    let data = payload::stats_payload(0);
    let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 29)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    (0..n)
        .map(|i| Stats {
            stats_type: format!("key-{i}"),
            data: data.clone(),
            created_at: at,
            updated_at: at,
        })
        .collect()
}

/// The naive query-then-insert on SQLite (the library's baseline is PostgreSQL-only): a
/// deferred transaction that reads, then updates or inserts.
fn sqlite_query_then_upsert(conn: &mut SqliteConnection, row: &Stats) -> QueryResult<()> {
    use stats::dsl::{created_at, data, stats as table, stats_type, updated_at};
    conn.transaction(|conn| {
        let existing: i64 = table
            .filter(stats_type.eq(&row.stats_type))
            .count()
            .get_result(conn)?;
        if existing > 0 {
            diesel::update(table.filter(stats_type.eq(&row.stats_type)))
                .set((data.eq(&row.data), updated_at.eq(row.updated_at)))
                .execute(conn)?;
        } else {
            diesel::insert_into(table)
                .values((
                    stats_type.eq(&row.stats_type),
                    data.eq(&row.data),
                    created_at.eq(row.created_at),
                    updated_at.eq(row.updated_at),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Runs `iters` operations split over [`THREADS`] threads, each with a pooled connection,
/// released together; returns the wall time.
fn on_threads<C, F>(pool: &diesel::r2d2::Pool<ConnectionManager<C>>, iters: u64, op: F) -> Duration
where
    C: diesel::r2d2::R2D2Connection + 'static,
    F: Fn(&mut PooledConnection<ConnectionManager<C>>, u64) + Sync,
{
    let barrier = Barrier::new(THREADS as usize + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                let n = iters / THREADS + u64::from(t < iters % THREADS);
                s.spawn(move || {
                    let mut conn = pool.get().expect("a pooled connection");
                    barrier.wait();
                    for i in 0..n {
                        op(&mut conn, t * 1_000_003 + i);
                    }
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().expect("a bench thread panicked");
        }
        t0.elapsed()
    })
}

fn single_row_pg(c: &mut Criterion, url: &str) {
    let rows = rows(KEYS);
    let mut conn = upsert_kit::db::connect_pg(url).expect("connect");
    bulk_upsert(&mut conn, &rows).expect("seed");
    let pool = pg_pool(url, THREADS as u32).expect("pool");
    let naive_errors = AtomicU64::new(0);

    let mut g = c.benchmark_group("single_row/pg");
    g.throughput(Throughput::Elements(1));
    let mut i = 0_usize;
    g.bench_function(BenchmarkId::new("naive", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            naive::query_then_upsert(&mut conn, &rows[i % KEYS]).expect("naive upsert")
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            atomic_upsert(&mut conn, &rows[i % KEYS]).expect("atomic upsert")
        })
    });
    g.bench_function(BenchmarkId::new("naive", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                if naive::query_then_upsert(conn, &rows[i as usize % KEYS]).is_err() {
                    naive_errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                atomic_upsert(conn, &rows[i as usize % KEYS]).expect("atomic upsert");
            })
        })
    });
    g.finish();
    report_errors("single_row/pg/naive", &naive_errors);
}

fn single_row_sqlite(c: &mut Criterion, url: &str) {
    let rows = rows(KEYS);
    let mut conn = connect_sqlite(url).expect("open");
    bulk_upsert(&mut conn, &rows).expect("seed");
    let pool = sqlite_pool(url, THREADS as u32).expect("pool");
    let naive_errors = AtomicU64::new(0);

    let mut g = c.benchmark_group("single_row/sqlite");
    g.throughput(Throughput::Elements(1));
    let mut i = 0_usize;
    g.bench_function(BenchmarkId::new("naive", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            sqlite_query_then_upsert(&mut conn, &rows[i % KEYS]).expect("naive upsert")
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            atomic_upsert(&mut conn, &rows[i % KEYS]).expect("atomic upsert")
        })
    });
    // A deferred transaction that reads and then writes cannot wait for SQLite's write lock
    // (SQLITE_BUSY at once): the naive pattern fails under threads, the failures are counted.
    g.bench_function(BenchmarkId::new("naive", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                if sqlite_query_then_upsert(conn, &rows[i as usize % KEYS]).is_err() {
                    naive_errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                atomic_upsert(conn, &rows[i as usize % KEYS]).expect("atomic upsert");
            })
        })
    });
    g.finish();
    report_errors("single_row/sqlite/naive", &naive_errors);
}

fn report_errors(name: &str, errors: &AtomicU64) {
    let n = errors.load(Ordering::Relaxed);
    if n > 0 {
        eprintln!("{name}: {n} operations failed (the naive pattern under concurrency)");
    }
}

fn bulk<C>(c: &mut Criterion, group: &str, conn: &mut C, loop_max: usize)
where
    Stats: upsert_kit::Upsertable<C>,
{
    let sizes = bulk_sizes();
    let rows = rows(*sizes.iter().max().expect("sizes"));
    bulk_upsert(conn, &rows).expect("seed");
    let mut g = c.benchmark_group(group);
    // One iteration of the 10,000-row loop takes about a second: flat sampling keeps the
    // sample count (and the run) short.
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    for &size in sizes {
        let batch = &rows[..size];
        g.throughput(Throughput::Elements(size as u64));
        if size <= loop_max {
            g.bench_with_input(
                BenchmarkId::new("loop_of_single", size),
                batch,
                |b, batch| {
                    b.iter(|| {
                        for row in batch {
                            atomic_upsert(conn, row).expect("upsert");
                        }
                    })
                },
            );
        }
        g.bench_with_input(BenchmarkId::new("bulk_upsert", size), batch, |b, batch| {
            b.iter(|| bulk_upsert(conn, batch).expect("bulk upsert"))
        });
    }
    g.finish();
}

fn locks_pg(c: &mut Criterion, url: &str) {
    let mut conn = upsert_kit::db::connect_pg(url).expect("connect");
    let key = LockKey::new("bench", 1);
    let mut g = c.benchmark_group("lock/pg");
    g.throughput(Throughput::Elements(1));
    g.bench_function("empty_transaction", |b| {
        b.iter(|| {
            conn.transaction(|_| Ok::<_, upsert_kit::Error>(()))
                .expect("transaction")
        })
    });
    g.bench_function("xact_lock", |b| {
        b.iter(|| conn.transaction(|c| lock::xact_lock(c, key)).expect("lock"))
    });
    g.bench_function("try_xact_lock", |b| {
        b.iter(|| {
            conn.transaction(|c| lock::try_xact_lock(c, key))
                .expect("try lock")
        })
    });
    g.finish();
}

fn main() {
    let db = fixture::pg();
    let mut pg = db.conn();
    let lite = fixture::sqlite();
    let sqlite_url = lite.url().to_owned();
    let mut sqlite = connect_sqlite(&sqlite_url).expect("open SQLite");

    let base = if quick() {
        Criterion::default()
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10)
    } else {
        Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    let mut c = base.configure_from_args();

    single_row_pg(&mut c, db.url());
    single_row_sqlite(&mut c, &sqlite_url);
    pg.batch_execute("TRUNCATE stats").expect("truncate");
    bulk(&mut c, "bulk/pg", &mut pg, usize::MAX);
    sqlite.batch_execute("DELETE FROM stats").expect("delete");
    // Each single upsert on SQLite is its own durable commit: the 10,000-row loop would take
    // minutes, so SQLite loops only up to 1,000 rows.
    bulk(&mut c, "bulk/sqlite", &mut sqlite, 1_000);
    locks_pg(&mut c, db.url());

    c.final_summary();
    drop((pg, sqlite));
    drop((db, lite));
}
