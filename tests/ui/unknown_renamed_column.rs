// A field renamed to a column the table does not have: reported at the attribute.
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
    #[diesel(column_name = quantity)]
    amount: i64,
}

fn main() {}
