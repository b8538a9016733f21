// An empty key: there is nothing to conflict on.
use upsert_kit::Upsert;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(Upsert)]
#[diesel(table_name = products)]
#[upsert(key())]
struct Product {
    sku: String,
}

fn main() {}
