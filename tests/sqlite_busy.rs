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
