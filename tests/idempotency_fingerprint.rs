//! `idempotency::fingerprint_json`: a fingerprint made from the payload, so that a retried
//! request replays its result and a changed one is an `IdempotencyConflict`, on every backend.

use serde_json::{json, Value};
use upsert_kit::idempotency::{fingerprint, fingerprint_json, run, IdempotencyKey};
use upsert_kit::tables::{create_tables, IdempotencyKeys};
use upsert_kit::Error;
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

/// Payloads with every kind of JSON value, nested, and strings that need escaping.
fn payloads() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(-17),
        json!(u64::MAX),
        json!(2.5e-8),
        json!("quote \" backslash \\ newline \n tab \t nul-free \u{7f} é 🦀"),
        json!([]),
        json!({}),
        json!([1, [2, [3, {}]], "x"]),
        json!({
            "z": 1,
            "a": { "y": [true, null, { "b": "c", "a": "d" }], "x": -0.5 },
            "m": "\u{1}",
            "é": [],
        }),
    ]
}

#[test]
fn the_json_fingerprint_is_that_of_the_compact_text_with_sorted_keys() {
    for payload in payloads() {
        // serde_json (without `preserve_order`) keeps object keys sorted, so its compact text
        // is the canonical one.
        let text = payload.to_string();
        assert_eq!(
            fingerprint_json(&payload),
            fingerprint(text.as_bytes()),
            "{text}"
        );
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            fingerprint_json(&parsed),
            fingerprint_json(&payload),
            "{text}"
        );
    }
}

#[test]
fn the_json_fingerprint_ignores_key_order_and_tells_every_change_apart() {
    let sent: Value = serde_json::from_str(r#"{"sku":"a-1","qty":2,"tags":["x","y"]}"#).unwrap();
    let resent: Value =
        serde_json::from_str(r#"{ "tags": ["x", "y"], "qty": 2, "sku": "a-1" }"#).unwrap();
    assert_eq!(fingerprint_json(&sent), fingerprint_json(&resent));
    for changed in [
        json!({ "sku": "a-1", "qty": 3, "tags": ["x", "y"] }),
        json!({ "sku": "a-1", "qty": 2.0, "tags": ["x", "y"] }),
        json!({ "sku": "a-1", "qty": 2, "tags": ["y", "x"] }),
        json!({ "sku": "a-1", "qty": 2, "tags": ["x", "y"], "note": null }),
        json!({ "sku": "a-1 ", "qty": 2, "tags": ["x", "y"] }),
        json!([{ "sku": "a-1", "qty": 2, "tags": ["x", "y"] }]),
    ] {
        assert_ne!(
            fingerprint_json(&sent),
            fingerprint_json(&changed),
            "{changed}"
        );
    }
    let fingerprints: std::collections::HashSet<String> =
        payloads().iter().map(fingerprint_json).collect();
    assert_eq!(fingerprints.len(), payloads().len());
}

/// A retry of a request whose JSON keys come in another order replays the first result; the
/// same key with a changed payload is refused, and nothing runs twice.
macro_rules! retried_and_changed_payloads {
    ($conn:expr) => {{
        let conn = $conn;
        create_tables(conn).unwrap();
        let at = chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let key = IdempotencyKey::new("order-42").unwrap();
        let order = json!({ "sku": "a-1", "qty": 2 });
        let first =
            run::<IdempotencyKeys, _, _, _>(conn, &key, &fingerprint_json(&order), at, |_| {
                Ok(json!({ "order": 42 }))
            })
            .unwrap();
        assert!(first.applied);
        let retried: Value = serde_json::from_str(r#"{"qty":2,"sku":"a-1"}"#).unwrap();
        let again =
            run::<IdempotencyKeys, _, _, _>(conn, &key, &fingerprint_json(&retried), at, |_| -> upsert_kit::Result<Value> {
                panic!("a retry runs nothing")
            })
            .unwrap();
        assert_eq!((again.value, again.applied), (json!({ "order": 42 }), false));
        let changed = json!({ "sku": "a-1", "qty": 3 });
        let refused =
            run::<IdempotencyKeys, _, _, _>(conn, &key, &fingerprint_json(&changed), at, |_| -> upsert_kit::Result<Value> {
                panic!("a changed payload runs nothing")
            });
        assert!(
            matches!(refused, Err(Error::IdempotencyConflict { ref key }) if key == "order-42"),
            "{refused:?}"
        );
    }};
}

#[test]
fn a_retried_payload_replays_and_a_changed_one_conflicts_on_postgres() {
    let db = TestDb::new();
    retried_and_changed_payloads!(&mut db.conn());
}

#[test]
fn a_retried_payload_replays_and_a_changed_one_conflicts_on_sqlite() {
    let db = TestSqlite::new();
    retried_and_changed_payloads!(&mut db.conn());
}

#[test]
fn a_retried_payload_replays_and_a_changed_one_conflicts_on_mysql() {
    let db = TestMysql::new();
    retried_and_changed_payloads!(&mut db.conn());
}
