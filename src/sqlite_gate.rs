//! The in-process writer gate of an SQLite file.
//!
//! SQLite admits one writer per database file. Connections that want the write lock while
//! another holds it wait in SQLite's busy handler, which sleeps and polls (1, 2, 5, 10, … up to
//! 100 ms between tries): eight threads of one process writing through one pool then spend most
//! of their time asleep while the lock is free. The connections opened by
//! [`connect_sqlite`](crate::db::connect_sqlite) and [`sqlite_pool`](crate::db::sqlite_pool)
//! therefore share, per file, one gate of the process: the crate's writes take it before they
//! ask SQLite for the write lock, so writers of one process queue on a condition variable and
//! are woken the moment the previous one is done, and SQLite's lock is then almost always free
//! at once. Writers in other processes are not concerned: between processes SQLite's lock and
//! its busy timeout apply as before, and [`Error::Busy`] is what a writer that waited past its
//! busy timeout gets (retryable, nothing applied).
//!
//! The gate is waited for at most the connection's busy timeout as well, and a writer that
//! waited that long gets the same [`Error::Busy`]. It is held for one statement or one
//! transaction of the crate ([`immediate_transaction`](crate::tx::immediate_transaction)), and
//! not taken inside a transaction that is already open (that transaction's first write took
//! SQLite's lock, or will wait for it in the busy handler).
//!
//! The gate lives in the connection's instrumentation slot (like pooler mode on PostgreSQL):
//! a connection whose instrumentation is replaced afterwards with `set_instrumentation` has no
//! gate and waits in the busy handler, which is slower under contention but just as correct.

use crate::error::{Error, Result};
use diesel::connection::{Connection, Instrumentation, InstrumentationEvent};
use diesel::SqliteConnection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// One file's gate: whether a writer of this process holds it.
#[derive(Debug, Default)]
struct Gate {
    held: Mutex<bool>,
    free: Condvar,
}

/// The gate of this process for each open database file (canonical path).
fn gates() -> &'static Mutex<HashMap<PathBuf, Weak<Gate>>> {
    static GATES: OnceLock<Mutex<HashMap<PathBuf, Weak<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// The gate of `file`, shared with every other connection of the process to that file.
fn gate_of(file: PathBuf) -> Arc<Gate> {
    let mut gates = gates().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(gate) = gates.get(&file).and_then(Weak::upgrade) {
        return gate;
    }
    gates.retain(|_, gate| gate.strong_count() > 0);
    let gate = Arc::new(Gate::default());
    gates.insert(file, Arc::downgrade(&gate));
    gate
}

/// The marker kept as an SQLite connection's instrumentation: its file's gate and how long to
/// wait for it; it forwards every event to the instrumentation it replaced.
struct WriterGate {
    gate: Arc<Gate>,
    wait: Duration,
    inner: Option<Box<dyn Instrumentation>>,
}

impl Instrumentation for WriterGate {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let Some(inner) = self.inner.as_deref_mut() {
            inner.on_connection_event(event);
        }
    }
}

/// Gives `conn`, opened on `path`, its file's gate, waited for at most `busy_ms`. In-memory
/// and temporary databases (one per connection) and paths that cannot be resolved get none.
pub(crate) fn install(conn: &mut SqliteConnection, path: &str, busy_ms: u32) {
    if path.is_empty() || path == ":memory:" || path.contains("mode=memory") {
        return;
    }
    let Ok(file) = std::fs::canonicalize(path) else {
        return;
    };
    let inner = diesel::connection::get_default_instrumentation();
    conn.set_instrumentation(WriterGate {
        gate: gate_of(file),
        wait: Duration::from_millis(u64::from(busy_ms)),
        inner,
    });
}

/// A held gate; dropping it lets the next writer of the process in.
#[derive(Debug)]
pub(crate) struct Held(Arc<Gate>);

impl Drop for Held {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.0.free.notify_one();
    }
}

/// Takes `conn`'s gate for one write, unless `conn` has none or is inside a transaction.
///
/// # Errors
/// [`Error::Busy`] when another writer of the process held the gate past the busy timeout.
pub(crate) fn enter(conn: &mut SqliteConnection) -> Result<Option<Held>> {
    if crate::sql::in_transaction(conn) {
        return Ok(None);
    }
    let Some(marker) = conn.instrumentation().downcast_ref::<WriterGate>() else {
        return Ok(None);
    };
    let (gate, wait) = (Arc::clone(&marker.gate), marker.wait);
    let mut held = gate.held.lock().unwrap_or_else(PoisonError::into_inner);
    if *held {
        let deadline = Instant::now() + wait;
        while *held {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Busy(format!(
                    "another writer of this process held the database file past the busy timeout ({} ms)",
                    wait.as_millis()
                )));
            }
            held = gate
                .free
                .wait_timeout(held, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
    *held = true;
    drop(held);
    Ok(Some(Held(gate)))
}
