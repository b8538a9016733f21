//! Streaming bulk upserts (`upsert::bulk_upsert_stream`) of 10,000, 100,000 and 1,000,000
//! rows on PostgreSQL (a database of its own from the test harness, dropped at the end): rows
//! per second and the peak resident memory of the process, each size in a process of its own
//! (peak RSS only grows), rows generated lazily by the iterator (a ~1 KB stats row each, new
//! keys: every row is inserted), chunks of 5,000 rows, each chunk committed on its own
//! (`Commit::PerChunk`) or all of them in one transaction (`Commit::AllOrNothing`).
//!
//! ```text
//! cargo bench --bench stream                    # 10k, 100k, 1M rows
//! UPSERT_KIT_BENCH_QUICK=1 cargo bench --bench stream   # 10k and 100k
//! ```

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use diesel::connection::SimpleConnection;
use fixture::Stats;
use std::time::Instant;
use upsert_kit::upsert::{bulk_upsert_stream, Commit};
use upsert_kit_support::payload;

/// Set in the child process: the database URL and the row count.
const URL_VAR: &str = "UPSERT_KIT_STREAM_URL";
const ROWS_VAR: &str = "UPSERT_KIT_STREAM_ROWS";
const COMMIT_VAR: &str = "UPSERT_KIT_STREAM_COMMIT";

/// The commit modes measured, by the name the report gives them.
const COMMITS: [(&str, Commit); 2] = [
    ("per-chunk", Commit::PerChunk),
    ("all-or-nothing", Commit::AllOrNothing),
];
/// Rows per chunk (the library's default chunk size).
const CHUNK: usize = upsert_kit::upsert::DEFAULT_CHUNK_SIZE;

/// This process's peak resident set size, in kB (`VmHWM` of `/proc/self/status`).
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn child(url: &str, n: usize, commit: Commit) {
    let mut conn = upsert_kit::db::connect_pg(url).expect("connect");
    conn.batch_execute("TRUNCATE stats").expect("truncate");
    let data = payload::stats_payload(0);
    let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 29)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    let before = peak_rss_kb();
    let rows = (0..n).map(|i| Stats {
        stats_type: format!("key-{i}"),
        data: data.clone(),
        created_at: at,
        updated_at: at,
    });
    let t0 = Instant::now();
    let outcome = bulk_upsert_stream(&mut conn, rows, CHUNK, commit).expect("stream");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(outcome.inserted, n, "every row is new");
    println!(
        "{n} {secs:.3} {:.0} {before} {}",
        n as f64 / secs,
        peak_rss_kb()
    );
}

fn main() {
    if let (Ok(url), Ok(n), Ok(mode)) = (
        std::env::var(URL_VAR),
        std::env::var(ROWS_VAR),
        std::env::var(COMMIT_VAR),
    ) {
        let commit = COMMITS
            .iter()
            .find(|(name, _)| *name == mode)
            .map(|&(_, commit)| commit)
            .expect("a commit mode");
        child(&url, n.parse().expect("a row count"), commit);
        return;
    }
    let quick = std::env::var("UPSERT_KIT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let db = fixture::pg();
    println!(
        "{:>15} {:>10} {:>9} {:>10} {:>16} {:>14}",
        "commit", "rows", "seconds", "rows/s", "RSS before (MB)", "peak RSS (MB)"
    );
    for (mode, _) in COMMITS {
        let mut first_rate = None;
        for &n in sizes {
            let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
                .env(URL_VAR, db.url())
                .env(ROWS_VAR, n.to_string())
                .env(COMMIT_VAR, mode)
                .output()
                .expect("run a size");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{n} rows ({mode}) failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let f: Vec<f64> = stdout
                .split_whitespace()
                .map(|x| x.parse().expect("a figure"))
                .collect();
            let rate = f[2];
            let ratio = rate / *first_rate.get_or_insert(rate);
            println!(
                "{:>15} {:>10} {:>9.2} {:>10.0} {:>16.1} {:>14.1}   {:.2}x the {}-row rate",
                mode,
                n,
                f[1],
                rate,
                f[3] / 1024.0,
                f[4] / 1024.0,
                ratio,
                sizes[0]
            );
        }
    }
}
