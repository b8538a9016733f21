//! Many threads' single-row writes, written together: a [`Coalescer`] gathers the calls that
//! arrive while a batch is being written and writes them as the next batch, in one
//! transaction, telling each caller its own result.
//!
//! One call, one transaction, one commit is the limit of a direct call: where many writers
//! meet (one hot counter row, a sync job's workers, an SQLite file shared by the threads of a
//! process) each pays its round trips and its commit alone, and each waits for the commit of
//! the one before it on a hot row. Through a `Coalescer`, the calls that queue during a batch
//! share the next one's transaction and commit.
//!
//! # What each caller is told
//! A batch runs its calls one after the other in the order they were queued, in one
//! transaction, so each caller gets exactly what it would have got had the calls run one at a
//! time in that order: its own `Inserted` / `Updated` / `Unchanged`, its own counter totals
//! after its own increment, its own bound refusal, its own idempotency replay. Two upserts of
//! one key in one batch keep their serial outcomes (the second sees the first's row).
//!
//! # Durable when it returns
//! A call returns only after the transaction holding it has committed. When the batch fails
//! as a whole (the connection is lost, the commit fails), every caller of the batch gets an
//! error of the same class ([`Error::is_retryable`], [`Error::is_outcome_unknown`]) and nothing
//! of the batch is applied; a deadlock, a serialization failure or a busy SQLite file is first
//! retried (up to 3 times: nothing was applied). A call whose own statement fails (a
//! constraint, a value the server refuses) fails its caller alone: the batch is rolled back and
//! written again without it. Input the library refuses (an empty key, a NaN) is refused in the
//! caller's thread before it is queued.
//!
//! # No waiting when alone
//! A caller that finds nobody writing writes its own call at once, on its own thread, and a
//! primitive's call alone in its batch runs exactly as the direct call does (one statement, no
//! transaction around it; so does a [`Coalescer::run_atomic`] closure, while a
//! [`Coalescer::run`] closure still gets its transaction). So does a batch whose calls merge
//! into one statement of a primitive: the increments of one counter row (one increment of
//! their sum), and upserts of one kind written in one round on PostgreSQL (one statement writes
//! all their rows or none) and on MySQL/MariaDB (one statement of up to 60 rows; a row that
//! meets another unique index than the key is then written alone, failing its own caller only).
//! The others queue; after each batch the lead passes to the oldest queued caller (only that
//! one is woken; it yields its core once before it takes the queue, so that the callers the
//! batch just answered, if they come straight back, join its batch), so batches go out back to
//! back and a caller waits for at most the batch in flight and its own. A batch holds at most
//! [`CoalescerBuilder::max_batch`] calls.
//!
//! # Batches in flight
//! On PostgreSQL and MySQL/MariaDB up to two batches are in flight at once, each in its own
//! transaction on its own connection; on SQLite one, since its file has one writer
//! ([`CoalescerBuilder::in_flight`] sets another number). A caller that finds no batch in
//! flight writes at once. While one is in flight the queued calls wait for it, unless the queue
//! holds at least half as many calls as the last batch took: then its oldest caller writes
//! them as another batch, whose statement and commit overlap the first one's (a smaller one
//! would not pay for its own round trip and commit). No second batch goes out after a batch
//! that merged calls on one row (a hot counter: it would only wait on that row's lock) or held
//! a [`Coalescer::run`] or [`Coalescer::run_atomic`] closure, whose rows the writer cannot see.
//!
//! # Which connection
//! A batch takes a connection of the pool for its transaction; the coalescer keeps its last
//! batches' connections checked out for the next ones (unless a batch lost its own), so it
//! holds up to one connection of the pool per batch in flight between batches. A second batch
//! in flight takes a connection only if the pool has one to spare; else its calls wait for the
//! next batch. On PostgreSQL
//! and MySQL the transaction is `BEGIN … COMMIT` (it works behind a transaction-mode pooler);
//! on SQLite it is `BEGIN IMMEDIATE`: one writer, many callers, instead of the file handed from
//! thread to thread for every write. The calls of a batch share its transaction, so a call must
//! not expect to be the outermost transaction: the primitives nest as savepoints.
//!
//! # Panics and drop
//! A call that panics on the leader's thread is taken out of the batch (the others are written
//! without it) and the panic is raised again in the caller's own thread; the `Coalescer` stays
//! usable. Every call blocks its caller until it is answered, so nothing is queued when the
//! last handle is dropped.
//!
//! # Examples
//!
//! ```
//! # include!("../doctest_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use upsert_kit::coalesce::Coalescer;
//! use upsert_kit::{UpsertModel, UpsertOutcome};
//!
//! #[derive(UpsertModel)]
//! #[upsert(table = items, key(sku))]
//! pub struct Item {
//!     pub sku: String,
//!     pub name: String,
//! }
//!
//! # use diesel::connection::SimpleConnection;
//! # let dir = std::env::temp_dir().join(format!("upsert-kit-coalesce-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("items.db");
//! # let _ = std::fs::remove_file(&path);
//! let pool = upsert_kit::db::sqlite_pool(path.to_str().unwrap(), 4)?;
//! # pool.get()?.batch_execute("CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL)")?;
//! let writer = Coalescer::new(pool);
//! let outcomes: Vec<UpsertOutcome> = std::thread::scope(|s| {
//!     let handles: Vec<_> = (0..4)
//!         .map(|i| {
//!             let writer = &writer;
//!             s.spawn(move || writer.upsert(Item { sku: format!("sku-{}", i % 2), name: format!("item {i}") }))
//!         })
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect::<Result<_, _>>()
//! })?;
//! // Two new keys: each inserted once, whatever order the threads ran in.
//! assert_eq!(outcomes.iter().filter(|o| **o == UpsertOutcome::Inserted).count(), 2);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

mod increments;
mod queue;
mod upserts;

use self::increments::IncrementCall;
use self::upserts::UpsertCall;

use self::queue::{copy_of, lock, Answers, Callers, Fault, Pending, Queue, Slot, Woken};
use crate::conn::{BindKey, Dialect, WriteConnection};
use crate::counter::{Counter, CounterBackend, Increment};
use crate::error::{Error, Result};
use crate::get_or_create::{GetOrCreate, Obtained};
use crate::idempotency::{
    BindLedger, IdempotencyBackend, IdempotencyKey, Idempotent, StoredResult,
};
use crate::upsert::{
    AuthModel, Changed, Newer, NoCondition, StatsModel, UpsertOutcome, Upsertable,
};
use chrono::NaiveDateTime;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, R2D2Connection};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The calls a batch holds at most, unless set with [`CoalescerBuilder::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 256;

/// A handle through which many threads write, their concurrent calls gathered into shared
/// transactions (see the [module documentation](self)). Cheap to clone: clones share one queue
/// and one pool.
pub struct Coalescer<Conn: R2D2Connection + 'static> {
    shared: Arc<Shared<Conn>>,
}

struct Shared<Conn: R2D2Connection + 'static> {
    pool: Pool<ConnectionManager<Conn>>,
    /// The connections of the last batches, kept for the next ones (a checkout from the pool
    /// costs a round trip when the pool tests connections on checkout, r2d2's default): at
    /// most one per batch in flight ([`CoalescerBuilder::in_flight`]).
    kept: Mutex<Vec<PooledConnection<ConnectionManager<Conn>>>>,
    queue: Queue<Conn>,
}

impl<Conn: R2D2Connection + 'static> Clone for Coalescer<Conn> {
    fn clone(&self) -> Self {
        Coalescer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Conn: R2D2Connection + 'static> fmt::Debug for Coalescer<Conn> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("max_batch", &self.shared.queue.max_batch())
            .field("in_flight", &self.shared.queue.max_leaders())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Coalescer`] before it is built.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct CoalescerBuilder {
    max_batch: usize,
    /// `None`: the backend's default.
    in_flight: Option<usize>,
}

impl CoalescerBuilder {
    /// At most `calls` calls in one batch (default [`DEFAULT_MAX_BATCH`]): a bound on one
    /// transaction's size and on how long the calls queued behind it wait.
    ///
    /// # Panics
    /// When `calls` is 0.
    pub fn max_batch(mut self, calls: usize) -> Self {
        assert!(calls > 0, "a batch holds at least one call");
        self.max_batch = calls;
        self
    }

    /// At most `batches` batches written at once, each in its own transaction on its own
    /// connection of the pool (default: two on PostgreSQL and MySQL/MariaDB, one on SQLite). A
    /// caller that finds no batch in flight writes at once; while batches are in flight, another
    /// one goes out when the queue holds at least half as many calls as the last batch took and
    /// the last batch neither merged calls on one row nor held a closure (see the [module
    /// documentation](self)).
    /// More than one pays where the server commits several connections' transactions together
    /// and the callers write different rows; where they meet on one row, one batch in flight
    /// gathers the most calls into each statement. Never more than the pool's `max_size`; a
    /// batch that goes out while another is in flight never waits for the pool: when it has no
    /// connection to spare (the application's own calls hold them), its calls go back to the
    /// queue for the next batch. The coalescer holds up to `batches` connections of the pool
    /// between batches. The batches in flight together may wait on
    /// each other's row locks; a deadlock between them is retried as any batch's.
    ///
    /// # Panics
    /// When `batches` is 0.
    pub fn in_flight(mut self, batches: usize) -> Self {
        assert!(batches > 0, "at least one batch in flight");
        self.in_flight = Some(batches);
        self
    }

    /// The coalescer over `pool`.
    pub fn build<Conn>(self, pool: Pool<ConnectionManager<Conn>>) -> Coalescer<Conn>
    where
        Conn: R2D2Connection + WriteConnection<Raw = Conn> + 'static,
    {
        let default = <<Conn as WriteConnection>::Backend as Dialect>::BATCHES_IN_FLIGHT;
        // Never more batches in flight than the pool has connections.
        let in_flight = (self.in_flight.unwrap_or(default)).min(pool.max_size() as usize);
        Coalescer {
            shared: Arc::new(Shared {
                pool,
                kept: Mutex::new(Vec::new()),
                queue: Queue::new(self.max_batch, in_flight),
            }),
        }
    }
}

impl Default for CoalescerBuilder {
    fn default() -> Self {
        CoalescerBuilder {
            max_batch: DEFAULT_MAX_BATCH,
            in_flight: None,
        }
    }
}

impl<Conn: R2D2Connection + 'static> Coalescer<Conn> {
    /// How many calls wait for the next batch now.
    pub fn queued(&self) -> usize {
        self.shared.queue.queued()
    }

    /// What the batches did since the coalescer was built.
    pub fn stats(&self) -> CoalescerStats {
        let counts = &self.shared.queue.counts;
        CoalescerStats {
            batches: counts.batches.load(Ordering::Relaxed),
            calls: counts.calls.load(Ordering::Relaxed),
            taken_out: counts.taken_out.load(Ordering::Relaxed),
            retried_batches: counts.retries.load(Ordering::Relaxed),
            overlapped_batches: counts.overlapped.load(Ordering::Relaxed),
        }
    }
}

impl<Conn> Coalescer<Conn>
where
    Conn: R2D2Connection + WriteConnection<Raw = Conn> + 'static,
{
    /// A coalescer over `pool`, with the default settings.
    pub fn new(pool: Pool<ConnectionManager<Conn>>) -> Self {
        Self::builder().build(pool)
    }

    /// Settings first: `Coalescer::<PgConnection>::builder().max_batch(64).in_flight(2).build(pool)`
    /// (the connection type named: the builder is built before it meets the pool).
    pub fn builder() -> CoalescerBuilder {
        CoalescerBuilder::default()
    }

    /// Runs `f` on the connection of the next batch, inside its transaction, and returns its
    /// result once that transaction has committed. Use it for what has no method of its own
    /// here, e.g. an upsert with `keep` and `update_if`:
    /// `writer.run(move |c| Upsert::new(&row).keep(t::created_at).update_if(cond).execute(c))`.
    ///
    /// `f` must only write through the connection it is given, and may run more than once:
    /// when another call of its batch fails on its own, the batch is rolled back and written
    /// again without it (what `f` wrote the first time is rolled back with it).
    ///
    /// # Errors
    /// `f`'s error; the batch's, as the [module documentation](self) says.
    pub fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Conn) -> Result<R> + Send + 'static,
    {
        self.queue(f, false)
    }

    /// As [`Coalescer::run`], for an `f` that is atomic by itself: one statement, or a
    /// transaction of its own (the crate's primitives, or a function made of one of them such
    /// as an adopter's keyed increment). With other calls in its batch it runs inside the
    /// batch's transaction (its own as a savepoint); alone in its batch it runs with no
    /// transaction around it, as the direct call does, so that a caller who finds nobody else
    /// writing pays nothing for the writer.
    ///
    /// An `f` of several statements that is not a transaction of its own must go through
    /// [`Coalescer::run`]: alone, a failure between its statements would leave the first ones
    /// written.
    ///
    /// # Errors
    /// As [`Coalescer::run`].
    pub fn run_atomic<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Conn) -> Result<R> + Send + 'static,
    {
        self.queue(f, true)
    }

    /// Queues a call and waits for its answer; `atomic` as [`Pending::atomic`].
    fn queue<R, F>(&self, f: F, atomic: bool) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Conn) -> Result<R> + Send + 'static,
    {
        let slot = Slot::new();
        let call = Box::new(Call {
            f,
            caller: Callers::one(Arc::clone(&slot)),
            atomic,
            _conn: PhantomData,
        });
        self.wait(call, &slot)
    }

    /// Queues `call`, whose answer comes in `slot`, and waits for it (leading when asked to).
    fn wait<R>(&self, call: Box<dyn Pending<Conn>>, slot: &Slot<R>) -> Result<R> {
        if self.shared.queue.push(call) {
            self.lead();
        }
        loop {
            match slot.wait() {
                Woken::Done(Ok(result)) => return result,
                Woken::Done(Err(payload)) => std::panic::resume_unwind(payload),
                Woken::Lead => {
                    // The callers the last batch answered are runnable now; a caller that comes
                    // straight back joins this batch rather than the next if it gets the core
                    // first (one yield: no wait when no other thread is runnable).
                    std::thread::yield_now();
                    self.lead()
                }
            }
        }
    }

    /// Writes one batch (if anything is queued), then passes the lead on.
    fn lead(&self) {
        let queue = &self.shared.queue;
        let (mut batch, mut alone) = queue.take();
        if batch.is_empty() {
            return;
        }
        let kept = lock(&self.shared.kept).pop();
        let conn = match kept {
            Some(conn) => Ok(conn),
            None if alone => self.shared.pool.get(),
            // A second leader never waits for the pool: with no connection to spare, its batch
            // goes back to the queue for the leader in flight.
            None => match self.shared.pool.try_get() {
                Some(conn) => Ok(conn),
                None => match queue.give_back(batch) {
                    None => return,
                    Some(again) => {
                        // The only leader now.
                        batch = again;
                        alone = true;
                        self.shared.pool.get()
                    }
                },
            },
        };
        if !alone {
            queue.counts.overlapped.fetch_add(1, Ordering::Relaxed);
        }
        // Passed on however the batch ends, a panic of the library's own included, so that
        // the queue never waits for a leader that is gone.
        let _pass = PassLead(queue);
        match conn {
            Ok(mut conn) => {
                // The batch's span: its calls, whether another batch was in flight, how it
                // ended (never a key or a value).
                let system = <<Conn as WriteConnection>::Backend as Dialect>::SYSTEM;
                let span = crate::observe::call!(system, "coalesce_batch", || "");
                span.rows(batch.len());
                span.overlapped(!alone);
                let mut fit = false;
                let _ = span.run(|span| {
                    let (written_fit, ended) = queue::write_batch(&mut *conn, batch, &queue.counts);
                    fit = written_fit;
                    ended.map(|outcome| span.outcome(outcome))
                });
                if fit && !conn.is_broken() {
                    lock(&self.shared.kept).push(conn);
                }
            }
            Err(e) => {
                let e = Error::Pool(crate::redact::redact_message(&e.to_string()));
                for call in batch {
                    call.fail(copy_of(&e));
                }
            }
        }
    }

    /// [`atomic_upsert`](crate::atomic_upsert) through the next batch. The batch's upserts of
    /// one model (and one helper: plain, stats or auth) are written together: on PostgreSQL as
    /// one `INSERT … SELECT FROM unnest(…)` that tells each row's outcome (the rows of one key:
    /// without a condition one row, the last one's columns and the first one's kept columns;
    /// with a condition in rounds, first rows first, since one statement may not write a row
    /// twice); on MySQL as one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per round (up to 60
    /// rows), each row's outcome read from session-variable bit masks in one more round trip;
    /// on SQLite one statement per row in the batch's transaction. Each caller is told its own
    /// row's outcome, as a serial run in the batch's order would have told it.
    ///
    /// # Errors
    /// As [`atomic_upsert`](crate::atomic_upsert); [`Error::InvalidInput`] before the row is queued.
    pub fn upsert<M>(&self, row: M) -> Result<UpsertOutcome>
    where
        M: Upsertable<Conn> + Send + 'static,
    {
        self.merged_upsert(row, None::<NoCondition>)
    }

    /// [`atomic_upsert_stats`](crate::atomic_upsert_stats) through the next batch.
    ///
    /// # Errors
    /// As [`atomic_upsert_stats`](crate::atomic_upsert_stats).
    pub fn upsert_stats<M>(&self, row: M) -> Result<UpsertOutcome>
    where
        M: StatsModel + Upsertable<Conn, Changed<M::Data>> + Send + 'static,
        M::Data: Send,
    {
        self.merged_upsert(row, Some(Changed::<M::Data>::default()))
    }

    /// [`atomic_upsert_auth`](crate::atomic_upsert_auth) through the next batch.
    ///
    /// # Errors
    /// As [`atomic_upsert_auth`](crate::atomic_upsert_auth).
    pub fn upsert_auth<M>(&self, row: M) -> Result<UpsertOutcome>
    where
        M: AuthModel + Upsertable<Conn, Newer<M::ExpiresAt>> + Send + 'static,
        M::ExpiresAt: Send,
    {
        self.merged_upsert(row, Some(Newer::<M::ExpiresAt>::default()))
    }

    /// Queues an upsert of `row` under `condition` (one without values of its own, the same
    /// for every row of its kind) to be merged with the batch's other upserts of its kind.
    fn merged_upsert<M, F>(&self, row: M, condition: Option<F>) -> Result<UpsertOutcome>
    where
        M: Upsertable<Conn, F> + Send + 'static,
        F: Default + Send + 'static,
    {
        row.validate()?;
        let slot = Slot::new();
        let call = UpsertCall::<Conn, M, F>::new(row, condition, Arc::clone(&slot));
        self.wait(Box::new(call), &slot)
    }

    /// [`get_or_create`](crate::get_or_create::get_or_create) through the next batch.
    ///
    /// # Errors
    /// As [`get_or_create`](crate::get_or_create::get_or_create).
    pub fn get_or_create<M, R>(&self, row: M) -> Result<Obtained<R>>
    where
        M: GetOrCreate<Conn, R> + Send + 'static,
        R: Send + 'static,
    {
        row.validate()?;
        self.queue(move |c| crate::get_or_create::get_or_create(c, &row), true)
    }

    /// [`counter::increment`](crate::counter::increment) through the next batch: the totals
    /// after this call's own increment, `None` when the row is missing. The increments of one
    /// row in one batch are written as one increment of their sum; each caller is told the
    /// totals after its own share, as if the batch's increments of that row had run one after
    /// the other.
    ///
    /// # Errors
    /// As [`counter::increment`](crate::counter::increment).
    pub fn increment<T>(&self, key: T::Key, amounts: T::Amounts) -> Result<Option<T::Amounts>>
    where
        T: Counter + BindKey<<Conn as WriteConnection>::Backend> + 'static,
        T::Key: PartialEq + Send + Sized + 'static,
        <Conn as WriteConnection>::Backend: CounterBackend,
    {
        self.merged_increment::<T>(key, amounts, false)
    }

    /// [`counter::upsert_increment`](crate::counter::upsert_increment) through the next batch,
    /// merged as [`Coalescer::increment`] says.
    ///
    /// # Errors
    /// As [`counter::upsert_increment`](crate::counter::upsert_increment).
    pub fn upsert_increment<T>(&self, key: T::Key, amounts: T::Amounts) -> Result<T::Amounts>
    where
        T: Counter + BindKey<<Conn as WriteConnection>::Backend> + 'static,
        T::Key: PartialEq + Send + Sized + 'static,
        <Conn as WriteConnection>::Backend: CounterBackend,
    {
        self.merged_increment::<T>(key, amounts, true)?
            .ok_or_else(|| Error::NotFound("the counter row was not created".into()))
    }

    fn merged_increment<T>(
        &self,
        key: T::Key,
        amounts: T::Amounts,
        creating: bool,
    ) -> Result<Option<T::Amounts>>
    where
        T: Counter + BindKey<<Conn as WriteConnection>::Backend> + 'static,
        T::Key: PartialEq + Send + Sized + 'static,
        <Conn as WriteConnection>::Backend: CounterBackend,
    {
        T::validate_key(&key)?;
        let slot = Slot::new();
        let call = IncrementCall::<Conn, T>::new(key, amounts, creating, Arc::clone(&slot));
        self.wait(Box::new(call), &slot)
    }

    /// An [`Increment`] configured by `configure` (bounds, `creating`) through the next batch:
    /// `writer.increment_with::<ApiCalls>(key, [1], |i| i.at_most(100))`. A bound is judged
    /// on this call's own increment, in the batch's order.
    ///
    /// # Errors
    /// As [`Increment::run`].
    pub fn increment_with<T>(
        &self,
        key: T::Key,
        amounts: T::Amounts,
        configure: fn(Increment<'_, T>) -> Increment<'_, T>,
    ) -> Result<Option<T::Amounts>>
    where
        T: Counter + BindKey<<Conn as WriteConnection>::Backend> + 'static,
        T::Key: Send + Sized + 'static,
        <Conn as WriteConnection>::Backend: CounterBackend,
    {
        T::validate_key(&key)?;
        self.queue(
            move |c| configure(Increment::<T>::new(&key, amounts)).run(c),
            true,
        )
    }

    /// [`idempotency::increment_once`](crate::idempotency::increment_once) through the next
    /// batch: the increment applied once per idempotency key, a repeat told it was replayed.
    ///
    /// # Errors
    /// As [`idempotency::increment_once`](crate::idempotency::increment_once).
    pub fn increment_once<L, T>(
        &self,
        key: IdempotencyKey,
        counter_key: T::Key,
        amounts: T::Amounts,
        at: NaiveDateTime,
    ) -> Result<Idempotent<T::Amounts>>
    where
        L: BindLedger<<Conn as WriteConnection>::Backend>,
        T: Counter + BindKey<<Conn as WriteConnection>::Backend> + 'static,
        T::Key: Send + Sized + 'static,
        T::Amounts: StoredResult,
        <Conn as WriteConnection>::Backend: IdempotencyBackend,
    {
        T::validate_key(&counter_key)?;
        self.queue(
            move |c| {
                crate::idempotency::increment_once::<L, T, _>(c, &key, &counter_key, amounts, at)
            },
            true,
        )
    }
}

/// What a [`Coalescer`]'s batches did: [`Coalescer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalescerStats {
    /// Batches committed.
    pub batches: u64,
    /// Calls answered by those batches (`calls / batches` is the mean batch size; merged
    /// increments count once per caller).
    pub calls: u64,
    /// Calls taken out of their batch because their own statement failed or they panicked.
    pub taken_out: u64,
    /// Batches written again after a deadlock, a serialization failure or a busy file.
    pub retried_batches: u64,
    /// Batches that went out while another was in flight
    /// ([`CoalescerBuilder::in_flight`]).
    pub overlapped_batches: u64,
}

/// Passes the lead on when dropped (see [`Coalescer::lead`]).
struct PassLead<'q, Conn>(&'q Queue<Conn>);

impl<Conn> Drop for PassLead<'_, Conn> {
    fn drop(&mut self) {
        self.0.pass_lead();
    }
}

/// One queued call: its closure and its caller.
struct Call<Conn, R, F> {
    f: F,
    caller: Callers<R>,
    atomic: bool,
    _conn: PhantomData<fn(&mut Conn)>,
}

impl<Conn, R, F> Pending<Conn> for Call<Conn, R, F>
where
    Conn: 'static,
    R: Send + 'static,
    F: FnMut(&mut Conn) -> Result<R> + Send + 'static,
{
    fn run(&mut self, conn: &mut Conn, _alone: bool) -> std::result::Result<(), Fault> {
        let result = match (self.f)(conn) {
            Ok(value) => Ok(value),
            Err(e) => Err(Fault::of(e)?),
        };
        self.caller.keep(0, result);
        Ok(())
    }

    fn callers_ref(&self) -> &dyn Answers {
        &self.caller
    }

    fn callers_mut(&mut self) -> &mut dyn Answers {
        &mut self.caller
    }

    fn atomic(&self) -> bool {
        self.atomic
    }

    fn hot(&self) -> bool {
        true
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Pending<Conn>>> {
        vec![self]
    }
}
