// A key column listed twice.
use upsert_kit::UpsertModel;

diesel::table! {
    usage (account, day) {
        account -> BigInt,
        day -> Date,
        tokens -> BigInt,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = usage)]
#[upsert(key(account, day, account))]
struct Usage {
    account: i64,
    day: chrono::NaiveDate,
    tokens: i64,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &Usage, rows: &[Usage]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}
