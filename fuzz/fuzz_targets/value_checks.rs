//! The library's value checks (`upsert_kit::limits`) on any JSON document and any text: they
//! never panic (a document of any depth is checked without recursion), and a document they
//! accept survives the trip through its JSON text unchanged (what every backend stores and
//! Diesel reads back), within the limits they state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upsert_kit::limits::{MAX_JSON_DEPTH, MAX_KEY_BYTES};
use upsert_kit::CheckedValue;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match text.check_key("k") {
            Ok(()) => assert!(
                !text.contains('\0') && !text.trim().is_empty() && text.len() <= MAX_KEY_BYTES
            ),
            Err(e) => assert_eq!(e.field, "k"),
        }
        assert_eq!(text.check("t").is_ok(), !text.contains('\0'));
    }
    // serde_json's reader stops at 128 levels; the checks get whatever it gives.
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if doc.check("doc").is_ok() {
        assert!(
            depth(&doc) <= MAX_JSON_DEPTH,
            "accepted a document {} deep",
            depth(&doc)
        );
        assert!(!has_nul(&doc), "accepted a NUL");
        let text = serde_json::to_string(&doc).expect("a Value serialises");
        let back: serde_json::Value = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, doc, "changed by the trip through its text");
    }
});
