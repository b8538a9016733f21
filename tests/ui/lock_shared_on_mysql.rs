// MySQL's named locks have no shared mode: `lock_shared` refuses a MySQL connection.
use diesel::{Connection, MysqlConnection};
use upsert_kit::lock::{lock_shared, LockKey};

fn main() {
    let mut conn = MysqlConnection::establish("mysql://root@127.0.0.1/test").unwrap();
    let _guard = lock_shared(&mut conn, LockKey::new("reports", 1));
}
