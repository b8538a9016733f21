//! **The racy baselines. Never use them.** The code each upsert-kit primitive replaces, as
//! application code often writes it; each one is wrong under concurrency, and the race report
//! shows how.
//!
//! - [`read_add_write`] and [`try_consume_check_then_act`] run on the race crate's own tables
//!   (the counter table [`race_counter`] and the ready-made quota table `upsert_kit_quotas`),
//!   on every backend ([`RaceSql`]): the baselines of the `counter`, `counter-retry`, `lock`
//!   and `quota` scenarios, next to the library's generic
//!   [`counter`](mod@upsert_kit::counter), [`idempotency`](upsert_kit::idempotency) and
//!   [`quota`](mod@upsert_kit::quota).
//! - [`query_then_upsert`] is the query-then-insert code that
//!   [`atomic_upsert`](upsert_kit::atomic_upsert) replaces on PostgreSQL, generic over any
//!   model the library accepts: the baseline of the `upsert` and `first-insert` scenarios
//!   there. It lives in the workspace's test harness (`upsert_kit_support::naive`), so that
//!   the library's tests and benches and this report measure one and the same baseline; it is
//!   re-exported here. MySQL's, which reads the same but in MySQL's SQL, and the lockless
//!   claim of MySQL's queue are the MySQL backend's ([`crate::backend`]).
//!
//! The baselines of the adopters' primitives live next to the code that replaces them:
//! `usage_tracking::naive` (get-or-create, counters, quotas) and `backfill_scheduler::naive`
//! (the backfill scheduler, lockless claims).
//!
//! [`race_counter`]: crate::tables::race_counter

use crate::sql::RaceSql;
use diesel::QueryResult;

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
pub fn read_add_write<C: RaceSql>(conn: &mut C, id: i32) -> QueryResult<()> {
    let n = conn.counter_value(id)?;
    conn.set_counter(id, n + 1)
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
pub fn try_consume_check_then_act<C: RaceSql>(
    conn: &mut C,
    key: &str,
    n: i64,
) -> QueryResult<bool> {
    let (limit, used, reserved) = conn.quota_row(key)?;
    if used + reserved + n > limit {
        return Ok(false);
    }
    conn.add_used(key, n)?;
    Ok(true)
}
