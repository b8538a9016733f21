#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod claim;
pub mod db;
mod error;
pub mod jobs;
pub mod lock;
pub mod naive;
pub mod schema;
mod tx;
pub mod upsert;

pub use error::{ConstraintKind, Error, InvalidInput, Result};
pub use upsert::{
    atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, AuthModel, BindColumns,
    BindRow, BulkOutcome, CheckedValue, ColumnArrays, StatsModel, Upsert, UpsertMany, UpsertModel,
    UpsertOutcome, Upsertable,
};

#[doc(hidden)]
pub mod __private {
    pub use crate::upsert::model::{ArrayBackend, ArrayBind};
    pub use diesel;
}
