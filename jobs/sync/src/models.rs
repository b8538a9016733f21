//! The rows the sync jobs write, declared as upsert models.

use crate::schema::{strava_auth, strava_stats, wakatime_auth, wakatime_stats};
use chrono::NaiveDateTime;
use upsert_kit::{AuthModel, StatsModel, UpsertModel};

/// One Strava stats row (`ytd`, `all_time`, `recent`).
#[derive(Debug, Clone, PartialEq, UpsertModel)]
#[diesel(table_name = strava_stats)]
#[upsert(key(stats_type), keep(created_at))]
pub struct StravaStats {
    /// Unique stats kind.
    pub stats_type: String,
    /// The API's payload.
    pub data: serde_json::Value,
    /// Set on insert only.
    pub created_at: NaiveDateTime,
    /// Set whenever the data changes.
    pub updated_at: NaiveDateTime,
}

impl StatsModel for StravaStats {
    type Data = strava_stats::data;
}

/// One WakaTime stats row (a stats range such as `last_7_days`).
#[derive(Debug, Clone, PartialEq, UpsertModel)]
#[diesel(table_name = wakatime_stats)]
#[upsert(key(stats_type), keep(created_at))]
pub struct WakatimeStats {
    /// Unique stats kind.
    pub stats_type: String,
    /// The API's payload.
    pub data: serde_json::Value,
    /// Set on insert only.
    pub created_at: NaiveDateTime,
    /// Set whenever the data changes.
    pub updated_at: NaiveDateTime,
}

impl StatsModel for WakatimeStats {
    type Data = wakatime_stats::data;
}

/// A Strava OAuth token of one account.
#[derive(Clone, PartialEq, UpsertModel)]
#[diesel(table_name = strava_auth)]
#[upsert(key(id))]
pub struct StravaAuth {
    /// The account.
    pub id: i64,
    /// Strava's athlete id.
    pub athlete_id: i64,
    /// Secret: never printed.
    pub access_token: String,
    /// Secret: never printed.
    pub refresh_token: String,
    /// When the access token expires (UTC).
    pub expires_at: NaiveDateTime,
    /// When the row was written (UTC).
    pub updated_at: NaiveDateTime,
}

impl AuthModel for StravaAuth {
    type ExpiresAt = strava_auth::expires_at;
}

/// A WakaTime OAuth token of one account.
#[derive(Clone, PartialEq, UpsertModel)]
#[diesel(table_name = wakatime_auth)]
#[upsert(key(id))]
pub struct WakatimeAuth {
    /// The account.
    pub id: i64,
    /// WakaTime's user id.
    pub user_id: String,
    /// Secret: never printed.
    pub access_token: String,
    /// Secret: never printed.
    pub refresh_token: String,
    /// When the access token expires (UTC).
    pub expires_at: NaiveDateTime,
    /// When the row was written (UTC).
    pub updated_at: NaiveDateTime,
}

impl AuthModel for WakatimeAuth {
    type ExpiresAt = wakatime_auth::expires_at;
}

/// Tokens are secrets: `Debug` shows the account and expiry only.
macro_rules! redacted_debug {
    ($ty:ident, $remote:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("id", &self.id)
                    .field(stringify!($remote), &self.$remote)
                    .field("access_token", &"<redacted>")
                    .field("refresh_token", &"<redacted>")
                    .field("expires_at", &self.expires_at)
                    .field("updated_at", &self.updated_at)
                    .finish()
            }
        }
    };
}
redacted_debug!(StravaAuth, athlete_id);
redacted_debug!(WakatimeAuth, user_id);
