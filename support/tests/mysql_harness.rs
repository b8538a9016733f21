//! Tests of the MySQL/MariaDB side of the harness.

use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::sql_types::{BigInt, Text};
use diesel::{MysqlConnection, RunQueryDsl};
use upsert_kit_support::mysql::{mysql_admin_url, throwaway};
use upsert_kit_support::TestMysql;

fn database_exists(conn: &mut MysqlConnection, name: &str) -> bool {
    diesel::select(
        sql::<BigInt>(
            "(SELECT CAST(count(*) AS SIGNED) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ",
        )
        .bind::<Text, _>(name)
        .sql(")"),
    )
    .get_result::<i64>(conn)
    .expect("query information_schema.SCHEMATA")
        == 1
}

#[test]
fn mysql_admin_url_answers_and_is_the_same_every_time() {
    let url = mysql_admin_url();
    assert_eq!(url, mysql_admin_url());
    upsert_kit::db::connect_mysql(&url).expect("the admin URL answers");
}

#[test]
fn two_test_mysql_databases_are_different_and_dropped_even_with_open_connections() {
    let a = TestMysql::with_sql("CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)");
    let b = TestMysql::new();
    assert_ne!(a.name(), b.name());
    assert!(a
        .name()
        .starts_with(&format!("upsert_kit_t_{}_", std::process::id())));
    a.conn()
        .batch_execute("INSERT INTO notes VALUES (1, 'one')")
        .unwrap();
    assert!(b
        .conn()
        .batch_execute("INSERT INTO notes VALUES (1, 'one')")
        .is_err());

    let mut admin = upsert_kit::db::connect_mysql(&mysql_admin_url()).unwrap();
    let name = a.name().to_owned();
    let mut open = a.conn();
    let pool = a.pool(2);
    let _held = pool.get().unwrap();
    drop(a);
    assert!(!database_exists(&mut admin, &name));
    assert!(
        upsert_kit::db::ping(&mut open).is_err(),
        "the session was ended"
    );
}

#[test]
fn a_throwaway_mariadb_server_serves_test_databases_and_is_removed_with_its_watchdog() {
    let (url, mut watchdog) = throwaway::start().unwrap_or_else(|e| panic!("{e}"));
    assert!(url.starts_with("mysql://root@127.0.0.1:"), "{url}");
    assert!(!url.contains(":3306/"), "its own port: {url}");

    let db = TestMysql::on(&url).unwrap();
    let mut conn = db.conn();
    conn.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (7)")
        .unwrap();
    let n: i64 = diesel::select(sql::<BigInt>("(SELECT CAST(SUM(id) AS SIGNED) FROM t)"))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(n, 7);
    let version: String = diesel::select(sql::<Text>("VERSION()"))
        .get_result(&mut conn)
        .unwrap();
    assert!(version.contains("MariaDB"), "{version}");
    drop(conn);
    drop(db);

    // Closing the pipe (what the kernel does when the test process dies) stops the server
    // and removes its directory.
    drop(watchdog.stdin.take());
    let status = watchdog.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        upsert_kit::db::connect_mysql(&url).is_err(),
        "the server is gone"
    );
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("upsert-kit-mariadb-")
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("mariadbd.log"))
                .is_ok_and(|log| log.contains(&format!("port: {}", port_of(&url))))
        })
        .collect();
    assert!(left.is_empty(), "directory left behind: {left:?}");
}

fn port_of(url: &str) -> String {
    url.rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn test_mysql_on_a_server_that_does_not_answer_names_it_without_the_password() {
    let e = TestMysql::on("mysql://root:s3cret-pw@127.0.0.1:1/test").unwrap_err();
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}
