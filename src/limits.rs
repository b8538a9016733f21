//! The values every backend stores and gives back alike, and the checks that hold a write to
//! them.
//!
//! The backends disagree at the edges: SQLite stores a NUL character in text that PostgreSQL
//! refuses, PostgreSQL's unique index refuses a key SQLite would store, a JSON number can be
//! written on one backend and fail to load on another. So before anything is sent, the upsert,
//! get-or-create, the counters, ledgers and quotas refuse with [`Error::InvalidInput`] naming
//! the field, the same way on every backend (through [`CheckedValue`]):
//!
//! | Value | Refused | Why |
//! |---|---|---|
//! | text (`String`, `&str`) | a NUL character (U+0000) | PostgreSQL's `text` cannot hold it |
//! | JSON (`serde_json::Value`) | a NUL in a string or an object key | PostgreSQL's `jsonb` cannot hold it |
//! | JSON | nesting deeper than [`MAX_JSON_DEPTH`] (32) | MariaDB's limit (MySQL's is 100, serde_json reads 128 levels back) |
//! | JSON | an integer above `i64::MAX` | SQLite stores it, after which Diesel cannot load the row |
//!
//! Every finite JSON float is accepted and reads back exactly: the crate turns on serde_json's
//! `float_roundtrip` feature, without which a float read back could differ in its last digit
//! (SQLite) or, for `f64::MAX` (which `jsonb` prints as 309 digits), fail to load.
//!
//! | Value | Refused | Why |
//! |---|---|---|
//! | a key (text or bytes) | longer than [`MAX_KEY_BYTES`] | the unique index must hold it: PostgreSQL's B-tree entries are at most 2,704 bytes, InnoDB's index keys 3,072, a `VARCHAR(768)` in `utf8mb4` |
//! | a key | empty, blank or `NULL` | not a key |
//! | a float | NaN or infinite | not comparable, not JSON |
//! | a timestamp | outside years 1 to 9999 | SQLite keeps four-digit years as text |
//!
//! Keys are compared byte for byte: `"a"`, `"a "` and `"A"` are three keys on every backend
//! as long as MySQL's key columns are in a binary `NO PAD` collation (see [`MAX_KEY_BYTES`]),
//! as the ready-made tables' are.
//!
//! A value that passes is read back equal, with Diesel, on every backend: a property test
//! writes generated rows through the upsert on each backend and loads them back
//! (`tests/roundtrip.rs`). "Equal" has three documented exceptions, none of which loses
//! information a program can observe through `==`:
//!
//! - **Sub-microsecond time.** PostgreSQL keeps microseconds: Diesel sends a timestamp as
//!   whole microseconds since 2000-01-01, dropping the rest toward that date, so
//!   `2026-12-01 12:00:00.000000900` is stored as `12:00:00.000000` and
//!   `1999-12-31 23:59:59.000000900` as `23:59:59.000001`. SQLite keeps the nanoseconds (its
//!   timestamps are text). MySQL's `DATETIME(6)` keeps microseconds, the rest truncated (down,
//!   whatever the date).
//!   Truncate to microseconds yourself (`DurationRound::trunc_subsecs(6)`) when a value must
//!   compare equal after a round trip on every backend.
//! - **Negative zero.** `jsonb` keeps numbers as `numeric`, which has no `-0`: a JSON `-0.0`
//!   comes back from PostgreSQL as `0.0`; SQLite stores a `REAL` with an integral value as an
//!   integer, so `-0.0` in a `REAL` column comes back as `0.0`, and so does MySQL's `DOUBLE`
//!   (all equal by `==`, not by `to_bits`). PostgreSQL's `DOUBLE PRECISION` keeps the sign.
//! - **A JSON float with an integral value of 10¹⁶ or more** (written `1e16`) comes back from
//!   `jsonb` as the integer it equals; the number is the same (`as_f64()` is equal) but
//!   `serde_json::Value`'s `==` tells a float from an integer.
//!
//! [`Error::InvalidInput`]: crate::Error::InvalidInput
//! [`CheckedValue`]: crate::CheckedValue

use crate::error::InvalidInput;

/// The longest key value (text in UTF-8, or bytes) accepted, in bytes.
///
/// A key is held by a unique index, and each backend bounds an index entry: InnoDB refuses
/// index keys above 3,072 bytes, which is a `VARCHAR(768)` in `utf8mb4` (4 bytes a character);
/// PostgreSQL's B-tree refuses entries above 2,704 bytes (a third of an 8 kB page:
/// `index row size … exceeds btree version 4 maximum 2704`); SQLite has no such bound. 768
/// bytes fit a MySQL key column declared `VARCHAR(768)` whatever the characters, and three such
/// key columns fit PostgreSQL's bound. A key of more long text columns can still exceed it,
/// and a MySQL column declared shorter refuses longer values itself (`Data too long`): the
/// server then refuses the write and nothing is written.
///
/// On MySQL and MariaDB, declare text keys with a binary `NO PAD` collation
/// (`utf8mb4_0900_bin` on MySQL 8.0.17+, `utf8mb4_nopad_bin` on MariaDB): under a `PAD SPACE`
/// collation such as `utf8mb4_bin`, `"a"` and `"a "` are one key there and two keys on
/// PostgreSQL and SQLite, and under the default (case-insensitive) ones `"a"` and `"A"` are
/// one key too. The ready-made tables ([`tables`](crate::tables)) and the README's MySQL
/// tables do; `tests/keys.rs` shows `"a"`, `"a "` and `"A"` as three keys on every backend.
pub const MAX_KEY_BYTES: usize = 768;

/// The deepest JSON document accepted, counted as MySQL and MariaDB count: a scalar or an empty
/// array or object has depth 1, a non-empty array or object one more than its deepest element.
///
/// MariaDB's `JSON` column (a `JSON_VALID` check) refuses documents deeper than 32, MySQL's
/// deeper than 100; serde_json, which Diesel reads JSON with, stops at 128 levels; PostgreSQL
/// and SQLite take deeper ones (that then cannot be loaded).
pub const MAX_JSON_DEPTH: usize = 32;

/// Text: no NUL character.
pub(crate) fn check_text(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    match value.find('\0') {
        None => Ok(()),
        Some(at) => Err(InvalidInput::new(
            field,
            format!(
                "contains a NUL character (U+0000) at byte {at}, which PostgreSQL cannot store \
                 in text"
            ),
        )),
    }
}

/// A key's length, in bytes.
pub(crate) fn check_key_len(field: &'static str, len: usize) -> Result<(), InvalidInput> {
    if len <= MAX_KEY_BYTES {
        Ok(())
    } else {
        Err(InvalidInput::new(
            field,
            format!(
                "a key of {len} bytes is longer than the {MAX_KEY_BYTES} bytes a unique index \
                 holds on every backend"
            ),
        ))
    }
}

/// A JSON document: strings and keys without NUL, integers within `i64`, floats that read
/// back, at most [`MAX_JSON_DEPTH`] deep. Iterative, so any document is checked without
/// recursion.
pub(crate) fn check_json(
    field: &'static str,
    value: &serde_json::Value,
) -> Result<(), InvalidInput> {
    use serde_json::Value;
    let refuse = |reason: String| Err(InvalidInput::new(field, reason));
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Null | Value::Bool(_) => {}
            Value::String(s) => {
                if s.contains('\0') {
                    return refuse(
                        "a JSON string contains a NUL character (U+0000), which PostgreSQL's \
                         jsonb cannot store"
                            .into(),
                    );
                }
            }
            Value::Number(n) => check_json_number(n).or_else(refuse)?,
            Value::Array(items) => {
                if !items.is_empty() && depth >= MAX_JSON_DEPTH {
                    return refuse(too_deep());
                }
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            Value::Object(map) => {
                if !map.is_empty() && depth >= MAX_JSON_DEPTH {
                    return refuse(too_deep());
                }
                for (key, v) in map {
                    if key.contains('\0') {
                        return refuse(
                            "a JSON object key contains a NUL character (U+0000), which \
                             PostgreSQL's jsonb cannot store"
                                .into(),
                        );
                    }
                    stack.push((v, depth + 1));
                }
            }
        }
    }
    Ok(())
}

fn too_deep() -> String {
    format!("JSON nested deeper than {MAX_JSON_DEPTH} levels (MariaDB's limit)")
}

fn check_json_number(n: &serde_json::Number) -> Result<(), String> {
    if n.is_i64() {
        return Ok(());
    }
    if n.is_u64() {
        return Err(format!(
            "the JSON integer {n} is above {} (i64::MAX): SQLite stores it and Diesel then \
             cannot load the row",
            i64::MAX
        ));
    }
    // Every finite float reads back exactly: the crate turns on serde_json's `float_roundtrip`
    // (without it, `f64::MAX`, which `jsonb` prints as 309 digits, would read back as another
    // number or not at all), and serde_json's numbers are never NaN or infinite.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_limits() {
        assert!(check_json("j", &json!({"a": [1, 2.5, "x", null, true]})).is_ok());
        assert!(check_json("j", &json!({"a": "x\u{0}y"})).is_err());
        assert!(check_json("j", &json!({"a\u{0}": 1})).is_err());
        assert!(check_json("j", &json!(u64::MAX)).is_err());
        assert!(check_json("j", &json!(i64::MIN)).is_ok());
        assert!(check_json("j", &json!(f64::MAX)).is_ok());
        assert!(check_json("j", &json!(0.1)).is_ok());
        assert!(check_json("j", &json!(-0.0)).is_ok());
    }

    fn nested(depth: usize) -> serde_json::Value {
        let mut v = json!(1);
        for _ in 1..depth {
            v = json!([v]);
        }
        v
    }

    #[test]
    fn json_depth_is_counted_as_mysql_does() {
        assert!(check_json("j", &nested(MAX_JSON_DEPTH)).is_ok());
        let err = check_json("j", &nested(MAX_JSON_DEPTH + 1)).unwrap_err();
        assert_eq!(err.field, "j");
        assert!(err.reason.contains("deeper than 32"), "{}", err.reason);
        // An empty container at the limit is still within it.
        let mut v = json!([]);
        for _ in 1..MAX_JSON_DEPTH {
            v = json!([v]);
        }
        assert!(check_json("j", &v).is_ok());
    }

    #[test]
    fn text_and_keys() {
        assert!(check_text("t", "plain").is_ok());
        let err = check_text("t", "ab\0c").unwrap_err();
        assert!(err.reason.contains("at byte 2"), "{}", err.reason);
        assert!(check_key_len("k", MAX_KEY_BYTES).is_ok());
        assert!(check_key_len("k", MAX_KEY_BYTES + 1).is_err());
    }
}
