//! The jobs' HTTP client: ureq with timeouts, API errors turned into [`JobError`]s.

use super::error::{JobError, Secret};
use super::json;
use crate::secrets;
use serde_json::Value;
use std::time::Duration;
use upsert_kit::db::redact_url;

/// Largest response body read (stats responses are a few kilobytes).
const MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Longest detail quoted from an error response.
const MAX_DETAIL_CHARS: usize = 200;

/// A synchronous HTTP client for the sync jobs: a connect timeout and a timeout for the whole
/// request (connect, send, receive), no retries (a cron run that fails is run again by cron).
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl HttpClient {
    /// A client whose requests give up after `timeout` in all (and after at most 10 s, or
    /// `timeout` if shorter, to connect).
    ///
    /// ```
    /// let client = sync_jobs::HttpClient::new(std::time::Duration::from_secs(30));
    /// # let _ = client;
    /// ```
    pub fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .http_status_as_error(false)
            .user_agent(concat!("upsert-kit-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpClient { agent }
    }

    /// `GET url` with a bearer token; the JSON body of a 2xx answer (what `shape` reads).
    pub(crate) fn get_json(
        &self,
        url: &str,
        bearer: &Secret,
        shape: &json::Shape,
    ) -> Result<Value, JobError> {
        let endpoint = endpoint("GET", url);
        tracing::debug!(%endpoint, "request");
        let response = self
            .agent
            .get(url)
            .header("Authorization", format!("Bearer {}", bearer.expose()))
            .header("Accept", "application/json")
            .call();
        read(endpoint, response, shape)
    }

    /// `POST url` with a form body (which may hold secrets: it is never logged); the JSON body
    /// of a 2xx answer (what `shape` reads).
    pub(crate) fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, &str)],
        shape: &json::Shape,
    ) -> Result<Value, JobError> {
        let endpoint = endpoint("POST", url);
        tracing::debug!(%endpoint, "request");
        let response = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied());
        read(endpoint, response, shape)
    }
}

/// `METHOD url` for messages, with any credentials of the URL redacted.
pub(crate) fn endpoint(method: &str, url: &str) -> String {
    format!("{method} {}", secrets::scrub(&redact_url(url)))
}

fn read(
    endpoint: String,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    shape: &json::Shape,
) -> Result<Value, JobError> {
    let transport = |endpoint: &str, e: ureq::Error| JobError::Transport {
        endpoint: endpoint.to_owned(),
        message: secrets::scrub(&e.to_string()),
    };
    let mut response = response.map_err(|e| transport(&endpoint, e))?;
    let status = response.status().as_u16();
    tracing::debug!(%endpoint, status, "response");
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_string();
    match status {
        200..=299 => {
            let body = body.map_err(|e| transport(&endpoint, e))?;
            let form = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if form {
                // OAuth servers may answer a token request form-encoded (WakaTime does unless
                // it honours `Accept: application/json`).
                Ok(form_to_json(&body))
            } else {
                json::parse_shaped(&endpoint, &body, shape)
            }
        }
        401 => Err(JobError::Unauthorized { endpoint }),
        429 => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            Err(JobError::RateLimited {
                endpoint,
                retry_after,
            })
        }
        _ => Err(JobError::Api {
            endpoint,
            status,
            detail: body.ok().and_then(|b| error_detail(&b)),
        }),
    }
}

/// A form-encoded body (`a=1&b=x%3Ay`) as a JSON object of strings; numbers stay text except
/// `expires_in` and `expires_at` when they are integers.
fn form_to_json(body: &str) -> Value {
    let mut map = serde_json::Map::new();
    for pair in body.trim().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        let value = match (k.as_str(), v.parse::<i64>()) {
            ("expires_in" | "expires_at", Ok(n)) => Value::from(n),
            _ => Value::String(v),
        };
        map.insert(k, value);
    }
    Value::Object(map)
}

/// Decodes `+` and `%XX` of a form-encoded component (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `Retry-After` value: delay seconds, or an HTTP date (a date in the past means now).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let seconds = (at.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(seconds.unsigned_abs()))
}

/// The human message of a JSON error body (`message`, `error_description` or `error`), on one
/// line, scrubbed of every secret the process holds and of anything shaped like a credential
/// ([`secrets::scrub`]), and only then shortened (shortening first could cut a secret into a
/// piece the scrubber no longer recognises). Other bodies are not quoted: they could echo
/// anything. The raw body is never logged.
fn error_detail(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let text = ["message", "error_description", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))?;
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let scrubbed = secrets::scrub(&one_line);
    let mut capped: String = scrubbed.chars().take(MAX_DETAIL_CHARS).collect();
    if capped.len() < scrubbed.len() {
        capped.push('…');
    }
    Some(capped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(300)).to_rfc2822();
        let d = retry_after(&soon).unwrap().as_secs();
        assert!((295..=300).contains(&d), "{d}");
        assert_eq!(retry_after("later"), None);
    }

    #[test]
    fn form_encoded_token_responses_become_json() {
        let v = form_to_json(
            "access_token=waka_tok_1&refresh_token=waka_ref_1&uid=u%2B1&expires_at=2027-11-29T03%3A12%3A44Z&expires_in=3600&scope=read_stats+email&bad=%zz%",
        );
        assert_eq!(v["access_token"], "waka_tok_1");
        assert_eq!(v["uid"], "u+1");
        assert_eq!(v["expires_at"], "2027-11-29T03:12:44Z");
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(v["scope"], "read_stats email");
        assert_eq!(v["bad"], "%zz%");
    }

    #[test]
    fn error_details_are_quoted_from_json_messages_only() {
        assert_eq!(
            error_detail(r#"{"message":"Bad\nRequest"}"#).as_deref(),
            Some("Bad Request")
        );
        assert_eq!(error_detail("<html>token=abc</html>"), None);
        crate::secrets::register("echoed-secret-1234");
        let echo = r#"{"message":"bad form: client_id=1&client_secret=echoed-secret-1234&refresh_token=r-unknown"}"#;
        assert_eq!(
            error_detail(echo).as_deref(),
            Some("bad form: client_id=1&client_secret=***&refresh_token=***")
        );
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        assert_eq!(
            error_detail(&long).unwrap().chars().count(),
            MAX_DETAIL_CHARS + 1
        );
    }
}
