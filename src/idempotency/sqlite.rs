//! Idempotency keys on SQLite: the claim is PostgreSQL's (`INSERT … ON CONFLICT (key) DO NOTHING
//! RETURNING 1`) inside a `BEGIN IMMEDIATE` transaction; a keyed increment is [`run`](super::run)
//! around the counter's upsert increment.

use super::{claim_returning, BindLedger, IdempotencyBackend};
use crate::conn::WriteConnection;
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::sqlite::Sqlite;

impl IdempotencyBackend for Sqlite {
    fn claim<L, C>(c: &mut C, key: &str, fingerprint: &str, at: &NaiveDateTime) -> Result<bool>
    where
        L: BindLedger<Self>,
        C: WriteConnection<Backend = Self>,
    {
        claim_returning::<L, C>(c, key, fingerprint, at)
    }
}
