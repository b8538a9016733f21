//! Quotas on SQLite (no data-modifying `WITH`): consumption is one `UPDATE … RETURNING`; a
//! reservation, a commit or release and a sweep are two statements inside one `BEGIN
//! IMMEDIATE` transaction, which holds the single write lock, so the same sums hold.

use super::{
    consume_returning, sweep_in_steps, BindQuota, HoldSql, InsertReservationSql, LiveReservation,
    QuotaBackend, QuotaUsage, SettleSql, TakeSql,
};
use crate::conn::WriteConnection;
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::sqlite::Sqlite;

impl QuotaBackend for Sqlite {
    fn consume_once<Q, C>(
        conn: &mut C,
        key: &Q::Key,
        amount: i64,
        margin: i64,
    ) -> Result<Option<QuotaUsage>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
    {
        consume_returning::<Q, C>(conn, key, amount, margin)
    }

    fn reserve_once<Q, C>(
        conn: &mut C,
        key: &Q::Key,
        amount: i64,
        expires_at: &NaiveDateTime,
    ) -> Result<Option<i64>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
    {
        conn.write(|c| {
            let hold = HoldSql::<Q> {
                key,
                target: Q::RESERVED,
                amount: &amount,
                margin: None,
            };
            if c.run_int3(&hold)?.is_empty() {
                return Ok(None);
            }
            let insert = InsertReservationSql::<Q> {
                key,
                amount: &amount,
                expires_at,
                from: None,
            };
            Ok(c.run_ints(&insert)?.into_iter().next())
        })
    }

    fn settle<Q, C>(
        conn: &mut C,
        id: i64,
        key: &Q::Key,
        actual: i64,
        at: Option<&NaiveDateTime>,
    ) -> Result<Option<QuotaUsage>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
    {
        conn.write(|c| {
            let take = TakeSql::<Q>(LiveReservation {
                id: &id,
                key,
                actual: &actual,
                at,
            });
            let Some(amount) = c.run_ints(&take)?.into_iter().next() else {
                return Ok(None);
            };
            let settle = SettleSql::<Q> {
                key,
                actual: &actual,
                amount: &amount,
            };
            Ok(c.run_int3(&settle)?
                .into_iter()
                .next()
                .map(QuotaUsage::from))
        })
    }

    fn sweep<Q, C>(conn: &mut C, key: Option<&Q::Key>, at: &NaiveDateTime) -> Result<i64>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
    {
        sweep_in_steps::<Q, C>(conn, key, at)
    }
}
