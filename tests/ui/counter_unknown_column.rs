// A counter whose amount column is misspelled.
diesel::table! {
    api_calls (user_id, day) {
        user_id -> BigInt,
        day -> Date,
        calls -> BigInt,
        bytes -> BigInt,
    }
}

upsert_kit::counter! {
    table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, byte);
    pub struct ApiCalls;
}

fn main() {}
