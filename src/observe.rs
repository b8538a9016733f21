//! What the primitives tell an operator: a `tracing` span for every call and, with the feature
//! `metrics`, counters and histograms through the `metrics` facade. The README's
//! "Observability" section lists every span, field and metric.
//!
//! A span never holds a value of a row, a key or a secret: only the backend, the operation, the
//! table (the Rust name of its `table!` module), outcomes, counts, the error's class
//! ([`Error::class`]) and times. Keys may be secrets (idempotency keys, tokens), so nothing here
//! takes one.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

/// The table's name for spans and metric labels: the Rust name of the `table!` module that
/// declares `T` (`schema::users::table` is `"users"`), with no allocation.
pub(crate) fn table_name<T>() -> &'static str {
    let path = std::any::type_name::<T>();
    let path = path.strip_suffix("::table").unwrap_or(path);
    path.rsplit("::").next().unwrap_or(path)
}

/// One primitive call: its span, entered while the call runs, and its metrics. Without the
/// feature `metrics` and a subscriber that wants the span, it costs a level check: the table's
/// name and the clock are read only when something records them.
pub(crate) struct Call {
    span: tracing::Span,
    outcome: Cell<Option<&'static str>>,
    #[cfg(feature = "metrics")]
    operation: &'static str,
    #[cfg(feature = "metrics")]
    table: &'static str,
    #[cfg(feature = "metrics")]
    start: Instant,
}

/// Starts the span of one call of `$operation` (a literal: it is the span's name and its
/// `db.operation.name`) on backend `$system` (`db.system.name`), on the table `$table` names (a
/// function, called only when something records it; `""` for none, such as a lock's).
macro_rules! call {
    ($system:expr, $operation:literal, $table:expr) => {
        $crate::observe::Call::new(
            ::tracing::debug_span!(
                $operation,
                db.system.name = $system,
                db.operation.name = $operation,
                db.collection.name = ::tracing::field::Empty,
                otel.name = ::tracing::field::Empty,
                outcome = ::tracing::field::Empty,
                rows = ::tracing::field::Empty,
                inserted = ::tracing::field::Empty,
                updated = ::tracing::field::Empty,
                unchanged = ::tracing::field::Empty,
                retries = ::tracing::field::Empty,
                wait_ms = ::tracing::field::Empty,
                overlapped = ::tracing::field::Empty,
                error.type = ::tracing::field::Empty,
            ),
            $operation,
            $table,
        )
    };
}
pub(crate) use call;

impl Call {
    /// A call whose span is `span` (see [`call!`]), of `operation` on the table `table` names.
    pub(crate) fn new(
        span: tracing::Span,
        operation: &'static str,
        table: impl Fn() -> &'static str,
    ) -> Call {
        if !span.is_disabled() {
            match table() {
                "" => span.record("otel.name", operation),
                table => {
                    span.record("db.collection.name", table);
                    span.record("otel.name", format_args!("{operation} {table}"))
                }
            };
        }
        Call {
            span,
            outcome: Cell::new(None),
            #[cfg(feature = "metrics")]
            operation,
            #[cfg(feature = "metrics")]
            table: table(),
            #[cfg(feature = "metrics")]
            start: Instant::now(),
        }
    }

    /// Runs the call's body `f` inside its span, then records how it ended: the error's class
    /// on the span, the call's metrics.
    pub(crate) fn run<T>(self, f: impl FnOnce(&Call) -> Result<T>) -> Result<T> {
        let result = self.span.in_scope(|| f(&self));
        self.finish(result.as_ref().err().map(Error::class));
        result
    }

    /// [`Call::run`] for a body with the caller's error type, whose class is not known here: an
    /// error is `error.type = "_OTHER"` (OpenTelemetry's name for an error of no known type),
    /// unless it is one of the crate's, which the body's own spans classify.
    pub(crate) fn run_as<T, E>(
        self,
        f: impl FnOnce(&Call) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let result = self.span.in_scope(|| f(&self));
        self.finish(result.is_err().then_some("_OTHER"));
        result
    }

    /// The call's outcome (`"inserted"`, `"replayed"`, …), also the `outcome` label of its
    /// metrics.
    pub(crate) fn outcome(&self, outcome: &'static str) {
        self.span.record("outcome", outcome);
        self.outcome.set(Some(outcome));
    }

    /// The rows the call wrote, claimed or found.
    pub(crate) fn rows(&self, rows: usize) {
        self.span.record("rows", rows);
    }

    /// A bulk call's counts: `upsert_kit_outcomes_total` by outcome.
    pub(crate) fn counts(&self, inserted: usize, updated: usize, unchanged: usize) {
        self.span.record("rows", inserted + updated + unchanged);
        self.span.record("inserted", inserted);
        self.span.record("updated", updated);
        self.span.record("unchanged", unchanged);
        for (outcome, n) in [
            ("inserted", inserted),
            ("updated", updated),
            ("unchanged", unchanged),
        ] {
            self.rows_metric(outcome, n);
        }
    }

    /// Whether a coalesced batch went out while another was in flight.
    #[cfg(feature = "r2d2")]
    pub(crate) fn overlapped(&self, overlapped: bool) {
        self.span.record("overlapped", overlapped);
    }

    /// How long the call waited for a lock.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) fn waited(&self, wait: Duration) {
        self.span.record("wait_ms", wait.as_secs_f64() * 1e3);
        #[cfg(feature = "metrics")]
        metrics::histogram!("upsert_kit_lock_wait_seconds", "operation" => self.operation)
            .record(wait.as_secs_f64());
    }

    /// One of the call's own counters (`upsert_kit_idempotency_replays_total`, …), by table.
    pub(crate) fn count(&self, _name: &'static str, _n: usize) {
        #[cfg(feature = "metrics")]
        metrics::counter!(_name, "table" => self.table).increment(_n as u64);
    }

    fn rows_metric(&self, _outcome: &'static str, _n: usize) {
        #[cfg(feature = "metrics")]
        if _n > 0 {
            metrics::counter!(
                "upsert_kit_outcomes_total",
                "operation" => self.operation,
                "table" => self.table,
                "outcome" => _outcome
            )
            .increment(_n as u64);
        }
    }

    /// Records how the call ended: `error`, the class of its error.
    fn finish(&self, error: Option<&'static str>) {
        if let Some(class) = error {
            self.span.record("error.type", class);
        }
        let outcome = match error {
            Some(_) => "error",
            None => self.outcome.get().unwrap_or("ok"),
        };
        if error.is_none() && self.outcome.get().is_some() {
            self.rows_metric(outcome, 1);
        }
        #[cfg(feature = "metrics")]
        {
            let (operation, table) = (self.operation, self.table);
            metrics::counter!(
                "upsert_kit_calls_total",
                "operation" => operation,
                "table" => table,
                "outcome" => outcome
            )
            .increment(1);
            if let Some(class) = error {
                metrics::counter!(
                    "upsert_kit_errors_total",
                    "operation" => operation,
                    "table" => table,
                    "class" => class
                )
                .increment(1);
            }
            metrics::histogram!(
                "upsert_kit_call_duration_seconds",
                "operation" => operation,
                "table" => table
            )
            .record(self.start.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }
}

/// A retry of a retryable error: an event at INFO (an operator sees it), the attempt count on
/// the current call's span, and `upsert_kit_retries_total` by the error's class.
pub(crate) fn retrying(attempt: u32, error: &Error, delay: Duration) {
    tracing::Span::current().record("retries", attempt);
    tracing::info!(
        attempt,
        error.type = error.class(),
        delay_ms = delay.as_millis() as u64,
        "retrying after a retryable error"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("upsert_kit_retries_total", "class" => error.class()).increment(1);
}
