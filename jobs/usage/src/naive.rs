//! **The racy patterns. Never use them.** Each function here is code this crate replaces, as
//! request handlers and cron jobs often write it, wrong under concurrency (see each one). They
//! are public only for this crate's tests and the race report (`upsert-race`), run on
//! PostgreSQL only, and nothing here calls them.

use crate::schema::{usage_accounts, usage_periods};
use crate::{monthly_period, unknown_account, UsagePeriod};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use upsert_kit::{Obtained, Result};

/// Select-then-insert creation of a usage period: in one transaction, `SELECT` the account's
/// period; if there is none, read the limits and `INSERT`. **Racy: never use it**: two requests
/// both insert, one fails on `(account, period_start)`. Use
/// [`get_or_create_usage_period`](crate::get_or_create_usage_period).
///
/// # Errors
/// [`Error::Constraint`](upsert_kit::Error::Constraint) (unique) when it loses the race;
/// [`Error::NotFound`](upsert_kit::Error::NotFound) for an unknown account.
pub fn get_or_create_usage_period_select_then_insert(
    conn: &mut PgConnection,
    account: i64,
    at: chrono::NaiveDateTime,
) -> Result<Obtained<UsagePeriod>> {
    let (start, end) = monthly_period(at)?;
    conn.transaction(|conn| {
        let existing = usage_periods::table
            .filter(usage_periods::account.eq(account))
            .filter(usage_periods::period_start.eq(start))
            .select(UsagePeriod::as_select())
            .first(conn)
            .optional()?;
        if let Some(row) = existing {
            let created = false;
            return Ok(Obtained { row, created });
        }
        let (tokens, reports, chats): (i64, i64, i64) = usage_accounts::table
            .find(account)
            .select((
                usage_accounts::tokens_limit,
                usage_accounts::reports_limit,
                usage_accounts::chats_limit,
            ))
            .first(conn)
            .optional()?
            .ok_or_else(|| unknown_account(account))?;
        let row = diesel::insert_into(usage_periods::table)
            .values((
                usage_periods::account.eq(account),
                usage_periods::period_start.eq(start),
                usage_periods::period_end.eq(end),
                usage_periods::tokens_limit.eq(tokens),
                usage_periods::reports_limit.eq(reports),
                usage_periods::chats_limit.eq(chats),
            ))
            .returning(UsagePeriod::as_returning())
            .get_result(conn)?;
        Ok(Obtained { row, created: true })
    })
}

/// Read-add-write increment of a period's tokens: `SELECT tokens_used`, then `UPDATE … SET
/// tokens_used = <value read> + $d`; returns the value written. **Racy: never use it**: two
/// increments that read one value lose one (and a retry counts twice). Use
/// [`increment`](crate::counter::increment).
///
/// # Errors
/// Database errors.
pub fn increment_read_add_write(
    conn: &mut PgConnection,
    period_id: i64,
    tokens: i64,
) -> Result<i64> {
    let used: i64 = usage_periods::table
        .find(period_id)
        .select(usage_periods::tokens_used)
        .first(conn)?;
    diesel::update(usage_periods::table.find(period_id))
        .set(usage_periods::tokens_used.eq(used + tokens))
        .execute(conn)?;
    Ok(used + tokens)
}

/// Check-then-consume of a period's tokens: read `used`, `reserved` and `limit`; if `used +
/// reserved + n <= limit`, `UPDATE … SET tokens_used = tokens_used + n`; returns whether it
/// consumed. **Racy: never use it**: requests that check at once overshoot the limit. Use
/// [`try_consume`](crate::quota::try_consume) or [`reserve`](crate::quota::reserve).
///
/// # Errors
/// Database errors.
pub fn try_consume_check_then_act(
    conn: &mut PgConnection,
    period_id: i64,
    tokens: i64,
) -> Result<bool> {
    let (used, reserved, limit): (i64, i64, i64) = usage_periods::table
        .find(period_id)
        .select((
            usage_periods::tokens_used,
            usage_periods::tokens_reserved,
            usage_periods::tokens_limit,
        ))
        .first(conn)?;
    if used + reserved + tokens > limit {
        return Ok(false);
    }
    diesel::update(usage_periods::table.find(period_id))
        .set(usage_periods::tokens_used.eq(usage_periods::tokens_used + tokens))
        .execute(conn)?;
    Ok(true)
}
