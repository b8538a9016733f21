#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod claim;
pub mod counter;
pub mod db;
mod error;
pub mod get_or_create;
pub mod jobs;
pub mod lock;
pub mod naive;
pub mod quota;
pub mod retry;
pub mod schema;
mod tx;
pub mod upsert;
pub mod usage;

pub use crate::{
    get_or_create::{get_or_create, GetOrCreate, Obtained},
    retry::Retry,
};
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
