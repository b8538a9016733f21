//! The crate's calls of the library's primitives on the usage tables: the sealed trait
//! [`Calls`], implemented for every connection whose backend binds the tables' declarations.

use crate::schema::{usage_accounts as a, usage_events, usage_periods as p, usage_reservations};
use crate::{counter, monthly_period, quota, Metric, PeriodKey, Usage, UsagePeriod, MIGRATIONS};
use crate::{ChatsQuota, PeriodCounters, ReportsQuota, TokensQuota, UsageEvents};
use chrono::NaiveDateTime;
use diesel::query_dsl::{methods::ExecuteDsl, LoadQuery};
use diesel::{connection::LoadConnection, dsl, dsl::Eq, prelude::*};
use diesel_migrations::MigrationHarness;
use std::time::Duration;
use upsert_kit::idempotency::{IdempotencyBackend, IdempotencyKey, Idempotent, Record};
use upsert_kit::quota::{self as q, BindQuota, Quota, QuotaBackend, ReturnRow};
use upsert_kit::{conn::BindKey, conn::WriteConnection, get_or_create::GetOrCreate};
use upsert_kit::{tables::ChooseBackend, Error, Obtained, Result, Upsertable};

// The rows the calls write (a new month; an account's limits) and return.
#[derive(Debug, Insertable, upsert_kit::UpsertModel)]
#[diesel(table_name = p)]
#[upsert(key(account, period_start))]
pub struct NewPeriod {
    account: i64,
    period_start: NaiveDateTime,
    period_end: NaiveDateTime,
    tokens_limit: i64,
    reports_limit: i64,
    chats_limit: i64,
    created_at: NaiveDateTime,
}

#[derive(Debug, Insertable, upsert_kit::UpsertModel)]
#[diesel(table_name = a)]
#[upsert(key(account))]
pub struct AccountRow {
    account: i64,
    tokens_limit: i64,
    reports_limit: i64,
    chats_limit: i64,
    updated_at: NaiveDateTime,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = usage_events)]
pub struct EventRow {
    id: i64,
    period_id: i64,
    tokens_total: i64,
    reports_total: i64,
    chats_total: i64,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = usage_reservations)]
pub struct HeldRow {
    period_id: i64,
}

/// The read of an account's limits, and the update of its open periods' limits.
type ReadLimits = dsl::Limit<dsl::Select<dsl::Find<a::table, i64>, Limits>>;
type Limits = (a::tokens_limit, a::reports_limit, a::chats_limit);
type Open = dsl::Filter<dsl::Filter<p::table, Eq<p::account, i64>>, OpenAt>;
type OpenAt = dsl::Gt<p::period_end, NaiveDateTime>;
type SetLimits = dsl::Update<Open, NewLimits>;
type NewLimits = (
    Set<p::tokens_limit>,
    Set<p::reports_limit>,
    Set<p::chats_limit>,
);
type Set<Column> = Eq<Column, i64>;

/// `$body` with `$q` the quota declaration of the metric `$m`.
#[rustfmt::skip]
macro_rules! with_quota {
    ($m:expr, $q:ident => $body:expr) => { match $m {
        Metric::Tokens => { type $q = TokensQuota; $body }
        Metric::Reports => { type $q = ReportsQuota; $body }
        Metric::Chats => { type $q = ChatsQuota; $body }
    } };
}

/// The library's reservation behind a usage reservation.
fn held<Q: Quota<Key = PeriodKey>>(r: &quota::Reservation) -> q::Reservation<Q> {
    let key = (r.account, r.period_start);
    q::Reservation {
        id: r.id,
        key,
        amount: r.amount,
        expires_at: r.expires_at,
    }
}

/// Writes the trait `Calls` and its implementation for every connection `C` within `where
/// [bounds]`, from one list of methods.
macro_rules! calls {
    (
        where [$($bound:tt)*]
        $(fn $name:ident(&mut $self:ident $(, $arg:ident: $ty:ty)*) -> $ret:ty $body:block)*
    ) => {
        /// The crate's calls of the library (sealed: a private module).
        pub trait Calls: WriteConnection {
            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret;)*
        }

        impl<C> Calls for C where $($bound)* {
            $(fn $name(&mut $self $(, $arg: $ty)*) -> $ret $body)*
        }
    };
}

calls! {
    where [
        C: WriteConnection,
        C::Backend: QuotaBackend + IdempotencyBackend + ChooseBackend,
        C::Raw: LoadConnection + MigrationHarness<C::Backend>,
        PeriodCounters: BindKey<C::Backend>,
        UsageEvents: BindKey<C::Backend>,
        TokensQuota: BindQuota<C::Backend>,
        ReportsQuota: BindQuota<C::Backend>,
        ChatsQuota: BindQuota<C::Backend>,
        UsagePeriod: ReturnRow<C::Raw>,
        EventRow: ReturnRow<C::Raw>,
        HeldRow: ReturnRow<C::Raw>,
        NewPeriod: GetOrCreate<C::Raw, UsagePeriod>,
        AccountRow: Upsertable<C::Raw>,
        ReadLimits: for<'a> LoadQuery<'a, C::Raw, (i64, i64, i64)>,
        SetLimits: ExecuteDsl<C::Raw>,
    ]

    fn migrate(&mut self) -> Result<usize> {
        let none = || Error::Migration("the usage tables have no MySQL migrations".into());
        let ran = self.raw().run_pending_migrations(MIGRATIONS.of::<C>().ok_or_else(none)?());
        ran.map(|ran| ran.len()).map_err(|e| Error::Migration(e.to_string()))
    }

    fn find_period(&mut self, key: &PeriodKey) -> Result<Option<UsagePeriod>> {
        q::usage_returning::<TokensQuota, _, _>(self, key)
    }

    fn create_period(&mut self, account: i64, at: NaiveDateTime) -> Result<Obtained<UsagePeriod>> {
        let (period_start, period_end) = monthly_period(at)?;
        let limits = a::table.find(account).select(Limits::default()).first(self.raw());
        let (tokens_limit, reports_limit, chats_limit) =
            limits.optional()?.ok_or_else(|| crate::unknown_account(account))?;
        let created_at = chrono::Utc::now().naive_utc();
        let new = NewPeriod {
            account, period_start, period_end, tokens_limit, reports_limit, chats_limit, created_at,
        };
        upsert_kit::get_or_create(self.raw(), &new)
    }

    fn set_limits(&mut self, account: i64, limits: Usage, at: NaiveDateTime) -> Result<()> {
        let Usage { tokens: tokens_limit, reports: reports_limit, chats: chats_limit } = limits;
        let updated_at = chrono::Utc::now().naive_utc();
        let row = AccountRow { account, tokens_limit, reports_limit, chats_limit, updated_at };
        let open = p::table.filter(p::account.eq(account)).filter(p::period_end.gt(at));
        let set = (p::tokens_limit.eq(tokens_limit), p::reports_limit.eq(reports_limit));
        let set = (set.0, set.1, p::chats_limit.eq(chats_limit));
        // One transaction: concurrent calls leave the limits of one of them, never a mix.
        self.write(|c| {
            upsert_kit::atomic_upsert(c, &row)?;
            Ok(diesel::update(open).set(set).execute(c).map(drop)?)
        })
    }

    fn record(
        &mut self, key: &IdempotencyKey, hash: i64, period: &PeriodKey, d: Usage
    ) -> Result<counter::Increment> {
        let now = chrono::Utc::now().naive_utc();
        let d = [d.tokens, d.reports, d.chats];
        let rec = Record::<UsageEvents, PeriodCounters>::new(&period.0, key, &hash, period, d, now);
        let no_period = || Error::NotFound("no usage period".into());
        let Idempotent { value: e, applied } = rec.run::<EventRow, _>(self)?.ok_or_else(no_period)?;
        let totals = Usage::new(e.tokens_total, e.reports_total, e.chats_total);
        Ok(counter::Increment { event_id: e.id, period_id: e.period_id, totals, applied })
    }

    fn prune_events(&mut self, older_than: NaiveDateTime) -> Result<usize> {
        upsert_kit::idempotency::prune_records::<UsageEvents, _>(self, older_than)
    }

    fn consume(
        &mut self, m: Metric, k: &PeriodKey, n: i64, at: NaiveDateTime
    ) -> Result<UsagePeriod> {
        with_quota!(m, Q => q::try_consume_returning::<Q, _, _>(self, k, n, at))
    }

    fn reserve(
        &mut self, m: Metric, key: &PeriodKey, n: i64, ttl: Duration, at: NaiveDateTime
    ) -> Result<quota::Reservation> {
        let (id, expires_at, period_id) = with_quota!(m, Q => {
            let (held, row) = q::reserve_returning::<Q, HeldRow, _>(self, key, n, ttl, at)?;
            (held.id, held.expires_at, row.period_id)
        });
        let (account, period_start, metric, amount) = (key.0, key.1, m, n);
        Ok(quota::Reservation { id, account, period_id, period_start, metric, amount, expires_at })
    }

    fn commit(&mut self, r: &quota::Reservation, n: i64, at: NaiveDateTime) -> Result<UsagePeriod> {
        with_quota!(r.metric, Q => q::commit_returning::<Q, _, _>(self, &held::<Q>(r), n, at))
    }

    fn release(&mut self, r: &quota::Reservation) -> Result<bool> {
        with_quota!(r.metric, Q => q::release(self, &held::<Q>(r)))
    }

    fn expire(&mut self, at: NaiveDateTime) -> Result<usize> {
        let tokens = q::expire::<TokensQuota, _>(self, at)?;
        Ok(tokens + q::expire::<ReportsQuota, _>(self, at)? + q::expire::<ChatsQuota, _>(self, at)?)
    }
}
