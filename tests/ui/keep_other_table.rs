// `Upsert::keep` with a column of another table than the model's.
use diesel::{Connection, SqliteConnection};
use upsert_kit::{Upsert, UpsertModel};

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
    }
}

diesel::table! {
    orders (id) {
        id -> BigInt,
        name -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku))]
struct Product {
    sku: String,
    name: String,
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let row = Product { sku: "a".into(), name: "b".into() };
    let _ = Upsert::new(&row).keep(orders::name).execute(&mut conn);
}
