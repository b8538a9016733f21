// A counter on a table that is not declared.
diesel::table! {
    api_calls (user_id, day) {
        user_id -> BigInt,
        day -> Date,
        calls -> BigInt,
        bytes -> BigInt,
    }
}

upsert_kit::counter! {
    table = api_call, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
    pub struct ApiCalls;
}

fn main() {}
