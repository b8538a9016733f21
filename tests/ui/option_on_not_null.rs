// An `Option` field on a `NOT NULL` column: `None` could not be written.
use upsert_kit::Upsert;

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        name -> Text,
    }
}

#[derive(Upsert)]
#[diesel(table_name = users)]
#[upsert(key(email))]
struct User {
    email: String,
    name: Option<String>,
}

fn main() {}
