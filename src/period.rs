//! Calendar windows for period rows: the start and end of the day, week, month, year or fixed
//! interval that contains an instant.
//!
//! Getting or creating "the current period" is [`get_or_create`](crate::get_or_create()) on a
//! table whose unique key includes the window's start: every caller computes the same start
//! for instants in the same window, so concurrent callers share one row. Nothing here writes;
//! nothing in the library assumes months.
//!
//! # Examples
//!
//! ```
//! # include!("doctest_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use upsert_kit::{get_or_create, period::Window, upsert_model, Obtained};
//!
//! upsert_model! {
//!     table = periods, key = (account, starts_at);
//!     pub struct NewPeriod { pub account: i64, pub starts_at: chrono::NaiveDateTime, pub ends_at: chrono::NaiveDateTime }
//! }
//! #[derive(Debug, Queryable, Selectable)]
//! #[diesel(table_name = periods)]
//! struct Period { id: i64, starts_at: chrono::NaiveDateTime }
//!
//! let mut conn = establish_sqlite()?;
//! let at = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap().and_hms_opt(10, 30, 0).unwrap();
//! let (starts_at, ends_at) = Window::Month.bounds(at)?;
//! let first: Obtained<Period> = get_or_create(&mut conn, &NewPeriod { account: 7, starts_at, ends_at })?;
//! let later = at + chrono::Duration::days(3);
//! let (starts_at, ends_at) = Window::Month.bounds(later)?;
//! let again: Obtained<Period> = get_or_create(&mut conn, &NewPeriod { account: 7, starts_at, ends_at })?;
//! assert!(first.created && !again.created);
//! assert_eq!(first.row.id, again.row.id);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Weekday};

/// A kind of calendar window (UTC, or whatever single time zone the caller's instants are in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Window {
    /// From midnight to midnight.
    Day,
    /// Seven days from midnight of the given weekday.
    Week(Weekday),
    /// From the first of the month at midnight to the first of the next.
    Month,
    /// From January 1st at midnight to the next January 1st.
    Year,
    /// Fixed intervals of the given length, counted from 1970-01-01 00:00 (e.g. 15 minutes).
    Every(Duration),
}

impl Window {
    /// The start of the window containing `at`.
    ///
    /// ```
    /// use upsert_kit::period::Window;
    /// let at = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap().and_hms_opt(10, 7, 0).unwrap();
    /// let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap().and_hms_opt(0, 0, 0).unwrap();
    /// assert_eq!(Window::Day.start(at)?, day(3));
    /// assert_eq!(Window::Month.start(at)?, day(1));
    /// assert_eq!(Window::Week(chrono::Weekday::Tue).start(at)?, day(1)); // at is a Thursday
    /// assert_eq!(Window::Week(chrono::Weekday::Mon).start(at)?, day(1) - chrono::Duration::days(1));
    /// let quarter_hour = Window::Every(chrono::Duration::minutes(15));
    /// assert_eq!(quarter_hour.start(at)?, day(3) + chrono::Duration::hours(10));
    /// # Ok::<(), upsert_kit::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an `Every` interval that is not positive, and for an
    /// instant whose window would fall outside chrono's range.
    pub fn start(&self, at: NaiveDateTime) -> Result<NaiveDateTime> {
        let date = at.date();
        let midnight = |d: Option<NaiveDate>| {
            d.and_then(|d| d.and_hms_opt(0, 0, 0))
                .ok_or_else(|| Error::invalid("at", format!("{at} has no window start")))
        };
        match *self {
            Window::Day => midnight(Some(date)),
            Window::Week(first) => {
                let back =
                    (7 + date.weekday().num_days_from_monday() - first.num_days_from_monday()) % 7;
                midnight(date.checked_sub_signed(Duration::days(i64::from(back))))
            }
            Window::Month => midnight(date.with_day(1)),
            Window::Year => midnight(NaiveDate::from_ymd_opt(date.year(), 1, 1)),
            Window::Every(step) => {
                let step_ms = step.num_milliseconds();
                if step_ms <= 0 {
                    return Err(Error::invalid("window", "an interval must be positive"));
                }
                let ms = at.and_utc().timestamp_millis();
                let start = ms.div_euclid(step_ms) * step_ms;
                chrono::DateTime::from_timestamp_millis(start)
                    .map(|d| d.naive_utc())
                    .ok_or_else(|| Error::invalid("at", format!("{at} has no window start")))
            }
        }
    }

    /// The start of the window after the one containing `at` (the end of that window,
    /// exclusive).
    ///
    /// ```
    /// use upsert_kit::period::Window;
    /// let at = chrono::NaiveDate::from_ymd_opt(2026, 12, 31).unwrap().and_hms_opt(23, 59, 0).unwrap();
    /// let next_year = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    /// assert_eq!(Window::Month.end(at)?, next_year);
    /// assert_eq!(Window::Year.end(at)?, next_year);
    /// # Ok::<(), upsert_kit::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Window::start`].
    pub fn end(&self, at: NaiveDateTime) -> Result<NaiveDateTime> {
        let start = self.start(at)?;
        let out_of_range = || Error::invalid("at", format!("{at} has no window end"));
        match *self {
            Window::Day => start.checked_add_signed(Duration::days(1)),
            Window::Week(_) => start.checked_add_signed(Duration::days(7)),
            Window::Month => start.checked_add_months(chrono::Months::new(1)),
            Window::Year => start.checked_add_months(chrono::Months::new(12)),
            Window::Every(step) => start.checked_add_signed(step),
        }
        .ok_or_else(out_of_range)
    }

    /// `(start, end)` of the window containing `at`: `start <= at < end`.
    ///
    /// # Errors
    /// As [`Window::start`].
    ///
    /// # Examples
    /// See the [module documentation](self).
    pub fn bounds(&self, at: NaiveDateTime) -> Result<(NaiveDateTime, NaiveDateTime)> {
        Ok((self.start(at)?, self.end(at)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(y: i32, m: u32, d: u32, h: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, 0, 0)
            .unwrap()
    }

    #[test]
    fn every_window_contains_its_instant_and_ends_where_the_next_starts() {
        let windows = [
            Window::Day,
            Window::Week(Weekday::Mon),
            Window::Week(Weekday::Sun),
            Window::Month,
            Window::Year,
            Window::Every(Duration::minutes(15)),
            Window::Every(Duration::hours(5)),
        ];
        for at in [t(2026, 12, 1, 10), t(2024, 2, 29, 23), t(1969, 12, 31, 1)] {
            for w in windows {
                let (start, end) = w.bounds(at).unwrap();
                assert!(start <= at && at < end, "{w:?} {at}");
                assert_eq!(w.start(end).unwrap(), end, "{w:?} {at}");
            }
        }
    }

    #[test]
    fn a_week_starts_on_its_weekday() {
        // 2026-12-06 is a Sunday.
        assert_eq!(
            Window::Week(Weekday::Sun).start(t(2026, 12, 6, 5)).unwrap(),
            t(2026, 12, 6, 0)
        );
        assert_eq!(
            Window::Week(Weekday::Mon).start(t(2026, 12, 6, 5)).unwrap(),
            t(2026, 11, 30, 0)
        );
    }

    #[test]
    fn a_zero_interval_is_refused() {
        assert!(matches!(
            Window::Every(Duration::zero()).start(t(2026, 1, 1, 0)),
            Err(Error::InvalidInput(_))
        ));
    }
}
