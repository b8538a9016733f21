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
