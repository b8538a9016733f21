// A ledger on a table that is not declared.
diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        fingerprint -> Text,
        result -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

upsert_kit::ledger! {
    table = idempotency_key, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
    pub struct Keys;
}

fn main() {}
