// A keep column that is part of the key: key columns are never updated anyway.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku), keep(sku))]
struct Product {
    sku: String,
    name: String,
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku))]
struct KeptByField {
    #[upsert(keep)]
    sku: String,
    name: String,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store_product(conn: &mut diesel::PgConnection, row: &Product, rows: &[Product]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}

fn store_kept_by_field(conn: &mut diesel::PgConnection, row: &KeptByField, rows: &[KeptByField]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
