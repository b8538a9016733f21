//! Unbounded increments of one counter row, merged: the calls of a batch that add to the same
//! row are written as one increment of their sum, and each caller is told the totals after its
//! own share (the totals after the sum, less what the callers after it added).

use super::queue::{Answers, Callers, Fault, Pending, Slot};
use crate::conn::{BindKey, WriteConnection};
use crate::counter::{Amounts, Counter, CounterBackend, Increment};
use crate::error::Error;
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

/// One or more callers' increments of the row `key` of `T`.
pub(super) struct IncrementCall<Conn, T: Counter> {
    key: T::Key,
    creating: bool,
    /// Split out of a merged call that failed: never merged again.
    alone: bool,
    /// Each caller's amounts, in the callers' order.
    amounts: Vec<T::Amounts>,
    callers: Callers<Option<T::Amounts>>,
    _conn: PhantomData<fn(&mut Conn)>,
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
            amounts: vec![amounts],
            callers: Callers::one(slot),
            _conn: PhantomData,
        }
    }

    fn sum(&self) -> Option<T::Amounts> {
        let mut sum = self.amounts[0].as_slice().to_vec();
        for amounts in &self.amounts[1..] {
            for (s, a) in sum.iter_mut().zip(amounts.as_slice()) {
                *s = s.checked_add(*a)?;
            }
        }
        T::Amounts::from_slice(&sum)
    }
}

impl<Conn, T> Pending<Conn> for IncrementCall<Conn, T>
where
    Conn: WriteConnection + 'static,
    Conn::Backend: CounterBackend,
    T: Counter + BindKey<Conn::Backend> + 'static,
    T::Key: PartialEq + Send,
{
    fn run(&mut self, conn: &mut Conn, _alone: bool) -> std::result::Result<(), Fault> {
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
                // Each caller's totals: the totals after the sum, less what the callers after
                // it added.
                let mut after = total.as_slice().to_vec();
                for (i, amounts) in self.amounts.iter().enumerate().rev() {
                    self.callers.keep(i, Ok(T::Amounts::from_slice(&after)));
                    for (t, a) in after.iter_mut().zip(amounts.as_slice()) {
                        *t -= a;
                    }
                }
            }
            Ok(None) => {
                for i in 0..self.amounts.len() {
                    self.callers.keep(i, Ok(None));
                }
            }
            Err(e) => self.callers.keep_error(&Fault::of(e)?),
        }
        Ok(())
    }

    fn callers_ref(&self) -> &dyn Answers {
        &self.callers
    }

    fn callers_mut(&mut self) -> &mut dyn Answers {
        &mut self.callers
    }

    fn atomic(&self) -> bool {
        true
    }

    fn hot(&self) -> bool {
        self.amounts.len() > 1
    }

    fn as_any(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Pending<Conn>>> {
        let IncrementCall {
            key,
            creating,
            amounts,
            callers,
            ..
        } = *self;
        amounts
            .into_iter()
            .zip(callers.split())
            .map(|(amounts, callers)| {
                Box::new(IncrementCall::<Conn, T> {
                    key: key.clone(),
                    creating,
                    alone: true,
                    amounts: vec![amounts],
                    callers,
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
        self.amounts.append(&mut other.amounts);
        self.callers.append(&mut other.callers);
        true
    }
}
