//! Quotas on MySQL and MariaDB (neither `RETURNING` nor a data-modifying `WITH`): each call is
//! one transaction of the shared conditional statements followed by a read. Consumption is the
//! `UPDATE`, then `SELECT limit, used, reserved`; a reservation the `UPDATE`, the `INSERT` of
//! the reservation and `SELECT LAST_INSERT_ID()`; commit and release lock the quota row
//! (`SELECT … FOR UPDATE`), read the reservation `FOR UPDATE`, `DELETE` it and update the
//! quota. The quota row comes first in every writer, so InnoDB's gap locks on the reservations
//! cannot make reserve and commit deadlock; a deadlock victim outside a caller's transaction
//! is run again.

use super::{
    read_row, sweep_in_steps, BindQuota, HoldSql, InsertReservationSql, LiveReservation, Quota,
    QuotaBackend, QuotaUsage, SettleSql,
};
use crate::conn::{retry_deadlocks, KeyStyle, WriteConnection};
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::BigInt;
use diesel::QueryResult;

impl QuotaBackend for Mysql {
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
        let sql = HoldSql::<Q> {
            key,
            target: Q::USED,
            amount: &amount,
            margin: Some(&margin),
        };
        retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                if c.run_execute(&sql)? == 0 {
                    return Ok(None);
                }
                read_row::<Q, _>(c, key)
            })
        })
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
        retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                let hold = HoldSql::<Q> {
                    key,
                    target: Q::RESERVED,
                    amount: &amount,
                    margin: None,
                };
                if c.run_execute(&hold)? == 0 {
                    return Ok(None);
                }
                let insert = InsertReservationSql::<Q> {
                    key,
                    amount: &amount,
                    expires_at,
                    from: None,
                };
                c.run_execute(&insert)?;
                Ok(c.run_ints(&LastIdSql)?.into_iter().next())
            })
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
        retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                // The quota row first, as `reserve` takes it, so that neither waits on the
                // other's gap lock in the reservations while holding what the other needs.
                c.run_ints(&LockQuotaSql::<Q> { key })?;
                let live = LiveReservation::<Q> {
                    id: &id,
                    key,
                    actual: &actual,
                    at,
                };
                let Some(amount) = c.run_ints(&LockReservationSql(live))?.into_iter().next() else {
                    return Ok(None);
                };
                c.run_execute(&DropSql::<Q> { id: &id, key })?;
                let settle = SettleSql::<Q> {
                    key,
                    actual: &actual,
                    amount: &amount,
                };
                c.run_execute(&settle)?;
                read_row::<Q, _>(c, key)
            })
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

/// `SELECT CAST(LAST_INSERT_ID() AS SIGNED)`: the id the reservation insert generated.
struct LastIdSql;

impl QueryFragment<Mysql> for LastIdSql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT CAST(LAST_INSERT_ID() AS SIGNED)");
        Ok(())
    }
}

/// `SELECT CAST(1 AS SIGNED) FROM q WHERE key FOR UPDATE`: the quota row, locked first.
struct LockQuotaSql<'a, Q: Quota> {
    key: &'a Q::Key,
}

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for LockQuotaSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT CAST(1 AS SIGNED) FROM ");
        Q::walk_table(out.reborrow())?;
        out.push_sql(" WHERE ");
        Q::walk_key(self.key, KeyStyle::Match, out.reborrow())?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}

/// `SELECT amount FROM r <live reservation> FOR UPDATE`.
struct LockReservationSql<'a, Q: Quota>(LiveReservation<'a, Q>);

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for LockReservationSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        out.push_identifier(Q::RESERVATION_AMOUNT)?;
        out.push_sql(" FROM ");
        Q::walk_reservations(out.reborrow())?;
        self.0.walk(&mut out)?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}

/// `DELETE FROM r WHERE id = ? AND key` (after [`LockReservationSql`] read it `FOR UPDATE`).
struct DropSql<'a, Q: Quota> {
    id: &'a i64,
    key: &'a Q::Key,
}

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for DropSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("DELETE FROM ");
        Q::walk_reservations(out.reborrow())?;
        out.push_sql(" WHERE ");
        out.push_identifier(Q::RESERVATION_ID)?;
        out.push_sql(" = ");
        out.push_bind_param::<BigInt, _>(self.id)?;
        out.push_sql(" AND ");
        Q::walk_key(self.key, KeyStyle::Match, out.reborrow())
    }
}
