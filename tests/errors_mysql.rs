//! Each MySQL/MariaDB error class raised for real by the server, and how the crate classifies
//! it (RELIABILITY 19 on MySQL): deadlock 1213, lock wait timeout 1205, duplicate key 1062 with
//! the key's name, server gone / connection lost 2006 / 2013 before, during and outside a
//! COMMIT, read-only 1290; and passwords of `mysql://` URLs kept out of messages.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use std::sync::{Arc, Barrier};
use upsert_kit::db::{connect_mysql, mysql_pool};
use upsert_kit::{ConstraintKind, Error};
use upsert_kit_support::TestMysql;

diesel::table! {
    accounts (id) {
        id -> BigInt,
        email -> Text,
        balance -> BigInt,
    }
}

#[derive(Debug, Clone, upsert_kit::UpsertModel)]
#[diesel(table_name = accounts)]
#[upsert(key(id))]
struct Account {
    id: i64,
    email: String,
    balance: i64,
}

const SQL: &str = "
CREATE TABLE accounts (id BIGINT NOT NULL PRIMARY KEY, email VARCHAR(255) NOT NULL,
    balance BIGINT NOT NULL, UNIQUE KEY accounts_email (email), CHECK (balance >= 0));
INSERT INTO accounts VALUES (1, 'a@example.com', 10), (2, 'b@example.com', 10);";

fn connection_id(conn: &mut MysqlConnection) -> i64 {
    diesel::select(diesel::dsl::sql::<BigInt>(
        "CAST(CONNECTION_ID() AS SIGNED)",
    ))
    .get_result(conn)
    .unwrap()
}

fn kill(admin: &mut MysqlConnection, id: i64) {
    diesel::sql_query(format!("KILL {id}"))
        .execute(admin)
        .unwrap();
}

fn err(r: diesel::QueryResult<usize>) -> Error {
    Error::from(r.expect_err("the statement should fail"))
}

#[test]
fn a_duplicate_key_is_a_permanent_unique_violation_naming_the_key() {
    let db = TestMysql::with_sql(SQL);
    let mut conn = db.conn();
    let e = err(conn
        .batch_execute("INSERT INTO accounts VALUES (3, 'a@example.com', 1)")
        .map(|_| 0));
    assert!(
        matches!(
            e,
            Error::Constraint {
                kind: ConstraintKind::Unique,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.constraint_name(), Some("accounts_email"), "{e}");
    let e = err(conn
        .batch_execute("INSERT INTO accounts VALUES (1, 'new@example.com', 1)")
        .map(|_| 0));
    assert_eq!(e.constraint_name(), Some("PRIMARY"), "{e}");
    assert!(!e.is_retryable() && !e.is_outcome_unknown());
    let e = err(conn
        .batch_execute("UPDATE accounts SET balance = -1 WHERE id = 1")
        .map(|_| 0));
    assert!(
        matches!(
            e,
            Error::Constraint {
                kind: ConstraintKind::Check,
                ..
            }
        ),
        "{e:?}"
    );
}

/// 1213: two transactions take two rows in opposite orders; InnoDB rolls one back.
#[test]
fn a_deadlock_is_detected_and_retryable() {
    let db = TestMysql::with_sql(SQL);
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [(1, 2), (2, 1)]
        .into_iter()
        .map(|(first, second)| {
            let url = db.url().to_owned();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = connect_mysql(&url).unwrap();
                upsert_kit::transaction(&mut conn, |c| -> upsert_kit::Result<()> {
                    diesel::sql_query("UPDATE accounts SET balance = balance + 1 WHERE id = ?")
                        .bind::<BigInt, _>(first)
                        .execute(c)?;
                    barrier.wait();
                    diesel::sql_query("UPDATE accounts SET balance = balance + 1 WHERE id = ?")
                        .bind::<BigInt, _>(second)
                        .execute(c)?;
                    Ok(())
                })
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let deadlocks: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(deadlocks.len(), 1, "{results:?}");
    assert!(
        matches!(deadlocks[0], Error::Deadlock(_)),
        "{:?}",
        deadlocks[0]
    );
    assert!(deadlocks[0].is_retryable());
}

/// 1205: a row lock held past `innodb_lock_wait_timeout`; the connection stays usable.
#[test]
fn a_lock_wait_timeout_has_its_own_class_and_leaves_the_connection_usable() {
    let db = TestMysql::with_sql(SQL);
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN; UPDATE accounts SET balance = 0 WHERE id = 1")
        .unwrap();
    let mut waiter = db.conn();
    waiter
        .batch_execute("SET SESSION innodb_lock_wait_timeout = 1")
        .unwrap();
    let e =
        err(diesel::sql_query("UPDATE accounts SET balance = 5 WHERE id = 1").execute(&mut waiter));
    assert!(matches!(e, Error::LockTimeout(_)), "{e:?}");
    assert!(!e.is_retryable() && !e.is_outcome_unknown());
    holder.batch_execute("ROLLBACK").unwrap();
    upsert_kit::db::ping(&mut waiter).unwrap();
    let account = Account {
        id: 1,
        email: "a@example.com".into(),
        balance: 7,
    };
    assert_eq!(
        upsert_kit::atomic_upsert(&mut waiter, &account).unwrap(),
        upsert_kit::UpsertOutcome::Updated
    );
}

/// 2006 / 2013: the session killed (`KILL <id>`, as a failover or `wait_timeout` does).
/// Inside a transaction before COMMIT: lost, nothing applied (retryable). An autocommit upsert:
/// outcome unknown. During COMMIT: outcome unknown.
#[test]
fn a_killed_session_is_lost_before_commit_and_unknown_during_commit_or_autocommit() {
    let db = TestMysql::with_sql(SQL);
    let mut admin = db.conn();

    // Before COMMIT.
    let mut conn = db.conn();
    let id = connection_id(&mut conn);
    let r = upsert_kit::transaction(&mut conn, |c| -> upsert_kit::Result<()> {
        diesel::sql_query("UPDATE accounts SET balance = 99 WHERE id = 1").execute(c)?;
        kill(&mut admin, id);
        diesel::sql_query("UPDATE accounts SET balance = 98 WHERE id = 2").execute(c)?;
        Ok(())
    });
    let e = r.unwrap_err();
    assert!(matches!(e, Error::ConnectionLost(_)), "{e:?}");
    assert!(e.is_retryable());
    let balance: i64 = accounts::table
        .find(1)
        .select(accounts::balance)
        .get_result(&mut admin)
        .unwrap();
    assert_eq!(balance, 10, "nothing of the lost transaction was applied");

    // An autocommit statement (the upsert outside any transaction).
    let mut conn = db.conn();
    let id = connection_id(&mut conn);
    kill(&mut admin, id);
    let account = Account {
        id: 3,
        email: "c@example.com".into(),
        balance: 1,
    };
    let e = upsert_kit::atomic_upsert(&mut conn, &account).unwrap_err();
    assert!(matches!(e, Error::OutcomeUnknown(_)), "{e:?}");
    assert!(e.to_string().contains("outside any transaction"), "{e}");

    // During COMMIT: the body's last act kills the session, so the COMMIT is what fails.
    let mut conn = db.conn();
    let id = connection_id(&mut conn);
    let r = upsert_kit::transaction(&mut conn, |c| -> upsert_kit::Result<()> {
        diesel::sql_query("UPDATE accounts SET balance = 50 WHERE id = 2").execute(c)?;
        kill(&mut admin, id);
        Ok(())
    });
    let e = r.unwrap_err();
    assert!(e.is_outcome_unknown(), "{e:?}");
    assert!(e.to_string().contains("during COMMIT"), "{e}");
}

/// 1290: a server running read-only (a replica, or a primary being failed over) refuses the
/// write of a user without the privilege to bypass it; permanent on that server, never
/// "outcome unknown". On a throwaway server of its own, since `read_only` is global.
#[test]
fn a_read_only_server_refuses_writes_with_a_permanent_error() {
    let (admin_url, _watchdog) =
        upsert_kit_support::mysql::throwaway::start().unwrap_or_else(|e| panic!("{e}"));
    let db = TestMysql::on(&admin_url).unwrap();
    let mut admin = connect_mysql(&admin_url).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app-s3cret';
             GRANT ALL ON `{}`.* TO 'app'@'127.0.0.1';",
            db.name()
        ))
        .unwrap();
    db.conn().batch_execute(SQL).unwrap();
    admin.batch_execute("SET GLOBAL read_only = 1").unwrap();
    let app_url = db.url().replacen("root@", "app:app-s3cret@", 1);
    let mut app = connect_mysql(&app_url).unwrap();
    let account = Account {
        id: 9,
        email: "ro@example.com".into(),
        balance: 1,
    };
    let e = upsert_kit::atomic_upsert(&mut app, &account).unwrap_err();
    assert!(
        e.to_string().contains("read-only") || e.to_string().contains("read_only"),
        "{e}"
    );
    assert!(matches!(e, Error::Database(_)), "{e:?}");
    assert!(!e.is_retryable() && !e.is_outcome_unknown());
    admin.batch_execute("SET GLOBAL read_only = 0").unwrap();
    assert_eq!(
        upsert_kit::atomic_upsert(&mut app, &account).unwrap(),
        upsert_kit::UpsertOutcome::Inserted
    );
}

#[test]
fn a_mysql_password_never_reaches_a_message() {
    let url = "mysql://app:p%3Fss%2Fs3cret-w0rd@127.0.0.1:1/app";
    let Err(e) = connect_mysql(url) else {
        panic!("nothing listens on port 1")
    };
    let text = format!("{e} {e:?}");
    assert!(matches!(e, Error::Connect(_)), "{e:?}");
    assert!(text.contains("mysql://app:***@127.0.0.1:1/app"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let e = mysql_pool(url, 1).unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(matches!(e, Error::Pool(_)), "{e:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert_eq!(
        upsert_kit::db::redact_url("mariadb://u:pw@db:3306/app"),
        "mariadb://u:***@db:3306/app"
    );
}

/// 2013: the session killed while its statement runs ("Lost connection to server during
/// query") is a lost connection (the crate's own statements outside a transaction then report
/// an unknown outcome, as the autocommit upsert above shows).
#[test]
fn a_session_killed_during_its_statement_is_a_lost_connection() {
    let db = TestMysql::with_sql(SQL);
    let mut admin = db.conn();
    let mut conn = db.conn();
    let id = connection_id(&mut conn);
    let running = std::thread::spawn(move || {
        diesel::sql_query("UPDATE accounts SET balance = balance + SLEEP(30) WHERE id = 1")
            .execute(&mut conn)
            .map_err(|e| {
                let e = Error::from(e);
                (e.to_string(), matches!(e, Error::ConnectionLost(_)))
            })
    });
    // Wait until the statement is seen running, then end the session.
    loop {
        let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(&format!(
            "(SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE ID = {id} AND INFO LIKE 'UPDATE accounts%')"
        )))
        .get_result(&mut admin)
        .unwrap();
        if n > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill(&mut admin, id);
    let (message, lost) = running.join().unwrap().unwrap_err();
    assert!(lost, "{message}");
    assert!(
        message.contains("Lost connection") || message.contains("gone away"),
        "{message}"
    );
    let balance: i64 = accounts::table
        .find(1)
        .select(accounts::balance)
        .get_result(&mut admin)
        .unwrap();
    assert_eq!(balance, 10, "the killed statement was rolled back");
}
