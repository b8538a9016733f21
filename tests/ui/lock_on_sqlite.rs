// Advisory locks are PostgreSQL's: an SQLite connection does not compile.
use diesel::{Connection, SqliteConnection};
use upsert_kit::lock::{lock, LockKey};

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let _guard = lock(&mut conn, LockKey::new("reports", 1));
}
