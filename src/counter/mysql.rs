//! Counters on MySQL and MariaDB, which have no `RETURNING`: an increment is one statement that
//! leaves the row's new totals in session variables, then a read of them (two round trips, no
//! transaction; see [`tracked`] and [`tracked_bounded_create`]). A counter of more than eight
//! amount columns, or a creating increment whose fresh row would break its bounds, runs the
//! increment and the read of the row in one transaction (the row lock the write takes makes
//! the read give this increment's totals). The creating form with bounds, which `ON DUPLICATE
//! KEY UPDATE` cannot put in a `WHERE`, stores in session variables whether the key existed
//! (`@upsert_kit_hit`, a fresh nonce set by the update clause only) and whether the bounds held
//! (`@upsert_kit_ok`, judged once, before any column is assigned: MySQL assigns left to right,
//! and a bound read after `a = a + d` would see the new `a`); every column is assigned only if
//! they held, and the read returns both variables with the totals.

use super::{
    totals_of, walk_new, Amounts, BindKey, Bounds, Counter, CounterBackend, Increment,
    IncrementSql, ReadSql, Step, UpsertIncrementSql,
};
use crate::conn::{KeyStyle, WriteConnection};
use crate::error::{Error, Result};
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::BigInt;
use diesel::QueryResult;

impl CounterBackend for Mysql {
    fn increment_once<T, C>(conn: &mut C, inc: &Increment<'_, T>) -> Result<Step<T::Amounts>>
    where
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
    {
        if T::AMOUNTS.len() <= TOTALS.len() {
            if !inc.bounds().any() || !inc.create {
                return crate::conn::retry_deadlocks(conn, |c| tracked(c, inc));
            }
            if inc.fresh_row_fits() {
                return crate::conn::retry_deadlocks(conn, |c| tracked_bounded_create(c, inc));
            }
        }
        crate::conn::retry_deadlocks(conn, |c| c.write(|c| once(c, inc)))
    }
}

/// The session variables an unbounded increment leaves its totals in, one per amount column.
const TOTALS: [&str; 8] = [
    "@upsert_kit_t0",
    "@upsert_kit_t1",
    "@upsert_kit_t2",
    "@upsert_kit_t3",
    "@upsert_kit_t4",
    "@upsert_kit_t5",
    "@upsert_kit_t6",
    "@upsert_kit_t7",
];

/// An increment in two round trips and no transaction (all but the creating one with bounds):
/// one statement, atomic by itself, that leaves the row's new totals in session variables
/// ([`TOTALS`]) as it writes them, then a `SELECT` of the variables. A creating one tells an
/// update from an insert by `@upsert_kit_hit`, a fresh nonce only its update clause sets; an
/// inserted row's totals are the amounts. A plain increment that matched no row (the count says
/// so: Diesel's connections count matched rows) is then judged by a read of the row instead:
/// none, or one its bounds refused (the statement's `WHERE` holds them). That read comes after
/// the refusal, not in its transaction: [`Increment`] judges the values it read again, and
/// tries again if the increment now fits, as after any refusal.
fn tracked<T, C>(c: &mut C, inc: &Increment<'_, T>) -> Result<Step<T::Amounts>>
where
    T: Counter + BindKey<Mysql>,
    C: WriteConnection<Backend = Mysql>,
{
    let nonce = fastrand::i64(1..);
    let amounts = inc.amounts.as_slice();
    let bounds = inc.bounds();
    let sql = TrackedIncrementSql::<T> {
        key: inc.key,
        amounts,
        bounds,
        create: inc.create,
        nonce: &nonce,
    };
    if c.run_execute(&sql)? == 0 {
        if !bounds.any() {
            return Ok(Step::Done(None));
        }
        let read = ReadSql::<T> {
            key: inc.key,
            limits: inc.limits,
        };
        return match c.run_texts(&read)?.into_iter().next() {
            None => Ok(Step::Done(None)),
            Some(text) => Ok(Step::Refused(crate::conn::parse_ints(&text)?)),
        };
    }
    let row = read_totals::<T, C>(c, &nonce, false)?;
    if inc.create && row[0] == 0 {
        return totals_of::<T>(amounts).map(|t| Step::Done(Some(t)));
    }
    totals_of::<T>(&row[1..]).map(|t| Step::Done(Some(t)))
}

/// The creating increment with bounds in two round trips and no transaction:
/// [`BoundedUpsertIncrementSql`], which judges the bounds once into `@upsert_kit_ok` and leaves
/// the row's totals after it (changed or not) in [`TOTALS`], then a read of the variables. An
/// inserted row's totals are the amounts (they fit the bounds: the caller checked); a refusal's
/// values are the row's as the statement saw them under its lock.
fn tracked_bounded_create<T, C>(c: &mut C, inc: &Increment<'_, T>) -> Result<Step<T::Amounts>>
where
    T: Counter + BindKey<Mysql>,
    C: WriteConnection<Backend = Mysql>,
{
    let nonce = fastrand::i64(1..);
    let amounts = inc.amounts.as_slice();
    c.run_execute(&BoundedUpsertIncrementSql {
        upsert: UpsertIncrementSql::<T> {
            key: inc.key,
            amounts,
            bounds: inc.bounds(),
            columns: None,
        },
        nonce: &nonce,
    })?;
    let row = read_totals::<T, C>(c, &nonce, true)?;
    let (hit, ok, values) = (row[0] != 0, row[1] != 0, &row[2..]);
    if !hit {
        return totals_of::<T>(amounts).map(|t| Step::Done(Some(t)));
    }
    if ok {
        return totals_of::<T>(values).map(|t| Step::Done(Some(t)));
    }
    Ok(Step::Refused(values.to_vec()))
}

/// `UPDATE t SET a = (@upsert_kit_t0 := a + ?), … WHERE key [AND bounds]`, or with `create`
/// (no bounds), `INSERT … ON DUPLICATE KEY UPDATE a = IF((@upsert_kit_hit := ?) IS NULL, a,
/// (@upsert_kit_t0 := a + VALUES(a))), b = (@upsert_kit_t1 := b + VALUES(b)), …`.
struct TrackedIncrementSql<'a, T: Counter> {
    key: &'a T::Key,
    amounts: &'a [i64],
    bounds: Bounds<'a>,
    create: bool,
    nonce: &'a i64,
}

impl<T: Counter + BindKey<Mysql>> QueryFragment<Mysql> for TrackedIncrementSql<'_, T> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        if self.create {
            let upsert = UpsertIncrementSql::<T> {
                key: self.key,
                amounts: self.amounts,
                bounds: Default::default(),
                columns: None,
            };
            upsert.walk_insert(&mut out)?;
        } else {
            out.push_sql("UPDATE ");
            T::walk_table(out.reborrow())?;
            out.push_sql(" SET ");
        }
        for (i, column) in T::AMOUNTS.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(column)?;
            out.push_sql(" = ");
            if self.create && i == 0 {
                out.push_sql("IF((@upsert_kit_hit := ");
                out.push_bind_param::<BigInt, _>(self.nonce)?;
                out.push_sql(") IS NULL, ");
                out.push_identifier(column)?;
                out.push_sql(", ");
            }
            out.push_sql("(");
            out.push_sql(TOTALS[i]);
            out.push_sql(" := ");
            walk_new::<T, Mysql>(&mut out, i, self.amounts, false, self.create)?;
            out.push_sql(")");
            if self.create && i == 0 {
                out.push_sql(")");
            }
        }
        if !self.create {
            out.push_sql(" WHERE ");
            T::walk_key(self.key, KeyStyle::Match, out.reborrow())?;
            let mut first = false;
            let bounds = self.bounds;
            bounds.walk::<T, Mysql>(&mut out, self.amounts, false, false, &mut first)?;
        }
        Ok(())
    }
}

/// Reads what an increment left in the session ([`ReadTotalsSql`]): whether the key existed
/// (the `nonce` seen), with `ok` whether the bounds held, then the totals.
fn read_totals<T: Counter, C: WriteConnection<Backend = Mysql>>(
    c: &mut C,
    nonce: &i64,
    ok: bool,
) -> Result<Vec<i64>> {
    let read = ReadTotalsSql {
        columns: T::AMOUNTS.len(),
        nonce,
        ok,
    };
    let Some(text) = c.run_texts(&read)?.into_iter().next() else {
        return Err(Error::NotFound("the increment's session variables".into()));
    };
    crate::conn::parse_ints(&text)
}

/// `SELECT CAST(JSON_ARRAY(<the key existed>, [<the bounds held>,] COALESCE(CAST(@upsert_kit_t0
/// AS SIGNED), 0), …) AS CHAR)`.
struct ReadTotalsSql<'a> {
    columns: usize,
    nonce: &'a i64,
    /// Whether `@upsert_kit_ok` (the bounds held) is read too.
    ok: bool,
}

impl QueryFragment<Mysql> for ReadTotalsSql<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT CAST(JSON_ARRAY(CAST(COALESCE(@upsert_kit_hit = ");
        out.push_bind_param::<BigInt, _>(self.nonce)?;
        out.push_sql(", 0) AS SIGNED)");
        if self.ok {
            out.push_sql(", CAST(COALESCE(@upsert_kit_ok, 0) AS SIGNED)");
        }
        // A variable keeps the type of its last value (a bind parameter's may be text), and
        // is NULL in a session that never set it (an insert leaves it unset): cast, 0 for NULL.
        for total in &TOTALS[..self.columns] {
            out.push_sql(", COALESCE(CAST(");
            out.push_sql(total);
            out.push_sql(" AS SIGNED), 0)");
        }
        out.push_sql(") AS CHAR)");
        Ok(())
    }
}

/// One try, in the caller's transaction (or the one [`WriteConnection::write`] opened).
fn once<T, C>(c: &mut C, inc: &Increment<'_, T>) -> Result<Step<T::Amounts>>
where
    T: Counter + BindKey<Mysql>,
    C: WriteConnection<Backend = Mysql>,
{
    let (amounts, bounds) = (inc.amounts.as_slice(), inc.bounds());
    let upsert = UpsertIncrementSql::<T> {
        key: inc.key,
        amounts,
        bounds,
        columns: None,
    };
    if inc.create && inc.fresh_row_fits() && bounds.any() {
        let nonce = fastrand::i64(1..);
        c.run_execute(&BoundedUpsertIncrementSql {
            upsert,
            nonce: &nonce,
        })?;
        let read = ReadHitSql::<T> {
            key: inc.key,
            nonce: &nonce,
        };
        let Some(text) = c.run_texts(&read)?.into_iter().next() else {
            return Err(Error::NotFound("the upserted counter row is gone".into()));
        };
        let row = crate::conn::parse_ints(&text)?;
        let (hit, ok, values) = (row[0] != 0, row[1] != 0, &row[2..]);
        if !hit || ok {
            return totals_of::<T>(values).map(|t| Step::Done(Some(t)));
        }
        return Ok(Step::Refused(values.to_vec()));
    }
    let changed = if inc.create && inc.fresh_row_fits() {
        c.run_execute(&upsert)?
    } else {
        c.run_execute(&IncrementSql::<T> {
            key: inc.key,
            amounts,
            bounds,
            columns: None,
        })?
    };
    let read = ReadSql::<T> {
        key: inc.key,
        limits: inc.limits && !inc.create,
    };
    let Some(text) = c.run_texts(&read)?.into_iter().next() else {
        return if inc.create && inc.fresh_row_fits() {
            Err(Error::NotFound("the upserted counter row is gone".into()))
        } else {
            Ok(Step::Done(None))
        };
    };
    let row = crate::conn::parse_ints(&text)?;
    let n = T::AMOUNTS.len();
    // Without CLIENT_FOUND_ROWS a zero increment changes nothing and counts 0; no bound
    // refuses it either. A creating increment without bounds always lands.
    if changed > 0 || amounts.iter().all(|&d| d == 0) || (inc.create && inc.fresh_row_fits()) {
        return totals_of::<T>(&row[..n]).map(|t| Step::Done(Some(t)));
    }
    if !bounds.any() {
        return Ok(Step::Done(None));
    }
    Ok(Step::Refused(row))
}

/// The creating increment with bounds: `INSERT … ON DUPLICATE KEY UPDATE a = IF((@upsert_kit_hit
/// := ?) IS NULL, a, IF((@upsert_kit_ok := COALESCE((<bounds>), FALSE)) IS NULL, a,
/// (@upsert_kit_t0 := IF(@upsert_kit_ok, t.a + VALUES(a), a)))), b = IF(@upsert_kit_ok,
/// (@upsert_kit_t1 := t.b + VALUES(b)), (@upsert_kit_t1 := b)), …`: the totals after it are
/// left in the variables whether the bounds held or not.
struct BoundedUpsertIncrementSql<'a, T: Counter> {
    upsert: UpsertIncrementSql<'a, T>,
    nonce: &'a i64,
}

impl<T: Counter + BindKey<Mysql>> QueryFragment<Mysql> for BoundedUpsertIncrementSql<'_, T> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        self.upsert.walk_insert(&mut out)?;
        for (i, column) in T::AMOUNTS.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(column)?;
            out.push_sql(" = IF(");
            if i == 0 {
                out.push_sql("(@upsert_kit_hit := ");
                let nonce = self.nonce;
                out.push_bind_param::<BigInt, _>(nonce)?;
                // Nested IFs: each condition is evaluated before its branches, in order.
                out.push_sql(") IS NULL, ");
                out.push_identifier(column)?;
                out.push_sql(", IF((@upsert_kit_ok := COALESCE((");
                let mut first = true;
                let bounds = self.upsert.bounds;
                bounds.walk::<T, Mysql>(&mut out, self.upsert.amounts, true, true, &mut first)?;
                out.push_sql("), FALSE)) IS NULL, ");
                out.push_identifier(column)?;
                out.push_sql(", (");
                out.push_sql(TOTALS[i]);
                out.push_sql(" := IF(@upsert_kit_ok, ");
                walk_new::<T, Mysql>(&mut out, i, self.upsert.amounts, true, true)?;
                out.push_sql(", ");
                out.push_identifier(column)?;
                out.push_sql("))))");
            } else {
                out.push_sql("@upsert_kit_ok, (");
                out.push_sql(TOTALS[i]);
                out.push_sql(" := ");
                walk_new::<T, Mysql>(&mut out, i, self.upsert.amounts, true, true)?;
                out.push_sql("), (");
                out.push_sql(TOTALS[i]);
                out.push_sql(" := ");
                out.push_identifier(column)?;
                out.push_sql("))");
            }
        }
        Ok(())
    }
}

/// `SELECT CAST(JSON_ARRAY(<key existed>, <bounds held>, a, …) AS CHAR) FROM t WHERE key`: the
/// session variables of [`BoundedUpsertIncrementSql`] as 0 or 1, then the amounts.
struct ReadHitSql<'a, T: Counter> {
    key: &'a T::Key,
    nonce: &'a i64,
}

impl<T: Counter + BindKey<Mysql>> QueryFragment<Mysql> for ReadHitSql<'_, T> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT CAST(JSON_ARRAY(CAST(COALESCE(@upsert_kit_hit = ");
        out.push_bind_param::<BigInt, _>(self.nonce)?;
        out.push_sql(", 0) AS SIGNED), CAST(COALESCE(@upsert_kit_ok, 0) AS SIGNED), ");
        crate::sql::push_identifiers(&mut out, T::AMOUNTS)?;
        out.push_sql(") AS CHAR) FROM ");
        T::walk_table(out.reborrow())?;
        out.push_sql(" WHERE ");
        T::walk_key(self.key, KeyStyle::Match, out.reborrow())
    }
}
