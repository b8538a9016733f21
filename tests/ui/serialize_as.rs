// `serialize_as`, which the derive does not support: one error at the attribute.
use upsert_kit::UpsertModel;

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
    }
}

struct Name(String);

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku))]
struct Product {
    sku: String,
    #[diesel(serialize_as = String)]
    name: Name,
}

fn main() {}
