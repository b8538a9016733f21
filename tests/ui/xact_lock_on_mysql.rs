// MySQL has no transaction-scoped named lock: `xact_lock` takes PostgreSQL connections only,
// and a MySQL connection does not compile.
use diesel::{Connection, MysqlConnection};
use upsert_kit::lock::{xact_lock, LockKey};

fn main() {
    let mut conn = MysqlConnection::establish("mysql://root@127.0.0.1/test").unwrap();
    let _ = conn.transaction(|conn| xact_lock(conn, LockKey::new("reports", 1)));
}
