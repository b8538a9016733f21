//! The shared guarantees on SQLite, on the fixture's tables.

use super::fixture::{stats, tokens, Stats, Token};
use upsert_kit_support::TestSqlite;

fn db() -> TestSqlite {
    super::fixture::sqlite()
}

upsert_guarantees!(
    conn = diesel::SqliteConnection,
    too_long = Error::Constraint {
        kind: ConstraintKind::Check,
        ..
    }
);
