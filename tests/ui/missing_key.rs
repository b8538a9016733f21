// No key at all.
use upsert_kit::Upsert;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(Upsert)]
#[diesel(table_name = products)]
struct Product {
    sku: String,
}

fn main() {}
