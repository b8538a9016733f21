// An `Option` field on a `NOT NULL` column: `None` could not be written.
use upsert_kit::UpsertModel;

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        name -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = users)]
#[upsert(key(email))]
struct User {
    email: String,
    name: Option<String>,
}

fn main() {}
