// Claims (`FOR UPDATE SKIP LOCKED`) are PostgreSQL's: an SQLite connection does not compile.
use diesel::{Connection, SqliteConnection};
use upsert_kit::claim::{ClaimQueue, Queue};

diesel::table! {
    tasks (id) {
        id -> BigInt,
        name -> Text,
    }
}

#[derive(Debug, diesel::QueryableByName)]
#[diesel(table_name = tasks)]
struct Task {
    #[allow(dead_code)]
    name: String,
}

impl ClaimQueue for Task {
    type Table = tasks::table;
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let queue = Queue::<Task>::new("worker").unwrap();
    let _ = queue.claim(&mut conn, 1);
}
