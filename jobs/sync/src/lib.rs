//! The toolkit's first adopters: the Strava and WakaTime sync jobs (the `strava-sync` and
//! `wakatime-sync` binaries). This crate depends on `upsert-kit` exactly as an outside crate
//! would: its public API only. The jobs' own tables ([`schema`]) and their migrations ([`db`])
//! live here.
//!
//! Each job is one cron run: read the stored OAuth token, refresh it when it is about to
//! expire (once, however many runs start together), fetch the stats, upsert one row per stats
//! type, and report what changed ([`SyncSummary`]). Offline, a capture of the API's responses
//! stands in for the API (`examples/data/`). [`run`] describes the transactions and locks.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod db;
mod error;
mod http;
mod json;
pub mod models;
pub mod run;
pub mod schema;
pub mod secrets;
pub mod strava;
pub mod wakatime;

pub use error::{JobError, Secret};
pub use http::HttpClient;
pub use run::{AuthOutcome, StatsCounts, SyncConnection, SyncDatabase, SyncSummary, TokenLock};

/// Reads a capture from `path`, or from stdin when `path` is `-`. Returns the text and the
/// name to use in error messages (the path, or `stdin`).
///
/// ```
/// let (text, name) = sync_jobs::read_capture("examples/data/strava.json")?;
/// assert_eq!(name, "examples/data/strava.json");
/// assert!(text.contains("ytd_ride_totals"));
/// let err = sync_jobs::read_capture("no/such/file.json").unwrap_err();
/// assert!(err.to_string().starts_with("no/such/file.json: cannot read"));
/// # Ok::<(), sync_jobs::JobError>(())
/// ```
///
/// # Errors
/// [`JobError::Payload`] when the file cannot be read or is not UTF-8.
pub fn read_capture(path: &str) -> Result<(String, String), JobError> {
    use std::io::Read;
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| JobError::payload("stdin", format!("cannot read: {e}")))?;
        Ok((text, "stdin".to_owned()))
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| JobError::payload(path, format!("cannot read: {e}")))?;
        Ok((text, path.to_owned()))
    }
}
