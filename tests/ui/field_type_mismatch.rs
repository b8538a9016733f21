// A field whose Rust type cannot be written to its column's SQL type.
use upsert_kit::UpsertModel;

diesel::table! {
    orders (id) {
        id -> BigInt,
        qty -> BigInt,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = orders)]
#[upsert(key(id))]
struct Order {
    id: i64,
    qty: i32,
}

fn main() {}
