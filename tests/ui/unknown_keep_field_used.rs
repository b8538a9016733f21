// A keep column that is not a field of the struct.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
        created_at -> Timestamp,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku), keep(created))]
struct Product {
    sku: String,
    name: String,
    created_at: chrono::NaiveDateTime,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &Product, rows: &[Product]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
