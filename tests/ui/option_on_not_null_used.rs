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

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &User, rows: &[User]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
