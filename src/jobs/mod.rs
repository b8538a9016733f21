//! The toolkit's first adopters: the Strava and WakaTime sync jobs. This module uses only the
//! crate's public API, exactly as an outside crate would.

pub mod models;
