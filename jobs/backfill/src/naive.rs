//! **Racy on purpose.** The backfill scheduler as it was written before claims, and the
//! lockless claim people write first: the patterns this crate replaces, kept public as the
//! baselines that its race tests (`tests/backfill.rs`) and the race report (`upsert-race`)
//! measure [`backfill`](crate::backfill) and [`Queue::claim`](upsert_kit::claim::Queue::claim)
//! against.
//!
//! **Never use them in application code.** Each one hands the same month to two schedulers
//! under concurrency; the tests show it happening. Nothing else in this crate calls them.

use crate::schema::backfill_log::dsl as b;
use diesel::pg::PgConnection;
use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
use upsert_kit::lock::{xact_lock, LockKey};
use upsert_kit::{Error, Result};

/// The backfill scheduler as it was before claims: query the due months
/// (outside any transaction), then for each one take its transaction-scoped advisory lock,
/// process it and mark it done.
///
/// **Racy.** The lock is taken, but the candidates were read before it and are never re-read
/// under it: two schedulers that read the same list serialize on each month's lock, and the
/// second one, once the first committed `done`, processes the month again. Use
/// [`backfill`](crate::backfill). Returns how many months this call processed.
///
/// # Errors
/// Whatever the statements raise.
pub fn backfill_query_then_lock<F>(conn: &mut PgConnection, mut process: F) -> Result<usize>
where
    F: FnMut(i32, u32),
{
    let due: Vec<(i64, i32, i32)> = b::backfill_log
        .filter(b::status.eq_any(["pending", "retry"]))
        .order(b::id)
        .select((b::id, b::year, b::month))
        .load(conn)?;
    let mut processed = 0;
    for (id, year, month) in due {
        upsert_kit::transaction(conn, |conn| {
            xact_lock(conn, LockKey::new("backfill_log", id))?;
            // The bug: nothing re-checks that the month is still due now that the lock is held.
            process(year, u32::try_from(month).unwrap_or(0));
            diesel::update(b::backfill_log.find(id))
                .set((b::status.eq("done"), b::attempts.eq(b::attempts + 1)))
                .execute(conn)?;
            Ok::<(), Error>(())
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
/// same months; each believes it claimed them (and two such claims that overlap can also
/// deadlock each other: [`Error::Deadlock`]). Use
/// [`Queue::claim`](upsert_kit::claim::Queue::claim). Returns the claimed `(id, year, month)`s.
///
/// # Errors
/// Whatever the statements raise.
pub fn claim_select_then_update(
    conn: &mut PgConnection,
    holder: &str,
    limit: i64,
) -> Result<Vec<(i64, i32, i32)>> {
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
