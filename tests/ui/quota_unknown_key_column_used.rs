// A quota whose key column is misspelled.
diesel::table! {
    credits (account) {
        account -> BigInt,
        credit_limit -> BigInt,
        used -> BigInt,
        reserved -> BigInt,
    }
}

diesel::table! {
    credit_holds (id) {
        id -> BigInt,
        account -> BigInt,
        amount -> BigInt,
        expires_at -> Timestamp,
    }
}

upsert_kit::quota! {
    table = credits, key = (acount: i64), limit = credit_limit, used = used, reserved = reserved;
    reservations = credit_holds(id, amount, expires_at);
    pub struct Credits;
}

fn main() {}

// The quota used as an adopter uses it.
fn hold(conn: &mut diesel::PgConnection, now: chrono::NaiveDateTime) {
    let ttl = std::time::Duration::from_secs(60);
    let _ = upsert_kit::quota::reserve::<Credits, _>(conn, &7, 80, ttl, now);
}
