//! A WakaTime capture that parses yields rows every backend accepts (as for Strava): the
//! stats of each range as the JSON document the job stores, and the token's fields. Never
//! panics on any input.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use sync_jobs::wakatime::WakatimeCapture;
use upsert_kit::CheckedValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(capture) = WakatimeCapture::parse("fuzz", text) else {
        return;
    };
    for stats in &capture.stats {
        let doc = serde_json::to_value(stats).expect("stats serialise to JSON");
        if let Err(e) = doc.check("data") {
            panic!(
                "parsed, then refused by the upsert: {}: data: {}",
                stats.range, e.reason
            );
        }
        if let Err(e) = stats.range.check_key("stats_type") {
            panic!(
                "parsed, then refused by the upsert: stats_type: {}",
                e.reason
            );
        }
    }
    if let Some(token) = &capture.token {
        common::assert_token_writable(
            token.access_token.expose(),
            token.refresh_token.expose(),
            &token.expires_at,
        );
        if let Some(user) = &token.user_id {
            if let Err(e) = user.check_key("user_id") {
                panic!("parsed, then refused by the upsert: user_id: {}", e.reason);
            }
        }
    }
});
