// A misspelled option (`kye` for `key`): one error at it, none for the key it would have given.
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
#[upsert(kye(sku))]
struct Product {
    sku: String,
    name: String,
}

fn main() {}
