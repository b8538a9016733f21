// A field type that PostgreSQL takes and SQLite does not (`uuid::Uuid` on a `Uuid` column): the
// model compiles and upserts on PostgreSQL; its use on SQLite is refused at that call.
use diesel::{Connection, SqliteConnection};
use upsert_kit::UpsertModel;

diesel::table! {
    devices (id) {
        id -> Uuid,
        serial -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = devices)]
#[upsert(key(serial))]
struct Device {
    id: uuid::Uuid,
    serial: String,
}

fn store(conn: &mut diesel::PgConnection, row: &Device, rows: &[Device]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let row = Device { id: uuid::Uuid::nil(), serial: "a".into() };
    let _ = upsert_kit::atomic_upsert(&mut conn, &row);
}
