//! Quotas on PostgreSQL: every step is one statement. A reservation holds the units and
//! records itself in one data-modifying `WITH`; commit and release delete the reservation and
//! move its units in one; a sweep deletes the expired reservations and subtracts their sums in
//! one.

use super::{
    consume_returning, link, push_returning, qcol, BindQuota, HoldSql, InsertReservationSql,
    LiveReservation, Quota, QuotaBackend, ReservationsOf, TakeSql, GONE_AMOUNT,
};
use crate::conn::{Dialect, KeyStyle, WriteConnection};
use crate::declare::Output;
use crate::error::Result;
use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

/// The name of the quota row's update inside a reservation.
const HELD: &str = "__kit_held";
/// The name of the deleted reservations' rows inside a statement.
const GONE: &str = "__kit_gone";

impl QuotaBackend for Pg {
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
        let sql = ReserveSql::<Q> {
            hold: HoldSql {
                key,
                target: Q::RESERVED,
                amount: &amount,
                margin: None,
                returning: None,
            },
            insert: InsertReservationSql {
                key,
                amount: &amount,
                expires_at,
                from: Some(HELD),
                returning: Some(out.columns()),
            },
        };
        Ok(conn.single(|c| out.load(c, &sql))?.into_iter().next())
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
        let sql = SettleSql::<Q> {
            take: TakeSql(LiveReservation {
                id: &id,
                key,
                actual: &actual,
                at,
            }),
            returning: out.columns(),
        };
        Ok(conn.single(|c| out.load(c, &sql))?.into_iter().next())
    }

    fn sweep<Q, C>(conn: &mut C, key: Option<&Q::Key>, at: &NaiveDateTime) -> Result<i64>
    where
        Q: BindQuota<Self>,
        C: WriteConnection<Backend = Self>,
    {
        let sql = SweepSql::<Q> { key, at };
        Ok(conn
            .single(|c| c.run_ints(&sql))?
            .into_iter()
            .next()
            .unwrap_or(0))
    }
}

/// `WITH __kit_held AS (UPDATE q SET reserved = reserved + $n WHERE key AND used + reserved +
/// $n <= limit RETURNING <link columns>) INSERT INTO r (…) SELECT … FROM __kit_held RETURNING
/// <columns>`: the units are held and the reservation recorded, or neither.
struct ReserveSql<'a, Q: Quota> {
    hold: HoldSql<'a, Q, Pg>,
    insert: InsertReservationSql<'a, Q, Pg>,
}

impl<Q: BindQuota<Pg>> QueryFragment<Pg> for ReserveSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH ");
        out.push_identifier(HELD)?;
        out.push_sql(" AS (");
        self.hold.walk_update(&mut out)?;
        out.push_sql(" RETURNING ");
        for (i, (_, quota_column)) in link::<Q>().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(quota_column)?;
        }
        out.push_sql(") ");
        self.insert.walk_ast(out.reborrow())
    }
}

/// `WITH __kit_gone AS (DELETE FROM r <live reservation> RETURNING amount) UPDATE q SET used =
/// q.used + $actual, reserved = q.reserved - __kit_gone.amount FROM __kit_gone WHERE key
/// RETURNING <columns>`: a reservation leaves `reserved` exactly once.
struct SettleSql<'a, Q: Quota> {
    take: TakeSql<'a, Q>,
    returning: &'a dyn QueryFragment<Pg>,
}

impl<Q: BindQuota<Pg>> QueryFragment<Pg> for SettleSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let out = &mut out;
        out.push_sql("WITH ");
        out.push_identifier(GONE)?;
        out.push_sql(" AS (");
        self.take.walk_ast(out.reborrow())?;
        out.push_sql(") UPDATE ");
        Q::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        out.push_identifier(Q::USED)?;
        out.push_sql(" = ");
        qcol::<Q, Pg>(out, Q::USED)?;
        out.push_sql(" + ");
        Pg::push_int(out, self.take.0.actual)?;
        out.push_sql(", ");
        out.push_identifier(Q::RESERVED)?;
        out.push_sql(" = ");
        qcol::<Q, Pg>(out, Q::RESERVED)?;
        out.push_sql(" - ");
        crate::sql::push_qualified(out, GONE, GONE_AMOUNT)?;
        out.push_sql(" FROM ");
        out.push_identifier(GONE)?;
        out.push_sql(" WHERE ");
        Q::walk_key(self.take.0.key, KeyStyle::Match, out.reborrow())?;
        push_returning(out, Some(self.returning))
    }
}

/// `WITH __kit_gone AS (DELETE … RETURNING <link columns>, amount), __kit_sums AS (SELECT
/// <link columns>, SUM(amount) FROM __kit_gone GROUP BY …), __kit_up AS (UPDATE q SET reserved
/// = q.reserved - __kit_sums.amount FROM __kit_sums WHERE q.<quota column> = __kit_sums.<link
/// column> … RETURNING 1) SELECT count(*) FROM __kit_gone`.
struct SweepSql<'a, Q: Quota> {
    key: Option<&'a Q::Key>,
    at: &'a NaiveDateTime,
}

impl<Q: BindQuota<Pg>> QueryFragment<Pg> for SweepSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let out = &mut out;
        let link_columns = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            for (reservation_column, _) in link::<Q>() {
                out.push_identifier(reservation_column)?;
                out.push_sql(", ");
            }
            Ok(())
        };
        out.push_sql("WITH ");
        out.push_identifier(GONE)?;
        out.push_sql(" AS (DELETE FROM ");
        Q::walk_reservations(out.reborrow())?;
        out.push_sql(" WHERE ");
        out.push_identifier(Q::RESERVATION_EXPIRES_AT)?;
        out.push_sql(" <= ");
        Pg::push_timestamp(out, self.at)?;
        if let Some(key) = self.key {
            out.push_sql(" AND ");
            ReservationsOf::<Q> { key }.walk(out)?;
        }
        super::push_tag::<Q, Pg>(out)?;
        out.push_sql(" RETURNING ");
        link_columns(out)?;
        out.push_identifier(Q::RESERVATION_AMOUNT)?;
        out.push_sql(" AS ");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql("), __kit_sums AS (SELECT ");
        link_columns(out)?;
        out.push_sql("SUM(");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(") AS ");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(" FROM ");
        out.push_identifier(GONE)?;
        out.push_sql(" GROUP BY ");
        for (i, (reservation_column, _)) in link::<Q>().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(reservation_column)?;
        }
        out.push_sql("), __kit_up AS (UPDATE ");
        Q::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        out.push_identifier(Q::RESERVED)?;
        out.push_sql(" = ");
        qcol::<Q, Pg>(out, Q::RESERVED)?;
        out.push_sql(" - __kit_sums.");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(" FROM __kit_sums WHERE ");
        for (i, (reservation_column, quota_column)) in link::<Q>().enumerate() {
            if i > 0 {
                out.push_sql(" AND ");
            }
            qcol::<Q, Pg>(out, quota_column)?;
            out.push_sql(" = __kit_sums.");
            out.push_identifier(reservation_column)?;
        }
        out.push_sql(" RETURNING 1) SELECT count(*) FROM ");
        out.push_identifier(GONE)
    }
}
