//! Reading JSON payloads with errors that name the source and the field.

use super::error::JobError;
use serde_json::{Map, Value};

/// Parses `text` as JSON, telling malformed, truncated and non-finite input apart.
#[cfg(test)]
pub(crate) fn parse(source_name: &str, text: &str) -> Result<Value, JobError> {
    parse_shaped(source_name, text, &Shape::Value)
}

/// What of a payload a job reads. The parts a job reads are parsed into a [`Value`] (and then
/// checked field by field); everything else is only checked to be valid JSON, with no limit on
/// its depth, and skipped: a field the job does not use is not constrained beyond that.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    /// A value read whole.
    Value,
    /// An object whose listed fields are read, each with its shape; other fields are skipped.
    Object(&'static [(&'static str, Shape)]),
    /// An object whose every field has this shape.
    Map(&'static Shape),
    /// An array whose every element has this shape.
    Array(&'static Shape),
}

/// Parses `text` as JSON, keeping what `shape` reads (see [`Shape`]); errors tell malformed,
/// truncated and non-finite input apart.
pub(crate) fn parse_shaped(
    source_name: &str,
    text: &str,
    shape: &Shape,
) -> Result<Value, JobError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    ShapeSeed(shape)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            use serde_json::error::Category;
            let at = format!("line {} column {}", e.line(), e.column());
            let reason = match e.classify() {
                Category::Eof if text.trim().is_empty() => {
                    "empty input: expected a JSON object".into()
                }
                Category::Eof => format!("truncated JSON: the input ends early ({at})"),
                _ if non_finite_at(text, e.line(), e.column()) => {
                    format!(
                        "non-finite number at {at}: NaN and Infinity are not valid JSON numbers"
                    )
                }
                _ if e.to_string().starts_with("number out of range") => {
                    format!("number out of range at {at}: it does not fit a finite 64-bit float")
                }
                _ => format!("malformed JSON: {e}"),
            };
            JobError::payload(source_name, reason)
        })
}

/// Deserialises a value of `shape`.
struct ShapeSeed<'s>(&'s Shape);

impl<'de> serde::de::DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Shape::Value => serde::Deserialize::deserialize(d),
            shape => d.deserialize_any(ShapeVisitor(shape)),
        }
    }
}

struct ShapeVisitor<'s>(&'s Shape);

impl<'de> serde::de::Visitor<'de> for ShapeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::IgnoredAny;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = match self.0 {
                Shape::Object(fields) => fields.iter().find(|(k, _)| *k == key).map(|(_, s)| s),
                Shape::Map(child) => Some(*child),
                // An object where an array is expected: its kind is kept for the error message.
                Shape::Array(_) | Shape::Value => None,
            };
            match child {
                Some(shape) => {
                    let v = map.next_value_seed(ShapeSeed(shape))?;
                    out.insert(key, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        match self.0 {
            Shape::Array(child) => {
                while let Some(v) = seq.next_element_seed(ShapeSeed(child))? {
                    out.push(v);
                }
            }
            // An array where an object is expected: its kind is kept for the error message.
            _ => while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {},
        }
        Ok(Value::Array(out))
    }
}

/// Whether a `NaN` or `Infinity` literal (as Python's `json.dumps` writes them) starts near
/// the position serde_json stopped at.
fn non_finite_at(text: &str, line: usize, column: usize) -> bool {
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return false;
    };
    let start = column.saturating_sub(1).min(l.len());
    let start = (0..=start)
        .rev()
        .find(|i| l.is_char_boundary(*i))
        .unwrap_or(0);
    let rest = l[start..].trim_start_matches(['-', '+']);
    rest.starts_with("NaN") || rest.starts_with("Infinity") || rest.starts_with("-Infinity")
}

/// Registers the string values of `keys` of `value` (an object) as secrets.
pub(crate) fn register_secrets(value: &Value, keys: &[&str]) {
    for k in keys {
        if let Some(s) = value.get(*k).and_then(Value::as_str) {
            crate::secrets::register(s);
        }
    }
}

/// A JSON object being read, with its path for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub(crate) source: &'a str,
    pub(crate) path: &'a str,
    pub(crate) map: &'a Map<String, Value>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Obj<'a> {
    /// `value` as an object, or a clear error naming `path`.
    pub(crate) fn of(source: &'a str, path: &'a str, value: &'a Value) -> Result<Self, JobError> {
        match value {
            Value::Object(map) => Ok(Obj { source, path, map }),
            other => Err(JobError::payload(
                source,
                format!(
                    "{}: expected an object, found {}",
                    if path.is_empty() { "the payload" } else { path },
                    kind(other)
                ),
            )),
        }
    }

    fn err(&self, key: &str, reason: impl std::fmt::Display) -> JobError {
        JobError::payload(self.source, format!("{}: {reason}", join(self.path, key)))
    }

    /// The field `key`, which must be present and not null.
    pub(crate) fn get(&self, key: &str) -> Result<&'a Value, JobError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Err(self.err(key, "missing field")),
            Some(v) => Ok(v),
        }
    }

    /// The field `key` when present and not null.
    pub(crate) fn opt(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A finite, non-negative number.
    pub(crate) fn amount(&self, key: &str) -> Result<f64, JobError> {
        let v = self.get(key)?;
        let n = v
            .as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, found {}", kind(v))))?;
        if !n.is_finite() {
            return Err(self.err(key, "expected a finite number"));
        }
        if n < 0.0 {
            return Err(self.err(key, format!("expected a non-negative number, found {n}")));
        }
        Ok(n)
    }

    /// A non-negative integer.
    pub(crate) fn count(&self, key: &str) -> Result<u64, JobError> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| {
            self.err(
                key,
                format!("expected a non-negative integer, found {}", describe(v)),
            )
        })
    }

    /// An integer.
    pub(crate) fn int(&self, key: &str) -> Result<i64, JobError> {
        let v = self.get(key)?;
        v.as_i64()
            .ok_or_else(|| self.err(key, format!("expected an integer, found {}", describe(v))))
    }

    /// A non-empty string.
    pub(crate) fn string(&self, key: &str) -> Result<&'a str, JobError> {
        let v = self.get(key)?;
        match v.as_str() {
            Some("") => Err(self.err(key, "expected a non-empty string")),
            // The library refuses such text at the upsert on every backend; refused here, the
            // error names the capture or response and the field.
            Some(s) => match upsert_kit::CheckedValue::check(s, "text") {
                Ok(()) => Ok(s),
                Err(e) => Err(self.err(key, e.reason)),
            },
            None => Err(self.err(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    /// The field `key` as an object; its path is `path` (owned by the caller).
    pub(crate) fn object(&self, key: &str, path: &'a str) -> Result<Obj<'a>, JobError> {
        Obj::of(self.source, path, self.get(key)?)
    }

    /// The field `key` as an array.
    pub(crate) fn array(&self, key: &str) -> Result<&'a Vec<Value>, JobError> {
        let v = self.get(key)?;
        v.as_array()
            .ok_or_else(|| self.err(key, format!("expected an array, found {}", kind(v))))
    }
}

/// A value's kind, and the number itself when it is one (`a number (-3)`).
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> String {
        match parse("t", text) {
            Err(JobError::Payload { reason, .. }) => reason,
            other => panic!("expected a payload error, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(reason("{\"a\": 1").starts_with("truncated JSON"));
        assert!(reason("{\"a\": NaN}").starts_with("non-finite number"));
        assert!(reason("{\"a\": -Infinity}").starts_with("non-finite number"));
        assert!(reason("{\"a\": 1e999}").starts_with("number out of range"));
        assert!(reason("{\"a\": 1,,}").starts_with("malformed JSON"));
        assert!(reason("  ").starts_with("empty input"));
    }

    #[test]
    fn unused_fields_are_only_checked_to_be_json_however_deep() {
        const SHAPE: Shape = Shape::Object(&[("used", Shape::Value)]);
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let deeper = format!("{}{}", "{\"a\":".repeat(100_000), "1") + &"}".repeat(100_000);
        for unused in [
            deep.as_str(),
            deeper.as_str(),
            "1e999",
            "18446744073709551616",
        ] {
            let text = format!(r#"{{"used": 1, "unused": {unused}, "more": {{"x": [{unused}]}}}}"#);
            let v = parse_shaped("t", &text, &SHAPE).unwrap();
            assert_eq!(v, serde_json::json!({"used": 1}));
        }
        // Still JSON: a broken unused field is refused.
        let e = parse_shaped("t", r#"{"used": 1, "unused": [1,}"#, &SHAPE).unwrap_err();
        assert!(e.to_string().starts_with("t: malformed JSON"), "{e}");
        let e = parse_shaped("t", r#"{"used": 1, "unused": [NaN]}"#, &SHAPE).unwrap_err();
        assert!(e.to_string().starts_with("t: non-finite number"), "{e}");
    }

    #[test]
    fn field_errors_name_the_path() {
        let v: Value = serde_json::json!({"t": {"n": "x", "m": -1, "k": 1.5}});
        let root = Obj::of("src", "", &v).unwrap();
        let t = root.object("t", "t").unwrap();
        let msg = |e: JobError| e.to_string();
        assert_eq!(
            msg(t.amount("n").unwrap_err()),
            "src: t.n: expected a number, found a string"
        );
        assert_eq!(
            msg(t.amount("m").unwrap_err()),
            "src: t.m: expected a non-negative number, found -1"
        );
        assert_eq!(
            msg(t.count("k").unwrap_err()),
            "src: t.k: expected a non-negative integer, found 1.5"
        );
        assert_eq!(msg(t.get("z").unwrap_err()), "src: t.z: missing field");
    }
}
