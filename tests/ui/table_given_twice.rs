// The table said twice, once to Diesel and once to the derive.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(table = products, key(sku))]
struct Product {
    sku: String,
}

fn main() {}
