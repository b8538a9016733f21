// A ledger whose fingerprint column is misspelled.
diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        fingerprint -> Text,
        result -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

upsert_kit::ledger! {
    table = idempotency_keys, key = key, fingerprint = fingerprnt, result = result, created_at = created_at;
    pub struct Keys;
}

fn main() {}
