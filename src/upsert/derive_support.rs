//! What the code of `#[derive(Upsert)]` calls. Not public API: reached through
//! `upsert_kit::__private`, may change in any release.
//!
//! The derive cannot know, where the struct is declared, which backends upsert-kit is built
//! with, nor whether a field's type implements [`CheckedValue`]. It asks the compiler by method
//! resolution on references ("autoref specialization"): a call on `&&&&Probe` takes the first
//! impl, from the most references down, whose bounds hold. So a field type that fits its column
//! on PostgreSQL, SQLite or MySQL yields [`Fits`], one that fits on none yields [`DoesNotFit`], and
//! the derive's per-field check turns [`DoesNotFit`] into an error at the field.

#![allow(missing_debug_implementations)] // markers the derive's code names, never printed

use crate::error::InvalidInput;
use crate::upsert::model::CheckedValue;
use std::cmp::Ordering;
use std::marker::PhantomData;

/// The outcome of a check that passed.
#[derive(Debug)]
pub struct Fits;

/// The outcome of a check that failed: the derive's assertion reports it at the field.
#[derive(Debug)]
pub struct DoesNotFit;

/// Whether a Rust type `T` can be written to a column of SQL type `ST`.
pub struct Probe<T: ?Sized, ST>(PhantomData<fn() -> (*const T, ST)>);

impl<T: ?Sized, ST> Probe<T, ST> {
    /// The probe.
    pub const NEW: Self = Probe(PhantomData);
}

/// `T: ToSql<ST, Pg>`.
pub trait FitsPg {
    /// [`Fits`].
    fn fits(&self) -> Fits {
        Fits
    }
}

#[cfg(feature = "postgres")]
impl<T, ST> FitsPg for &&&Probe<T, ST> where T: ?Sized + diesel::serialize::ToSql<ST, diesel::pg::Pg>
{}

/// `T: ToSql<ST, Sqlite>`.
pub trait FitsSqlite {
    /// [`Fits`].
    fn fits(&self) -> Fits {
        Fits
    }
}

#[cfg(feature = "sqlite")]
impl<T, ST> FitsSqlite for &&Probe<T, ST> where
    T: ?Sized + diesel::serialize::ToSql<ST, diesel::sqlite::Sqlite>
{
}

/// `T: ToSql<ST, Mysql>`.
pub trait FitsMysql {
    /// [`Fits`].
    fn fits(&self) -> Fits {
        Fits
    }
}

#[cfg(feature = "mysql")]
impl<T, ST> FitsMysql for &Probe<T, ST> where
    T: ?Sized + diesel::serialize::ToSql<ST, diesel::mysql::Mysql>
{
}

/// No backend takes `T` as `ST`.
pub trait FitsNoBackend {
    /// [`DoesNotFit`].
    fn fits(&self) -> DoesNotFit {
        DoesNotFit
    }
}

impl<T: ?Sized, ST> FitsNoBackend for Probe<T, ST> {}

/// Whether a key type `T` is `Ord`.
pub struct OrdProbe<T: ?Sized>(PhantomData<fn() -> *const T>);

impl<T: ?Sized> OrdProbe<T> {
    /// The probe.
    pub const NEW: Self = OrdProbe(PhantomData);
}

/// `T: Ord`.
pub trait Ordered {
    /// [`Fits`].
    fn ordered(&self) -> Fits {
        Fits
    }
}

impl<T: ?Sized + Ord> Ordered for &OrdProbe<T> {}

/// `T` is not `Ord`.
pub trait NotOrdered {
    /// [`DoesNotFit`].
    fn ordered(&self) -> DoesNotFit {
        DoesNotFit
    }
}

impl<T: ?Sized> NotOrdered for OrdProbe<T> {}

/// The key values of two rows, compared.
pub struct KeyPair<'v, T: ?Sized>(pub &'v T, pub &'v T);

/// Compares `Ord` keys.
pub trait KeyOrd {
    /// `Ord::cmp`.
    fn key_cmp(&self) -> Ordering;
}

impl<T: ?Sized + Ord> KeyOrd for &KeyPair<'_, T> {
    fn key_cmp(&self) -> Ordering {
        self.0.cmp(self.1)
    }
}

/// A key that is not `Ord`: never reached by a program that compiles, since the derive's
/// check refuses such a key at the field.
pub trait KeyNotOrd {
    /// Equal.
    fn key_cmp(&self) -> Ordering {
        Ordering::Equal
    }
}

impl<T: ?Sized> KeyNotOrd for KeyPair<'_, T> {}

/// A field's value, checked before it is written.
pub struct Value<'v, T: ?Sized>(pub &'v T);

/// Values whose type implements [`CheckedValue`]: its checks.
pub trait CheckValue {
    /// [`CheckedValue::check`].
    ///
    /// # Errors
    /// As [`CheckedValue::check`].
    fn check_value(&self, field: &'static str) -> Result<(), InvalidInput>;
    /// [`CheckedValue::check_key`].
    ///
    /// # Errors
    /// As [`CheckedValue::check_key`].
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput>;
}

impl<T: ?Sized + CheckedValue> CheckValue for &&Value<'_, T> {
    fn check_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.0.check(field)
    }
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        self.0.check_key(field)
    }
}

/// An `Option` of a type without [`CheckedValue`]: a key must not be `None`.
pub trait CheckOption {
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
    /// Refuses `None`.
    ///
    /// # Errors
    /// When the key is `None`.
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput>;
}

impl<T> CheckOption for &Value<'_, Option<T>> {
    fn check_key_value(&self, field: &'static str) -> Result<(), InvalidInput> {
        match self.0 {
            Some(_) => Ok(()),
            None => Err(InvalidInput::new(field, "a key must not be NULL")),
        }
    }
}

/// A type without [`CheckedValue`] (a foreign type such as `uuid::Uuid`): every value is
/// accepted, the database has the last word.
pub trait NoCheck {
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
    /// Accepts every value.
    ///
    /// # Errors
    /// Never.
    fn check_key_value(&self, _field: &'static str) -> Result<(), InvalidInput> {
        Ok(())
    }
}

impl<T: ?Sized> NoCheck for Value<'_, T> {}
