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
