//! Quotas on SQLite (no data-modifying `WITH`): consumption is one `UPDATE … RETURNING`; a
//! reservation, a commit or release and a sweep are two statements inside one `BEGIN
//! IMMEDIATE` transaction, which holds the single write lock, so the same sums hold.

use super::{
    consume_returning, sweep_in_steps, BindQuota, HoldSql, InsertReservationSql, LiveReservation,
    QuotaBackend, SettleSql, TakeSql,
};
use crate::conn::WriteConnection;
use crate::declare::Output;
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::sqlite::Sqlite;

impl QuotaBackend for Sqlite {
    fn consume_once<Q, C, O>(
        conn: &mut C,
        key: &Q::Key,
        amount: i64,
        margin: i64,
        out: &O,
    ) -> Result<Option<O::Row>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>,
    {
        consume_returning::<Q, C, O>(conn, key, amount, margin, out)
    }

    fn reserve_once<Q, C, O>(
        conn: &mut C,
        key: &Q::Key,
        amount: i64,
        expires_at: &NaiveDateTime,
        out: &O,
    ) -> Result<Option<O::Row>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>,
    {
        conn.write(|c| {
            let hold = HoldSql::<Q, Sqlite> {
                key,
                target: Q::RESERVED,
                amount: &amount,
                margin: None,
                returning: None,
            };
            if c.run_execute(&hold)? == 0 {
                return Ok(None);
            }
            let insert = InsertReservationSql::<Q, Sqlite> {
                key,
                amount: &amount,
                expires_at,
                from: None,
                returning: Some(out.columns()),
            };
            Ok(out.load(c, &insert)?.into_iter().next())
        })
    }

    fn settle<Q, C, O>(
        conn: &mut C,
        id: i64,
        key: &Q::Key,
        actual: i64,
        at: Option<&NaiveDateTime>,
        out: &O,
    ) -> Result<Option<O::Row>>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>,
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
            let settle = SettleSql::<Q, Sqlite> {
                key,
                actual: &actual,
                amount: &amount,
                returning: Some(out.columns()),
            };
            Ok(out.load(c, &settle)?.into_iter().next())
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
