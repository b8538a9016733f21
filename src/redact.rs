//! Secrets kept out of messages: database URLs with their password hidden, and texts scrubbed
//! of a known secret in every form a driver or a server may echo it (as written, percent- or
//! form-encoded, JSON-escaped, or cut into fragments at a URL's separators).
//!
//! The crate's own errors pass through here before they are built ([`crate::Error`] never holds
//! a password of a connection URL); a binary scrubs its own texts (an HTTP error body that
//! echoes a client secret) with [`scrub_secret`] or, for many texts and one secret,
//! [`secret_forms`] once and [`scrub_forms`] per text.
//!
//! This module is the foundation's: it imports nothing of the crate.

/// What a redacted password or secret is replaced with.
pub const REDACTED: &str = "***";

/// A value that may be a secret (an idempotency key, a token): reachable in code
/// ([`Redacted::expose`], `Deref`, comparison with a `str`), shown as `***` by `Debug` and
/// `Display`, so that an error or a struct holding one can be logged.
///
/// ```
/// use upsert_kit::redact::Redacted;
/// let key = Redacted::new("order-42:tok_live_abc".to_owned());
/// assert_eq!(format!("{key:?} {key}"), "*** ***");
/// assert!(key == *"order-42:tok_live_abc");
/// assert_eq!(key.expose(), "order-42:tok_live_abc");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Redacted(value)
    }

    /// The value itself: what `Debug` and `Display` hide.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// The value, unwrapped.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Redacted<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> std::fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq<str> for Redacted<String> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Redacted<String> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Secret fragments shorter than this are not scrubbed on their own by [`scrub_secret`] (the
/// whole secret always is): scrubbing every two-letter piece of a password would blank out
/// ordinary words of the message, and a piece that short gives little away.
pub const MIN_SECRET_FRAGMENT: usize = 4;

/// Where the password of a `scheme://user:password@host…` URL lies, as a byte range.
///
/// The userinfo ends at the **last** `@` of the URL, not at the first `/`, `?` or `#`: a user
/// who does not percent-encode may have any of them in the password, and a host never holds an
/// `@`. When a path or query holds an `@` and the URL has no password, this over-redacts,
/// which is the safe side.
fn url_password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let rest_start = url.find("://")? + 3;
    let at = rest_start + url[rest_start..].rfind('@')?;
    let colon = rest_start + url[rest_start..at].find(':')?;
    Some(colon + 1..at)
}

/// The `password=` values of a query string or of a keyword/value connection string
/// (`host=db password='a b'`), as byte ranges (quotes excluded).
fn keyword_password_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    const KEY: &str = "password";
    let lower = text.to_ascii_lowercase();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find(KEY) {
        let key_start = from + i;
        let mut j = key_start + KEY.len();
        from = j;
        let starts_word = key_start == 0
            || matches!(
                text.as_bytes()[key_start - 1],
                b'?' | b'&' | b' ' | b'\t' | b'\n' | b';'
            );
        if !starts_word {
            continue;
        }
        let bytes = text.as_bytes();
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let (start, end) = if bytes.get(j) == Some(&b'\'') {
            let start = j + 1;
            let mut k = start;
            while k < bytes.len() && bytes[k] != b'\'' {
                k += if bytes[k] == b'\\' { 2 } else { 1 };
            }
            (start, k.min(bytes.len()))
        } else {
            let end = text[j..]
                .find(['&', '#', ' ', '\t', '\n', ';'])
                .map_or(text.len(), |k| j + k);
            (j, end)
        };
        if end > start {
            ranges.push(start..end);
        }
        from = end.max(from);
    }
    ranges
}

/// A database URL (or keyword/value connection string) with its password replaced by `***`,
/// safe to print. The password may hold any character, percent-encoded or not (`?`, `/`, `#`,
/// `@`, `%`, `:`): the userinfo is taken to end at the URL's last `@`.
///
/// ```
/// use upsert_kit::redact::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/app"), "postgres://app:***@db:5432/app");
/// assert_eq!(redact_url("postgres://u:p?ss/w0rd@db/app"), "postgres://u:***@db/app");
/// assert_eq!(redact_url("postgres://u:a#b@c%40d:e@db/app?sslmode=disable"), "postgres://u:***@db/app?sslmode=disable");
/// assert_eq!(redact_url("postgres://db/app?password=s3cret"), "postgres://db/app?password=***");
/// assert_eq!(redact_url("host=db password='a b' user=app"), "host=db password='***' user=app");
/// assert_eq!(redact_url("stats.db"), "stats.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut ranges = keyword_password_ranges(url);
    if let Some(r) = url_password_range(url) {
        ranges.retain(|k| k.end <= r.start || k.start >= r.end);
        ranges.push(r);
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&url[at..r.start]);
        out.push_str(REDACTED);
        at = r.end;
    }
    out.push_str(&url[at..]);
    out
}

/// The password a database URL (or keyword/value connection string) carries, as written (not
/// percent-decoded), if any: what [`redact_url`] hides. For scrubbing texts by the secret
/// itself with [`scrub_secret`].
///
/// ```
/// use upsert_kit::redact::url_password;
/// assert_eq!(url_password("postgres://u:p?ss/w0rd@db/app").as_deref(), Some("p?ss/w0rd"));
/// assert_eq!(url_password("postgres://db/app?password=s3cret").as_deref(), Some("s3cret"));
/// assert_eq!(url_password("stats.db"), None);
/// ```
pub fn url_password(url: &str) -> Option<String> {
    url_password_range(url)
        .into_iter()
        .chain(keyword_password_ranges(url))
        .map(|r| url[r].to_owned())
        .find(|p| !p.is_empty())
}

/// Characters that split a secret into the fragments a driver may quote on their own (libpq
/// cuts a URL at `?`, `/`, `#`, `@`, `:`, `&`, `=` and quotes what follows).
const SECRET_SEPARATORS: &[char] = &[
    '?', '/', '#', '@', ':', '&', '=', '%', '+', ';', ',', ' ', '\t', '"', '\'', '\\',
];

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`); with `form`,
/// a space becomes `+` (`application/x-www-form-urlencoded`).
fn percent_encode(s: &str, form: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' if form => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Every text by which `secret` could appear in a message: as written, percent-decoded,
/// percent- and form-encoded (lower- and upper-case hex), JSON-escaped, and each fragment
/// between the separators that drivers cut at (see [`MIN_SECRET_FRAGMENT`]); longest first.
pub fn secret_forms(secret: &str) -> Vec<String> {
    if secret.is_empty() {
        return Vec::new();
    }
    let decoded = percent_decode(secret);
    let mut whole = vec![secret.to_owned(), decoded.clone()];
    for base in [secret, decoded.as_str()] {
        for form in [false, true] {
            let enc = percent_encode(base, form);
            whole.push(lower_hex(&enc));
            whole.push(enc);
        }
        let json = serde_json::to_string(base).unwrap_or_default();
        whole.push(json.trim_matches('"').to_owned());
    }
    let mut forms: Vec<String> = whole.into_iter().filter(|f| !f.is_empty()).collect();
    // Fragments: every piece between two cut points (the ends, and each side of a separator),
    // so that a suffix such as libpq's `"ss/w0rd@host"` quote of `p?ss/w0rd` is covered.
    for base in [secret, decoded.as_str()] {
        let mut cuts = vec![0, base.len()];
        for (i, c) in base.char_indices() {
            if SECRET_SEPARATORS.contains(&c) {
                cuts.push(i);
                cuts.push(i + c.len_utf8());
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        // Bounded: a pathological secret full of separators keeps its single pieces only.
        let all_pairs = cuts.len() <= 64;
        for (n, &a) in cuts.iter().enumerate() {
            let ends: &[usize] = if all_pairs {
                &cuts[n + 1..]
            } else {
                &cuts[n + 1..(n + 2).min(cuts.len())]
            };
            for &b in ends {
                let piece = base[a..b].trim_matches(SECRET_SEPARATORS);
                if piece.chars().count() >= MIN_SECRET_FRAGMENT {
                    forms.push(piece.to_owned());
                }
            }
        }
    }
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// `%2F` → `%2f`: some servers echo percent-encoding in lower case.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for h in chars.by_ref().take(2) {
                out.push(h.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `text` with every appearance of `secret` replaced by `***`: the secret as written, decoded
/// or encoded (see [`secret_forms`]), and its fragments of at least [`MIN_SECRET_FRAGMENT`]
/// characters, as a driver may quote them (libpq quotes the part of a malformed URL after a
/// `?` or `@`). Unlike [`redact_url`] it does not depend on the shape of the text.
///
/// ```
/// use upsert_kit::redact::scrub_secret;
/// let libpq = r#"missing key/value separator "=" in URI query parameter: "ss/w0rd@127.0.0.1:1/db""#;
/// assert_eq!(
///     scrub_secret(libpq, "p?ss/w0rd"),
///     r#"missing key/value separator "=" in URI query parameter: "***@127.0.0.1:1/db""#
/// );
/// assert_eq!(scrub_secret("client_secret=a%2Fb%3Fc", "a/b?c"), "client_secret=***");
/// assert_eq!(scrub_secret("oauth: token a refused", "a"), "oauth: token *** refused");
/// ```
pub fn scrub_secret(text: &str, secret: &str) -> String {
    scrub_forms(text, &secret_forms(secret))
}

/// `text` with each of `forms` (longest first, as [`secret_forms`] gives them) replaced by `***`.
/// A form shorter than [`MIN_SECRET_FRAGMENT`] (a secret of one to three characters) is
/// replaced only where it stands alone, not inside a longer word: `"a"` must not turn
/// `oauth` into `o***uth`.
pub fn scrub_forms(text: &str, forms: &[String]) -> String {
    let mut out = text.to_owned();
    for f in forms {
        if f.is_empty() || !out.contains(f.as_str()) {
            continue;
        }
        if f.chars().count() >= MIN_SECRET_FRAGMENT {
            out = out.replace(f.as_str(), REDACTED);
        } else {
            out = replace_standalone(&out, f);
        }
    }
    out
}

/// Replaces the occurrences of `needle` that no letter, digit or `_` touches.
fn replace_standalone(text: &str, needle: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (i, _) in text.match_indices(needle) {
        if i < copied {
            continue;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        if !word(before) && !word(after) {
            out.push_str(&text[copied..i]);
            out.push_str(REDACTED);
            copied = i + needle.len();
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Removes anything that looks like a password from a driver message (libpq quotes
/// connection strings in some of its errors) and, when it is known, the password itself and
/// its fragments (see [`scrub_secret`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn redact_message_with(message: &str, password: Option<&str>) -> String {
    let shaped = redact_message(message);
    match password {
        Some(p) => scrub_secret(&shaped, p),
        None => shaped,
    }
}

/// Removes anything that looks like a password from a driver message (libpq quotes
/// connection strings in some of its errors).
pub(crate) fn redact_message(message: &str) -> String {
    message
        .trim_end()
        .split_inclusive(char::is_whitespace)
        .map(|w| {
            if w.contains("://") || w.to_ascii_lowercase().contains("password") {
                redact_url(w)
            } else {
                w.to_owned()
            }
        })
        .collect::<String>()
}
