//! The jobs' HTTP client: ureq with timeouts, API errors turned into [`JobError`]s.

use super::error::{JobError, Secret};
use super::json;
use serde_json::Value;
use std::time::Duration;

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
    /// let client = upsert_kit::jobs::HttpClient::new(std::time::Duration::from_secs(30));
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

    /// `GET url` with a bearer token; the JSON body of a 2xx answer.
    pub(crate) fn get_json(&self, url: &str, bearer: &Secret) -> Result<Value, JobError> {
        let endpoint = format!("GET {url}");
        tracing::debug!(%endpoint, "request");
        let response = self
            .agent
            .get(url)
            .header("Authorization", format!("Bearer {}", bearer.expose()))
            .header("Accept", "application/json")
            .call();
        read(endpoint, response)
    }

    /// `POST url` with a form body (which may hold secrets: it is never logged); the JSON body
    /// of a 2xx answer.
    pub(crate) fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<Value, JobError> {
        let endpoint = format!("POST {url}");
        tracing::debug!(%endpoint, "request");
        let response = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied());
        read(endpoint, response)
    }
}

fn read(
    endpoint: String,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, JobError> {
    let transport = |endpoint: &str, e: ureq::Error| JobError::Transport {
        endpoint: endpoint.to_owned(),
        message: e.to_string(),
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
            json::parse(&endpoint, &body)
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
/// line and shortened. Other bodies are not quoted: they could echo anything.
fn error_detail(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let text = ["message", "error_description", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))?;
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_CHARS)
        .collect();
    Some(one_line)
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
    fn error_details_are_quoted_from_json_messages_only() {
        assert_eq!(
            error_detail(r#"{"message":"Bad\nRequest"}"#).as_deref(),
            Some("Bad Request")
        );
        assert_eq!(error_detail("<html>token=abc</html>"), None);
    }
}
