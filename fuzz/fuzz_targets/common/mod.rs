//! What the capture fuzzers share: a parsed token's fields must pass the upsert's checks.

use upsert_kit::CheckedValue;

/// Panics when a token field the parser accepted would be refused by the upsert.
pub fn assert_token_writable(access: &str, refresh: &str, expires_at: &chrono::NaiveDateTime) {
    for (field, value) in [("access_token", access), ("refresh_token", refresh)] {
        if let Err(e) = value.check(field) {
            panic!("parsed, then refused by the upsert: {field}: {}", e.reason);
        }
    }
    if let Err(e) = expires_at.check("expires_at") {
        panic!(
            "parsed, then refused by the upsert: expires_at: {}",
            e.reason
        );
    }
}
