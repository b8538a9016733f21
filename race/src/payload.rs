//! The stats payload the scenarios write: about 1 KB of JSON, the size the sync jobs store per
//! row. It lives in the workspace's test harness (`upsert_kit_support::payload`), shared with
//! the library's benches; `upsert-race --print-payload` prints it for the pgbench scripts.

pub use upsert_kit_support::payload::stats_payload;
