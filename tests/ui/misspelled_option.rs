// A misspelled option (`kye` for `key`): one error at it, none for the key it would have given.
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
#[upsert(kye(sku))]
struct Product {
    sku: String,
    name: String,
}

fn main() {}
