// A quota whose reservation table lacks the key column (it names it `acct`).
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
        acct -> BigInt,
        amount -> BigInt,
        expires_at -> Timestamp,
    }
}

upsert_kit::quota! {
    table = credits, key = (account: i64), limit = credit_limit, used = used, reserved = reserved;
    reservations = credit_holds(id, amount, expires_at);
    pub struct Credits;
}

fn main() {}
