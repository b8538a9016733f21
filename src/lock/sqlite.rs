//! SQLite's exclusive transaction: `BEGIN IMMEDIATE`, the database's single write lock.

use super::{ExclusiveBackend, LockKey};
use crate::error::Error;
use diesel::SqliteConnection;

/// The database's write lock stands in for every key: it excludes every other writer.
impl ExclusiveBackend for SqliteConnection {
    fn exclusive<T, E: From<Error>>(
        &mut self,
        _key: LockKey,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        crate::tx::immediate_transaction(self, f)
    }
}
