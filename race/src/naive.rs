//! **The racy baselines. Never use them.** The code each upsert-kit primitive replaces, as
//! application code often writes it; each one is wrong under concurrency, and the race report
//! shows how.
//!
//! - [`query_then_upsert`] is the query-then-insert code that
//!   [`atomic_upsert`](upsert_kit::atomic_upsert) replaces, generic over any model the library
//!   accepts: the baseline of the `upsert` and `first-insert` scenarios. It lives in the
//!   workspace's test harness (`upsert_kit_support::naive`), so that the library's tests and
//!   benches and this report measure one and the same baseline; it is re-exported here.
//! - [`read_add_write`] and [`try_consume_check_then_act`] run on the race crate's own tables
//!   (the counter table [`race_counter`] and the ready-made quota
//!   table `upsert_kit_quotas`): the baselines of the `counter`, `counter-retry`, `lock` and
//!   `quota` scenarios, next to the library's generic [`counter`](mod@upsert_kit::counter),
//!   [`idempotency`](upsert_kit::idempotency) and [`quota`](mod@upsert_kit::quota).
//!
//! The baselines of the adopters' primitives live next to the code that replaces them:
//! `usage_tracking::naive` (get-or-create, counters, quotas) and `backfill_scheduler::naive`
//! (the backfill scheduler, lockless claims).

use crate::scenario::race_counter;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use upsert_kit::tables::upsert_kit_quotas;

pub use upsert_kit_support::naive::query_then_upsert;

/// Read-add-write of a counter row: `SELECT n`, then `UPDATE … SET n = <value read> + 1` (two
/// round trips, no transaction of its own).
///
/// **Racy: never use it.** Two increments that read the same value both write `value + 1`: one
/// is lost. Without an idempotency key, a retried request counts twice. Use
/// [`upsert_kit::counter::increment`] and [`upsert_kit::idempotency::increment_once`].
///
/// # Errors
/// Database errors; `NotFound` when the row is missing.
pub fn read_add_write(conn: &mut PgConnection, id: i32) -> QueryResult<()> {
    let n: i64 = race_counter::table
        .find(id)
        .select(race_counter::n)
        .get_result(conn)?;
    diesel::update(race_counter::table.find(id))
        .set(race_counter::n.eq(n + 1))
        .execute(conn)?;
    Ok(())
}

/// Check-then-consume of a quota row of `upsert_kit_quotas`: read its limit, used and reserved
/// units; if `used + reserved + n <= limit`, `UPDATE … SET used = used + n`. Returns whether it
/// consumed.
///
/// **Racy: never use it.** Requests that check at the same time all see the same room and all
/// consume it: the limit is overshot. Use [`upsert_kit::quota::try_consume`].
///
/// # Errors
/// Database errors; `NotFound` when the row is missing.
pub fn try_consume_check_then_act(conn: &mut PgConnection, key: &str, n: i64) -> QueryResult<bool> {
    let (limit, used, reserved): (i64, i64, i64) = upsert_kit_quotas::table
        .find(key)
        .select((
            upsert_kit_quotas::quota_limit,
            upsert_kit_quotas::used,
            upsert_kit_quotas::reserved,
        ))
        .get_result(conn)?;
    if used + reserved + n > limit {
        return Ok(false);
    }
    diesel::update(upsert_kit_quotas::table.find(key))
        .set(upsert_kit_quotas::used.eq(upsert_kit_quotas::used + n))
        .execute(conn)?;
    Ok(true)
}
