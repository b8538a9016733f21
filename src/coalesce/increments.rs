//! Unbounded increments of one counter row, merged: the calls of a batch that add to the same
//! row are written as one increment of their sum, and each caller is told the totals after its
//! own share (the totals after the sum, less what the callers after it added).

use super::queue::{copy_of, Answer, Fault, Pending, Slot};
use crate::conn::{BindKey, WriteConnection};
use crate::counter::{Amounts, Counter, CounterBackend, Increment};
use crate::error::{Error, Result};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

/// One or more callers' increments of the row `key` of `T`.
pub(super) struct IncrementCall<Conn, T: Counter> {
    key: T::Key,
    creating: bool,
    /// Split out of a merged call that failed: never merged again.
    alone: bool,
    shares: Vec<Share<T::Amounts>>,
    _conn: PhantomData<fn(&mut Conn)>,
}

/// One caller's increment and where its answer goes.
struct Share<A> {
    amounts: A,
    slot: Arc<Slot<Option<A>>>,
    kept: Option<Result<Option<A>>>,
}

impl<Conn, T: Counter> IncrementCall<Conn, T> {
    pub(super) fn new(
        key: T::Key,
        amounts: T::Amounts,
        creating: bool,
        slot: Arc<Slot<Option<T::Amounts>>>,
    ) -> Self {
        IncrementCall {
            key,
            creating,
            alone: false,
            shares: vec![Share {
                amounts,
                slot,
                kept: None,
            }],
            _conn: PhantomData,
        }
    }

    fn sum(&self) -> Option<T::Amounts> {
        let mut sum = self.shares[0].amounts.as_slice().to_vec();
        for share in &self.shares[1..] {
            for (s, a) in sum.iter_mut().zip(share.amounts.as_slice()) {
                *s = s.checked_add(*a)?;
            }
        }
        T::Amounts::from_slice(&sum)
    }

    fn answer_all(&mut self, mut answer: impl FnMut(usize) -> Answer<Option<T::Amounts>>) {
        for (i, share) in self.shares.drain(..).enumerate() {
            share.slot.done(answer(i));
        }
    }
}

impl<Conn, T> Pending<Conn> for IncrementCall<Conn, T>
where
    Conn: WriteConnection + 'static,
    Conn::Backend: CounterBackend,
    T: Counter + BindKey<Conn::Backend> + 'static,
    T::Key: PartialEq + Send,
{
    fn run(&mut self, conn: &mut Conn) -> std::result::Result<(), Fault> {
        let Some(sum) = self.sum() else {
            return Err(Fault::Culprit(Error::InvalidInput(
                crate::error::InvalidInput::new(
                    "amounts",
                    "the increments of one row in one batch add up past the 64-bit range",
                ),
            )));
        };
        let mut increment = Increment::<T>::new(&self.key, sum);
        if self.creating {
            increment = increment.creating();
        }
        match increment.run(conn) {
            Ok(Some(total)) => {
                let mut after = total.as_slice().to_vec();
                for share in self.shares.iter_mut().rev() {
                    share.kept = Some(Ok(T::Amounts::from_slice(&after)));
                    for (t, a) in after.iter_mut().zip(share.amounts.as_slice()) {
                        *t -= a;
                    }
                }
            }
            Ok(None) => {
                for share in &mut self.shares {
                    share.kept = Some(Ok(None));
                }
            }
            Err(e) => {
                let own = Fault::of(e)?;
                for share in &mut self.shares {
                    share.kept = Some(Err(copy_of(&own)));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, batch: std::result::Result<(), &Error>) {
        let mut kept: Vec<_> = self.shares.iter_mut().map(|s| s.kept.take()).collect();
        self.answer_all(|i| {
            Ok(match batch {
                Ok(()) => kept[i].take().unwrap_or_else(|| {
                    Err(Error::Cancelled(
                        "the coalesced call did not run in its batch".into(),
                    ))
                }),
                Err(e) => Err(copy_of(e)),
            })
        });
    }

    fn fail(mut self: Box<Self>, error: Error) {
        self.answer_all(|_| Ok(Err(copy_of(&error))));
    }

    fn panicked(mut self: Box<Self>, payload: Box<dyn Any + Send>) {
        let mut payload = Some(payload);
        self.answer_all(|_| match payload.take() {
            Some(p) => Err(p),
            None => Ok(Err(Error::Cancelled(
                "another call of this merged increment panicked".into(),
            ))),
        });
    }

    fn lead(&self) {
        self.shares[0].slot.lead();
    }

    fn atomic(&self) -> bool {
        true
    }

    fn callers(&self) -> usize {
        self.shares.len()
    }

    fn as_any(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn split(mut self: Box<Self>) -> Vec<Box<dyn Pending<Conn>>> {
        let shares: Vec<_> = self.shares.drain(..).collect();
        shares
            .into_iter()
            .map(|share| {
                Box::new(IncrementCall::<Conn, T> {
                    key: self.key.clone(),
                    creating: self.creating,
                    alone: true,
                    shares: vec![share],
                    _conn: PhantomData,
                }) as Box<dyn Pending<Conn>>
            })
            .collect()
    }

    fn absorb(&mut self, other: &mut dyn Pending<Conn>) -> bool {
        let Some(other) = other
            .as_any()
            .and_then(|o| o.downcast_mut::<IncrementCall<Conn, T>>())
        else {
            return false;
        };
        if self.alone || other.alone || other.key != self.key || other.creating != self.creating {
            return false;
        }
        self.shares.append(&mut other.shares);
        true
    }
}

impl<Conn, T: Counter> Drop for IncrementCall<Conn, T> {
    fn drop(&mut self) {
        // A batch abandoned by a panic of the library's own: its callers must not wait forever.
        for share in self.shares.drain(..) {
            share.slot.done(Ok(Err(Error::OutcomeUnknown(
                "the coalesced batch holding this call was abandoned by a panic; it may or may \
                 not have been committed"
                    .into(),
            ))));
        }
    }
}
