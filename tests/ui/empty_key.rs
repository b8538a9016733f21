// An empty key: there is nothing to conflict on.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key())]
struct Product {
    sku: String,
}

fn main() {}
