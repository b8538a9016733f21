//! A Strava capture that parses yields rows every backend accepts: no capture passes
//! `StravaCapture::parse` only to be refused later by the upsert's value checks (which would
//! fail without naming the capture and field). Never panics on any input.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use sync_jobs::strava::StravaCapture;
use upsert_kit::UpsertModel;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(capture) = StravaCapture::parse("fuzz", text) else {
        return;
    };
    let now = chrono::DateTime::from_timestamp(1_764_590_400, 0)
        .unwrap()
        .naive_utc();
    for row in capture.stats.rows(now) {
        if let Err(e) = row.validate() {
            panic!(
                "parsed, then refused by the upsert: {}: {}",
                e.field, e.reason
            );
        }
    }
    if let Some(token) = &capture.token {
        common::assert_token_writable(
            token.access_token.expose(),
            token.refresh_token.expose(),
            &token.expires_at,
        );
    }
});
