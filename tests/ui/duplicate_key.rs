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
