//! Work claims with `FOR UPDATE SKIP LOCKED` and a lease, on PostgreSQL and
//! MySQL/MariaDB (MySQL 8, MariaDB 10.6+).
//!
//! This file holds the API and its contract; each backend's statements are in a file of its
//! own beside it: `pg.rs`, `mysql.rs` (SQLite has no `SKIP LOCKED`).
//!
//! A queue is any table with a status column and a few bookkeeping columns ([`ClaimQueue`]).
//! Workers on any number of connections, processes and hosts call [`Queue::claim`]: one
//! statement picks up to `n` due rows that no one else is claiming at that instant, marks them
//! `processing` under this worker's name until a lease expires, counts the attempt, and
//! returns them. The worker then [completes](Queue::complete) or [fails](Queue::fail) each
//! claim, [extends](Queue::extend) the lease of long work, and some worker now and then
//! [reaps](Queue::reap_expired) expired leases (their holder died) back into the queue.
//!
//! # States
//! ```text
//!            claim                    complete
//! pending ──────────► processing ───────────────► done
//! retry   ◄────────── (lease)    ───────────────► failed   (parked: attempts ≥ max)
//!   ▲       fail / reap                fail / reap
//!   └── due again once its backoff (`locked_until`) has passed
//! ```
//!
//! # Guarantees
//! - No two live claims on one row: the claim's sub-select locks the candidate rows
//!   `FOR UPDATE SKIP LOCKED` (rows another claim is taking are skipped, never waited for),
//!   re-checks them against its `WHERE` once locked, and the same statement marks them
//!   `processing`; a row is claimable again only once it is back in `pending`/`retry`.
//! - Each claim is fenced by `(id, holder, attempts)`: after a lease expired and the row was
//!   reaped or re-claimed, the old holder's [`Queue::complete`], [`Queue::fail`] and
//!   [`Queue::extend`] are refused with [`Error::NotFound`] instead of touching the new claim.
//! - Work is processed at most once *as long as the holder finishes (or extends) within its
//!   lease*. A holder that outlives its lease may find its work done twice: choose the lease
//!   well above the work's duration, or heartbeat with [`Queue::extend`]. Work whose effects
//!   live in the same database can run in the same transaction as [`Queue::complete`], which
//!   then rolls them back when the claim was lost.
//! - A claim on an empty queue, or on a queue whose due rows are all being claimed by others,
//!   returns an empty `Vec` at once.
//! - Attempts are counted at claim time, so a worker that crashes mid-item uses up an attempt
//!   too: an item that kills its workers is parked after `max_attempts`, not retried forever.
//!
//! Times are the server's (`statement_timestamp()`), never the workers' clocks.
//!
//! # Tenants (distributed tables)
//! A queue may declare a tenant column ([`ClaimQueue::TENANT`], e.g. the column a Citus table
//! is distributed by). Every statement of such a queue then filters by it: a claim claims
//! within the tenants the [`Queue`] names ([`Queue::tenant`]), one statement per tenant, in
//! the order given, until `limit` items are claimed; [`Queue::complete`], [`Queue::fail`] and
//! [`Queue::extend`] name the claim's tenant next to its id, and [`Queue::reap_expired`] reaps
//! tenant by tenant. On Citus each such statement is routed to the one shard of its tenant,
//! where `FOR UPDATE SKIP LOCKED` works as on one server (a claim across the shards of a
//! hash-distributed table is refused by Citus: "could not run distributed query with FOR
//! UPDATE/SHARE commands"). Without a tenant column the statements filter by id alone: keep
//! such a queue on one server, or on one shard of a distributed database.
//!
//! # On MySQL and MariaDB
//! The same calls take a `MysqlConnection` (MariaDB 10.6+, MySQL 8.0+, which have
//! `SKIP LOCKED`), with the same guarantees; [`mysql`] says what each one
//! sends (no `RETURNING` there: a claim is three round trips, complete one statement, fail,
//! extend and reap a short transaction) and which isolation it needs.
//!
//! Claims take PostgreSQL and MySQL connections only ([`ClaimConnection`]; SQLite has no
//! `SKIP LOCKED`), by type: a claim over an SQLite connection does not compile (the library's
//! compile-fail suite, `tests/ui/claim_on_sqlite.rs`, holds the message).

use crate::conn::{Dialect, WriteConnection};
use crate::error::{Error, Result};
use crate::observe;

/// Starts the observed call `$operation` of a queue's table on connection type `$C` (see
/// [`observe`]).
macro_rules! claim_call {
    ($C:ty, $operation:literal) => {
        observe::call!(
            <<$C as WriteConnection>::Backend as Dialect>::SYSTEM,
            $operation,
            observe::table_name::<Q::Table>
        )
    };
}
use chrono::{DateTime, Utc};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
mod pg;

/// A table used as a work queue, declared by its row type.
///
/// The row type is what a claim returns to the worker (`#[derive(QueryableByName)]` with
/// `#[diesel(table_name = …)]`, any subset of the table's columns). The table needs these
/// columns (names overridable by the constants, which default to the names shown):
///
/// | constant | default | SQL type | meaning |
/// |---|---|---|---|
/// | [`ID`](ClaimQueue::ID) | `id` | `BIGINT`, unique (with the tenant, when [`TENANT`](ClaimQueue::TENANT) is set) | claim order and identity |
/// | [`STATUS`](ClaimQueue::STATUS) | `status` | `TEXT NOT NULL` | the state, values below |
/// | [`ATTEMPTS`](ClaimQueue::ATTEMPTS) | `attempts` | `INTEGER NOT NULL DEFAULT 0` | claims so far |
/// | [`LOCKED_UNTIL`](ClaimQueue::LOCKED_UNTIL) | `locked_until` | `TIMESTAMPTZ` | the lease's end while processing; "not before" while waiting to retry |
/// | [`HOLDER`](ClaimQueue::HOLDER) | `holder` | `TEXT` | the lease's holder |
/// | [`LAST_ERROR`](ClaimQueue::LAST_ERROR) | `last_error` | `TEXT` | the last failure |
/// | [`CREATED_AT`](ClaimQueue::CREATED_AT) | none | `TIMESTAMPTZ` | optional: when the item was enqueued, for [`QueueState::oldest_ready_age`] |
///
/// A partial index on `(id) WHERE status IN ('pending', 'retry')` keeps claims cheap on a long
/// table, and one on `(locked_until) WHERE status = 'processing'` the reaper.
///
/// ```
/// use upsert_kit::claim::ClaimQueue;
///
/// diesel::table! {
///     tasks (id) {
///         id -> BigInt,
///         name -> Text,
///     }
/// }
///
/// // What a worker reads of each claimed row; the bookkeeping columns need not be fields.
/// #[derive(Debug, diesel::QueryableByName)]
/// #[diesel(table_name = tasks)]
/// struct Task {
///     name: String,
/// }
///
/// impl ClaimQueue for Task {
///     type Table = tasks::table;
/// }
/// assert_eq!(Task::PROCESSING, "processing");
/// ```
///
/// The table, on PostgreSQL:
///
/// ```sql
/// CREATE TABLE tasks (
///     id BIGSERIAL PRIMARY KEY,
///     name TEXT NOT NULL,
///     status TEXT NOT NULL DEFAULT 'pending',
///     attempts INT NOT NULL DEFAULT 0,
///     locked_until TIMESTAMPTZ,
///     holder TEXT,
///     last_error TEXT,
///     created_at TIMESTAMPTZ NOT NULL DEFAULT now()  -- optional (ClaimQueue::CREATED_AT)
/// );
/// CREATE INDEX tasks_due ON tasks (id) WHERE status IN ('pending', 'retry');
/// CREATE INDEX tasks_leased ON tasks (locked_until) WHERE status = 'processing';
/// ```
///
/// On MySQL/MariaDB: `DATETIME(6)` (UTC) for the lease, `VARCHAR` for the status and holder,
/// and an index on `(status, id)` (see [`mysql`](crate::claim::mysql#the-table)).
///
/// The examples of this module use this `Task` queue.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a claim queue's row type",
    note = "implement `upsert_kit::claim::ClaimQueue` for it (`type Table = my_table::table;`) and derive `diesel::QueryableByName`"
)]
pub trait ClaimQueue: Sized + 'static {
    /// The Diesel table (`schema::my_table::table`).
    type Table: diesel::Table + Default;
    /// The id column.
    const ID: &'static str = "id";
    /// The tenant column, when the queue has one (default: none). Every statement then
    /// filters by it (see [the module documentation](self#tenants-distributed-tables)), and
    /// [`Queue::tenant`] names the tenants a worker claims within. Its SQL type must be the
    /// one of the [`Tenant`] values given (`INTEGER`, `BIGINT` or `TEXT`).
    const TENANT: Option<&'static str> = None;
    /// The status column.
    const STATUS: &'static str = "status";
    /// The attempts column.
    const ATTEMPTS: &'static str = "attempts";
    /// The lease (and backoff) column.
    const LOCKED_UNTIL: &'static str = "locked_until";
    /// The holder column.
    const HOLDER: &'static str = "holder";
    /// The last error column.
    const LAST_ERROR: &'static str = "last_error";
    /// The column holding when an item was enqueued, when the queue has one (default: none).
    /// Only [`Queue::state`] reads it, for the age of the oldest ready item
    /// ([`QueueState::oldest_ready_age`]); without it that age is `None`. `TIMESTAMPTZ` on
    /// PostgreSQL; `DATETIME(6)` in UTC on MySQL/MariaDB, like the lease column.
    const CREATED_AT: Option<&'static str> = None;
    /// Status of a new item, due at once.
    const PENDING: &'static str = "pending";
    /// Status of a failed item waiting for its next attempt (due once `locked_until` passed).
    const RETRY: &'static str = "retry";
    /// Status of a claimed item.
    const PROCESSING: &'static str = "processing";
    /// Status of a completed item.
    const DONE: &'static str = "done";
    /// Status of an item parked after its last allowed attempt.
    const FAILED: &'static str = "failed";
}

/// A value of a queue's tenant column ([`ClaimQueue::TENANT`]), bound with its SQL type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tenant {
    /// An `INTEGER` column's value.
    Int(i32),
    /// A `BIGINT` column's value.
    BigInt(i64),
    /// A `TEXT` column's value.
    Text(String),
}

impl From<i32> for Tenant {
    fn from(v: i32) -> Self {
        Tenant::Int(v)
    }
}

impl From<i64> for Tenant {
    fn from(v: i64) -> Self {
        Tenant::BigInt(v)
    }
}

impl From<&str> for Tenant {
    fn from(v: &str) -> Self {
        Tenant::Text(v.to_owned())
    }
}

impl From<String> for Tenant {
    fn from(v: String) -> Self {
        Tenant::Text(v)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenant::Int(v) => write!(f, "{v}"),
            Tenant::BigInt(v) => write!(f, "{v}"),
            Tenant::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// One claimed item: the row, and the lease that fences this worker's updates of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<Q> {
    /// The row's id.
    pub id: i64,
    /// The row's tenant, for a queue with a tenant column ([`ClaimQueue::TENANT`]): every
    /// update of the claim names it next to the id.
    pub tenant: Option<Tenant>,
    /// Which attempt this is (1 for the first claim).
    pub attempt: i32,
    /// Who holds the lease.
    pub holder: String,
    /// When the lease expires (server time).
    pub locked_until: DateTime<Utc>,
    /// The row, as the queue's row type reads it.
    pub item: Q,
}

/// What [`Queue::fail`] did with the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Back in the queue (status `retry`), due again at this server time.
    Retry {
        /// When the item is due again.
        at: DateTime<Utc>,
    },
    /// That was the last allowed attempt: parked (status `failed`), never claimed again.
    Parked,
}

/// What [`Queue::reap_expired`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Expired claims put back in the queue (status `retry`, due at once).
    pub requeued: usize,
    /// Expired claims that had used their last attempt: parked (status `failed`).
    pub parked: usize,
}

/// How many items of a queue are in each state, as one statement read them ([`Queue::state`]).
///
/// The states partition the queue's rows that are not `done`: an item is counted in exactly
/// one of `ready`, `waiting`, `leased`, `expired` and `parked`, judged against the server's
/// clock at the statement's start. `done` items are not counted (a queue that keeps them grows
/// without bound; count them yourself if you need to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Items a claim would take now: status `pending` or `retry`, and no "not before" time
    /// (`locked_until`) ahead of the server's clock.
    pub ready: u64,
    /// Items due later: status `pending` or `retry` with `locked_until` still ahead (a failed
    /// item waiting out its backoff).
    pub waiting: u64,
    /// Items claimed and within their lease: status `processing`, `locked_until` ahead (or
    /// unset, which only a hand-made update produces: the reaper never takes such a row).
    pub leased: u64,
    /// Items whose lease expired but that no reaper has returned yet: status `processing`,
    /// `locked_until` passed. [`Queue::reap_expired`] would take exactly these.
    pub expired: u64,
    /// Items parked after their last allowed attempt: status `failed`.
    pub parked: u64,
    /// How long ago the oldest ready item was enqueued (its [`ClaimQueue::CREATED_AT`]
    /// column), by the server's clock; `None` when nothing is ready or the queue declares no
    /// such column. A queue whose workers keep up keeps this short; a growing age says
    /// they do not. (A time ahead of the server's clock counts as zero.)
    pub oldest_ready_age: Option<Duration>,
}

/// [`QueueState`]'s statement reads one row of these columns, on every backend.
#[derive(diesel::QueryableByName)]
struct StateRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ready: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    waiting: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    leased: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    expired: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    parked: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    oldest_ready_micros: Option<i64>,
}

impl From<StateRow> for QueueState {
    fn from(row: StateRow) -> Self {
        // COUNT(*) is never negative.
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        QueueState {
            ready: count(row.ready),
            waiting: count(row.waiting),
            leased: count(row.leased),
            expired: count(row.expired),
            parked: count(row.parked),
            oldest_ready_age: row
                .oldest_ready_micros
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        }
    }
}

/// The backend's half of the claims of `Q`, on the backend's own connection: implemented in
/// the backend's file (`pg.rs`, `mysql.rs` beside this one) for `PgConnection` and
/// `MysqlConnection` (MariaDB 10.6+, MySQL 8.0+), for a queue whose row type reads rows of that
/// backend (`#[derive(QueryableByName)]` does for every backend its field types fit). The
/// [`Queue`]'s methods take any [`WriteConnection`] of these (a pooled one too) and reach this
/// through [`WriteConnection::raw`]. Sealed; SQLite has no `SKIP LOCKED`, so an SQLite
/// connection is not one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run claims of `{Q}`",
    note = "claims need a PostgreSQL or MySQL/MariaDB connection (`&mut PgConnection`, `&mut MysqlConnection`, or a pooled one) and a queue row type that derives `diesel::QueryableByName`"
)]
pub trait ClaimConnection<Q: ClaimQueue>: WriteConnection<Raw = Self> {
    /// [`Queue::claim`].
    #[doc(hidden)]
    fn claim_items(&mut self, queue: &Queue<Q>, limit: usize) -> Result<Vec<Claim<Q>>>;
    /// [`Queue::complete`].
    #[doc(hidden)]
    fn complete_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>) -> Result<()>;
    /// [`Queue::fail`].
    #[doc(hidden)]
    fn fail_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>, error: &str) -> Result<Failed>;
    /// [`Queue::extend`].
    #[doc(hidden)]
    fn extend_item(&mut self, queue: &Queue<Q>, claim: &mut Claim<Q>) -> Result<()>;
    /// [`Queue::reap_expired`].
    #[doc(hidden)]
    fn reap_items(&mut self, queue: &Queue<Q>) -> Result<Reaped>;
    /// [`Queue::state`].
    #[doc(hidden)]
    fn queue_state(&mut self, queue: &Queue<Q>) -> Result<QueueState>;
}

/// The longest `last_error` kept, in characters.
pub const MAX_ERROR_CHARS: usize = 2000;
/// The longest holder name, in bytes.
pub const MAX_HOLDER_BYTES: usize = 200;

/// A worker's handle on a [`ClaimQueue`]: its holder name and its lease, attempt and backoff
/// settings. Cheap to clone; holds no connection (every method takes one).
///
/// Defaults: a 60 s lease, 5 attempts, backoff 1 s doubling up to 5 min.
#[must_use = "a queue does nothing until you claim from it"]
pub struct Queue<Q> {
    holder: String,
    tenants: Vec<Tenant>,
    lease: Duration,
    max_attempts: i32,
    backoff_base: Duration,
    backoff_cap: Duration,
    _rows: PhantomData<fn() -> Q>,
}

impl<Q> Clone for Queue<Q> {
    fn clone(&self) -> Self {
        Queue {
            holder: self.holder.clone(),
            tenants: self.tenants.clone(),
            lease: self.lease,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            _rows: PhantomData,
        }
    }
}

impl<Q> fmt::Debug for Queue<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("rows", &std::any::type_name::<Q>())
            .field("holder", &self.holder)
            .field("tenants", &self.tenants)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .finish()
    }
}

/// The longest lease or backoff: what fits in an `i32` of milliseconds (about 24 days).
const MAX_MILLIS: u128 = i32::MAX as u128;

impl<Q: ClaimQueue> Queue<Q> {
    /// A queue handle for the worker `holder` (a name unique among live workers, e.g.
    /// `"host:pid:thread"`; it is stored in the holder column and shown in reaped errors).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `holder` is empty or longer than [`MAX_HOLDER_BYTES`], or
    /// when a status constant of `Q` is not made of ASCII letters, digits and `_` (they are
    /// written into the statements as literals, so that partial indexes apply).
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use upsert_kit::claim::Queue;
    /// let q = Queue::<Task>::new("host-1:4242")?
    ///     .lease(Duration::from_secs(30))
    ///     .max_attempts(3)
    ///     .backoff(Duration::from_secs(2), Duration::from_secs(60));
    /// assert_eq!(q.backoff_for(1), Duration::from_secs(2));
    /// assert_eq!(q.backoff_for(2), Duration::from_secs(4));
    /// assert_eq!(q.backoff_for(10), Duration::from_secs(60));
    /// assert!(Queue::<Task>::new("").is_err());
    /// # Ok(()) }
    /// ```
    pub fn new(holder: impl Into<String>) -> Result<Self> {
        let holder = holder.into();
        if holder.is_empty() || holder.len() > MAX_HOLDER_BYTES {
            return Err(Error::invalid(
                "holder",
                format!("must be 1 to {MAX_HOLDER_BYTES} bytes long"),
            ));
        }
        for status in [Q::PENDING, Q::RETRY, Q::PROCESSING, Q::DONE, Q::FAILED] {
            if status.is_empty()
                || !status
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Error::invalid(
                    "ClaimQueue status",
                    format!("{status:?} must be ASCII letters, digits and '_'"),
                ));
            }
        }
        Ok(Queue {
            holder,
            tenants: Vec::new(),
            lease: Duration::from_secs(60),
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            _rows: PhantomData,
        })
    }

    /// How long a claim is held before others may reap it (default 60 s).
    ///
    /// # Panics
    /// When `lease` is under 1 ms or over `i32::MAX` ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(1) && lease.as_millis() <= MAX_MILLIS,
            "a lease must be between 1 ms and i32::MAX ms"
        );
        self.lease = lease;
        self
    }

    /// How many claims an item gets before a failure parks it (default 5).
    ///
    /// # Panics
    /// When `max_attempts` is under 1.
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        assert!(max_attempts >= 1, "max_attempts must be at least 1");
        self.max_attempts = max_attempts;
        self
    }

    /// The wait before the next attempt after a failure: `base` after the first attempt,
    /// doubling with each further attempt, never above `cap` (defaults 1 s and 5 min).
    ///
    /// # Panics
    /// When `base` is zero, `cap < base`, or `cap` is over `i32::MAX` ms.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        assert!(!base.is_zero(), "the backoff base must be positive");
        assert!(cap >= base, "the backoff cap must be at least its base");
        assert!(
            cap.as_millis() <= MAX_MILLIS,
            "the backoff cap must be at most i32::MAX ms"
        );
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// Adds `tenant` to the tenants this worker claims within (a queue with a tenant column,
    /// [`ClaimQueue::TENANT`]); call it once per tenant. [`Queue::claim`] and
    /// [`Queue::reap_expired`] run one statement per tenant, in the order added.
    ///
    /// # Panics
    /// When `Q` declares no tenant column.
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use upsert_kit::claim::{ClaimQueue, Queue, Tenant};
    /// # let (_db, mut conn) = establish_pg()?;
    /// # diesel::connection::SimpleConnection::batch_execute(&mut conn,
    /// #     "ALTER TABLE tasks ADD COLUMN account BIGINT NOT NULL DEFAULT 1")?;
    /// #[derive(Debug, diesel::QueryableByName)]
    /// #[diesel(table_name = tasks)]
    /// struct AccountTask {
    ///     name: String,
    /// }
    /// impl ClaimQueue for AccountTask {
    ///     type Table = tasks::table;
    ///     const TENANT: Option<&'static str> = Some("account");
    /// }
    /// let queue = Queue::<AccountTask>::new("worker-1")?.tenant(1_i64).tenant(2_i64);
    /// for claim in queue.claim(&mut conn, 10)? {
    ///     assert!(matches!(claim.tenant, Some(Tenant::BigInt(1 | 2))));
    ///     queue.complete(&mut conn, &claim)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tenant(mut self, tenant: impl Into<Tenant>) -> Self {
        assert!(
            Q::TENANT.is_some(),
            "Queue::tenant: {} declares no tenant column (ClaimQueue::TENANT)",
            std::any::type_name::<Q>()
        );
        self.tenants.push(tenant.into());
        self
    }

    /// The tenants this worker claims within, in claim order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The tenants to run a claim or reap for: `[None]` without a tenant column.
    #[cfg(feature = "postgres")]
    fn scopes(&self) -> Result<Vec<Option<&Tenant>>> {
        match Q::TENANT {
            None => Ok(vec![None]),
            Some(column) if self.tenants.is_empty() => Err(Error::invalid(
                "tenant",
                format!(
                    "the queue has a tenant column ({column}): name the tenants to claim within \
                     with Queue::tenant"
                ),
            )),
            Some(_) => Ok(self.tenants.iter().map(Some).collect()),
        }
    }

    /// The holder's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The configured lease.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// The configured maximum number of attempts.
    pub fn attempts_allowed(&self) -> i32 {
        self.max_attempts
    }

    /// The wait after the failure of attempt `attempt` (1-based): `base · 2^(attempt-1)`,
    /// capped.
    pub fn backoff_for(&self, attempt: i32) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        self.backoff_base
            .checked_mul(1_u32 << doublings.min(31))
            .map_or(self.backoff_cap, |d| d.min(self.backoff_cap))
    }

    /// Claims up to `limit` due items for this holder, in id order, and returns them.
    ///
    /// On PostgreSQL one statement, one round trip, atomic on its own (it needs no transaction
    /// from the caller, and inside one its lease becomes visible at the caller's commit); on
    /// MySQL, outside a transaction, three round trips and no transaction (the isolation
    /// level, the claiming `UPDATE` committed on its own, the read of its rows), inside one a
    /// savepoint of a few statements ([`mysql`](crate::claim::mysql#what-is-sent)):
    ///
    /// ```sql
    /// UPDATE t SET status = 'processing', holder = $1,
    ///        locked_until = statement_timestamp() + $2 * interval '1 millisecond',
    ///        attempts = attempts + 1
    /// WHERE id = ANY(ARRAY(SELECT id FROM t
    ///                      WHERE status IN ('pending', 'retry')
    ///                        AND (locked_until IS NULL OR locked_until <= statement_timestamp())
    ///                      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED))
    /// RETURNING *
    /// ```
    ///
    /// `= ANY(ARRAY(SELECT …))` rather than `IN (SELECT …)`: the sub-select becomes an
    /// init-plan, run exactly once by construction (a locking sub-select re-run by a
    /// nested loop could pick other rows), and the update finds its rows through the primary
    /// key instead of a semi-join over the whole table (checked with `EXPLAIN ANALYZE` on
    /// PostgreSQL 15: index scans only, on 100,000 rows).
    ///
    /// Row locks: the candidate rows, from the sub-select until the statement's transaction
    /// ends; rows locked by a concurrent claim (or any other row-locking writer) are skipped,
    /// never waited for. Under READ COMMITTED the locked rows are re-checked against the
    /// `WHERE` clause, so a row claimed and committed by someone else in the meantime is not
    /// taken. Expired leases are not taken here: [`Queue::reap_expired`] returns them first.
    ///
    /// An empty queue, or `limit == 0`, returns an empty `Vec` at once (`limit == 0` without a
    /// round trip).
    ///
    /// # Errors
    /// The statement's errors (e.g. [`Error::Database`] when the table lacks a column).
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::claim::Queue;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// let queue = Queue::<Task>::new("worker-1")?;
    /// for claim in queue.claim(&mut conn, 10)? {
    ///     println!("running {}", claim.item.name);
    ///     queue.complete(&mut conn, &claim)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn claim<C: WriteConnection>(&self, conn: &mut C, limit: usize) -> Result<Vec<Claim<Q>>>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim").run(|call| {
            let claims = conn.raw().claim_items(self, limit)?;
            call.rows(claims.len());
            Ok(claims)
        })
    }

    /// Marks a claimed item done. One statement, fenced by the claim's id, holder and attempt.
    /// Run it in the same transaction as the work's own writes to make them exactly-once.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the claim is no longer this holder's (its lease expired and it
    /// was reaped or re-claimed): the item may be processed again elsewhere. The statement's
    /// errors otherwise.
    ///
    /// # Examples
    /// See [`Queue::claim`].
    pub fn complete<C: WriteConnection>(&self, conn: &mut C, claim: &Claim<Q>) -> Result<()>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim_complete").run(|_| conn.raw().complete_item(self, claim))
    }

    /// Records a failed attempt: back to the queue (status `retry`, due after
    /// [`Queue::backoff_for`]`(claim.attempt)`), or parked (status `failed`) when this was
    /// attempt `max_attempts` or later. `error` is stored in the last-error column, cut to
    /// [`MAX_ERROR_CHARS`]; never pass secrets in it. One statement on PostgreSQL (a short
    /// transaction of two on MySQL), fenced as [`Queue::complete`].
    ///
    /// # Errors
    /// As [`Queue::complete`].
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::claim::{Failed, Queue};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// let queue = Queue::<Task>::new("worker-1")?.max_attempts(3);
    /// for claim in queue.claim(&mut conn, 1)? {
    ///     match queue.fail(&mut conn, &claim, "upstream returned 503")? {
    ///         Failed::Retry { at } => println!("retry at {at}"),
    ///         Failed::Parked => println!("gave up"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn fail<C: WriteConnection>(
        &self,
        conn: &mut C,
        claim: &Claim<Q>,
        error: &str,
    ) -> Result<Failed>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim_fail").run(|call| {
            let failed = conn.raw().fail_item(self, claim, error)?;
            if failed == Failed::Parked {
                call.outcome("parked");
                call.count("upsert_kit_items_parked_total", 1);
                tracing::warn!(
                    attempt = claim.attempt,
                    "item parked after its last attempt"
                );
            } else {
                call.outcome("retry");
            }
            Ok(failed)
        })
    }

    /// Extends the claim's lease to now + the configured lease (a heartbeat for long work) and
    /// updates `claim.locked_until`. One statement on PostgreSQL (a short transaction of two on
    /// MySQL), fenced as [`Queue::complete`]; a lease
    /// that expired but was not reaped yet is still this holder's and is extended.
    ///
    /// # Errors
    /// As [`Queue::complete`].
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::claim::Queue;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// let queue = Queue::<Task>::new("worker-1")?;
    /// for mut claim in queue.claim(&mut conn, 1)? {
    ///     // … a long step …
    ///     queue.extend(&mut conn, &mut claim)?;
    ///     // … the next step …
    ///     queue.complete(&mut conn, &claim)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn extend<C: WriteConnection>(&self, conn: &mut C, claim: &mut Claim<Q>) -> Result<()>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim_extend").run(|_| conn.raw().extend_item(self, claim))
    }

    /// Returns every expired lease to the queue: status `retry`, due at once, the last error
    /// saying whose lease expired; claims that had used `max_attempts` are parked (`failed`)
    /// instead. One statement on PostgreSQL (on MySQL a transaction of a `SELECT … FOR UPDATE
    /// SKIP LOCKED` and an `UPDATE` per 1,000 ids); it locks the expired rows `FOR UPDATE SKIP
    /// LOCKED`, so concurrent reapers (and a holder completing at that instant) never block
    /// each other and never reap one row twice. Call it before claiming (as a scheduler's loop does), or from a
    /// timer.
    ///
    /// # Errors
    /// The statement's errors.
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::claim::Queue;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// let reaped = Queue::<Task>::new("reaper")?.reap_expired(&mut conn)?;
    /// println!("{} requeued, {} parked", reaped.requeued, reaped.parked);
    /// # Ok(()) }
    /// ```
    pub fn reap_expired<C: WriteConnection>(&self, conn: &mut C) -> Result<Reaped>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim_reap_expired").run(|call| {
            let reaped = conn.raw().reap_items(self)?;
            call.rows(reaped.requeued + reaped.parked);
            call.count(
                "upsert_kit_leases_expired_total",
                reaped.requeued + reaped.parked,
            );
            call.count("upsert_kit_items_parked_total", reaped.parked);
            if reaped.requeued + reaped.parked > 0 {
                tracing::info!(
                    requeued = reaped.requeued,
                    parked = reaped.parked,
                    "expired leases reaped"
                );
            }
            Ok(reaped)
        })
    }

    /// How many items are ready, waiting for their backoff, leased, expired but not reaped, and
    /// parked, and how long ago the oldest ready item was enqueued ([`QueueState`]). One
    /// statement (a plain read: it locks nothing, waits for no claim, and changes nothing), so
    /// the numbers are one consistent snapshot, judged against the server's clock.
    ///
    /// Its cost is one pass over the rows that are not `done`, found through an index that
    /// leads with the status column when the table has one (MySQL's recommended `(status, id)`
    /// key); without one, over the whole table (PostgreSQL's partial indexes recommended above
    /// do not cover `failed`: add `(status)` if done rows pile up). For a queue with a tenant column
    /// ([`ClaimQueue::TENANT`], PostgreSQL) it counts the tenants this handle names
    /// ([`Queue::tenant`]), or the whole table when it names none.
    ///
    /// On PostgreSQL (`now` is `statement_timestamp()`; `created_at` is
    /// [`ClaimQueue::CREATED_AT`], `NULL` without it):
    ///
    /// ```sql
    /// SELECT count(*) FILTER (WHERE status IN ('pending', 'retry')
    ///                           AND (locked_until IS NULL OR locked_until <= now)) AS ready,
    ///        count(*) FILTER (WHERE status IN ('pending', 'retry') AND locked_until > now) AS waiting,
    ///        count(*) FILTER (WHERE status = 'processing'
    ///                           AND (locked_until IS NULL OR locked_until > now)) AS leased,
    ///        count(*) FILTER (WHERE status = 'processing' AND locked_until <= now) AS expired,
    ///        count(*) FILTER (WHERE status = 'failed') AS parked,
    ///        <microseconds from min(created_at) FILTER (WHERE <ready>) to now>
    /// FROM t WHERE status IN ('pending', 'retry', 'processing', 'failed')
    /// ```
    ///
    /// MySQL/MariaDB send the same with `COUNT(CASE WHEN … THEN 1 END)` and
    /// `UTC_TIMESTAMP(6)` ([`mysql`](crate::claim::mysql#what-is-sent)).
    ///
    /// # Errors
    /// The statement's errors (e.g. [`Error::Database`] when the table lacks a column).
    ///
    /// # Examples
    /// ```
    /// # include!("../doctest_setup.rs");
    /// use upsert_kit::claim::Queue;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = establish_pg()?;
    /// // Three tasks were enqueued; a worker claims one.
    /// let queue = Queue::<Task>::new("worker-1")?;
    /// let claims = queue.claim(&mut conn, 1)?;
    ///
    /// let state = Queue::<Task>::new("monitor")?.state(&mut conn)?;
    /// assert_eq!((state.ready, state.leased, state.expired, state.parked), (2, 1, 0, 0));
    /// // `Task` declares `CREATED_AT`: the age of the oldest ready task is known.
    /// assert!(state.oldest_ready_age.is_some());
    /// println!("{} ready, the oldest for {:?}", state.ready, state.oldest_ready_age);
    /// # queue.complete(&mut conn, &claims[0])?;
    /// # Ok(()) }
    /// ```
    pub fn state<C: WriteConnection>(&self, conn: &mut C) -> Result<QueueState>
    where
        C::Raw: ClaimConnection<Q>,
    {
        claim_call!(C, "claim_state").run(|_| conn.raw().queue_state(self))
    }
}

fn fenced<Q>(rows: usize, claim: &Claim<Q>) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "claim of item {}{} (attempt {}) is no longer held by {:?}",
            claim.id,
            claim
                .tenant
                .as_ref()
                .map(|t| format!(" of tenant {t}"))
                .unwrap_or_default(),
            claim.attempt,
            claim.holder
        )))
    }
}

/// The names of a claim statement's template ([`crate::sql::push_template`]): `{t}` the
/// queue's table, its columns by their role (`{id}`, `{status}`, `{holder}`,
/// `{locked_until}`, `{attempts}`, `{last_error}`) and its statuses as literals (`{pending}`,
/// `{retry}`, `{processing}`, `{done}`, `{failed}`).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn word<Q: ClaimQueue>(name: &str) -> Option<crate::sql::Word> {
    use crate::sql::Word::{Ident, Literal, Table};
    Some(match name {
        "t" => Table,
        "id" => Ident(Q::ID),
        "status" => Ident(Q::STATUS),
        "holder" => Ident(Q::HOLDER),
        "locked_until" => Ident(Q::LOCKED_UNTIL),
        "attempts" => Ident(Q::ATTEMPTS),
        "last_error" => Ident(Q::LAST_ERROR),
        "pending" => Literal(Q::PENDING),
        "retry" => Literal(Q::RETRY),
        "processing" => Literal(Q::PROCESSING),
        "done" => Literal(Q::DONE),
        "failed" => Literal(Q::FAILED),
        _ => return None,
    })
}

/// Writes a claim statement's `template` for queue `Q` ([`crate::sql::push_template`] with the
/// names of [`word`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn sql<'b, Q: ClaimQueue, DB: diesel::backend::Backend>(
    out: &mut diesel::query_builder::AstPass<'_, 'b, DB>,
    table: &'b Q::Table,
    template: &str,
) -> diesel::QueryResult<()>
where
    Q::Table: diesel::query_builder::QueryFragment<DB>,
{
    crate::sql::push_template(out, table, template, word::<Q>)
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::pg::{QueueSql, StateSql, Statement};
    use super::*;
    use diesel::pg::Pg;
    use diesel::sql_types::Untyped;

    diesel::table! {
        work_items (id) {
            id -> Int8,
            status -> Text,
        }
    }

    #[derive(Debug, diesel::QueryableByName)]
    #[diesel(table_name = work_items)]
    struct Item {
        #[allow(dead_code)]
        id: i64,
    }

    impl ClaimQueue for Item {
        type Table = work_items::table;
    }

    #[test]
    fn backoff_doubles_from_its_base_and_stops_at_its_cap() {
        let q = Queue::<Item>::new("t")
            .unwrap()
            .backoff(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<_> = (1..=6).map(|a| q.backoff_for(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(q.backoff_for(i32::MAX), Duration::from_secs(1));
        assert_eq!(q.backoff_for(0), Duration::from_millis(100));
    }

    #[test]
    fn holder_names_must_be_present_and_short() {
        assert!(Queue::<Item>::new("").is_err());
        assert!(Queue::<Item>::new("x".repeat(MAX_HOLDER_BYTES + 1)).is_err());
        assert!(Queue::<Item>::new("x".repeat(MAX_HOLDER_BYTES)).is_ok());
    }

    #[test]
    fn statements_name_the_columns_and_bind_the_values() {
        let holder = "w1".to_owned();
        let (ms, limit) = (1000.0, 5_i64);
        let sql = diesel::debug_query::<Pg, _>(&QueueSql::<Item, Untyped>::new(
            None,
            Statement::Claim {
                holder: &holder,
                lease_ms: &ms,
                limit: &limit,
            },
        ))
        .to_string();
        assert!(sql.starts_with(
            "UPDATE \"work_items\" SET \"status\" = 'processing', \"holder\" = $1, \
             \"locked_until\" = statement_timestamp() + $2 * interval '1 millisecond', \
             \"attempts\" = \"attempts\" + 1 WHERE \"id\" = ANY(ARRAY(SELECT \"id\" FROM \"work_items\" \
             WHERE \"status\" IN ('pending', 'retry')"
        ));
        assert!(sql.contains("LIMIT $3 FOR UPDATE SKIP LOCKED)) RETURNING *"));
    }

    #[test]
    fn the_state_is_one_select_over_the_rows_not_done() {
        let sql = diesel::debug_query::<Pg, _>(&StateSql::<Item>::new(&[])).to_string();
        let ready = "\"status\" IN ('pending', 'retry') AND (\"locked_until\" IS NULL OR \
                     \"locked_until\" <= statement_timestamp())";
        assert_eq!(
            sql,
            format!(
                "SELECT count(*) FILTER (WHERE {ready}) AS ready, \
                 count(*) FILTER (WHERE \"status\" IN ('pending', 'retry') AND \
                 (\"locked_until\" > statement_timestamp())) AS waiting, \
                 count(*) FILTER (WHERE \"status\" = 'processing' AND (\"locked_until\" IS NULL \
                 OR \"locked_until\" > statement_timestamp())) AS leased, \
                 count(*) FILTER (WHERE \"status\" = 'processing' AND \
                 (\"locked_until\" <= statement_timestamp())) AS expired, \
                 count(*) FILTER (WHERE \"status\" = 'failed') AS parked, \
                 CAST(NULL AS BIGINT) AS oldest_ready_micros FROM \"work_items\" \
                 WHERE \"status\" IN ('pending', 'retry', 'processing', 'failed') -- binds: []"
            )
        );
    }
}
