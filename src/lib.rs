//! upsert-kit: race-free database writes for synchronous cron jobs, on Diesel and r2d2.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod db;
mod error;
pub mod schema;

pub use error::{ConstraintKind, Error, InvalidInput, Result};
