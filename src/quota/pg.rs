//! Quotas on PostgreSQL: every step is one statement. A reservation holds the units and
//! records itself in one data-modifying `WITH`; commit and release delete the reservation and
//! move its units in one; a sweep deletes the expired reservations and subtracts their sums in
//! one.

use super::{
    consume_returning, qcol, BindQuota, HoldSql, InsertReservationSql, LiveReservation, Quota,
    QuotaBackend, QuotaUsage, TakeSql, GONE_AMOUNT,
};
use crate::conn::{Dialect, KeyStyle, WriteConnection};
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
        let sql = ReserveSql::<Q> {
            hold: HoldSql {
                key,
                target: Q::RESERVED,
                amount: &amount,
                margin: None,
            },
            insert: InsertReservationSql {
                key,
                amount: &amount,
                expires_at,
                from: Some(HELD),
            },
        };
        Ok(conn.single(|c| c.run_ints(&sql))?.into_iter().next())
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
        let sql = SettleSql::<Q> {
            take: TakeSql(LiveReservation {
                id: &id,
                key,
                actual: &actual,
                at,
            }),
        };
        Ok(conn
            .single(|c| c.run_int3(&sql))?
            .into_iter()
            .next()
            .map(QuotaUsage::from))
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
/// $n <= limit RETURNING 1) INSERT INTO r (key…, amount, expires_at) SELECT … FROM __kit_held
/// RETURNING id`: the units are held and the reservation recorded, or neither.
struct ReserveSql<'a, Q: Quota> {
    hold: HoldSql<'a, Q>,
    insert: InsertReservationSql<'a, Q>,
}

impl<Q: BindQuota<Pg>> QueryFragment<Pg> for ReserveSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH ");
        out.push_identifier(HELD)?;
        out.push_sql(" AS (");
        self.hold.walk_update(&mut out)?;
        out.push_sql(" RETURNING 1) ");
        self.insert.walk_ast(out.reborrow())
    }
}

/// `WITH __kit_gone AS (DELETE FROM r <live reservation> RETURNING amount) UPDATE q SET used =
/// q.used + $actual, reserved = q.reserved - __kit_gone.amount FROM __kit_gone WHERE key
/// RETURNING q.limit, q.used, q.reserved`: a reservation leaves `reserved` exactly once.
struct SettleSql<'a, Q: Quota> {
    take: TakeSql<'a, Q>,
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
        out.push_identifier(GONE)?;
        out.push_sql(".");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(" FROM ");
        out.push_identifier(GONE)?;
        out.push_sql(" WHERE ");
        Q::walk_key(self.take.0.key, KeyStyle::Match, out.reborrow())?;
        out.push_sql(" RETURNING ");
        qcol::<Q, Pg>(out, Q::LIMIT)?;
        out.push_sql(", ");
        qcol::<Q, Pg>(out, Q::USED)?;
        out.push_sql(", ");
        qcol::<Q, Pg>(out, Q::RESERVED)
    }
}

/// `WITH __kit_gone AS (DELETE … RETURNING key…, amount), __kit_sums AS (SELECT key…,
/// SUM(amount) FROM __kit_gone GROUP BY key…), __kit_up AS (UPDATE q SET reserved =
/// q.reserved - __kit_sums.amount FROM __kit_sums WHERE q.key = __kit_sums.key RETURNING 1)
/// SELECT count(*) FROM __kit_gone`.
struct SweepSql<'a, Q: Quota> {
    key: Option<&'a Q::Key>,
    at: &'a NaiveDateTime,
}

impl<Q: BindQuota<Pg>> QueryFragment<Pg> for SweepSql<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let out = &mut out;
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
            Q::walk_key(key, KeyStyle::Match, out.reborrow())?;
        }
        out.push_sql(" RETURNING ");
        crate::sql::push_identifiers(out, Q::KEY)?;
        out.push_sql(", ");
        out.push_identifier(Q::RESERVATION_AMOUNT)?;
        out.push_sql(" AS ");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql("), __kit_sums AS (SELECT ");
        crate::sql::push_identifiers(out, Q::KEY)?;
        out.push_sql(", SUM(");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(") AS ");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(" FROM ");
        out.push_identifier(GONE)?;
        out.push_sql(" GROUP BY ");
        crate::sql::push_identifiers(out, Q::KEY)?;
        out.push_sql("), __kit_up AS (UPDATE ");
        Q::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        out.push_identifier(Q::RESERVED)?;
        out.push_sql(" = ");
        qcol::<Q, Pg>(out, Q::RESERVED)?;
        out.push_sql(" - __kit_sums.");
        out.push_identifier(GONE_AMOUNT)?;
        out.push_sql(" FROM __kit_sums WHERE ");
        for (i, k) in Q::KEY.iter().enumerate() {
            if i > 0 {
                out.push_sql(" AND ");
            }
            qcol::<Q, Pg>(out, k)?;
            out.push_sql(" = __kit_sums.");
            out.push_identifier(k)?;
        }
        out.push_sql(" RETURNING 1) SELECT count(*) FROM ");
        out.push_identifier(GONE)
    }
}
