//! A busy SQLite database (RELIABILITY 26): the connection that gives up waiting for another
//! connection's lock gets [`Error::Busy`], retryable, saying that nothing was applied; the
//! busy timeout is the URL's `busy_timeout` parameter.

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{QueryableByName, RunQueryDsl};
use upsert_kit::db::connect_sqlite;
use upsert_kit::Error;
use upsert_kit_support::TestSqlite;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn rows(conn: &mut diesel::SqliteConnection) -> i64 {
    diesel::sql_query("SELECT COUNT(*) AS n FROM t")
        .get_result::<Count>(conn)
        .unwrap()
        .n
}

#[test]
fn a_writer_that_times_out_on_the_lock_gets_a_retryable_busy_error_and_applied_nothing() {
    let lite = TestSqlite::with_sql("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let mut holder = lite.conn();
    holder
        .batch_execute("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
        .unwrap();

    // No waiting at all: the lock is held, so the first statement that needs it gives up.
    let mut waiter = connect_sqlite(&format!("{}?busy_timeout=0", lite.url())).unwrap();
    let e = upsert_kit::tx::immediate_transaction(&mut waiter, |c| {
        diesel::sql_query("INSERT INTO t VALUES (2)").execute(c)?;
        Ok::<_, Error>(())
    })
    .unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e:?}");
    assert!(e.is_retryable() && !e.is_outcome_unknown(), "{e:?}");
    let message = e.to_string();
    assert!(
        message.starts_with("database busy: ")
            && message.contains("nothing was applied, so retrying can succeed")
            && message.ends_with("database is locked"),
        "{message}"
    );

    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(rows(&mut holder), 1, "the busy writer applied nothing");
    // Retried once the lock is free, the same transaction succeeds.
    upsert_kit::tx::immediate_transaction(&mut waiter, |c| {
        diesel::sql_query("INSERT INTO t VALUES (2)").execute(c)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(rows(&mut holder), 2);
}

#[test]
fn the_busy_timeout_is_the_urls_busy_timeout_parameter() {
    #[derive(QueryableByName)]
    struct Timeout {
        #[diesel(sql_type = BigInt)]
        timeout: i64,
    }
    let lite = TestSqlite::new();
    let timeout = |url: &str| {
        diesel::sql_query("PRAGMA busy_timeout")
            .get_result::<Timeout>(&mut connect_sqlite(url).unwrap())
            .unwrap()
            .timeout
    };
    assert_eq!(
        timeout(lite.url()),
        i64::from(upsert_kit::db::DEFAULT_SQLITE_BUSY_TIMEOUT_MS)
    );
    assert_eq!(
        timeout(&format!("{}?busy_timeout=30000", lite.url())),
        30_000
    );
    assert_eq!(
        timeout(&format!("sqlite://{}?busy_timeout=1", lite.url())),
        1
    );
    let Err(e) = connect_sqlite(&format!("{}?busy_timeout=soon", lite.url())) else {
        panic!("a busy timeout that is not a number was accepted");
    };
    assert!(
        matches!(e, Error::InvalidInput(ref i) if i.field == "busy_timeout"),
        "{e:?}"
    );
    // The pool honours it too.
    let pool =
        upsert_kit::db::sqlite_pool(&format!("{}?busy_timeout=1234", lite.url()), 1).unwrap();
    let got = diesel::sql_query("PRAGMA busy_timeout")
        .get_result::<Timeout>(&mut pool.get().unwrap())
        .unwrap()
        .timeout;
    assert_eq!(got, 1234);
}

diesel::table! {
    /// One row per key, with a payload and a version.
    items (id) {
        id -> BigInt,
        body -> Text,
        version -> BigInt,
    }
}

#[derive(Debug, Clone, upsert_kit::UpsertModel)]
#[upsert(table = items, key(id))]
struct Item {
    id: i64,
    body: String,
    version: i64,
}

const ITEMS_SQL: &str =
    "CREATE TABLE items (id BIGINT PRIMARY KEY NOT NULL, body TEXT NOT NULL, version BIGINT NOT NULL);";

/// The environment variable that makes this test binary the other process of
/// [`writers_of_one_process_queue_for_the_file_and_another_processs_lock_still_times_out_busy`]:
/// the database file it holds the write lock of.
const HOLDER_FILE: &str = "UPSERT_KIT_TEST_LOCK_HOLDER_FILE";

/// What the other process prints once it holds the lock.
const LOCK_HELD: &str = "upsert-kit test: write lock held";

fn item_rows(conn: &mut diesel::SqliteConnection) -> i64 {
    diesel::sql_query("SELECT COUNT(*) AS n FROM items")
        .get_result::<Count>(conn)
        .unwrap()
        .n
}

/// Eight threads upsert `per_thread` rows each (keys `base + t * 1000 + i`) through `pool`,
/// released together; returns each upsert's result.
fn eight_writers(
    pool: &upsert_kit::db::SqlitePool,
    base: i64,
    per_thread: i64,
) -> Vec<Vec<upsert_kit::Result<upsert_kit::UpsertOutcome>>> {
    let pool = pool.clone();
    upsert_kit_support::race(8, move |t| {
        let mut conn = pool.get().unwrap();
        (0..per_thread)
            .map(|i| {
                let id = base + t as i64 * 1_000 + i;
                let row = Item {
                    id,
                    body: format!("row {id}"),
                    version: 1,
                };
                upsert_kit::atomic_upsert(&mut conn, &row)
            })
            .collect()
    })
}

#[test]
fn writers_of_one_process_queue_for_the_file_and_another_processs_lock_still_times_out_busy() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    // The other process: take the file's write lock, say so, hold it until stdin closes.
    if let Ok(file) = std::env::var(HOLDER_FILE) {
        let mut conn = connect_sqlite(&file).unwrap();
        conn.batch_execute(
            "BEGIN IMMEDIATE; INSERT INTO items (id, body, version) VALUES (-1, 'holder', 1);",
        )
        .unwrap();
        // On a line of its own: the test harness has written the test's name without one.
        println!("\n{LOCK_HELD}");
        let mut rest = String::new();
        while std::io::stdin().read_line(&mut rest).unwrap() > 0 {}
        conn.batch_execute("COMMIT").unwrap();
        return;
    }

    let lite = TestSqlite::with_sql(ITEMS_SQL);
    let mut check = lite.conn();

    // One process, eight threads, one pool: every upsert succeeds, every row is there.
    let pool = upsert_kit::db::sqlite_pool(lite.url(), 8).unwrap();
    for (t, results) in eight_writers(&pool, 0, 100).into_iter().enumerate() {
        for (i, result) in results.into_iter().enumerate() {
            assert!(
                matches!(result, Ok(upsert_kit::UpsertOutcome::Inserted)),
                "thread {t}, upsert {i}: {result:?}"
            );
        }
    }
    assert_eq!(item_rows(&mut check), 800);

    // Another process holds the write lock: the queue of this process does not make its
    // writers wait for ever, each gets the busy timeout's retryable error, nothing applied.
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writers_of_one_process_queue_for_the_file_and_another_processs_lock_still_times_out_busy",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_FILE, lite.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while line.trim() != LOCK_HELD {
        line.clear();
        assert!(
            said.read_line(&mut line).unwrap() > 0,
            "the lock holder exited before taking the lock"
        );
    }
    let short = upsert_kit::db::sqlite_pool(&format!("{}?busy_timeout=50", lite.url()), 8).unwrap();
    for (t, results) in eight_writers(&short, 100_000, 1).into_iter().enumerate() {
        let e = results.into_iter().next().unwrap().unwrap_err();
        assert!(matches!(e, Error::Busy(_)), "thread {t}: {e:?}");
        assert!(
            e.is_retryable() && !e.is_outcome_unknown(),
            "thread {t}: {e:?}"
        );
    }
    assert_eq!(
        item_rows(&mut check),
        800,
        "the busy writers applied nothing"
    );

    // The lock released, the same writes succeed.
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success(), "the lock holder failed");
    assert_eq!(item_rows(&mut check), 801);
    for results in eight_writers(&short, 100_000, 1) {
        assert!(matches!(
            results[0],
            Ok(upsert_kit::UpsertOutcome::Inserted)
        ));
    }
    assert_eq!(item_rows(&mut check), 809);
}
