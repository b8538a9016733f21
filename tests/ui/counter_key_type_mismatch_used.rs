// A counter whose key type does not fit its column (`u64` on `BigInt`).
diesel::table! {
    api_calls (user_id, day) {
        user_id -> BigInt,
        day -> Date,
        calls -> BigInt,
        bytes -> BigInt,
    }
}

upsert_kit::counter! {
    table = api_calls, key = (user_id: u64, day: chrono::NaiveDate), amounts = (calls, bytes);
    pub struct ApiCalls;
}

fn main() {}

// The counter used as an adopter uses it.
fn count(conn: &mut diesel::PgConnection, day: chrono::NaiveDate) {
    let _ = upsert_kit::counter::upsert_increment::<ApiCalls, _>(conn, &(7, day), [1, 512]);
}
