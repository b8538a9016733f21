// A key column that is not a field of the struct.
use upsert_kit::Upsert;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
    }
}

#[derive(Upsert)]
#[diesel(table_name = products)]
#[upsert(key(skuu))]
struct Product {
    sku: String,
    name: String,
}

fn main() {}
