// A table that is not declared: the derive names it at the attribute.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = product)]
#[upsert(key(sku))]
struct Product {
    sku: String,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &Product, rows: &[Product]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
