//! The racy patterns this crate replaces, kept as baselines for the benchmarks and the race
//! tests. **Do not use them in application code**: each one is wrong under concurrency, and
//! the tests show how.
//!
//! Nothing in the library calls this module.

use crate::error::Result;
use crate::upsert::statement::push_identifiers;
use crate::upsert::{BindRow, UpsertModel, UpsertOutcome};
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::BigInt;
use diesel::{Connection, QueryResult, RunQueryDsl};

/// Query-then-insert, as the old cron code wrote it: in one transaction, `SELECT` the key; if
/// a row came back `UPDATE` it, otherwise `INSERT`.
///
/// **Racy.** Under PostgreSQL's default READ COMMITTED isolation two callers can both see "no
/// row" and both insert: the second fails with a duplicate-key error (and under a unique index
/// missing, a duplicate row). It also costs four round trips (`BEGIN`, `SELECT`, write,
/// `COMMIT`) where [`atomic_upsert`](crate::atomic_upsert) needs one.
///
/// # Errors
/// Whatever the statements raise, notably [`Error::Constraint`](crate::Error::Constraint) with
/// [`ConstraintKind::Unique`](crate::ConstraintKind::Unique) when it loses the race.
pub fn query_then_upsert<M>(conn: &mut PgConnection, row: &M) -> Result<UpsertOutcome>
where
    M: BindRow<Pg>,
    M::Table: QueryFragment<Pg>,
{
    row.validate()?;
    conn.transaction(|conn| {
        let existing: i64 = NaiveSql::new(row, Kind::Count).get_result(conn)?;
        if existing > 0 {
            NaiveSql::new(row, Kind::Update).execute(conn)?;
            Ok(UpsertOutcome::Updated)
        } else {
            NaiveSql::new(row, Kind::Insert).execute(conn)?;
            Ok(UpsertOutcome::Inserted)
        }
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// `SELECT count(*) FROM t, (VALUES (…)) AS v(cols) WHERE t.key = v.key`
    Count,
    /// `UPDATE t SET col = v.col … FROM (VALUES (…)) AS v(cols) WHERE t.key = v.key`
    Update,
    /// `INSERT INTO t (cols) VALUES (…)`
    Insert,
}

struct NaiveSql<'a, M: UpsertModel> {
    table: M::Table,
    row: &'a M,
    kind: Kind,
}

impl<'a, M: UpsertModel> NaiveSql<'a, M> {
    fn new(row: &'a M, kind: Kind) -> Self {
        NaiveSql {
            table: M::Table::default(),
            row,
            kind,
        }
    }
}

impl<M: UpsertModel> QueryId for NaiveSql<'_, M> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<M: UpsertModel> Query for NaiveSql<'_, M> {
    type SqlType = BigInt;
}

impl<M: UpsertModel, Conn> RunQueryDsl<Conn> for NaiveSql<'_, M> {}

impl<M> QueryFragment<Pg> for NaiveSql<'_, M>
where
    M: BindRow<Pg>,
    M::Table: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let table = &self.table;
        let values = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            out.push_sql("(VALUES (");
            self.row.walk_row(out.reborrow())?;
            out.push_sql(")) AS v (");
            push_identifiers(out, M::COLUMNS)?;
            out.push_sql(")");
            Ok(())
        };
        let key_match = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            for (i, key) in M::KEY.iter().enumerate() {
                out.push_sql(if i == 0 { " WHERE " } else { " AND " });
                table.walk_ast(out.reborrow())?;
                out.push_sql(".");
                out.push_identifier(key)?;
                out.push_sql(" = v.");
                out.push_identifier(key)?;
            }
            Ok(())
        };
        match self.kind {
            Kind::Count => {
                out.push_sql("SELECT count(*) FROM ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(", ");
                values(&mut out)?;
                key_match(&mut out)?;
            }
            Kind::Update => {
                out.push_sql("UPDATE ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(" SET ");
                let update = M::COLUMNS
                    .iter()
                    .filter(|c| !M::KEY.contains(c) && !M::KEEP.contains(c));
                for (i, column) in update.enumerate() {
                    if i > 0 {
                        out.push_sql(", ");
                    }
                    out.push_identifier(column)?;
                    out.push_sql(" = v.");
                    out.push_identifier(column)?;
                }
                out.push_sql(" FROM ");
                values(&mut out)?;
                key_match(&mut out)?;
            }
            Kind::Insert => {
                out.push_sql("INSERT INTO ");
                table.walk_ast(out.reborrow())?;
                out.push_sql(" (");
                push_identifiers(&mut out, M::COLUMNS)?;
                out.push_sql(") VALUES (");
                self.row.walk_row(out.reborrow())?;
                out.push_sql(")");
            }
        }
        Ok(())
    }
}

/// The backfill scheduler as it was before [`claim`](crate::claim): query the due months
/// (outside any transaction), then for each one take its transaction-scoped advisory lock,
/// process it and mark it done.
///
/// **Racy.** The lock is taken, but the candidates were read before it and are never re-read
/// under it: two schedulers that read the same list serialize on each month's lock, and the
/// second one, once the first committed `done`, processes the month again. Returns how many
/// months this call processed.
///
/// # Errors
/// Whatever the statements raise.
pub fn backfill_query_then_lock<F>(conn: &mut PgConnection, mut process: F) -> Result<usize>
where
    F: FnMut(i32, u32),
{
    use crate::schema::backfill_log::dsl as b;
    use diesel::{ExpressionMethods, QueryDsl};
    let due: Vec<(i64, i32, i32)> = b::backfill_log
        .filter(b::status.eq_any(["pending", "retry"]))
        .order(b::id)
        .select((b::id, b::year, b::month))
        .load(conn)?;
    let mut processed = 0;
    for (id, year, month) in due {
        crate::tx::transaction(conn, |conn| {
            crate::lock::xact_lock(conn, crate::lock::LockKey::new("backfill_log", id))?;
            // The bug: nothing re-checks that the month is still due now that the lock is held.
            process(year, u32::try_from(month).unwrap_or(0));
            diesel::update(b::backfill_log.find(id))
                .set((b::status.eq("done"), b::attempts.eq(b::attempts + 1)))
                .execute(conn)?;
            Ok(())
        })?;
        processed += 1;
    }
    Ok(processed)
}

/// The lockless claim: `SELECT` up to `limit` due months of `backfill_log`, then `UPDATE`
/// them to `processing` under `holder` (a 60 s lease), in two statements without a row lock
/// and without re-checking the status in the update.
///
/// **Racy.** Two workers that run the `SELECT` before either ran the `UPDATE` both get the
/// same months; each believes it claimed them. Returns the claimed `(id, year, month)`s.
///
/// # Errors
/// Whatever the statements raise.
pub fn claim_select_then_update(
    conn: &mut PgConnection,
    holder: &str,
    limit: i64,
) -> Result<Vec<(i64, i32, i32)>> {
    use crate::schema::backfill_log::dsl as b;
    use diesel::{ExpressionMethods, QueryDsl};
    let due: Vec<(i64, i32, i32)> = b::backfill_log
        .filter(b::status.eq_any(["pending", "retry"]))
        .order(b::id)
        .limit(limit)
        .select((b::id, b::year, b::month))
        .load(conn)?;
    let ids: Vec<i64> = due.iter().map(|d| d.0).collect();
    diesel::update(b::backfill_log.filter(b::id.eq_any(&ids)))
        .set((
            b::status.eq("processing"),
            b::holder.eq(holder),
            b::locked_until.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("now() + interval '60 seconds'")),
            b::attempts.eq(b::attempts + 1),
        ))
        .execute(conn)?;
    Ok(due)
}

/// Select-then-insert creation of a usage period, as request handlers often write it: in one
/// transaction, `SELECT` the account's period; if there is none, read the limits and `INSERT`.
///
/// **Racy.** Two requests at the start of a month both see "no period" and both insert: one
/// fails with a duplicate-key error on `(account, period_start)` (without the unique index, two
/// periods would exist and usage would be split between them). Use
/// [`get_or_create_usage_period`](crate::usage::get_or_create_usage_period).
///
/// # Errors
/// [`Error::Constraint`](crate::Error::Constraint) (unique) when it loses the race;
/// [`Error::NotFound`](crate::Error::NotFound) for an unknown account.
pub fn get_or_create_usage_period_select_then_insert(
    conn: &mut PgConnection,
    account: i64,
    at: chrono::NaiveDateTime,
) -> Result<crate::get_or_create::Obtained<crate::usage::UsagePeriod>> {
    use crate::schema::{usage_accounts, usage_periods};
    use crate::usage::UsagePeriod;
    use diesel::prelude::*;
    let (start, end) = crate::usage::monthly_period(at)?;
    conn.transaction(|conn| {
        let existing = usage_periods::table
            .filter(usage_periods::account.eq(account))
            .filter(usage_periods::period_start.eq(start))
            .select(UsagePeriod::as_select())
            .first(conn)
            .optional()?;
        if let Some(row) = existing {
            return Ok(crate::get_or_create::Obtained {
                row,
                created: false,
            });
        }
        let (tokens, reports, chats): (i64, i64, i64) = usage_accounts::table
            .find(account)
            .select((
                usage_accounts::tokens_limit,
                usage_accounts::reports_limit,
                usage_accounts::chats_limit,
            ))
            .first(conn)
            .optional()?
            .ok_or_else(|| crate::usage::unknown_account(account))?;
        let row = diesel::insert_into(usage_periods::table)
            .values((
                usage_periods::account.eq(account),
                usage_periods::period_start.eq(start),
                usage_periods::period_end.eq(end),
                usage_periods::tokens_limit.eq(tokens),
                usage_periods::reports_limit.eq(reports),
                usage_periods::chats_limit.eq(chats),
            ))
            .returning(UsagePeriod::as_returning())
            .get_result(conn)?;
        Ok(crate::get_or_create::Obtained { row, created: true })
    })
}

/// Read-add-write increment of a period's tokens: `SELECT tokens_used`, then
/// `UPDATE … SET tokens_used = <value read> + $d`. Returns the value written.
///
/// **Racy.** Two increments that read the same value both write `value + d`: one increment is
/// lost. (And without an idempotency key, a retried request counts twice.) Use
/// [`increment`](crate::counter::increment).
///
/// # Errors
/// Database errors.
pub fn increment_read_add_write(
    conn: &mut PgConnection,
    period_id: i64,
    tokens: i64,
) -> Result<i64> {
    use crate::schema::usage_periods;
    use diesel::prelude::*;
    let used: i64 = usage_periods::table
        .find(period_id)
        .select(usage_periods::tokens_used)
        .first(conn)?;
    diesel::update(usage_periods::table.find(period_id))
        .set(usage_periods::tokens_used.eq(used + tokens))
        .execute(conn)?;
    Ok(used + tokens)
}

/// Check-then-consume of a period's tokens: read `used`, `reserved` and `limit`; if
/// `used + reserved + n <= limit`, `UPDATE … SET tokens_used = tokens_used + n`. Returns whether
/// it consumed.
///
/// **Racy.** Requests that check at the same time all see the same room and all consume it: the
/// limit is overshot. Use [`try_consume`](crate::quota::try_consume) or
/// [`reserve`](crate::quota::reserve).
///
/// # Errors
/// Database errors.
pub fn try_consume_check_then_act(
    conn: &mut PgConnection,
    period_id: i64,
    tokens: i64,
) -> Result<bool> {
    use crate::schema::usage_periods;
    use diesel::prelude::*;
    let (used, reserved, limit): (i64, i64, i64) = usage_periods::table
        .find(period_id)
        .select((
            usage_periods::tokens_used,
            usage_periods::tokens_reserved,
            usage_periods::tokens_limit,
        ))
        .first(conn)?;
    if used + reserved + tokens > limit {
        return Ok(false);
    }
    diesel::update(usage_periods::table.find(period_id))
        .set(usage_periods::tokens_used.eq(usage_periods::tokens_used + tokens))
        .execute(conn)?;
    Ok(true)
}
