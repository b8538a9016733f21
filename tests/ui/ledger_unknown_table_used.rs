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

// The ledger used as an adopter uses it.
fn once(conn: &mut diesel::PgConnection, now: chrono::NaiveDateTime) {
    let key = upsert_kit::idempotency::IdempotencyKey::new("order-42").unwrap();
    let _ = upsert_kit::idempotency::run::<Keys, _, _, _>(conn, &key, "sku=a-1", now, |_| {
        Ok(serde_json::Value::Null)
    });
}
