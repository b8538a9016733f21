//! Idempotency keys on MySQL and MariaDB (no `RETURNING`): the claim is `INSERT … ON DUPLICATE
//! KEY UPDATE key = IF((@upsert_kit_hit := nonce) IS NULL, key, key)`, a no-op update that
//! records that the key was taken (not `INSERT IGNORE`, which turns other errors into warnings),
//! then `SELECT 1 … WHERE NOT COALESCE(@upsert_kit_hit = nonce, FALSE)`; the stored result is
//! read `LOCK IN SHARE MODE`. A keyed increment is [`run`](super::run) around the counter's
//! upsert increment.

use super::{BindLedger, IdempotencyBackend, InsertKeySql};
use crate::conn::WriteConnection;
use crate::error::Result;
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
