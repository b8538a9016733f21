//! The statements the scenarios send on every backend alike, written once with Diesel's query
//! builder (which writes each backend's text): [`RaceSql`], implemented for every connection
//! that can run them (PostgreSQL's and MySQL's).
//!
//! Each statement is a function below whose type, named after it, the implementation's bounds
//! ask the connection to run: a scenario written once needs `C: RaceSql` and nothing more.

use crate::tables::race_counter;
use diesel::connection::Connection;
use diesel::dsl;
use diesel::prelude::*;
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::query_dsl::LoadQuery;
use sync_jobs::schema::strava_stats;
use upsert_kit::tables::upsert_kit_quotas;
use upsert_kit::{UpsertModel, Upsertable};

/// The race crate's statements, for any connection that runs them.
pub trait RaceSql {
    /// The value of counter `id` of [`race_counter`].
    ///
    /// # Errors
    /// Database errors; `NotFound` when the row is missing.
    fn counter_value(&mut self, id: i32) -> QueryResult<i64>;

    /// Sets counter `id` of [`race_counter`] to `n`.
    ///
    /// # Errors
    /// Database errors.
    fn set_counter(&mut self, id: i32, n: i64) -> QueryResult<()>;

    /// Creates the row of `key` in `upsert_kit_quotas` with `limit` units, unless it exists.
    ///
    /// # Errors
    /// As [`upsert_kit::atomic_upsert`].
    fn open_quota(&mut self, key: &str, limit: i64) -> upsert_kit::Result<()>;

    /// The limit, used and reserved units of `key`'s row of `upsert_kit_quotas`.
    ///
    /// # Errors
    /// Database errors; `NotFound` when the row is missing.
    fn quota_row(&mut self, key: &str) -> QueryResult<(i64, i64, i64)>;

    /// Adds `n` to the used units of `key`'s row of `upsert_kit_quotas`, unconditionally.
    ///
    /// # Errors
    /// Database errors.
    fn add_used(&mut self, key: &str, n: i64) -> QueryResult<()>;

    /// The limit and used units of every row of `upsert_kit_quotas`.
    ///
    /// # Errors
    /// Database errors.
    fn quota_rows(&mut self) -> QueryResult<Vec<(i64, i64)>>;

    /// The rows of `strava_stats` and its distinct keys.
    ///
    /// # Errors
    /// Database errors.
    fn stats_counts(&mut self) -> QueryResult<(i64, i64)>;
}

#[dsl::auto_type]
fn counter_value(id: i32) -> _ {
    race_counter::table.find(id).select(race_counter::n)
}

type SetCounter = dsl::Update<dsl::Find<race_counter::table, i32>, dsl::Eq<race_counter::n, i64>>;

fn set_counter(id: i32, n: i64) -> SetCounter {
    diesel::update(race_counter::table.find(id)).set(race_counter::n.eq(n))
}

/// A quota window's row of `upsert_kit_quotas`, as the `quota` scenario opens it: inserted, or
/// left as it is when it exists (every column but the key is kept).
#[derive(Debug, UpsertModel)]
#[diesel(table_name = upsert_kit_quotas)]
#[upsert(key(quota_key), keep(quota_limit))]
struct QuotaWindow {
    quota_key: String,
    quota_limit: i64,
}

#[dsl::auto_type]
fn quota_row(key: String) -> _ {
    upsert_kit_quotas::table.find(key).select((
        upsert_kit_quotas::quota_limit,
        upsert_kit_quotas::used,
        upsert_kit_quotas::reserved,
    ))
}

type AddUsed = dsl::Update<
    dsl::Find<upsert_kit_quotas::table, String>,
    dsl::Eq<upsert_kit_quotas::used, dsl::Add<upsert_kit_quotas::used, i64>>,
>;

fn add_used(key: String, n: i64) -> AddUsed {
    diesel::update(upsert_kit_quotas::table.find(key))
        .set(upsert_kit_quotas::used.eq(upsert_kit_quotas::used + n))
}

#[dsl::auto_type]
fn quota_rows() -> _ {
    upsert_kit_quotas::table.select((upsert_kit_quotas::quota_limit, upsert_kit_quotas::used))
}

#[dsl::auto_type]
fn stats_counts() -> _ {
    strava_stats::table.select((
        dsl::count_star(),
        dsl::count(strava_stats::stats_type).aggregate_distinct(),
    ))
}

impl<C> RaceSql for C
where
    C: Connection + upsert_kit::conn::WriteConnection<Raw = C>,
    for<'a> counter_value: LoadQuery<'a, C, i64>,
    SetCounter: ExecuteDsl<C>,
    QuotaWindow: Upsertable<C>,
    for<'a> quota_row: LoadQuery<'a, C, (i64, i64, i64)>,
    AddUsed: ExecuteDsl<C>,
    for<'a> quota_rows: LoadQuery<'a, C, (i64, i64)>,
    for<'a> stats_counts: LoadQuery<'a, C, (i64, i64)>,
{
    fn counter_value(&mut self, id: i32) -> QueryResult<i64> {
        counter_value(id).get_result(self)
    }

    fn set_counter(&mut self, id: i32, n: i64) -> QueryResult<()> {
        set_counter(id, n).execute(self)?;
        Ok(())
    }

    fn open_quota(&mut self, key: &str, limit: i64) -> upsert_kit::Result<()> {
        let window = QuotaWindow {
            quota_key: key.to_owned(),
            quota_limit: limit,
        };
        upsert_kit::atomic_upsert(self, &window)?;
        Ok(())
    }

    fn quota_row(&mut self, key: &str) -> QueryResult<(i64, i64, i64)> {
        quota_row(key.to_owned()).get_result(self)
    }

    fn add_used(&mut self, key: &str, n: i64) -> QueryResult<()> {
        add_used(key.to_owned(), n).execute(self)?;
        Ok(())
    }

    fn quota_rows(&mut self) -> QueryResult<Vec<(i64, i64)>> {
        quota_rows().load(self)
    }

    fn stats_counts(&mut self) -> QueryResult<(i64, i64)> {
        stats_counts().get_result(self)
    }
}
