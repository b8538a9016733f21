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

// The counter used as an adopter uses it.
fn count(conn: &mut diesel::PgConnection, day: chrono::NaiveDate) {
    let _ = upsert_kit::counter::upsert_increment::<ApiCalls, _>(conn, &(7, day), [1, 512]);
}
