//! Idempotency keys on SQLite: the claim is PostgreSQL's (`INSERT … ON CONFLICT (key) DO NOTHING
//! RETURNING 1`) inside a `BEGIN IMMEDIATE` transaction; a keyed increment is [`run`](super::run)
//! around the counter's upsert increment; a recorded increment ([`Record`]) is the counter's
//! increment, then `INSERT INTO ledger … SELECT … FROM counter WHERE key RETURNING <columns>`,
//! in one such transaction.

use super::{
    claim_returning, counted, BindLedger, IdempotencyBackend, Record, RecordSql, Recorded, Records,
};
use crate::conn::{BindKey, WriteConnection};
use crate::counter::Counter;
use crate::declare::Output;
use crate::error::{Error, Result};
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

    fn record_once<L, T, C, O>(
        conn: &mut C,
        rec: &Record<'_, L, T>,
        out: &O,
    ) -> Result<Recorded<O::Row>>
    where
        L: Records<T> + BindKey<Self>,
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>,
    {
        Recorded::of(conn.write(|c| {
            if !counted::<L, T, _>(c, rec)? {
                return Ok(Recorded::NoRow);
            }
            let sql = RecordSql::<L, T, Sqlite> {
                rec,
                from: None,
                returning: Some(out.columns()),
            };
            match out.load(c, &sql)?.into_iter().next() {
                Some(row) => Ok(Recorded::Applied(row)),
                None => Err(Error::NotFound("the ledger row returned nothing".into())),
            }
        }))
    }
}
