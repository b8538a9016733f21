// A field that is not a column of the table.
use upsert_kit::UpsertModel;

diesel::table! {
    orders (id) {
        id -> BigInt,
        qty -> BigInt,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = orders)]
#[upsert(key(id))]
struct Order {
    id: i64,
    qyt: i64,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &Order, rows: &[Order]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
