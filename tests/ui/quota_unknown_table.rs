// A quota on a table that is not declared.
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
    table = credit, key = (account: i64), limit = credit_limit, used = used, reserved = reserved;
    reservations = credit_holds(id, amount, expires_at);
    pub struct Credits;
}

fn main() {}
