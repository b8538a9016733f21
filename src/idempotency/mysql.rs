//! Idempotency keys on MySQL and MariaDB (no `RETURNING`): the claim is `INSERT … ON DUPLICATE
//! KEY UPDATE key = IF((@upsert_kit_hit := nonce) IS NULL, key, key)`, a no-op update that
//! records that the key was taken (not `INSERT IGNORE`, which turns other errors into warnings),
//! then `SELECT 1 … WHERE NOT COALESCE(@upsert_kit_hit = nonce, FALSE)`; the stored result is
//! read `LOCK IN SHARE MODE`. A keyed increment is [`run`](super::run) around the counter's
//! upsert increment; a recorded increment ([`Record`]) is, in one transaction, the counter's
//! increment, `INSERT INTO ledger … SELECT … FROM counter WHERE key` and the read of the new
//! ledger row.

use super::{
    counted, BindLedger, IdempotencyBackend, InsertKeySql, ReadRecordSql, Record, RecordSql,
    Recorded, Records,
};
use crate::conn::{BindKey, WriteConnection};
use crate::counter::Counter;
use crate::declare::Output;
use crate::error::{Error, Result};
use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::BigInt;
use diesel::QueryResult;

impl IdempotencyBackend for Mysql {
    fn claim<L, C>(c: &mut C, key: &str, fingerprint: &str, at: &NaiveDateTime) -> Result<bool>
    where
        L: BindLedger<Self>,
        C: WriteConnection<Backend = Self>,
    {
        let nonce = fastrand::i64(1..);
        let claim = ClaimSql {
            insert: InsertKeySql::<L> {
                key,
                fingerprint,
                at,
                totals_from: None,
                _ledger: std::marker::PhantomData,
            },
            nonce: &nonce,
        };
        c.run_execute(&claim)?;
        Ok(!c.run_ints(&ClaimedSql { nonce: &nonce })?.is_empty())
    }

    fn push_read_lock(out: &mut AstPass<'_, '_, Self>) {
        out.push_sql(" LOCK IN SHARE MODE");
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
        Recorded::of(crate::conn::retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                if !counted::<L, T, _>(c, rec)? {
                    return Ok(Recorded::NoRow);
                }
                c.run_execute(&RecordSql::<L, T, Mysql> {
                    rec,
                    from: None,
                    returning: None,
                })?;
                let read = ReadRecordSql::<L, T, Mysql> {
                    rec,
                    columns: out.columns(),
                    request: true,
                };
                match out.load(c, &read)?.into_iter().next() {
                    Some(row) => Ok(Recorded::Applied(row)),
                    None => Err(Error::NotFound("the new ledger row is gone".into())),
                }
            })
        }))
    }
}

/// The insert of the key, and on a taken key an update that changes nothing but stores the
/// nonce in `@upsert_kit_hit`.
struct ClaimSql<'a, L> {
    insert: InsertKeySql<'a, L>,
    nonce: &'a i64,
}

impl<L: BindLedger<Mysql>> QueryFragment<Mysql> for ClaimSql<'_, L> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        self.insert.walk_ast(out.reborrow())?;
        out.push_sql(" ON DUPLICATE KEY UPDATE ");
        out.push_identifier(L::KEY)?;
        out.push_sql(" = IF((@upsert_kit_hit := ");
        out.push_bind_param::<BigInt, _>(self.nonce)?;
        out.push_sql(") IS NULL, ");
        out.push_identifier(L::KEY)?;
        out.push_sql(", ");
        out.push_identifier(L::KEY)?;
        out.push_sql(")");
        Ok(())
    }
}

/// One row when the claim inserted (`@upsert_kit_hit` is not its nonce).
struct ClaimedSql<'a> {
    nonce: &'a i64,
}

impl QueryFragment<Mysql> for ClaimedSql<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT CAST(1 AS SIGNED) FROM DUAL WHERE NOT COALESCE(@upsert_kit_hit = ");
        out.push_bind_param::<BigInt, _>(self.nonce)?;
        out.push_sql(", FALSE)");
        Ok(())
    }
}
