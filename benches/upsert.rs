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
//! - `single_row/{pg,sqlite}`: `naive::query_then_upsert` vs plain Diesel
//!   (`insert_into(stats).values(…).on_conflict(stats_type).do_update().set(…)`, `plain_diesel`)
//!   vs `atomic_upsert` vs the coalescing writer's `upsert` of a ~1 KB stats row over 64
//!   existing keys, sequential and from 8 threads on an r2d2 pool. Every operation builds its
//!   own row (a copy of a stored one), as a request handler would: the writer takes its row by
//!   value, the direct calls borrow theirs, and both pay for the row.
//! - `bulk/{pg,sqlite}`: a loop of `atomic_upsert` vs plain Diesel's multi-row
//!   `insert_into(stats).values(&vec).on_conflict(…).do_update()` (`plain_diesel`, PostgreSQL;
//!   SQLite's 32,766 bind parameters hold 8,191 such rows, so it runs there up to 1,000 rows)
//!   vs one `bulk_upsert`, at 1,000 and 10,000 rows.
//! - `get_or_create/sqlite`, `counter/sqlite`: the naive read-then-insert and read-add-write
//!   (each statement on its own, as such code is written) vs `get_or_create` and
//!   `counter::increment`, on a row that exists (`existing`) and, for get-or-create, a new key
//!   on every call (`create`). Their connection runs with `PRAGMA synchronous = NORMAL`: these
//!   writes change the file, and with the default `FULL` each commit waits for an fsync (about
//!   2 ms on this machine's disk, the same for both sides) that would hide the difference.
//!   (The single-row benches rewrite rows with identical bytes, which SQLite does not write
//!   again, so their commits need no fsync: they measure the statements, as these do.)
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
use diesel::upsert::excluded;
use fixture::{stats, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use upsert_kit::db::{connect_sqlite, pg_pool, sqlite_pool};
use upsert_kit::lock::{self, LockKey};
use upsert_kit::{atomic_upsert, bulk_upsert, get_or_create};
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

/// Plain Diesel's upsert of one row, and of many rows in one multi-row `INSERT`: what a Diesel
/// user writes without this crate. Diesel marks every `ON CONFLICT … DO UPDATE` statement
/// unsafe to cache, so it is prepared anew on each call.
macro_rules! plain_diesel {
    ($one:ident, $many:ident, $conn:ty) => {
        fn $one(conn: &mut $conn, row: &Stats) -> QueryResult<usize> {
            use stats::dsl::{created_at, data, stats as table, stats_type, updated_at};
            diesel::insert_into(table)
                .values((
                    stats_type.eq(&row.stats_type),
                    data.eq(&row.data),
                    created_at.eq(row.created_at),
                    updated_at.eq(row.updated_at),
                ))
                .on_conflict(stats_type)
                .do_update()
                .set((data.eq(excluded(data)), updated_at.eq(excluded(updated_at))))
                .execute(conn)
        }

        fn $many(conn: &mut $conn, rows: &[Stats]) -> QueryResult<usize> {
            use stats::dsl::{created_at, data, stats as table, stats_type, updated_at};
            let values: Vec<_> = rows
                .iter()
                .map(|row| {
                    (
                        stats_type.eq(&row.stats_type),
                        data.eq(&row.data),
                        created_at.eq(row.created_at),
                        updated_at.eq(row.updated_at),
                    )
                })
                .collect();
            diesel::insert_into(table)
                .values(&values)
                .on_conflict(stats_type)
                .do_update()
                .set((data.eq(excluded(data)), updated_at.eq(excluded(updated_at))))
                .execute(conn)
        }
    };
}
plain_diesel!(plain_diesel_pg, plain_diesel_many_pg, PgConnection);
plain_diesel!(
    plain_diesel_sqlite,
    plain_diesel_many_sqlite,
    SqliteConnection
);

/// The row of operation `i`, as a request handler has it: a row of its own (a copy of one of
/// the [`KEYS`] stored rows), built and dropped within the operation on every side, so that
/// the coalescing writer, which takes its row by value, and the direct calls, which borrow
/// theirs, pay the same for it.
fn request_row(rows: &[Stats], i: usize) -> Stats {
    rows[i % KEYS].clone()
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

/// The atomic upsert through one coalescing writer (over a pool of its own, made by `pool`),
/// called from one thread and from [`THREADS`] threads at once.
fn coalesced<C>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    threads: &diesel::r2d2::Pool<ConnectionManager<C>>,
    url: &str,
    rows: &[Stats],
    pool: impl Fn(&str) -> diesel::r2d2::Pool<ConnectionManager<C>>,
) where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
    Stats: upsert_kit::Upsertable<C>,
{
    let writer = upsert_kit::coalesce::Coalescer::new(pool(url));
    let mut i = 0_usize;
    g.bench_function(BenchmarkId::new("coalesced", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            writer
                .upsert(request_row(rows, i))
                .expect("coalesced upsert")
        })
    });
    g.bench_function(BenchmarkId::new("coalesced", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(threads, iters, |_, i| {
                writer
                    .upsert(request_row(rows, i as usize))
                    .expect("coalesced upsert");
            })
        })
    });
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
            naive::query_then_upsert(&mut conn, &request_row(&rows, i)).expect("naive upsert")
        })
    });
    g.bench_function(BenchmarkId::new("plain_diesel", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            plain_diesel_pg(&mut conn, &request_row(&rows, i)).expect("plain Diesel upsert")
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            atomic_upsert(&mut conn, &request_row(&rows, i)).expect("atomic upsert")
        })
    });
    g.bench_function(BenchmarkId::new("naive", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                if naive::query_then_upsert(conn, &request_row(&rows, i as usize)).is_err() {
                    naive_errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("plain_diesel", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                plain_diesel_pg(conn, &request_row(&rows, i as usize))
                    .expect("plain Diesel upsert");
            })
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                atomic_upsert(conn, &request_row(&rows, i as usize)).expect("atomic upsert");
            })
        })
    });
    coalesced(&mut g, &pool, url, &rows, |u| pg_pool(u, 2).expect("pool"));
    g.finish();
    report_errors("single_row/pg/naive", &naive_errors);
}

fn single_row_sqlite(c: &mut Criterion, url: &str) {
    let rows = rows(KEYS);
    let mut conn = connect_sqlite(url).expect("open");
    bulk_upsert(&mut conn, &rows).expect("seed");
    let pool = sqlite_pool(url, THREADS as u32).expect("pool");
    let naive_errors = AtomicU64::new(0);
    let plain_errors = AtomicU64::new(0);

    let mut g = c.benchmark_group("single_row/sqlite");
    g.throughput(Throughput::Elements(1));
    let mut i = 0_usize;
    g.bench_function(BenchmarkId::new("naive", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            sqlite_query_then_upsert(&mut conn, &request_row(&rows, i)).expect("naive upsert")
        })
    });
    g.bench_function(BenchmarkId::new("plain_diesel", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            plain_diesel_sqlite(&mut conn, &request_row(&rows, i)).expect("plain Diesel upsert")
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "sequential"), |b| {
        b.iter(|| {
            i += 1;
            atomic_upsert(&mut conn, &request_row(&rows, i)).expect("atomic upsert")
        })
    });
    // A deferred transaction that reads and then writes cannot wait for SQLite's write lock
    // (SQLITE_BUSY at once): the naive pattern fails under threads, the failures are counted.
    g.bench_function(BenchmarkId::new("naive", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                if sqlite_query_then_upsert(conn, &request_row(&rows, i as usize)).is_err() {
                    naive_errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    // Plain Diesel's single statements wait for the write lock in SQLite's busy handler.
    g.bench_function(BenchmarkId::new("plain_diesel", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                if plain_diesel_sqlite(conn, &request_row(&rows, i as usize)).is_err() {
                    plain_errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "8 threads"), |b| {
        b.iter_custom(|iters| {
            on_threads(&pool, iters, |conn, i| {
                atomic_upsert(conn, &request_row(&rows, i as usize)).expect("atomic upsert");
            })
        })
    });
    coalesced(&mut g, &pool, url, &rows, |u| {
        sqlite_pool(u, 2).expect("pool")
    });
    g.finish();
    report_errors("single_row/sqlite/naive", &naive_errors);
    report_errors("single_row/sqlite/plain_diesel", &plain_errors);
}

/// A stats row as stored (what get-or-create returns).
#[derive(Queryable, Selectable)]
#[diesel(table_name = stats)]
#[allow(dead_code)] // read by the benches only as a whole
struct StoredStats {
    id: i64,
    stats_type: String,
    data: serde_json::Value,
    created_at: chrono::NaiveDateTime,
    updated_at: chrono::NaiveDateTime,
}

diesel::table! {
    /// Page views: the counter benches' table.
    hits (page) {
        page -> Text,
        views -> BigInt,
    }
}

upsert_kit::counter! {
    table = hits, key = (page: String), amounts = (views);
    struct Hits;
}

/// The naive get-or-create, each statement on its own: `SELECT` the key, `INSERT … RETURNING`
/// on a miss.
fn sqlite_select_then_insert(conn: &mut SqliteConnection, row: &Stats) -> QueryResult<StoredStats> {
    use stats::dsl::{created_at, data, stats as table, stats_type, updated_at};
    if let Some(found) = table
        .filter(stats_type.eq(&row.stats_type))
        .select(StoredStats::as_select())
        .first(conn)
        .optional()?
    {
        return Ok(found);
    }
    diesel::insert_into(table)
        .values((
            stats_type.eq(&row.stats_type),
            data.eq(&row.data),
            created_at.eq(row.created_at),
            updated_at.eq(row.updated_at),
        ))
        .returning(StoredStats::as_returning())
        .get_result(conn)
}

/// The naive read-add-write of a counter, each statement on its own.
fn sqlite_read_add_write(conn: &mut SqliteConnection, key: &str) -> QueryResult<i64> {
    let views: i64 = hits::table
        .filter(hits::page.eq(key))
        .select(hits::views)
        .first(conn)?;
    diesel::update(hits::table.filter(hits::page.eq(key)))
        .set(hits::views.eq(views + 1))
        .execute(conn)?;
    Ok(views + 1)
}

fn get_or_create_and_counter_sqlite(c: &mut Criterion, url: &str) {
    let mut conn = connect_sqlite(url).expect("open");
    conn.batch_execute(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE hits (page TEXT PRIMARY KEY NOT NULL, views BIGINT NOT NULL DEFAULT 0);
         INSERT INTO hits (page) VALUES ('naive'), ('atomic');",
    )
    .expect("the counter table");
    let existing = rows(1).remove(0);
    bulk_upsert(&mut conn, std::slice::from_ref(&existing)).expect("seed");
    let fresh = |i: u64| Stats {
        stats_type: format!("new-{i}"),
        ..existing.clone()
    };

    let mut g = c.benchmark_group("get_or_create/sqlite");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("naive", "existing"), |b| {
        b.iter(|| sqlite_select_then_insert(&mut conn, &existing).expect("naive get-or-create"))
    });
    g.bench_function(BenchmarkId::new("atomic", "existing"), |b| {
        b.iter(|| get_or_create::<_, _, StoredStats>(&mut conn, &existing).expect("get-or-create"))
    });
    let mut n = 0_u64;
    g.bench_function(BenchmarkId::new("naive", "create"), |b| {
        b.iter(|| {
            n += 1;
            sqlite_select_then_insert(&mut conn, &fresh(n)).expect("naive get-or-create")
        })
    });
    g.bench_function(BenchmarkId::new("atomic", "create"), |b| {
        b.iter(|| {
            n += 1;
            get_or_create::<_, _, StoredStats>(&mut conn, &fresh(n)).expect("get-or-create")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("counter/sqlite");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("naive", "existing"), |b| {
        b.iter(|| sqlite_read_add_write(&mut conn, "naive").expect("naive increment"))
    });
    let key = "atomic".to_owned();
    g.bench_function(BenchmarkId::new("atomic", "existing"), |b| {
        b.iter(|| {
            upsert_kit::counter::increment::<Hits, _>(&mut conn, &key, [1])
                .expect("increment")
                .expect("the row exists")
        })
    });
    g.finish();
}

fn report_errors(name: &str, errors: &AtomicU64) {
    let n = errors.load(Ordering::Relaxed);
    if n > 0 {
        eprintln!("{name}: {n} operations failed (the naive pattern under concurrency)");
    }
}

/// Plain Diesel's multi-row upsert and the largest batch it runs at.
type PlainMany<C> = (fn(&mut C, &[Stats]) -> QueryResult<usize>, usize);

fn bulk<C>(c: &mut Criterion, group: &str, conn: &mut C, loop_max: usize, plain: PlainMany<C>)
where
    C: upsert_kit::conn::WriteConnection,
    Stats: upsert_kit::Upsertable<C::Raw>,
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
        let (plain_many, plain_max) = plain;
        if size <= plain_max {
            g.bench_with_input(BenchmarkId::new("plain_diesel", size), batch, |b, batch| {
                b.iter(|| plain_many(conn, batch).expect("plain Diesel bulk upsert"))
            });
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
    get_or_create_and_counter_sqlite(&mut c, &sqlite_url);
    pg.batch_execute("TRUNCATE stats").expect("truncate");
    bulk(
        &mut c,
        "bulk/pg",
        &mut pg,
        usize::MAX,
        (plain_diesel_many_pg, usize::MAX),
    );
    sqlite.batch_execute("DELETE FROM stats").expect("delete");
    // Each single upsert on SQLite is its own durable commit: the 10,000-row loop would take
    // minutes, so SQLite loops only up to 1,000 rows.
    // Four bind parameters a row: SQLite's 32,766 parameters hold 8,191 rows.
    bulk(
        &mut c,
        "bulk/sqlite",
        &mut sqlite,
        1_000,
        (plain_diesel_many_sqlite, 1_000),
    );
    locks_pg(&mut c, db.url());

    c.final_summary();
    drop((pg, sqlite));
    drop((db, lite));
}
