// A field that is not a column of the table.
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
    qyt: i64,
}

fn main() {}
