//! The shared guarantees on SQLite, on the fixture's tables.

use crate::fixture::{stats, tokens, Stats, Token};
use upsert_kit_support::TestSqlite;

fn db() -> TestSqlite {
    crate::fixture::sqlite()
}

upsert_guarantees!(
    conn = diesel::SqliteConnection,
    too_long = Error::Constraint {
        kind: ConstraintKind::Check,
        ..
    }
);
