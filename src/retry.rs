//! Bounded retries of whole transactions.
//!
//! A transaction that failed with a retryable error ([`Error::is_retryable`]: serialization
//! failure, deadlock, connection lost before `COMMIT`) was rolled back by the server, so running
//! the *whole* transaction again is safe and may succeed. [`Retry`] does that a bounded number
//! of times, sleeping between attempts with capped doubling backoff and jitter (so that the
//! losers of one race do not collide again in lockstep), and returns the last error when it
//! gives up.
//!
//! A write whose outcome is unknown ([`Error::OutcomeUnknown`]: the connection dropped while
//! `COMMIT` was in flight) may have been applied. It is retried only when the caller declares
//! the closure idempotent with [`Retry::idempotent`], e.g. because it carries an idempotency
//! key (a ledger row written in the same transaction) or is an upsert of fixed values.
//!
//! A closure that lost its connection must take a new one on the next attempt: take it from a
//! pool inside the closure, as the examples do.

use crate::error::{Error, Result};
use std::time::Duration;

/// Attempts (the first one included) before [`Retry`] gives up, unless set with
/// [`Retry::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The backoff before the second attempt, unless set with [`Retry::base_delay`]; it doubles
/// before each further attempt.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(10);
/// The cap of the backoff, unless set with [`Retry::max_delay`].
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A retry policy for transaction closures. Build it with [`Retry::new`], adjust it, then
/// [`run`](Retry::run) closures with it. It holds no state: one policy can serve many calls.
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use upsert_kit::{atomic_upsert, Retry, UpsertModel, UpsertOutcome};
///
/// #[derive(UpsertModel)]
/// #[upsert(table = items, key(sku))]
/// pub struct Item {
///     pub sku: String,
///     pub name: String,
/// }
///
/// let mut conn = establish_sqlite()?;
/// let item = Item { sku: "a-1".into(), name: "first".into() };
/// // An upsert is idempotent: even an unknown outcome may be retried.
/// let outcome = Retry::new()
///     .idempotent()
///     .run(|_attempt| atomic_upsert(&mut conn, &item))?;
/// assert_eq!(outcome, UpsertOutcome::Inserted);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a retry policy does nothing until `.run(…)`"]
pub struct Retry {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    idempotent: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new()
    }
}

impl Retry {
    /// [`DEFAULT_MAX_ATTEMPTS`] attempts, backoff from [`DEFAULT_BASE_DELAY`] doubling up to
    /// [`DEFAULT_MAX_DELAY`], not idempotent.
    pub fn new() -> Self {
        Retry {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            idempotent: false,
        }
    }

    /// Attempts in all, the first one included (defaults to [`DEFAULT_MAX_ATTEMPTS`]).
    ///
    /// # Panics
    /// When `attempts` is 0.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        assert!(attempts > 0, "a retry policy makes at least one attempt");
        self.max_attempts = attempts;
        self
    }

    /// The backoff before the second attempt (defaults to [`DEFAULT_BASE_DELAY`]).
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The cap of the backoff (defaults to [`DEFAULT_MAX_DELAY`]).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Declares the closure idempotent (running it twice has the effect of running it once,
    /// e.g. it carries an idempotency key), so that [`Error::OutcomeUnknown`] is retried too.
    /// Defaults to not idempotent.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Whether this policy retries after `error`: [`Error::is_retryable`], or
    /// [`Error::is_outcome_unknown`] when the closure is idempotent.
    pub fn retries(&self, error: &Error) -> bool {
        error.is_retryable() || (self.idempotent && error.is_outcome_unknown())
    }

    /// The backoff before attempt `attempt + 1` (attempts count from 0): the base delay doubled
    /// `attempt` times, capped at the maximum, of which a random half is slept (so the sleep
    /// lies between half the backoff and all of it).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .base_delay
            .saturating_mul(1_u32.checked_shl(attempt).unwrap_or(u32::MAX));
        let capped = doubled.min(self.max_delay);
        let half = capped / 2;
        let jitter = fastrand::u64(0..=u64::try_from(half.as_micros()).unwrap_or(u64::MAX));
        half + Duration::from_micros(jitter)
    }

    /// Runs `f` until it succeeds, fails with an error this policy does not retry, or has run
    /// [`max_attempts`](Retry::max_attempts) times; returns its last result. `f` receives the
    /// attempt's number, from 0, and must run the *whole* transaction each time (and take a new
    /// connection after a lost one).
    ///
    /// # Errors
    /// The last error of `f`.
    pub fn run<T>(&self, f: impl FnMut(u32) -> Result<T>) -> Result<T> {
        self.run_while(|e| self.retries(e), f)
    }

    /// [`Retry::run`], retrying only the errors `retry` accepts (the crate's own retries of
    /// one error class).
    pub(crate) fn run_while<T>(
        &self,
        retry: impl Fn(&Error) -> bool,
        mut f: impl FnMut(u32) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match f(attempt) {
                Ok(value) => return Ok(value),
                Err(e) if attempt + 1 < self.max_attempts && retry(&e) => {
                    let delay = self.backoff(attempt);
                    attempt += 1;
                    crate::observe::retrying(attempt, &e, delay);
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Runs `f` with the default [`Retry`] policy (not idempotent). Shorthand for
/// `Retry::new().run(f)`.
///
/// # Errors
/// The last error of `f`.
///
/// # Examples
///
/// ```
/// use upsert_kit::{retry::with_retry, Error};
/// let mut calls = 0;
/// let result: Result<(), Error> = with_retry(|_| {
///     calls += 1;
///     Err(Error::OutcomeUnknown("connection lost during COMMIT".into()))
/// });
/// assert!(result.unwrap_err().is_outcome_unknown());
/// assert_eq!(calls, 1); // never retried: the write may have been applied
/// ```
pub fn with_retry<T>(f: impl FnMut(u32) -> Result<T>) -> Result<T> {
    Retry::new().run(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_within_half() {
        let policy = Retry::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(60));
        for _ in 0..100 {
            let expect = [10, 20, 40, 60, 60, 60];
            for (attempt, full) in expect.iter().enumerate() {
                let d = policy.backoff(attempt as u32);
                let full = Duration::from_millis(*full);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        // Huge attempt numbers saturate instead of overflowing.
        assert!(policy.backoff(200) <= Duration::from_millis(60));
    }

    #[test]
    fn gives_up_after_max_attempts_with_the_last_error() {
        let mut calls = 0;
        let result: Result<()> = Retry::new()
            .max_attempts(3)
            .base_delay(Duration::from_millis(1))
            .run(|attempt| {
                calls += 1;
                Err(Error::Deadlock(format!("attempt {attempt}")))
            });
        assert_eq!(calls, 3);
        assert!(matches!(result, Err(Error::Deadlock(m)) if m == "attempt 2"));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let mut calls = 0;
        let result: Result<()> = Retry::new().idempotent().run(|_| {
            calls += 1;
            Err(Error::invalid("amount", "negative"))
        });
        assert_eq!(calls, 1);
        assert!(matches!(result, Err(Error::InvalidInput(_))));
    }

    #[test]
    fn outcome_unknown_is_retried_only_when_idempotent() {
        let unknown = || Error::OutcomeUnknown("lost during COMMIT".into());
        let mut calls = 0;
        let plain: Result<u32> = Retry::new().run(|_| {
            calls += 1;
            Err(unknown())
        });
        assert!(plain.unwrap_err().is_outcome_unknown());
        assert_eq!(calls, 1);

        let idempotent = Retry::new()
            .idempotent()
            .base_delay(Duration::from_millis(1))
            .run(|attempt| {
                if attempt == 0 {
                    Err(unknown())
                } else {
                    Ok(attempt)
                }
            });
        assert_eq!(idempotent.unwrap(), 1);
    }
}
