//! The secrets this process holds, and the scrubber every message and log line goes through.
//!
//! Every [`Secret`](crate::Secret) registers its value here when it is made; the binaries also
//! register the database URL's password and the secrets of their environment before anything
//! else runs. [`scrub`] then removes from a text every registered secret (as written, encoded
//! and in fragments, see [`upsert_kit::db::secret_forms`]) and anything shaped like a
//! credential (`client_secret=…`, `"access_token": "…"`, `Bearer …`, a URL's password),
//! whatever produced the text: this crate's errors, libpq's, an HTTP body, a panic message. The
//! binaries pass their error line, every log line and panic messages through it.

use std::sync::{Mutex, PoisonError};
use upsert_kit::db::{redact_url, scrub_forms, secret_forms, REDACTED};

/// The forms of every registered secret, longest first.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keys whose value is a credential, in forms (`key=value`), query strings, JSON
/// (`"key": "value"`) and keyword/value connection strings.
const CREDENTIAL_KEYS: &[&str] = &[
    "password",
    "client_secret",
    "refresh_token",
    "access_token",
    "id_token",
    "secret",
    "authorization",
];

/// Registers `secret` (ignored when empty): from now on [`scrub`] removes it.
pub fn register(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut all = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    if all.iter().any(|f| f == secret) {
        return;
    }
    all.extend(secret_forms(secret));
    all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    all.dedup();
}

/// Registers the password of a database URL (or connection string), if it has one.
pub fn register_url(url: &str) {
    if let Some(p) = upsert_kit::db::url_password(url) {
        register(&p);
    }
}

/// `text` without any registered secret or anything shaped like a credential.
///
/// ```
/// use sync_jobs::secrets;
/// secrets::register("tok/3n?value-1234");
/// assert_eq!(
///     secrets::scrub("echo: refresh_token=tok%2F3n%3Fvalue-1234&x=1 (tok/3n?value-1234)"),
///     "echo: refresh_token=***&x=1 (***)"
/// );
/// assert_eq!(secrets::scrub(r#"{"access_token": "unknown-to-us"}"#), r#"{"access_token": "***"}"#);
/// assert_eq!(secrets::scrub("Authorization: Bearer abc.def"), "Authorization: ***");
/// assert_eq!(secrets::scrub("see postgres://u:pw@db/x"), "see postgres://u:***@db/x");
/// ```
pub fn scrub(text: &str) -> String {
    let known = {
        let all = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
        scrub_forms(text, &all)
    };
    redact_shapes(&known)
}

/// One JSON log line (an object per line, as a JSON log formatter writes it) with every string
/// in it, names and values, passed through [`scrub`]; written back as one line of valid JSON,
/// without its line end. Scrubbing the decoded strings rather than the encoded line matters: in
/// the encoded line a credential quoted inside a message is escaped
/// (`{\"access_token\": \"…\"}`), where its shape does not match. A line that is not JSON comes
/// back as an object of its own, `{"fields":{"message":"<the line, scrubbed>"}}`.
///
/// ```
/// use sync_jobs::secrets;
/// let line = r#"{"level":"WARN","fields":{"message":"answer: {\"access_token\": \"tok-1\"}"}}"#;
/// let clean = secrets::scrub_json_line(line);
/// assert!(!clean.contains("tok-1"));
/// let value: serde_json::Value = serde_json::from_str(&clean).unwrap();
/// assert_eq!(value["fields"]["message"], r#"answer: {"access_token": "***"}"#);
/// ```
pub fn scrub_json_line(line: &str) -> String {
    use serde_json::Value;
    fn scrub_value(value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(scrub(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(scrub_value).collect()),
            Value::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (scrub(&k), scrub_value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(line.trim_end_matches(['\n', '\r'])) {
        Ok(value) => scrub_value(value).to_string(),
        Err(_) => {
            serde_json::json!({ "fields": { "message": scrub(line.trim_end()) } }).to_string()
        }
    }
}

/// Removes credential-shaped values: `key=value` and `"key": "value"` for the
/// [`CREDENTIAL_KEYS`], `Bearer <token>`, and the password of any URL.
fn redact_shapes(text: &str) -> String {
    let mut out = redact_after(text, "bearer ");
    out = redact_after(&out, "basic ");
    for key in CREDENTIAL_KEYS {
        out = redact_key(&out, key);
    }
    out.split_inclusive(char::is_whitespace)
        .map(|w| {
            if w.contains("://") {
                redact_url(w)
            } else {
                w.to_owned()
            }
        })
        .collect()
}

fn is_value_end(c: char) -> bool {
    matches!(
        c,
        '&' | '"' | '\'' | ',' | ';' | '}' | ']' | ')' | '<' | '>'
    ) || c.is_whitespace()
}

/// Replaces the value after each `key=`, `key:`, `"key": "` (case-insensitive, `key` not part
/// of a longer word).
fn redact_key(text: &str, key: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find(key) {
        let start = from + i;
        let mut j = start + key.len();
        from = j;
        let word_before = start > 0 && {
            let b = bytes[start - 1];
            b.is_ascii_alphanumeric() || b == b'_'
        };
        let word_after = bytes
            .get(j)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if word_before || word_after {
            continue;
        }
        // Optional closing quote of a JSON key, spaces, then `=` or `:`.
        let key_quoted = bytes.get(j) == Some(&b'"');
        if key_quoted {
            j += 1;
        }
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        let Some(&sep) = bytes.get(j).filter(|b| matches!(b, b'=' | b':')) else {
            continue;
        };
        j += 1;
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        let quoted = matches!(bytes.get(j), Some(b'"' | b'\''));
        // `key: value` is how messages name a field (`access_token: missing field`); only
        // JSON's `"key": "value"` is a credential.
        if sep == b':' && !(key_quoted || quoted) {
            continue;
        }
        if quoted {
            j += 1;
        }
        let value_start = j;
        let end = if quoted {
            let q = bytes[j - 1];
            let mut k = j;
            while k < bytes.len() && bytes[k] != q {
                k += if bytes[k] == b'\\' { 2 } else { 1 };
            }
            k.min(bytes.len())
        } else {
            text[j..].find(is_value_end).map_or(text.len(), |k| j + k)
        };
        if end > value_start && &text[value_start..end] != REDACTED {
            out.push_str(&text[copied..value_start]);
            out.push_str(REDACTED);
            copied = end;
        }
        from = end.max(from);
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces the word after each `prefix` (case-insensitive), and the prefix with it.
fn redact_after(text: &str, prefix: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find(prefix) {
        let start = from + i;
        let value = start + prefix.len();
        let end = text[value..]
            .find(is_value_end)
            .map_or(text.len(), |k| value + k);
        from = end.max(value);
        if end > value {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_secret_is_scrubbed_in_every_form_and_fragment() {
        register("Zq9Vx?Kp3Lm/Rt8Wy#Hj4Nb");
        let text = "a Zq9Vx?Kp3Lm/Rt8Wy#Hj4Nb b Zq9Vx%3FKp3Lm%2FRt8Wy%23Hj4Nb c \"Rt8Wy#Hj4Nb@host\" d Kp3Lm";
        let out = scrub(text);
        for piece in ["Zq9Vx", "Kp3Lm", "Rt8Wy", "Hj4Nb"] {
            assert!(!out.contains(piece), "{piece} in {out}");
        }
    }

    #[test]
    fn a_json_lines_strings_are_scrubbed_decoded_where_the_encoded_line_would_keep_a_credential() {
        register("Js0nReg1stered-Secret");
        let line = serde_json::json!({
            "fields": {
                "message": r#"token endpoint said {"refresh_token": "unregistered-rt-77"}"#,
                "url": "https://u:pw-in-url-99@api.example/x",
                "quoted": "a \"Js0nReg1stered-Secret\" b",
            },
            "span": {"name": "sync", "account": 7},
        })
        .to_string();
        // The encoded line hides the credential's shape from a scrub of the whole line...
        assert!(scrub(&line).contains("unregistered-rt-77"));
        // ...but not from a scrub of each decoded string.
        let clean = scrub_json_line(&line);
        for secret in ["unregistered-rt-77", "pw-in-url-99", "Js0nReg1stered"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        let value: serde_json::Value = serde_json::from_str(&clean).unwrap();
        assert_eq!(value["span"]["account"], 7);
        assert_eq!(
            value["fields"]["message"],
            r#"token endpoint said {"refresh_token": "***"}"#
        );
        assert_eq!(
            scrub_json_line("not json password=abc"),
            r#"{"fields":{"message":"not json password=***"}}"#
        );
    }

    #[test]
    fn credential_shapes_are_redacted_whoever_wrote_them() {
        assert_eq!(
            scrub("client_id=1&client_secret=s&grant_type=refresh_token&refresh_token=r"),
            "client_id=1&client_secret=***&grant_type=refresh_token&refresh_token=***"
        );
        assert_eq!(scrub("no tokens here"), "no tokens here");
        assert_eq!(
            scrub("token.access_token: missing field"),
            "token.access_token: missing field"
        );
        assert_eq!(scrub("PASSWORD = 'a b' x"), "PASSWORD = '***' x");
    }
}
