//! The `backfill-scheduler` binary on a real PostgreSQL server: it schedules, runs the command
//! once per due month, and prints the run's report and the queue's exact state at the end.

use assert_cmd::Command;
use diesel::connection::SimpleConnection;
use upsert_kit_support::TestDb;

const BIN: &str = "backfill-scheduler";

/// The lines the command wrote to `log`, sorted.
fn lines(log: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_run_processes_each_due_month_once_and_prints_its_report_and_the_queues_state() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("months.log");
    // The table exists and holds, before the run: a month another scheduler holds under a live
    // lease, one whose holder died (lease expired a minute ago), and one parked long ago.
    Command::cargo_bin(BIN)
        .unwrap()
        .args(["--database-url", db.url(), "--", "true"])
        .assert()
        .success()
        .stdout(
            "run: 0 done, 0 to retry, 0 parked, 0 lost; expired leases reaped: 0 requeued, 0 parked\n\
             queue: 0 ready, 0 waiting, 0 leased, 0 expired, 0 parked; oldest ready: none\n",
        );
    db.conn()
        .batch_execute(
            "INSERT INTO backfill_log (year, month, status, attempts, holder, locked_until) VALUES
                 (2020, 1, 'processing', 1, 'other', statement_timestamp() + interval '1 hour'),
                 (2020, 2, 'processing', 1, 'dead', statement_timestamp() - interval '1 minute');
             INSERT INTO backfill_log (year, month, status, attempts) VALUES (2020, 3, 'failed', 5);",
        )
        .unwrap();

    // December fails: retried later (after its backoff), not in this run.
    let script = format!(
        "echo \"$BACKFILL_YEAR-$BACKFILL_MONTH\" >> '{}'; echo output-of-the-command; \
         test \"$BACKFILL_MONTH\" != 12",
        log.display()
    );
    let out = Command::cargo_bin(BIN)
        .unwrap()
        .env("DATABASE_URL", db.url())
        .args([
            "--from", "2025-10", "--to", "2026-01", "--holder", "cli-test", "--", "sh", "-c",
            &script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        stdout,
        "run: 4 done, 1 to retry, 0 parked, 0 lost; expired leases reaped: 1 requeued, 0 parked\n\
         queue: 0 ready, 1 waiting, 1 leased, 0 expired, 1 parked; oldest ready: none\n"
    );
    // The command's own output went to stderr, once per month it ran.
    assert_eq!(stderr.matches("output-of-the-command").count(), 5);
    assert_eq!(
        lines(&log),
        ["2020-2", "2025-10", "2025-11", "2025-12", "2026-1"]
    );
}

#[test]
fn a_month_left_ready_shows_in_the_state_with_its_age_and_a_failure_past_the_maximum_is_parked() {
    use diesel::Connection;
    let db = TestDb::new();
    // A run with nothing to do creates the table.
    Command::cargo_bin(BIN)
        .unwrap()
        .args(["--database-url", db.url(), "--", "true"])
        .assert()
        .success();
    // 2021-01: due, scheduled three hours ago; 2021-02: due, scheduled an hour ago, but another
    // transaction holds its row lock during the run (a claim skips it); 2021-03: waiting out a
    // backoff.
    let mut conn = db.conn();
    conn.batch_execute(
        "INSERT INTO backfill_log (year, month, status, attempts, locked_until, created_at) VALUES
             (2021, 1, 'retry', 1, NULL, statement_timestamp() - interval '3 hours'),
             (2021, 2, 'pending', 0, NULL, statement_timestamp() - interval '1 hour'),
             (2021, 3, 'retry', 1, statement_timestamp() + interval '1 hour',
              statement_timestamp() - interval '5 hours')",
    )
    .unwrap();
    let stdout = conn
        .transaction(|conn| {
            conn.batch_execute(
                "SELECT * FROM backfill_log WHERE (year, month) = (2021, 2) FOR UPDATE",
            )?;
            // `false` fails every month it runs; with one attempt allowed, 2021-01 is parked.
            let out = Command::cargo_bin(BIN)
                .unwrap()
                .args([
                    "--database-url",
                    db.url(),
                    "--max-attempts",
                    "1",
                    "--",
                    "false",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            Ok::<_, diesel::result::Error>(String::from_utf8(out.stdout).unwrap())
        })
        .unwrap();
    let (run, queue) = stdout.split_once('\n').unwrap();
    assert_eq!(
        run,
        "run: 0 done, 0 to retry, 1 parked, 0 lost; expired leases reaped: 0 requeued, 0 parked"
    );
    let age: u64 = queue
        .strip_prefix("queue: 1 ready, 1 waiting, 0 leased, 0 expired, 1 parked; oldest ready: ")
        .and_then(|rest| rest.strip_suffix("s\n"))
        .unwrap_or_else(|| panic!("{queue:?}"))
        .parse()
        .unwrap();
    assert!((3600..3660).contains(&age), "{queue:?}");
}

#[test]
fn usage_errors_exit_2_and_a_database_password_is_never_printed() {
    // --from without --to.
    let out = Command::cargo_bin(BIN)
        .unwrap()
        .args([
            "--database-url",
            "postgres://u@127.0.0.1:1/x",
            "--from",
            "2025-01",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));

    // A URL with a password given as a stray argument, and one the server cannot be reached at.
    for args in [
        vec![
            "postgres://app:Sup3r-Secr3t-pw@127.0.0.1:1/app",
            "--",
            "true",
        ],
        vec![
            "--database-url",
            "postgres://app:Sup3r-Secr3t-pw@127.0.0.1:1/app",
            "--",
            "true",
        ],
    ] {
        let out = Command::cargo_bin(BIN)
            .unwrap()
            .args(&args)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}");
        assert!(!all.contains("Sup3r-Secr3t-pw"), "{args:?}: {all}");
        assert!(!all.contains("Secr3t"), "{args:?}: {all}");
    }
}
