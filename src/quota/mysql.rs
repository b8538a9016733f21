//! Quotas on MySQL and MariaDB (neither `RETURNING` nor a data-modifying `WITH`). Consumption
//! is the shared conditional `UPDATE`, leaving `limit, used, reserved` in session variables,
//! then their `SELECT`: two round trips, no transaction (the `_returning` form: the `UPDATE`
//! and a read of the caller's columns in one transaction). Reserve, commit and release are one
//! transaction each: a reservation is the `UPDATE`, the `INSERT … SELECT` of the reservation
//! and the read of the row `LAST_INSERT_ID()` names; commit and release lock the quota row
//! (`SELECT … FOR UPDATE`), read the reservation `FOR UPDATE`, `DELETE` it and update the
//! quota. The quota row comes first in every writer, so InnoDB's gap locks on the reservations
//! cannot make reserve and commit deadlock; a deadlock victim outside a caller's transaction
//! is run again.

use super::{
    rcol, read_row, sweep_in_steps, BindQuota, HoldSql, InsertReservationSql, LiveReservation,
    Quota, QuotaBackend, SettleSql,
};
use crate::conn::{retry_deadlocks, KeyStyle, WriteConnection};
use crate::declare::Output;
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

impl QuotaBackend for Mysql {
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
        let sql = HoldSql::<Q, Mysql> {
            key,
            target: Q::USED,
            amount: &amount,
            margin: Some(&margin),
            returning: None,
        };
        if let Some(row) = out.ints_row() {
            // The usage alone: one statement that leaves it in session variables, then their
            // read; the row lock is held for the statement only.
            let tracked = TrackedHoldSql(&sql);
            return retry_deadlocks(conn, |c| {
                if c.run_execute(&tracked)? == 0 {
                    return Ok(None);
                }
                let usage = c.run_int3(&ReadUsageSql)?.pop();
                Ok(usage.map(row))
            });
        }
        retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                if c.run_execute(&sql)? == 0 {
                    return Ok(None);
                }
                read_row::<Q, _, _>(c, key, out)
            })
        })
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
        retry_deadlocks(conn, |conn| {
            conn.write(|c| {
                let hold = HoldSql::<Q, Mysql> {
                    key,
                    target: Q::RESERVED,
                    amount: &amount,
                    margin: None,
                    returning: None,
                };
                if c.run_execute(&hold)? == 0 {
                    return Ok(None);
                }
                let insert = InsertReservationSql::<Q, Mysql> {
                    key,
                    amount: &amount,
                    expires_at,
                    from: None,
                    returning: None,
                };
                c.run_execute(&insert)?;
                let read = ReadReservationSql::<Q> {
                    columns: out.columns(),
                    _quota: std::marker::PhantomData,
                };
                Ok(out.load(c, &read)?.into_iter().next())
            })
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
                let Some(amount) = c.run_ints(&LockReservationSql(&live))?.pop() else {
                    return Ok(None);
                };
                c.run_execute(&DropSql(&live))?;
                let settle = SettleSql::<Q, Mysql> {
                    key,
                    actual: &actual,
                    amount: &amount,
                    returning: None,
                };
                c.run_execute(&settle)?;
                read_row::<Q, _, _>(c, key, out)
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

/// `SELECT <columns> FROM r WHERE r.id = LAST_INSERT_ID()`: the reservation just inserted.
struct ReadReservationSql<'a, Q> {
    columns: &'a dyn QueryFragment<Mysql>,
    _quota: std::marker::PhantomData<Q>,
}

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for ReadReservationSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        self.columns.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        Q::walk_reservations(out.reborrow())?;
        out.push_sql(" WHERE ");
        rcol::<Q, Mysql>(&mut out, Q::RESERVATION_ID)?;
        out.push_sql(" = LAST_INSERT_ID()");
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
struct LockReservationSql<'a, Q: Quota>(&'a LiveReservation<'a, Q>);

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

/// `DELETE FROM r <live reservation>` (after [`LockReservationSql`] read it `FOR UPDATE`).
struct DropSql<'a, Q: Quota>(&'a LiveReservation<'a, Q>);

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for DropSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("DELETE FROM ");
        Q::walk_reservations(out.reborrow())?;
        self.0.walk(&mut out)
    }
}

/// A consumption that keeps the row's usage after it in session variables: `UPDATE q SET used
/// = (@upsert_kit_q_used := used + $n), reserved = (@upsert_kit_q_reserved := reserved), limit
/// = (@upsert_kit_q_limit := limit) WHERE key AND used + reserved + $n <= limit [+ $margin]`
/// (the `WHERE` reads the row before any assignment).
struct TrackedHoldSql<'s, 'a, Q: Quota>(&'s HoldSql<'a, Q, Mysql>);

impl<Q: BindQuota<Mysql>> QueryFragment<Mysql> for TrackedHoldSql<'_, '_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        let hold = self.0;
        out.push_sql("UPDATE ");
        Q::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        out.push_identifier(hold.target)?;
        out.push_sql(" = (@upsert_kit_q_used := ");
        out.push_identifier(hold.target)?;
        out.push_sql(" + ");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(hold.amount)?;
        out.push_sql(")");
        for (column, variable) in [
            (Q::RESERVED, "@upsert_kit_q_reserved"),
            (Q::LIMIT, "@upsert_kit_q_limit"),
        ] {
            out.push_sql(", ");
            out.push_identifier(column)?;
            out.push_sql(" = (");
            out.push_sql(variable);
            out.push_sql(" := ");
            out.push_identifier(column)?;
            out.push_sql(")");
        }
        hold.walk_where(&mut out)
    }
}

/// `SELECT limit, used, reserved` as [`TrackedHoldSql`] left them.
struct ReadUsageSql;

impl QueryFragment<Mysql> for ReadUsageSql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql(
            "SELECT CAST(@upsert_kit_q_limit AS SIGNED), CAST(@upsert_kit_q_used AS SIGNED), \
             CAST(@upsert_kit_q_reserved AS SIGNED)",
        );
        Ok(())
    }
}
