// No key at all.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
struct Product {
    sku: String,
}

fn main() {}
