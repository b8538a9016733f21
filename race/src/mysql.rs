//! The race report on MySQL/MariaDB: the same runner, naive pattern against atomic, on tables
//! of this module's own in a scratch database of the MySQL server (`upsert-race --backend
//! mysql`).
//!
//! | scenario | naive | atomic |
//! |---|---|---|
//! | `upsert` | `SELECT COUNT(*)` then `UPDATE` or `INSERT`, in a transaction, over K existing keys | [`atomic_upsert`] (`INSERT … ON DUPLICATE KEY UPDATE`) |
//! | `first-insert` | the same, all workers on one fresh key per round | [`atomic_upsert`] |
//! | `bulk` | a loop of [`atomic_upsert`] over a batch | one [`bulk_upsert`] of the batch (multi-row `VALUES`) |
//! | `counter` | read, add, write one hot row | [`counter::increment`] |
//! | `quota` | check, then consume | [`quota::try_consume`] (one conditional `UPDATE`) |
//! | `claim` | `SELECT` the first queued id, then `UPDATE` it to running | [`Queue::claim`] (`FOR UPDATE SKIP LOCKED`) |
//!
//! Everything runs at the server's default isolation (REPEATABLE READ on MariaDB and MySQL).

use crate::naive;
use crate::scenario::{timestamp, Anomalies, Op, Pattern, Scenario, Tally};
use crate::sql::RaceSql;
use crate::tables::{RaceCounter, COUNTER};
use crate::{Config, Row};
use anyhow::{bail, Context, Result};
use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use std::sync::atomic::{AtomicI64, Ordering};
use upsert_kit::claim::{ClaimQueue, Queue};
use upsert_kit::tables::{upsert_kit_quotas, Quotas};
use upsert_kit::{atomic_upsert, bulk_upsert, counter, quota, Error, Upsert};
use upsert_kit_support::TestMysql;

/// The scenarios that run on MySQL, in report order.
pub const NAMES: &[&str] = &[
    "upsert",
    "first-insert",
    "counter",
    "quota",
    "bulk",
    "claim",
];

diesel::table! {
    /// The stats rows of `upsert` and `bulk` (unique `stats_type`).
    race_stats (id) {
        /// Row id.
        id -> BigInt,
        /// The key.
        stats_type -> Text,
        /// The payload.
        data -> Json,
        /// Kept on update.
        created_at -> Timestamp,
        /// Overwritten.
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// The stats rows of `first-insert` (unique `stats_type`).
    race_first (id) {
        /// Row id.
        id -> BigInt,
        /// The key.
        stats_type -> Text,
        /// The payload.
        data -> Json,
        /// Kept on update.
        created_at -> Timestamp,
        /// Overwritten.
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// The queue of `claim`.
    race_queue (id) {
        /// Claim order.
        id -> BigInt,
        /// Times processed.
        runs -> Integer,
        /// State.
        status -> Text,
        /// Claims so far.
        attempts -> Integer,
        /// Lease.
        locked_until -> Nullable<Datetime>,
        /// Lease holder.
        holder -> Nullable<Text>,
        /// Last failure.
        last_error -> Nullable<Text>,
    }
}

/// A row of [`race_stats`].
#[derive(Debug, Clone, Insertable, Upsert)]
#[diesel(table_name = race_stats)]
#[upsert(key(stats_type), keep(created_at))]
pub struct Stat {
    /// The key.
    pub stats_type: String,
    /// The payload.
    pub data: serde_json::Value,
    /// Kept on update.
    pub created_at: NaiveDateTime,
    /// Overwritten.
    pub updated_at: NaiveDateTime,
}

/// A row of [`race_first`].
#[derive(Debug, Clone, Insertable, Upsert)]
#[diesel(table_name = race_first)]
#[upsert(key(stats_type), keep(created_at))]
pub struct First {
    /// The key.
    pub stats_type: String,
    /// The payload.
    pub data: serde_json::Value,
    /// Kept on update.
    pub created_at: NaiveDateTime,
    /// Overwritten.
    pub updated_at: NaiveDateTime,
}

/// What a claim of [`race_queue`] reads.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = race_queue)]
pub struct Item {
    /// The item.
    pub id: i64,
}

impl ClaimQueue for Item {
    type Table = race_queue::table;
}

const TABLES_SQL: &str = "
CREATE TABLE race_stats (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    stats_type VARCHAR(64) NOT NULL UNIQUE,
    data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL);
CREATE TABLE race_first (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    stats_type VARCHAR(64) NOT NULL UNIQUE,
    data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL);
CREATE TABLE race_queue (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    runs INT NOT NULL DEFAULT 0,
    status VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    locked_until DATETIME(6) NULL,
    holder VARCHAR(200) NULL,
    last_error TEXT NULL,
    KEY race_queue_due (status, id));
";

/// The MySQL server when `--mysql-url` is not given: the test harness's choice
/// ([`upsert_kit_support::mysql_admin_url`]): `MYSQL_DATABASE_URL`, else the local server on
/// port 3306, else a throwaway `mariadbd` living as long as this process.
///
/// # Errors
/// When none of these can be had; the message says how to provide a server.
pub fn default_admin_url() -> Result<String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(upsert_kit_support::mysql_admin_url);
    std::panic::set_hook(hook);
    found.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no MySQL/MariaDB server could be found or started");
        anyhow::anyhow!("{message}")
    })
}

/// A MySQL scenario by name.
///
/// # Errors
/// A name that has no MySQL scenario (see [`NAMES`]).
pub fn by_name(
    name: &str,
    params: &crate::scenario::Params,
) -> Result<Box<dyn Scenario<MysqlConnection>>> {
    Ok(match name {
        "upsert" => Box::new(SteadyUpsert {
            rows: stats_rows(params.keys.max(1)),
        }),
        "first-insert" => Box::new(FirstInsert),
        "counter" => Box::new(Counter),
        "quota" => Box::new(QuotaScenario {
            limit: params.quota_limit,
            current: AtomicI64::new(0),
        }),
        "bulk" => {
            if params.batch == 0 || params.bulk_keys < params.batch as u64 {
                bail!(
                    "--batch must be between 1 and --bulk-keys ({})",
                    params.bulk_keys
                );
            }
            Box::new(BulkScenario {
                rows: stats_rows(params.bulk_keys),
                batch: params.batch,
            })
        }
        "claim" => Box::new(ClaimScenario {
            items: params.claim_items.max(1),
        }),
        other => bail!(
            "scenario {other:?} has no MySQL version (MySQL runs: {})",
            NAMES.join(", ")
        ),
    })
}

/// Runs `config`'s cells on MySQL: a scratch database on the server of `admin_url` (or
/// [`default_admin_url`]), dropped on return.
///
/// # Errors
/// As [`crate::run`].
pub fn run(config: &Config, admin_url: Option<&str>) -> Result<Vec<Row>> {
    let chosen: Vec<Box<dyn Scenario<MysqlConnection>>> = config
        .scenarios
        .iter()
        .map(|name| by_name(name, &config.params))
        .collect::<Result<_>>()?;
    if config.workers.is_empty() || config.workers.contains(&0) {
        bail!("--workers needs positive worker counts");
    }
    let admin_url = match admin_url {
        Some(url) => url.to_owned(),
        None => default_admin_url()?,
    };
    let db = TestMysql::on(&admin_url).map_err(anyhow::Error::msg)?;
    create_tables(&mut db.conn())?;
    crate::run_cells(db.url(), &chosen, config)
}

/// Creates this module's tables and the race crate's own ([`crate::tables::create`]) on
/// `conn`'s database.
///
/// # Errors
/// When a table exists already or the server refuses.
pub fn create_tables(conn: &mut MysqlConnection) -> Result<()> {
    conn.batch_execute(TABLES_SQL)
        .context("create the race tables on MySQL")?;
    crate::tables::create(conn)
}

fn stats_rows(n: u64) -> Vec<Stat> {
    let data = crate::payload::stats_payload(0);
    (0..n)
        .map(|i| Stat {
            stats_type: crate::scenario::key(i),
            data: data.clone(),
            created_at: timestamp(),
            updated_at: timestamp(),
        })
        .collect()
}

/// The naive upsert: in a transaction, count the key's rows, then update or insert. Racy.
fn query_then_upsert(
    conn: &mut MysqlConnection,
    table: &str,
    key: &str,
    data: &serde_json::Value,
) -> upsert_kit::Result<()> {
    use diesel::sql_types::{Json, Text, Timestamp};
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    upsert_kit::transaction(conn, |conn| {
        let n = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE stats_type = ?"
        ))
        .bind::<Text, _>(key)
        .get_result::<N>(conn)?
        .n;
        if n > 0 {
            diesel::sql_query(format!(
                "UPDATE {table} SET data = ?, updated_at = ? WHERE stats_type = ?"
            ))
            .bind::<Json, _>(data)
            .bind::<Timestamp, _>(timestamp())
            .bind::<Text, _>(key)
            .execute(conn)?;
        } else {
            diesel::sql_query(format!(
                "INSERT INTO {table} (stats_type, data, created_at, updated_at) VALUES (?, ?, ?, ?)"
            ))
            .bind::<Text, _>(key)
            .bind::<Json, _>(data)
            .bind::<Timestamp, _>(timestamp())
            .bind::<Timestamp, _>(timestamp())
            .execute(conn)?;
        }
        Ok(())
    })
}

/// Rows beyond one per key, and keys missing, of a stats table expected to hold `expected`.
fn stats_anomalies(conn: &mut MysqlConnection, table: &str, expected: i64) -> Result<Anomalies> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        rows: i64,
        #[diesel(sql_type = BigInt)]
        distinct_keys: i64,
    }
    let c: Counts = diesel::sql_query(format!(
        "SELECT COUNT(*) AS `rows`, COUNT(DISTINCT stats_type) AS distinct_keys FROM {table}"
    ))
    .get_result(conn)?;
    Ok(Anomalies {
        duplicate_rows: c.rows - c.distinct_keys,
        lost_updates: expected - c.distinct_keys,
        over_limit: 0,
        double_counted: 0,
    })
}

struct SteadyUpsert {
    rows: Vec<Stat>,
}

impl Scenario<MysqlConnection> for SteadyUpsert {
    fn name(&self) -> &'static str {
        "upsert"
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE race_stats")?;
        bulk_upsert(conn, &self.rows)?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = &self.rows[op.rng.usize(..self.rows.len())];
        match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => query_then_upsert(conn, "race_stats", &row.stats_type, &row.data)?,
            Pattern::Atomic => {
                atomic_upsert(conn, row)?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut MysqlConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, "race_stats", self.rows.len() as i64)
    }
}

struct FirstInsert;

impl Scenario<MysqlConnection> for FirstInsert {
    fn name(&self) -> &'static str {
        "first-insert"
    }
    fn lockstep(&self) -> bool {
        true
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE race_first")?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let row = First {
            stats_type: format!("round-{}", op.round),
            data: crate::payload::stats_payload(op.round),
            created_at: timestamp(),
            updated_at: timestamp(),
        };
        match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => query_then_upsert(conn, "race_first", &row.stats_type, &row.data)?,
            Pattern::Atomic => {
                atomic_upsert(conn, &row)?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut MysqlConnection, tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, "race_first", tally.rounds as i64)
    }
}

struct BulkScenario {
    rows: Vec<Stat>,
    batch: usize,
}

impl Scenario<MysqlConnection> for BulkScenario {
    fn name(&self) -> &'static str {
        "bulk"
    }
    fn unit(&self) -> &'static str {
        "rows"
    }
    fn units_per_op(&self) -> u64 {
        self.batch as u64
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE race_stats")?;
        bulk_upsert(conn, &self.rows)?;
        Ok(())
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let start = op.rng.usize(..=self.rows.len() - self.batch);
        let batch = &self.rows[start..start + self.batch];
        match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => {
                for row in batch {
                    atomic_upsert(conn, row)?;
                }
            }
            Pattern::Atomic => {
                bulk_upsert(conn, batch)?;
            }
        }
        Ok(self.batch as u64)
    }
    fn verify(&self, conn: &mut MysqlConnection, _tally: &Tally) -> Result<Anomalies> {
        stats_anomalies(conn, "race_stats", self.rows.len() as i64)
    }
}

struct Counter;

impl Scenario<MysqlConnection> for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        Ok(conn.set_counter(COUNTER, 0)?)
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        _op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => naive::read_add_write(conn, COUNTER)?,
            Pattern::Atomic => {
                counter::increment::<RaceCounter, _>(conn, &COUNTER, [1])?
                    .ok_or_else(|| Error::NotFound("the counter row is missing".into()))?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut MysqlConnection, tally: &Tally) -> Result<Anomalies> {
        Ok(Anomalies {
            lost_updates: tally.effect as i64 - conn.counter_value(COUNTER)?,
            ..Anomalies::default()
        })
    }
}

/// `quota`: windows of `limit` units; a refused request opens the next window.
struct QuotaScenario {
    limit: i64,
    current: AtomicI64,
}

impl QuotaScenario {
    fn key(window: i64) -> String {
        format!("window-{window}")
    }

    fn open(&self, conn: &mut MysqlConnection, window: i64) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO upsert_kit_quotas (quota_key, quota_limit) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE quota_key = quota_key",
        )
        .bind::<diesel::sql_types::Text, _>(Self::key(window))
        .bind::<BigInt, _>(self.limit)
        .execute(conn)?;
        Ok(())
    }
}

impl Scenario<MysqlConnection> for QuotaScenario {
    fn name(&self) -> &'static str {
        "quota"
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute("DELETE FROM upsert_kit_reservations; DELETE FROM upsert_kit_quotas")?;
        self.open(conn, 0)?;
        self.current.store(0, Ordering::SeqCst);
        Ok(())
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        _op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let window = self.current.load(Ordering::SeqCst);
        let key = Self::key(window);
        let granted = match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => naive::try_consume_check_then_act(conn, &key, 1)?,
            Pattern::Atomic => match quota::try_consume::<Quotas, _>(conn, &key, 1, timestamp()) {
                Ok(_) => true,
                Err(Error::QuotaExceeded { .. }) => false,
                Err(e) => return Err(e),
            },
        };
        if granted {
            Ok(1)
        } else {
            self.open(conn, window + 1)?;
            let _ = self.current.compare_exchange(
                window,
                window + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            Ok(0)
        }
    }
    fn verify(&self, conn: &mut MysqlConnection, tally: &Tally) -> Result<Anomalies> {
        let (over, used): (i64, i64) = upsert_kit_quotas::table
            .select((
                sql::<BigInt>("CAST(COALESCE(SUM(GREATEST(used - quota_limit, 0)), 0) AS SIGNED)"),
                sql::<BigInt>("CAST(COALESCE(SUM(used), 0) AS SIGNED)"),
            ))
            .get_result(conn)?;
        Ok(Anomalies {
            duplicate_rows: 0,
            lost_updates: tally.effect as i64 - used,
            over_limit: over,
            double_counted: 0,
        })
    }
}

/// `claim`: workers drain a queue, one item per claim, each processed (`runs + 1`) and done.
struct ClaimScenario {
    items: usize,
}

impl Scenario<MysqlConnection> for ClaimScenario {
    fn name(&self) -> &'static str {
        "claim"
    }
    fn prepare(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute("TRUNCATE race_queue")?;
        let mut left = self.items;
        while left > 0 {
            let n = left.min(1000);
            let values = vec!["()"; n].join(", ");
            conn.batch_execute(&format!("INSERT INTO race_queue () VALUES {values}"))?;
            left -= n;
        }
        Ok(())
    }
    fn op(
        &self,
        conn: &mut MysqlConnection,
        pattern: Pattern,
        op: &mut Op<'_>,
    ) -> upsert_kit::Result<u64> {
        let holder = format!("worker-{}", op.worker);
        let work = |conn: &mut MysqlConnection, id: i64| {
            diesel::update(race_queue::table.find(id))
                .set(race_queue::runs.eq(race_queue::runs + 1))
                .execute(conn)
        };
        match pattern {
            // No plain-Diesel side on MySQL (`patterns()` leaves it out).
            Pattern::Diesel => return Err(crate::scenario::no_diesel_side()),
            Pattern::Naive => {
                #[derive(QueryableByName)]
                struct Id {
                    #[diesel(sql_type = BigInt)]
                    id: i64,
                }
                let Some(Id { id }) = diesel::sql_query(
                    "SELECT id FROM race_queue WHERE status = 'pending' ORDER BY id LIMIT 1",
                )
                .get_result::<Id>(conn)
                .optional()?
                else {
                    return Ok(0);
                };
                diesel::update(race_queue::table.find(id))
                    .set((
                        race_queue::status.eq("processing"),
                        race_queue::holder.eq(&holder),
                    ))
                    .execute(conn)?;
                work(conn, id)?;
                diesel::update(race_queue::table.find(id))
                    .set((
                        race_queue::status.eq("done"),
                        race_queue::holder.eq(None::<String>),
                    ))
                    .execute(conn)?;
            }
            Pattern::Atomic => {
                let queue = Queue::<Item>::new(holder)?;
                let Some(claim) = queue.claim(conn, 1)?.into_iter().next() else {
                    return Ok(0);
                };
                work(conn, claim.id)?;
                queue.complete(conn, &claim)?;
            }
        }
        Ok(1)
    }
    fn verify(&self, conn: &mut MysqlConnection, tally: &Tally) -> Result<Anomalies> {
        let (twice, runs): (i64, i64) = race_queue::table
            .select((
                sql::<BigInt>("CAST(COALESCE(SUM(GREATEST(runs - 1, 0)), 0) AS SIGNED)"),
                sql::<BigInt>("CAST(COALESCE(SUM(runs), 0) AS SIGNED)"),
            ))
            .get_result(conn)?;
        Ok(Anomalies {
            duplicate_rows: twice,
            lost_updates: (tally.effect as i64 - runs).abs(),
            over_limit: 0,
            double_counted: 0,
        })
    }
}
