// A table that is not declared: the derive names it at the attribute.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = product)]
#[upsert(key(sku))]
struct Product {
    sku: String,
}

fn main() {}
