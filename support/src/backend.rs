//! One trait over the test databases of every backend, so that a test states a guarantee once
//! and runs it on each backend: `fn drains_each_item_once<D: TestDatabase>()` asks for
//! `D::new()`, `db.conn()` and `db.pool(n)` whatever the server.

use crate::server::{Server, ServerDb};
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel::SqliteConnection;

/// A test database of one backend, created empty and dropped with the value: [`TestDb`]
/// (PostgreSQL), [`TestMysql`] (MySQL/MariaDB) and [`TestSqlite`]. The methods are those of
/// the three types, with the same panics.
///
/// [`TestDb`]: crate::TestDb
/// [`TestMysql`]: crate::TestMysql
/// [`TestSqlite`]: crate::TestSqlite
pub trait TestDatabase: Sized + Send + Sync + 'static {
    /// The backend's connection.
    type Connection: R2D2Connection + Send + 'static;

    /// The backend as the tests' messages name it.
    const BACKEND: &'static str;

    /// A new, empty database.
    fn new() -> Self;

    /// A new database in which `sql` (statements separated by `;`) has run.
    fn with_sql(sql: &str) -> Self;

    /// A URL of the database.
    fn url(&self) -> &str;

    /// A new connection to the database.
    fn conn(&self) -> Self::Connection;

    /// A new pool of `size` connections to the database.
    fn pool(&self, size: u32) -> Pool<ConnectionManager<Self::Connection>>;
}

/// Forwards the trait's methods to the type's own.
macro_rules! forward {
    ($db:ty, $conn:ty, $backend:literal) => {
        impl TestDatabase for $db {
            type Connection = $conn;
            const BACKEND: &'static str = $backend;

            fn new() -> Self {
                <$db>::new()
            }
            fn with_sql(sql: &str) -> Self {
                <$db>::with_sql(sql)
            }
            fn url(&self) -> &str {
                <$db>::url(self)
            }
            fn conn(&self) -> $conn {
                <$db>::conn(self)
            }
            fn pool(&self, size: u32) -> Pool<ConnectionManager<$conn>> {
                <$db>::pool(self, size)
            }
        }
    };
}

forward!(crate::TestSqlite, SqliteConnection, "SQLite");

impl<S: Server> TestDatabase for ServerDb<S> {
    type Connection = S::Connection;
    const BACKEND: &'static str = S::BACKEND;

    fn new() -> Self {
        ServerDb::new()
    }
    fn with_sql(sql: &str) -> Self {
        ServerDb::with_sql(sql)
    }
    fn url(&self) -> &str {
        ServerDb::url(self)
    }
    fn conn(&self) -> S::Connection {
        ServerDb::conn(self)
    }
    fn pool(&self, size: u32) -> Pool<ConnectionManager<S::Connection>> {
        ServerDb::pool(self, size)
    }
}

/// `#[test]` wrappers that run test bodies written once, generic over a backend, on one
/// backend: inside a module per backend, `tests_on!(Postgres: drains(5000), refuses())` defines
/// `#[test] fn drains()` calling `super::drains::<Postgres>(5000)`, and `#[test] fn refuses()`
/// calling `super::refuses::<Postgres>()`. The tests are then named by module and body,
/// `postgres::drains`, `mysql::drains`, and each backend's figures stay at its call.
#[macro_export]
macro_rules! tests_on {
    ($backend:ty: $($test:ident($($arg:expr),* $(,)?)),* $(,)?) => {$(
        #[test]
        fn $test() {
            super::$test::<$backend>($($arg),*);
        }
    )*};
}
