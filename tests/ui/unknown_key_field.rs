// A key column that is not a field of the struct.
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
#[upsert(key(skuu))]
struct Product {
    sku: String,
    name: String,
}

fn main() {}
