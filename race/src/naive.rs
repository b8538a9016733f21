//! **The racy upsert. Never use it.** [`query_then_upsert`] is the query-then-insert code
//! that upsert-kit's [`atomic_upsert`](upsert_kit::atomic_upsert) replaces, generic over any
//! model the library accepts: the baseline of the race report's `upsert` and `first-insert`
//! scenarios. It is wrong under concurrency, and the race report shows how.
//!
//! It lives in the workspace's test harness (`upsert_kit_support::naive`), so that the
//! library's tests and benches and this report measure one and the same baseline; it is
//! re-exported here for the report's users. The racy baselines of the other primitives live
//! next to the code that replaces them: `usage_tracking::naive` (get-or-create, counters,
//! quotas) and `backfill_scheduler::naive` (the backfill scheduler, lockless claims).

pub use upsert_kit_support::naive::query_then_upsert;
