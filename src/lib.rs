#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
// The front page links every primitive; with a backend or r2d2 left out, some of them do not
// exist. Links are checked in full by the build with every feature (CI builds each set).
#![cfg_attr(
    not(all(feature = "postgres", feature = "sqlite", feature = "r2d2")),
    allow(rustdoc::broken_intra_doc_links)
)]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(feature = "postgres")]
pub mod claim;
pub mod conn;
pub mod counter;
pub mod db;
mod declare;
mod error;
pub mod get_or_create;
pub mod idempotency;
#[cfg(feature = "postgres")]
pub mod lock;
pub mod period;
pub mod quota;
pub mod retry;
pub mod tables;
pub mod tx;
pub mod upsert;

pub use crate::{
    get_or_create::{get_or_create, GetOrCreate, Obtained},
    retry::Retry,
    tx::transaction,
};
pub use error::{BoundKind, ConstraintKind, Error, InvalidInput, Result};
pub use upsert::{
    atomic_upsert, atomic_upsert_auth, atomic_upsert_stats, bulk_upsert, AuthModel, BindColumns,
    BindRow, BulkOutcome, CheckedValue, ColumnArrays, StatsModel, Upsert, UpsertMany, UpsertModel,
    UpsertOutcome, Upsertable,
};

#[cfg(not(any(feature = "postgres", feature = "sqlite")))]
compile_error!(
    "upsert-kit needs at least one backend: enable the `postgres` or the `sqlite` feature"
);

#[doc(hidden)]
pub mod __private {
    pub use crate::upsert::model::{ArrayBackend, ArrayBind};
    pub use diesel;
}
