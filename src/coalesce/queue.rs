//! The group commit under [`Coalescer`](super::Coalescer): callers queue their calls, and a
//! leader among them takes what is queued, writes it in one transaction on a connection of the
//! pool, and hands each caller its own result.
//!
//! A caller that finds no leader becomes one at once: alone, it writes its own call with no
//! wait. A caller that finds a batch in flight queues and sleeps on its own slot; the leader,
//! after its batch, hands the lead to the first queued caller (waking that one only) or, with
//! nothing queued, steps down. So batches go out back to back, each caller waits for at most the
//! batch in flight and its own, and only the callers of a finished batch are woken. Up to
//! `in_flight` leaders write at once: another is made while batches are in flight when the
//! queue holds at least half as many calls as the last batch took ([`Queue::elect`]).

use crate::conn::WriteConnection;
use crate::error::{Error, Result};
use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// A caller's result, or the panic its call raised on the leader's thread (raised again on
/// the caller's own).
pub(super) type Answer<R> = std::thread::Result<Result<R>>;

/// What a leader does with one queued call, whatever its result type.
pub(super) trait Pending<Conn>: Send {
    /// Runs the call inside the batch's transaction, or `alone` with none around it (see
    /// [`Pending::atomic`]), and keeps its result for [`Pending::finish`]: `Err` only for an
    /// error that spoils the transaction (see [`Fault`]).
    fn run(&mut self, conn: &mut Conn, alone: bool) -> std::result::Result<(), Fault>;
    /// Whether the connection is fit for the next batch after a run that returned `Ok` alone
    /// (a caller's own error may have been a lost connection).
    fn fit(&self) -> bool {
        true
    }
    /// The call's callers, who get its answers.
    fn callers_ref(&self) -> &dyn Answers;
    /// The same, to answer them.
    fn callers_mut(&mut self) -> &mut dyn Answers;
    /// Hands the callers their results: the ones kept by [`Pending::run`] when the batch
    /// committed, else the batch's error.
    fn finish(mut self: Box<Self>, batch: std::result::Result<(), &Error>) {
        self.callers_mut().finish(batch);
    }
    /// Hands the callers the error (their call was taken out of the batch).
    fn fail(mut self: Box<Self>, error: Error) {
        self.callers_mut().fail(error);
    }
    /// Hands the caller the panic its call raised (its call was taken out of the batch).
    fn panicked(mut self: Box<Self>, payload: Box<dyn Any + Send>) {
        self.callers_mut().panicked(payload);
    }
    /// Wakes the (first) caller as the next leader.
    fn lead(&self) {
        self.callers_ref().lead();
    }
    /// Whether the call is one statement of a primitive, atomic by itself, so that alone in
    /// its batch it runs with no transaction around it.
    fn atomic(&self) -> bool;
    /// How many callers this call answers (more than one once it has absorbed others).
    fn callers(&self) -> usize {
        self.callers_ref().len()
    }
    /// Whether a second batch in flight is not worth it after this call: it wrote one row for
    /// several callers (merged increments of one counter row), on whose lock a second batch
    /// would wait; or it is a closure ([`Coalescer::run`](super::Coalescer::run)), whose rows
    /// the writer cannot see (a hot row's increments with an idempotency key, say).
    fn hot(&self) -> bool {
        false
    }
    /// The call as `Any`, for [`Pending::absorb`] to recognise a call of its own kind.
    fn as_any(&mut self) -> Option<&mut dyn Any> {
        None
    }
    /// Takes `other` into this call when both can be written as one statement (increments of
    /// one counter row): `other` is then answered through this call and leaves the batch.
    fn absorb(&mut self, _other: &mut dyn Pending<Conn>) -> bool {
        false
    }
    /// A call that absorbed others, as one call per caller again, none of which absorbs
    /// another: when the merged statement fails on its own, the batch is written again with
    /// these so that only the caller at fault fails.
    fn split(self: Box<Self>) -> Vec<Box<dyn Pending<Conn>>>;
}

/// Why a call spoiled its batch's transaction.
pub(super) enum Fault {
    /// The call panicked: the batch is rolled back and written again without it, and the
    /// panic is raised again on the caller's thread.
    Panic(Box<dyn Any + Send>),
    /// The call's own statement failed (a constraint, a value the server refused): the batch is
    /// rolled back and written again without it, and the caller gets this error.
    Culprit(Error),
    /// The connection or the transaction failed (lost connection, deadlock, busy file): every
    /// caller of the batch gets this error's class.
    Batch(Error),
}

impl Fault {
    /// Sorts an error of a call inside a batch. Errors the library decides without the
    /// database (refused input, a bound, an idempotency replay) are results, not faults.
    pub(super) fn of(e: Error) -> std::result::Result<Error, Fault> {
        match e {
            Error::SerializationFailure(_)
            | Error::Deadlock(_)
            | Error::LockTimeout(_)
            | Error::Busy(_)
            | Error::StatementTimeout(_)
            | Error::Cancelled(_)
            | Error::Connect(_)
            | Error::ConnectionLost(_)
            | Error::OutcomeUnknown(_)
            | Error::Pool(_) => Err(Fault::Batch(e)),
            Error::Constraint { .. }
            | Error::Database(_)
            | Error::SessionStateUnavailable { .. } => Err(Fault::Culprit(e)),
            other => Ok(other),
        }
    }
}

/// The same error for another caller of the batch: the same class and message.
pub(super) fn copy_of(e: &Error) -> Error {
    let text = e.to_string();
    match e {
        Error::SerializationFailure(m) => Error::SerializationFailure(m.clone()),
        Error::Deadlock(m) => Error::Deadlock(m.clone()),
        Error::LockTimeout(m) => Error::LockTimeout(m.clone()),
        Error::Busy(m) => Error::Busy(m.clone()),
        Error::StatementTimeout(m) => Error::StatementTimeout(m.clone()),
        Error::Cancelled(m) => Error::Cancelled(m.clone()),
        Error::Connect(m) => Error::Connect(m.clone()),
        Error::ConnectionLost(m) => Error::ConnectionLost(m.clone()),
        Error::OutcomeUnknown(m) => Error::OutcomeUnknown(m.clone()),
        Error::Pool(m) => Error::Pool(m.clone()),
        // Not batch-wide errors (see `Fault::of`); kept as text, not retryable.
        _ => Error::Database(diesel::result::Error::QueryBuilderError(text.into())),
    }
}

/// Where a caller sleeps until its result is in, or until it is made the leader.
pub(super) struct Slot<R> {
    state: Mutex<SlotState<R>>,
    ready: Condvar,
}

enum SlotState<R> {
    Waiting,
    Lead,
    Done(Answer<R>),
}

/// What a caller wakes up to.
pub(super) enum Woken<R> {
    Done(Answer<R>),
    Lead,
}

impl<R> Slot<R> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            ready: Condvar::new(),
        })
    }

    fn set(&self, state: SlotState<R>) {
        *lock(&self.state) = state;
        self.ready.notify_one();
    }

    pub(super) fn done(&self, result: Answer<R>) {
        self.set(SlotState::Done(result));
    }

    pub(super) fn lead(&self) {
        // Only a queued caller is made the leader, and a queued caller has no result yet.
        self.set(SlotState::Lead);
    }

    pub(super) fn wait(&self) -> Woken<R> {
        let mut state = lock(&self.state);
        loop {
            match std::mem::replace(&mut *state, SlotState::Waiting) {
                SlotState::Waiting => {
                    state = self
                        .ready
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                SlotState::Lead => return Woken::Lead,
                SlotState::Done(result) => return Woken::Done(result),
            }
        }
    }
}

/// What a call does with its callers whatever their result type: [`Callers`] as an object.
pub(super) trait Answers {
    /// Each caller its kept result, or the batch's error.
    fn finish(&mut self, batch: std::result::Result<(), &Error>);
    /// Every caller the error (the first the error itself).
    fn fail(&mut self, error: Error);
    /// The panic to the first caller, an error to the others.
    fn panicked(&mut self, payload: Box<dyn Any + Send>);
    /// Wakes the first caller as the next leader.
    fn lead(&self);
    /// How many callers.
    fn len(&self) -> usize;
}

/// One caller of a call: where its answer goes, and its result until the batch commits.
struct Caller<R> {
    slot: Arc<Slot<R>>,
    kept: Option<Result<R>>,
}

/// The callers a call answers: one, or several once calls of one kind are merged. Whatever is
/// left unanswered when it is dropped (a batch abandoned by a panic of the library's own) is
/// told so, so that no caller waits forever.
pub(super) struct Callers<R>(Vec<Caller<R>>);

impl<R> Callers<R> {
    /// One caller, answered in `slot`.
    pub(super) fn one(slot: Arc<Slot<R>>) -> Self {
        Callers(vec![Caller { slot, kept: None }])
    }

    /// Keeps the `i`-th caller's result for when the batch commits.
    pub(super) fn keep(&mut self, i: usize, result: Result<R>) {
        self.0[i].kept = Some(result);
    }

    /// Keeps `e` (a copy each) as every caller's result.
    pub(super) fn keep_error(&mut self, e: &Error) {
        for caller in &mut self.0 {
            caller.kept = Some(Err(copy_of(e)));
        }
    }

    /// Takes `other`'s callers after this one's.
    pub(super) fn append(&mut self, other: &mut Callers<R>) {
        self.0.append(&mut other.0);
    }

    /// One `Callers` per caller.
    pub(super) fn split(mut self) -> Vec<Callers<R>> {
        self.0.drain(..).map(|c| Callers(vec![c])).collect()
    }

    fn answer_all(&mut self, mut answer: impl FnMut(Option<Result<R>>) -> Answer<R>) {
        for caller in self.0.drain(..) {
            caller.slot.done(answer(caller.kept));
        }
    }
}

impl<R> Answers for Callers<R> {
    fn finish(&mut self, batch: std::result::Result<(), &Error>) {
        self.answer_all(|kept| {
            Ok(match batch {
                Ok(()) => kept.unwrap_or_else(|| {
                    Err(Error::Cancelled(
                        "the coalesced call did not run in its batch".into(),
                    ))
                }),
                Err(e) => Err(copy_of(e)),
            })
        });
    }

    fn fail(&mut self, error: Error) {
        let mut error = Some(error);
        self.answer_all(|_| {
            Ok(Err(match error.take() {
                Some(e) => e,
                None => Error::Cancelled("another caller of this merged call failed".into()),
            }))
        });
    }

    fn panicked(&mut self, payload: Box<dyn Any + Send>) {
        let mut payload = Some(payload);
        self.answer_all(|_| match payload.take() {
            Some(p) => Err(p),
            None => Ok(Err(Error::Cancelled(
                "another caller of this merged call panicked".into(),
            ))),
        });
    }

    fn lead(&self) {
        self.0[0].slot.lead();
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl<R> Drop for Callers<R> {
    fn drop(&mut self) {
        self.answer_all(|_| {
            Ok(Err(Error::OutcomeUnknown(
                "the coalesced batch holding this call was abandoned by a panic; it may or may \
                 not have been committed"
                    .into(),
            )))
        });
    }
}

/// A lock that a caller's panic elsewhere does not spoil: every critical section here leaves
/// the state whole.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The queued calls and the leaders writing them.
pub(super) struct Queue<Conn> {
    state: Mutex<QueueState<Conn>>,
    max_batch: usize,
    max_leaders: usize,
    pub(super) counts: Counts,
}

/// What the batches did so far (see [`CoalescerStats`](super::CoalescerStats)).
#[derive(Default)]
pub(super) struct Counts {
    pub(super) batches: AtomicU64,
    pub(super) calls: AtomicU64,
    pub(super) taken_out: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) overlapped: AtomicU64,
    /// Whether the last batch that ended had a call after which a second batch in flight is
    /// not worth it ([`Pending::hot`]).
    pub(super) hot: AtomicBool,
}

struct QueueState<Conn> {
    queued: VecDeque<Box<dyn Pending<Conn>>>,
    /// Leaders writing a batch, or made leaders and about to take one.
    leaders: usize,
    /// Whether a leader is about to take the queue (it takes from the front, where its own
    /// call is): no other leader is made until it has.
    electing: bool,
    /// Whether a leader found no connection to spare since the last batch ended: no other
    /// leader is made until one ends ([`Queue::give_back`]).
    starved: bool,
    /// How many calls the last batch took.
    last: usize,
}

impl<Conn> Queue<Conn> {
    /// A queue whose batches hold at most `max_batch` calls, with at most `max_leaders`
    /// batches in flight at once.
    pub(super) fn new(max_batch: usize, max_leaders: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                queued: VecDeque::new(),
                leaders: 0,
                electing: false,
                starved: false,
                last: 0,
            }),
            max_batch,
            max_leaders,
            counts: Counts::default(),
        }
    }

    /// The calls a batch holds at most.
    pub(super) fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The batches in flight at most.
    pub(super) fn max_leaders(&self) -> usize {
        self.max_leaders
    }

    /// How many calls wait for a batch.
    pub(super) fn queued(&self) -> usize {
        lock(&self.state).queued.len()
    }

    /// Makes the oldest queued caller a leader when the queue calls for one: when nobody
    /// leads; or, with fewer leaders than allowed, none about to take the queue and no hot call
    /// in the last batch ([`Pending::hot`]), when it holds at least half as many calls as the
    /// last batch took (a batch that small would wait for the one in flight and go out barely
    /// fuller; one that size pays for its own round trip and commit). Returns whether it did.
    fn elect(&self, state: &mut QueueState<Conn>) -> bool {
        let hot = self.counts.hot.load(Ordering::Relaxed);
        let more = state.leaders < self.max_leaders && !state.electing && !state.starved && !hot;
        let room = more && state.queued.len() * 2 >= state.last;
        if state.queued.is_empty() || !(state.leaders == 0 || room) {
            return false;
        }
        state.leaders += 1;
        state.electing = true;
        true
    }

    /// Queues a call: `true` when the caller is to lead now (see [`Queue::elect`]).
    pub(super) fn push(&self, call: Box<dyn Pending<Conn>>) -> bool {
        let mut state = lock(&self.state);
        state.queued.push_back(call);
        self.elect(&mut state)
    }

    /// A leader's batch, oldest calls first, and whether its leader is the only one (else it
    /// does not wait for a connection: [`Queue::give_back`]); empty when nothing is queued (the
    /// leader then steps down). When what is left calls for another leader, its oldest caller
    /// is woken as one.
    pub(super) fn take(&self) -> (Vec<Box<dyn Pending<Conn>>>, bool) {
        let mut state = lock(&self.state);
        state.electing = false;
        let n = state.queued.len().min(self.max_batch);
        let batch: Vec<_> = state.queued.drain(..n).collect();
        if batch.is_empty() {
            state.leaders -= 1;
        } else {
            state.last = n;
        }
        let alone = state.leaders == 1;
        self.wake_leader(&mut state);
        (batch, alone)
    }

    /// For a leader that is not the only one and found no connection to spare (the pool's
    /// others are in use): puts its batch back at the front of the queue and steps down, so
    /// that the leaders in flight write it, and no other leader is made until a batch ends.
    /// Returns the batch when its leader has become the only one meanwhile: it then keeps it
    /// and waits for a connection.
    pub(super) fn give_back(
        &self,
        batch: Vec<Box<dyn Pending<Conn>>>,
    ) -> Option<Vec<Box<dyn Pending<Conn>>>> {
        let mut state = lock(&self.state);
        if state.leaders == 1 {
            return Some(batch);
        }
        for call in batch.into_iter().rev() {
            state.queued.push_front(call);
        }
        state.leaders -= 1;
        state.starved = true;
        None
    }

    /// After a batch: its leader steps down, and the oldest queued caller is woken as a leader
    /// when the queue calls for one.
    pub(super) fn pass_lead(&self) {
        let mut state = lock(&self.state);
        state.leaders -= 1;
        state.starved = false;
        self.wake_leader(&mut state);
    }

    fn wake_leader(&self, state: &mut QueueState<Conn>) {
        if self.elect(state) {
            if let Some(next) = state.queued.front() {
                next.lead();
            }
        }
    }
}

/// How many times a batch that failed as a whole with a retryable error (a deadlock, a
/// serialization failure, a busy file) is written again before its callers get the error.
const BATCH_ATTEMPTS: u32 = 3;

/// Writes one batch on `conn` in one transaction and hands every caller its result.
///
/// A call whose own statement fails is taken out and its caller told; the rest is written
/// again (a transaction the server has refused a statement in cannot go on). An error of the
/// whole batch reaches every caller; a retryable one is tried again first, since nothing of
/// the batch was applied.
///
/// Returns whether the connection is still fit for the next batch (no error of the
/// connection's own), and how the batch ended, for its span: `Ok("committed")`,
/// `Ok("taken_out")` (every call failed on its own: nothing written), or the error that failed
/// the whole batch. Once it has ended, [`Counts::hot`] says whether it held a hot call
/// ([`Pending::hot`]).
pub(super) fn write_batch<Conn>(
    conn: &mut Conn,
    batch: Vec<Box<dyn Pending<Conn>>>,
    counts: &Counts,
) -> (bool, Result<&'static str>)
where
    Conn: WriteConnection<Raw = Conn>,
{
    let mut hot = false;
    let mut ended = Ok("taken_out");
    let fit = write(conn, batch, counts, &mut hot, &mut ended);
    counts.hot.store(hot, Ordering::Relaxed);
    (fit, ended)
}

fn write<Conn>(
    conn: &mut Conn,
    mut batch: Vec<Box<dyn Pending<Conn>>>,
    counts: &Counts,
    hot: &mut bool,
    ended: &mut Result<&'static str>,
) -> bool
where
    Conn: WriteConnection<Raw = Conn>,
{
    if batch.len() == 1 && batch[0].atomic() {
        // Alone: the call runs as a direct call would, with no transaction around it (the
        // primitive is atomic by itself), and its result, whatever it is, is its own.
        let mut call = batch.pop().expect("one call");
        *hot = call.hot();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| call.run(conn, true)));
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.calls.fetch_add(1, Ordering::Relaxed);
        return match run {
            Ok(Ok(())) => {
                *ended = Ok("committed");
                let fit = call.fit();
                call.finish(Ok(()));
                fit
            }
            Ok(Err(Fault::Batch(e))) => {
                let fit = !lost(&e);
                *ended = Err(copy_of(&e));
                call.fail(e);
                fit
            }
            Ok(Err(Fault::Culprit(e))) => {
                let fit = !lost(&e);
                call.fail(e);
                fit
            }
            Ok(Err(Fault::Panic(payload))) | Err(payload) => {
                call.panicked(payload);
                false
            }
        };
    }
    merge(&mut batch);
    *hot = batch.iter().any(|call| call.hot());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut culprit = None;
        // One call left whose write is one statement of a primitive, atomic by itself (the
        // merged increments of one row; upserts of distinct keys on PostgreSQL and MySQL, see
        // `Upsertable::upsert_rows_each`): it goes out with no transaction around it, as a
        // direct call would (a round trip each for `BEGIN` and `COMMIT` saved; on MySQL,
        // Diesel's `BEGIN` and `COMMIT` are three each).
        let alone = batch.len() == 1 && batch[0].atomic();
        let mut body = |raw: &mut Conn| {
            for (i, call) in batch.iter_mut().enumerate() {
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| call.run(raw, alone)));
                match run.unwrap_or_else(|payload| Err(Fault::Panic(payload))) {
                    Ok(()) => {}
                    Err(Fault::Batch(e)) => return Err(e),
                    Err(fault) => {
                        culprit = Some((i, fault));
                        return Err(Error::Cancelled("a call of the batch failed".into()));
                    }
                }
            }
            Ok(())
        };
        let written = if alone { body(conn) } else { conn.write(body) };
        if let Some((i, fault)) = culprit {
            if batch[i].callers() > 1 && !matches!(fault, Fault::Panic(_)) {
                // A merged call failed: write its callers' calls one by one to find the culprit.
                let parts = batch.remove(i).split();
                batch.splice(i..i, parts);
                continue;
            }
            counts.taken_out.fetch_add(1, Ordering::Relaxed);
            let call = batch.remove(i);
            let fit = match fault {
                Fault::Panic(payload) => {
                    // Inside a transaction, rolled back; alone, the connection's state is
                    // unknown.
                    call.panicked(payload);
                    !alone
                }
                Fault::Culprit(e) | Fault::Batch(e) => {
                    let fit = !lost(&e);
                    call.fail(e);
                    fit
                }
            };
            if batch.is_empty() {
                return fit;
            }
            continue;
        }
        match written {
            Ok(()) => {
                *ended = Ok("committed");
                counts.batches.fetch_add(1, Ordering::Relaxed);
                let callers: usize = batch.iter().map(|call| call.callers()).sum();
                counts.calls.fetch_add(callers as u64, Ordering::Relaxed);
                for call in batch {
                    call.finish(Ok(()));
                }
                return true;
            }
            Err(e @ (Error::Deadlock(_) | Error::SerializationFailure(_) | Error::Busy(_)))
                if attempts < BATCH_ATTEMPTS =>
            {
                counts.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    error = %e,
                    calls = batch.len(),
                    "coalesced batch: a retryable failure; writing it again"
                );
            }
            Err(e) => {
                for call in batch {
                    call.finish(Err(&e));
                }
                let fit = !lost(&e);
                *ended = Err(e);
                return fit;
            }
        }
    }
}

/// Whether `e` says the connection itself failed, so that it is not used for another batch.
pub(super) fn lost(e: &Error) -> bool {
    matches!(
        e,
        Error::ConnectionLost(_) | Error::OutcomeUnknown(_) | Error::Connect(_)
    )
}

/// Merges the calls of a batch that can be written as one statement into the first of them.
/// Any order of a batch's calls is one a serial run could have had (they were all in flight at
/// once, and a caller has one call in flight), so a later call may join an earlier one.
fn merge<Conn>(batch: &mut Vec<Box<dyn Pending<Conn>>>) {
    let mut i = 0;
    while i < batch.len() {
        let (head, tail) = batch.split_at_mut(i + 1);
        let first = &mut head[i];
        let mut absorbed = vec![false; tail.len()];
        for (j, other) in tail.iter_mut().enumerate() {
            absorbed[j] = first.absorb(other.as_mut());
        }
        if absorbed.contains(&true) {
            let mut flags = absorbed.into_iter();
            let mut k = 0;
            batch.retain(|_| {
                k += 1;
                k <= i + 1 || !flags.next().unwrap_or(false)
            });
        }
        i += 1;
    }
}
