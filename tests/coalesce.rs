//! The coalescing writer on PostgreSQL, SQLite and MySQL/MariaDB: many threads' calls written
//! in shared transactions, each caller told exactly what a serial run would have told it
//! (one `Inserted` per new key, counter totals that are the prefix sums, bounds judged call by
//! call), a failing or panicking call failing its own caller only, and a lost connection
//! failing its whole batch with nothing written. Each test is written once, in
//! [`coalesce_guarantees!`], and run in a module per backend.

use diesel::prelude::*;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use upsert_kit::coalesce::Coalescer;
use upsert_kit::counter::Increment;
use upsert_kit::{Error, UpsertModel, UpsertOutcome};
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    /// Keyed values; `v` may not be negative (a call writing -1 fails on its own).
    entries (k) {
        k -> Text,
        v -> BigInt,
    }
}

diesel::table! {
    /// A counter row per page.
    hits (page) {
        page -> Text,
        views -> BigInt,
    }
}

#[derive(UpsertModel)]
#[upsert(table = entries, key(k))]
pub struct Entry {
    pub k: String,
    pub v: i64,
}

diesel::table! {
    /// Keyed rows with a second unique column.
    tagged (k) {
        k -> Text,
        tag -> Text,
    }
}

#[derive(UpsertModel)]
#[upsert(table = tagged, key(k))]
pub struct Tagged {
    pub k: String,
    pub tag: String,
}

diesel::table! {
    /// Keyed values that keep the value they were first written with.
    stamped (k) {
        k -> Text,
        v -> BigInt,
        first_v -> BigInt,
    }
}

/// `first_v` is kept: an update writes `v` only.
#[derive(UpsertModel)]
#[upsert(table = stamped, key(k), keep(first_v))]
pub struct Stamped {
    pub k: String,
    pub v: i64,
    pub first_v: i64,
}

/// `v` is the payload: a stats upsert that would not change it leaves the row alone.
impl upsert_kit::StatsModel for Entry {
    type Data = entries::v;
}

upsert_kit::counter! {
    table = hits, key = (page: String), amounts = (views);
    pub struct Hits;
}

const PG_SQL: &str = "
CREATE TABLE entries (k TEXT PRIMARY KEY, v BIGINT NOT NULL CHECK (v >= 0));
CREATE TABLE hits (page TEXT PRIMARY KEY, views BIGINT NOT NULL DEFAULT 0);
CREATE TABLE tagged (k TEXT PRIMARY KEY, tag TEXT NOT NULL UNIQUE);
CREATE TABLE stamped (k TEXT PRIMARY KEY, v BIGINT NOT NULL, first_v BIGINT NOT NULL);";

const MYSQL_SQL: &str = "
CREATE TABLE entries (k VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL CHECK (v >= 0));
CREATE TABLE hits (page VARCHAR(64) PRIMARY KEY, views BIGINT NOT NULL DEFAULT 0);
CREATE TABLE tagged (k VARCHAR(64) PRIMARY KEY, tag VARCHAR(64) NOT NULL UNIQUE);
CREATE TABLE stamped (k VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL, first_v BIGINT NOT NULL);";

/// Waits until `writer` has `n` calls queued behind the batch in flight.
fn until_queued<C: diesel::r2d2::R2D2Connection + 'static>(writer: &Coalescer<C>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.queued() < n {
        assert!(Instant::now() < deadline, "the calls never queued");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts a call that holds `writer`'s batch in flight until the returned sender is sent to;
/// returns once it holds it, with its thread.
fn hold<C>(writer: &Coalescer<C>) -> (std::thread::JoinHandle<()>, mpsc::Sender<()>)
where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
{
    let (held, holding) = mpsc::channel::<()>();
    let (gate, release) = mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release);
    let w = writer.clone();
    let holder = std::thread::spawn(move || {
        w.run(move |_| {
            let _ = held.send(());
            let _ = release.lock().unwrap().recv();
            Ok(())
        })
        .unwrap()
    });
    holding.recv().unwrap();
    (holder, gate)
}

/// A module `$backend` of the coalescing writer's tests on the database `db`.
macro_rules! coalesce_guarantees {
    ($backend:ident, db = $db:expr, conn = $conn:ty) => {
        mod $backend {
            use super::*;

            type Writer = Coalescer<$conn>;

            /// A writer with one batch in flight: the calls queued behind a held batch go
            /// out together as the next one.
            fn one_lane(
                pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<$conn>>,
            ) -> Writer {
                Writer::builder().in_flight(1).build(pool)
            }

            fn count(conn: &mut $conn) -> i64 {
                entries::table.count().get_result(conn).unwrap()
            }

            /// The views of `page`'s row, `None` when it has none.
            fn views(conn: &mut $conn, page: &str) -> Option<i64> {
                hits::table
                    .filter(hits::page.eq(page))
                    .select(hits::views)
                    .get_result(conn)
                    .optional()
                    .unwrap()
            }

            /// Runs `calls` on threads of their own while a first call holds the batch in
            /// flight, so that all of them are queued together and written as one batch.
            fn one_batch<A: Send + 'static, T: Send + 'static>(
                writer: &Writer,
                args: Vec<A>,
                call: fn(&Writer, A) -> T,
            ) -> Vec<std::thread::Result<T>> {
                let n = args.len();
                let (holder, gate) = hold(writer);
                let threads: Vec<_> = args
                    .into_iter()
                    .map(|arg| {
                        let w = writer.clone();
                        std::thread::spawn(move || call(&w, arg))
                    })
                    .collect();
                until_queued(writer, n);
                gate.send(()).unwrap();
                holder.join().unwrap();
                threads.into_iter().map(|t| t.join()).collect()
            }

            #[test]
            fn many_threads_upserting_through_one_writer_insert_each_key_once() {
                const THREADS: usize = 16;
                const ROUNDS: usize = 20;
                const KEYS: usize = 8;
                let db = $db;
                let writer = Coalescer::new(db.pool(4));
                let w = writer.clone();
                let outcomes = race(THREADS, move |t| {
                    (0..ROUNDS)
                        .map(|r| {
                            let k = format!("key-{}", (t + r) % KEYS);
                            w.upsert(Entry {
                                k,
                                v: (t * ROUNDS + r) as i64,
                            })
                            .unwrap()
                        })
                        .collect::<Vec<_>>()
                });
                let all: Vec<_> = outcomes.into_iter().flatten().collect();
                let inserted = all
                    .iter()
                    .filter(|o| **o == UpsertOutcome::Inserted)
                    .count();
                assert_eq!(inserted, KEYS, "one insert per key, the rest updates");
                assert_eq!(all.len() - inserted, THREADS * ROUNDS - KEYS);
                assert_eq!(count(&mut db.conn()), KEYS as i64);
                let stats = writer.stats();
                assert_eq!(stats.calls, (THREADS * ROUNDS) as u64);
                assert!(stats.batches >= 1 && stats.batches <= stats.calls);
            }

            /// Every increment of one hot row is counted, and each caller is told the totals
            /// after its own increment: the totals told are exactly 1, 2, …, N.
            #[test]
            fn increments_of_one_hot_row_tell_each_caller_its_own_prefix_sum() {
                const THREADS: usize = 16;
                const ROUNDS: usize = 25;
                let db = $db;
                let writer = Coalescer::new(db.pool(4));
                let w = writer.clone();
                let told = race(THREADS, move |_| {
                    (0..ROUNDS)
                        .map(|_| w.upsert_increment::<Hits>("home".to_owned(), [1]).unwrap()[0])
                        .collect::<Vec<_>>()
                });
                let mut told: Vec<i64> = told.into_iter().flatten().collect();
                told.sort_unstable();
                let n = (THREADS * ROUNDS) as i64;
                assert_eq!(told, (1..=n).collect::<Vec<_>>());
                assert_eq!(views(&mut db.conn(), "home"), Some(n));
            }

            /// With three batches in flight (three lanes, three connections), upserts of a few
            /// keys and increments of one hot row from many threads: each key inserted once,
            /// the totals told exactly 1, 2, …, N, and the lanes' batches all counted.
            #[test]
            fn three_batches_in_flight_keep_every_caller_exact() {
                const THREADS: usize = 12;
                const ROUNDS: usize = 20;
                const KEYS: usize = 6;
                let db = $db;
                let writer = Writer::builder().in_flight(3).build(db.pool(4));
                let w = writer.clone();
                let told = race(THREADS, move |t| {
                    (0..ROUNDS)
                        .map(|r| {
                            let k = format!("key-{}", (t + r) % KEYS);
                            let outcome = w.upsert(Entry { k, v: r as i64 }).unwrap();
                            let total =
                                w.upsert_increment::<Hits>("home".to_owned(), [1]).unwrap()[0];
                            (outcome, total)
                        })
                        .collect::<Vec<_>>()
                });
                let told: Vec<(UpsertOutcome, i64)> = told.into_iter().flatten().collect();
                let inserted = told
                    .iter()
                    .filter(|(o, _)| *o == UpsertOutcome::Inserted)
                    .count();
                assert_eq!(inserted, KEYS, "one insert per key, the rest updates");
                let mut totals: Vec<i64> = told.iter().map(|(_, total)| *total).collect();
                totals.sort_unstable();
                let n = (THREADS * ROUNDS) as i64;
                assert_eq!(totals, (1..=n).collect::<Vec<_>>());
                assert_eq!(views(&mut db.conn(), "home"), Some(n));
                assert_eq!(count(&mut db.conn()), KEYS as i64);
                assert_eq!(writer.stats().calls, 2 * n as u64);
            }

            /// Increments of two rows and of a missing row, from many threads at once: each
            /// row's totals told are exactly its prefix sums, and every increment of the
            /// missing row is told `None` and creates nothing.
            #[test]
            fn merged_increments_keep_each_row_and_each_caller_apart() {
                const THREADS: usize = 12;
                const ROUNDS: usize = 20;
                let db = $db;
                diesel::sql_query("INSERT INTO hits (page, views) VALUES ('a', 0), ('b', 1000)")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = Coalescer::new(db.pool(4));
                let w = writer.clone();
                let told = race(THREADS, move |t| {
                    (0..ROUNDS)
                        .map(|r| {
                            let page = ["a", "b", "missing"][(t + r) % 3].to_owned();
                            let step = 1 + (t % 3) as i64;
                            let after = w.increment::<Hits>(page.clone(), [step]).unwrap();
                            (page, step, after.map(|a| a[0]))
                        })
                        .collect::<Vec<_>>()
                });
                let told: Vec<_> = told.into_iter().flatten().collect();
                for (page, start) in [("a", 0), ("b", 1000)] {
                    let mut mine: Vec<_> = told
                        .iter()
                        .filter(|(p, _, _)| p == page)
                        .map(|(_, step, after)| (after.unwrap(), *step))
                        .collect();
                    mine.sort_unstable();
                    // Sorted by the totals told, each is the one before plus its own step.
                    let mut total = start;
                    for (after, step) in &mine {
                        total += step;
                        assert_eq!(*after, total, "{page}: {mine:?}");
                    }
                    assert_eq!(views(&mut db.conn(), page), Some(total));
                }
                assert!(told
                    .iter()
                    .filter(|(p, _, _)| p == "missing")
                    .all(|(_, _, a)| a.is_none()));
                assert_eq!(views(&mut db.conn(), "missing"), None);
                assert_eq!(writer.stats().calls, (THREADS * ROUNDS) as u64);
            }

            /// A ceiling is judged on each call's own increment, in the batch's order: exactly
            /// `CEILING` increments pass, every other caller is refused, none goes past.
            #[test]
            fn a_ceiling_admits_exactly_as_many_increments_as_it_allows() {
                const THREADS: usize = 16;
                const ROUNDS: usize = 10;
                const CEILING: i64 = 100;
                let db = $db;
                diesel::sql_query("INSERT INTO hits (page, views) VALUES ('capped', 0)")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = Coalescer::new(db.pool(4));
                let w = writer.clone();
                let results = race(THREADS, move |_| {
                    (0..ROUNDS)
                        .map(|_| {
                            w.increment_with::<Hits>(
                                "capped".to_owned(),
                                [1],
                                |i: Increment<'_, Hits>| i.at_most(CEILING),
                            )
                        })
                        .collect::<Vec<_>>()
                });
                let results: Vec<_> = results.into_iter().flatten().collect();
                let passed = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
                let refused = results
                    .iter()
                    .filter(|r| matches!(r, Err(Error::CounterBound { .. })))
                    .count();
                assert_eq!(passed as i64, CEILING);
                assert_eq!(refused, THREADS * ROUNDS - CEILING as usize, "{results:?}");
                assert_eq!(views(&mut db.conn(), "capped"), Some(CEILING));
            }

            /// A call whose own statement fails (here a check constraint) fails its caller
            /// alone; the other calls of its batch are written.
            #[test]
            fn a_call_that_fails_on_its_own_fails_alone_and_its_batch_commits() {
                let db = $db;
                let writer = one_lane(db.pool(4));
                let results = one_batch(&writer, (0..5).collect(), |w, i| {
                    let v = if i == 2 { -1 } else { i };
                    w.upsert(Entry {
                        k: format!("e{i}"),
                        v,
                    })
                });
                for (i, result) in results.into_iter().enumerate() {
                    let result = result.expect("no call panicked");
                    if i == 2 {
                        let e = result.unwrap_err();
                        assert!(matches!(e, Error::Constraint { .. }), "{e:?}");
                        assert!(!e.is_retryable());
                    } else {
                        assert_eq!(result.unwrap(), UpsertOutcome::Inserted);
                    }
                }
                assert_eq!(count(&mut db.conn()), 4);
                let stats = writer.stats();
                assert_eq!(stats.taken_out, 1);
                // The holder's batch, then the four calls in one batch (written again without
                // the failing one).
                assert_eq!((stats.batches, stats.calls), (2, 5));
            }

            /// Upserts of one key in one batch keep their serial outcomes: one insert, then
            /// updates, the last row's values stored; other keys are inserted once each.
            #[test]
            fn upserts_of_one_key_in_one_batch_are_told_their_serial_outcomes() {
                let db = $db;
                diesel::sql_query("INSERT INTO entries (k, v) VALUES ('old', 0)")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = one_lane(db.pool(4));
                let keys = ["x", "y", "x", "old", "x", "z", "y", "old"];
                let args = keys.into_iter().enumerate().collect();
                let told: Vec<_> = one_batch(&writer, args, |w, (i, k)| {
                    let row = Entry {
                        k: k.to_owned(),
                        v: i as i64,
                    };
                    w.upsert(row).map(|o| (k.to_owned(), o, i as i64))
                })
                .into_iter()
                .map(|r| r.unwrap().unwrap())
                .collect();
                let stored: std::collections::HashMap<String, i64> = entries::table
                    .load(&mut db.conn())
                    .unwrap()
                    .into_iter()
                    .collect();
                for key in ["x", "y", "z"] {
                    let mine: Vec<_> = told
                        .iter()
                        .filter(|(k, _, _)| k == key)
                        .map(|(_, o, _)| *o)
                        .collect();
                    // Serially, the row inserted came first and the row stored last: with two
                    // rows or more, the caller told `Inserted` is not the one whose value stays.
                    let first = told
                        .iter()
                        .find(|(k, o, _)| k == key && *o == UpsertOutcome::Inserted);
                    if mine.len() > 1 {
                        assert_ne!(first.map(|t| t.2), Some(stored[key]), "{key}: {told:?}");
                    }
                    let inserted = mine
                        .iter()
                        .filter(|o| **o == UpsertOutcome::Inserted)
                        .count();
                    assert_eq!(inserted, 1, "{key}: {mine:?}");
                    assert!(
                        mine.iter().all(|o| *o != UpsertOutcome::Unchanged),
                        "{key}: {mine:?}"
                    );
                }
                // A key that existed: every upsert of it updates it.
                let old: Vec<_> = told.iter().filter(|(k, _, _)| k == "old").collect();
                assert!(
                    old.iter().all(|(_, o, _)| *o == UpsertOutcome::Updated),
                    "{old:?}"
                );
                assert_eq!(count(&mut db.conn()), 4);
                let stats = writer.stats();
                assert_eq!(
                    (stats.batches, stats.calls),
                    (2, 9),
                    "one batch for the eight upserts"
                );
            }

            /// Upserts with a kept column, several of one key in one batch: the caller told
            /// `Inserted` is the one whose kept value is stored, the value stored is a caller's
            /// told `Updated`, and a key that existed keeps its kept value.
            #[test]
            fn upserts_with_a_kept_column_keep_the_first_callers_value() {
                let db = $db;
                diesel::sql_query("INSERT INTO stamped (k, v, first_v) VALUES ('old', 0, -1)")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = one_lane(db.pool(4));
                let keys = ["x", "x", "old", "x", "y", "old", "x"];
                let args = keys.into_iter().enumerate().collect();
                let told: Vec<(String, UpsertOutcome, i64)> =
                    one_batch(&writer, args, |w, (i, k)| {
                        let (k, i) = (k.to_owned(), i as i64 + 1);
                        let row = Stamped {
                            k: k.clone(),
                            v: i,
                            first_v: i,
                        };
                        w.upsert(row).map(|o| (k, o, i))
                    })
                    .into_iter()
                    .map(|r| r.unwrap().unwrap())
                    .collect();
                let stored: std::collections::HashMap<String, (i64, i64)> = stamped::table
                    .select((stamped::k, (stamped::v, stamped::first_v)))
                    .load(&mut db.conn())
                    .unwrap()
                    .into_iter()
                    .collect();
                let of = |key: &str| -> Vec<(UpsertOutcome, i64)> {
                    told.iter()
                        .filter(|t| t.0 == key)
                        .map(|t| (t.1, t.2))
                        .collect()
                };
                for key in ["x", "y"] {
                    let mine = of(key);
                    let inserted: Vec<i64> = mine
                        .iter()
                        .filter(|(o, _)| *o == UpsertOutcome::Inserted)
                        .map(|(_, i)| *i)
                        .collect();
                    assert_eq!(inserted.len(), 1, "{key}: {mine:?}");
                    let (v, first_v) = stored[key];
                    assert_eq!(
                        first_v, inserted[0],
                        "{key}: kept from the insert: {mine:?}"
                    );
                    if mine.len() > 1 {
                        assert!(
                            mine.contains(&(UpsertOutcome::Updated, v)),
                            "{key}: the stored value is an update's: {mine:?} {v}"
                        );
                    } else {
                        assert_eq!(v, first_v);
                    }
                }
                let old = of("old");
                assert!(
                    old.iter().all(|(o, _)| *o == UpsertOutcome::Updated),
                    "{old:?}"
                );
                let (v, first_v) = stored["old"];
                assert_eq!(first_v, -1);
                assert!(old.iter().any(|(_, i)| *i == v), "{old:?} {v}");
                assert_eq!(stored.len(), 3);
            }

            /// Stats upserts merged into one batch (one statement on PostgreSQL and MySQL, the
            /// rows told apart): a new key `Inserted`, a changed value `Updated`, the same value
            /// `Unchanged`, and a key sent twice with one value inserted once, then unchanged.
            #[test]
            fn stats_upserts_in_one_batch_are_each_told_their_own_outcome() {
                let db = $db;
                diesel::sql_query("INSERT INTO entries (k, v) VALUES ('same', 1), ('changed', 1)")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = one_lane(db.pool(4));
                let rows = [
                    ("same", 1),
                    ("changed", 2),
                    ("new", 3),
                    ("twice", 5),
                    ("twice", 5),
                ];
                let told: Vec<UpsertOutcome> = one_batch(&writer, rows.to_vec(), |w, (k, v)| {
                    w.upsert_stats(Entry { k: k.to_owned(), v })
                })
                .into_iter()
                .map(|r| r.unwrap().unwrap())
                .collect();
                assert_eq!(told[0], UpsertOutcome::Unchanged);
                assert_eq!(told[1], UpsertOutcome::Updated);
                assert_eq!(told[2], UpsertOutcome::Inserted);
                let mut twice = [told[3], told[4]];
                twice.sort_by_key(|o| *o != UpsertOutcome::Inserted);
                assert_eq!(twice, [UpsertOutcome::Inserted, UpsertOutcome::Unchanged]);
                let stored: Vec<(String, i64)> = entries::table
                    .order(entries::k)
                    .load(&mut db.conn())
                    .unwrap();
                let expected = [("changed", 2), ("new", 3), ("same", 1), ("twice", 5)];
                assert_eq!(stored, expected.map(|(k, v)| (k.to_owned(), v)).to_vec());
                assert_eq!((writer.stats().batches, writer.stats().calls), (2, 6));
            }

            /// A row that collides on another unique index than the key fails its own caller
            /// (the index named, the other row untouched); the rest of its batch is written,
            /// with no transaction around it on PostgreSQL and MySQL.
            #[test]
            fn a_row_meeting_another_unique_index_fails_alone() {
                let db = $db;
                diesel::sql_query("INSERT INTO tagged (k, tag) VALUES ('a', 'red')")
                    .execute(&mut db.conn())
                    .unwrap();
                let writer = one_lane(db.pool(4));
                // `a` keeps its tag, so `c`'s collides in every order the batch may run in.
                let rows = [("b", "blue"), ("c", "red"), ("a", "red"), ("d", "white")];
                let told: Vec<_> = one_batch(&writer, rows.to_vec(), |w, (k, tag)| {
                    w.upsert(Tagged {
                        k: k.to_owned(),
                        tag: tag.to_owned(),
                    })
                })
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
                assert_eq!(told[0].as_ref().unwrap(), &UpsertOutcome::Inserted);
                let e = told[1].as_ref().unwrap_err();
                assert!(
                    matches!(
                        e,
                        Error::Constraint {
                            kind: upsert_kit::ConstraintKind::Unique,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                assert_eq!(told[2].as_ref().unwrap(), &UpsertOutcome::Updated);
                assert_eq!(told[3].as_ref().unwrap(), &UpsertOutcome::Inserted);
                let stored: Vec<(String, String)> =
                    tagged::table.order(tagged::k).load(&mut db.conn()).unwrap();
                let expected = [("a", "red"), ("b", "blue"), ("d", "white")];
                assert_eq!(
                    stored,
                    expected.map(|(k, t)| (k.to_owned(), t.to_owned())).to_vec()
                );
                // PostgreSQL and SQLite roll the batch back and write it again without the
                // culprit; MySQL writes the culprit's row alone after the others' statement.
                let taken_out = if stringify!($backend) == "mysql" {
                    0
                } else {
                    1
                };
                assert_eq!(writer.stats().taken_out, taken_out);
            }

            /// A call that panics on the leader's thread panics in its own caller's thread; the
            /// rest of its batch is written and the writer stays usable.
            #[test]
            fn a_call_that_panics_panics_its_own_caller_only() {
                let db = $db;
                let writer = one_lane(db.pool(4));
                let results = one_batch(&writer, (0..4).collect(), |w, i| {
                    if i == 1 {
                        w.run(|_| -> upsert_kit::Result<()> { panic!("a call's own bug") })
                    } else {
                        w.upsert(Entry {
                            k: format!("p{i}"),
                            v: i,
                        })
                        .map(drop)
                    }
                });
                for (i, result) in results.into_iter().enumerate() {
                    if i == 1 {
                        let panic = result.unwrap_err();
                        assert_eq!(panic.downcast_ref::<&str>(), Some(&"a call's own bug"));
                    } else {
                        result.unwrap().unwrap();
                    }
                }
                assert_eq!(count(&mut db.conn()), 3);
                assert_eq!(
                    writer
                        .upsert(Entry {
                            k: "after".into(),
                            v: 1
                        })
                        .unwrap(),
                    UpsertOutcome::Inserted
                );
            }

            /// Invalid input is refused in the caller's thread, before anything is queued.
            #[test]
            fn invalid_input_is_refused_before_it_is_queued() {
                let db = $db;
                let writer = Coalescer::new(db.pool(2));
                let e = writer
                    .upsert(Entry {
                        k: String::new(),
                        v: 1,
                    })
                    .unwrap_err();
                assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
                assert_eq!(writer.stats().calls, 0);
                assert_eq!(count(&mut db.conn()), 0);
            }
        }
    };
}

coalesce_guarantees!(
    postgres,
    db = TestDb::with_sql(PG_SQL),
    conn = diesel::PgConnection
);
coalesce_guarantees!(
    sqlite,
    db = TestSqlite::with_sql(PG_SQL),
    conn = diesel::SqliteConnection
);
coalesce_guarantees!(
    mysql,
    db = TestMysql::with_sql(MYSQL_SQL),
    conn = diesel::MysqlConnection
);

/// A connection lost in the middle of a batch fails every caller of the batch with a retryable
/// error, and nothing of the batch is written; the writer goes on with a new connection.
#[test]
fn a_batch_whose_connection_is_lost_writes_nothing_and_fails_every_caller() {
    let db = TestDb::with_sql(PG_SQL);
    let writer = upsert_kit::coalesce::CoalescerBuilder::default()
        .in_flight(1)
        .build(db.pool(2));
    let (holder, gate) = hold(&writer);
    let url = db.url().to_owned();
    let mut threads: Vec<_> = (0..3)
        .map(|i| {
            let w = writer.clone();
            std::thread::spawn(move || {
                w.upsert(Entry {
                    k: format!("lost{i}"),
                    v: i,
                })
                .map(drop)
            })
        })
        .collect();
    until_queued(&writer, 3);
    threads.push({
        let w = writer.clone();
        std::thread::spawn(move || {
            w.run(move |c: &mut diesel::PgConnection| {
                // Another session ends this batch's session, then the batch goes on on it.
                #[derive(QueryableByName)]
                struct Pid {
                    #[diesel(sql_type = diesel::sql_types::Integer)]
                    pid: i32,
                }
                let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
                    .get_result::<Pid>(c)
                    .map_err(Error::from)?
                    .pid;
                let mut other = diesel::PgConnection::establish(&url).unwrap();
                diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
                    .execute(&mut other)
                    .unwrap();
                diesel::sql_query("SELECT 1")
                    .execute(c)
                    .map_err(Error::from)?;
                Ok(())
            })
        })
    });
    until_queued(&writer, 4);
    gate.send(()).unwrap();
    holder.join().unwrap();
    for t in threads {
        let e = t.join().unwrap().unwrap_err();
        assert!(
            e.is_retryable() || e.is_outcome_unknown(),
            "each caller of the lost batch gets the batch's error: {e:?}"
        );
    }
    let mut conn = db.conn();
    assert_eq!(
        entries::table.count().get_result::<i64>(&mut conn).unwrap(),
        0
    );
    assert_eq!(
        writer
            .upsert(Entry {
                k: "after".into(),
                v: 1
            })
            .unwrap(),
        UpsertOutcome::Inserted
    );
}

/// Upserts `k` through `writer` on a thread of its own; its outcome (an error as text) comes
/// through the receiver.
fn upsert_on_a_thread<C>(
    writer: &Coalescer<C>,
    k: &str,
) -> (
    std::thread::JoinHandle<()>,
    mpsc::Receiver<Result<UpsertOutcome, String>>,
)
where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
    Entry: upsert_kit::Upsertable<C>,
{
    let (told, answer) = mpsc::channel();
    let (w, k) = (writer.clone(), k.to_owned());
    let thread = std::thread::spawn(move || {
        let outcome = w.upsert(Entry { k, v: 1 });
        told.send(outcome.map_err(|e| e.to_string())).unwrap();
    });
    (thread, answer)
}

/// By default (PostgreSQL, MySQL) a second batch goes out while one is in flight: a call queued
/// behind a held batch of one call (half of it or more) is written and answered on a
/// connection of its own before the held batch ends.
fn a_second_batch_goes_out_while_the_first_is_held<C>(
    pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>,
) where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
    Entry: upsert_kit::Upsertable<C>,
{
    let writer = Coalescer::new(pool);
    let (holder, gate) = hold(&writer);
    let (second, answer) = upsert_on_a_thread(&writer, "second");
    let outcome = answer.recv_timeout(Duration::from_secs(20));
    assert_eq!(
        outcome,
        Ok(Ok(UpsertOutcome::Inserted)),
        "the queued call was answered while the first batch was held"
    );
    assert_eq!(
        writer.stats().batches,
        1,
        "only the second batch has committed"
    );
    gate.send(()).unwrap();
    holder.join().unwrap();
    second.join().unwrap();
    let stats = writer.stats();
    assert_eq!((stats.batches, stats.overlapped_batches), (2, 1));
}

#[test]
fn on_postgres_a_second_batch_goes_out_while_the_first_is_held() {
    let db = TestDb::with_sql(PG_SQL);
    a_second_batch_goes_out_while_the_first_is_held::<diesel::PgConnection>(db.pool(3));
}

#[test]
fn on_mysql_a_second_batch_goes_out_while_the_first_is_held() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    a_second_batch_goes_out_while_the_first_is_held::<diesel::MysqlConnection>(db.pool(3));
}

/// A second batch never waits for the pool: with the pool's other connection held by the
/// application, a call queued behind a held batch goes back to the queue and is written by the
/// next batch once the held one ends, instead of waiting for a connection that the held
/// batch's leader keeps.
fn a_second_batch_with_no_connection_to_spare_waits_in_the_queue<C>(
    pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>,
) where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
    Entry: upsert_kit::Upsertable<C>,
{
    assert_eq!(pool.max_size(), 2);
    let app = pool.get().unwrap();
    let writer = Coalescer::new(pool);
    let (holder, gate) = hold(&writer);
    let (second, answer) = upsert_on_a_thread(&writer, "queued");
    assert_eq!(
        answer.recv_timeout(Duration::from_millis(500)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "no connection to spare: the call waits for the held batch"
    );
    gate.send(()).unwrap();
    holder.join().unwrap();
    let outcome = answer.recv_timeout(Duration::from_secs(20));
    assert_eq!(outcome, Ok(Ok(UpsertOutcome::Inserted)));
    second.join().unwrap();
    let stats = writer.stats();
    assert_eq!((stats.batches, stats.overlapped_batches), (2, 0));
    drop(app);
}

#[test]
fn on_postgres_a_second_batch_with_no_connection_to_spare_waits_in_the_queue() {
    let db = TestDb::with_sql(PG_SQL);
    a_second_batch_with_no_connection_to_spare_waits_in_the_queue::<diesel::PgConnection>(
        db.pool(2),
    );
}

#[test]
fn on_mysql_a_second_batch_with_no_connection_to_spare_waits_in_the_queue() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    a_second_batch_with_no_connection_to_spare_waits_in_the_queue::<diesel::MysqlConnection>(
        db.pool(2),
    );
}

/// A call of a test batch, its result as text.
type BatchCall<C = diesel::PgConnection> = Box<dyn FnOnce(&Coalescer<C>) -> String + Send>;

/// A writer over a pool of two connections to `url` whose `BEGIN`s are counted, with one batch
/// in flight.
fn counted_writer<C>(url: &str) -> (Coalescer<C>, Begins)
where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
{
    let begins = Begins::default();
    let pool = diesel::r2d2::Pool::builder()
        .max_size(2)
        .connection_customizer(Box::new(begins.clone()))
        .build(diesel::r2d2::ConnectionManager::<C>::new(url))
        .unwrap();
    (
        upsert_kit::coalesce::CoalescerBuilder::default()
            .in_flight(1)
            .build(pool),
        begins,
    )
}

/// Runs `calls` (each on a thread of its own) as one batch of `writer`, queued behind a call
/// that holds the batch in flight (its own batch: one transaction); returns their results and
/// how many transactions the two batches opened, as counted by `begins`.
fn counted_batch<C>(
    writer: &Coalescer<C>,
    begins: &Begins,
    calls: Vec<BatchCall<C>>,
) -> (Vec<String>, usize)
where
    C: diesel::r2d2::R2D2Connection + upsert_kit::conn::WriteConnection<Raw = C> + 'static,
{
    let before = begins.count();
    let (holder, gate) = hold(writer);
    let n = calls.len();
    let threads: Vec<_> = calls
        .into_iter()
        .map(|call| {
            let w = writer.clone();
            std::thread::spawn(move || call(&w))
        })
        .collect();
    until_queued(writer, n);
    gate.send(()).unwrap();
    holder.join().unwrap();
    let told: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (told, begins.count() - before)
}

/// Counts the `BEGIN`s (and savepoints) of the connections it is installed on.
#[derive(Debug, Clone, Default)]
struct Begins(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Begins {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<C: diesel::Connection> diesel::r2d2::CustomizeConnection<C, diesel::r2d2::Error> for Begins {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        let begins = std::sync::Arc::clone(&self.0);
        conn.set_instrumentation(move |event: diesel::connection::InstrumentationEvent<'_>| {
            if let diesel::connection::InstrumentationEvent::BeginTransaction { .. } = event {
                begins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Ok(())
    }
}

/// On PostgreSQL a batch whose calls merge into one statement (upserts of distinct keys, or of
/// one key without a condition, a kept column included; the increments of one row) goes out
/// with no transaction around it, as a direct call; a batch of two statements (two upserts of
/// one key under a condition, written in two rounds) is one transaction, and so is a
/// [`Coalescer::run_atomic`] closure alone. The callers' outcomes are the same either way.
#[test]
fn a_batch_merged_into_one_statement_needs_no_transaction() {
    let db = TestDb::with_sql(PG_SQL);
    let (writer, begins) = counted_writer::<diesel::PgConnection>(db.url());
    let batch = |calls: Vec<BatchCall>| counted_batch(&writer, &begins, calls);
    let upsert = |k: &'static str, v: i64| -> BatchCall {
        Box::new(move |w| format!("{:?}", w.upsert(Entry { k: k.into(), v }).unwrap()))
    };

    let (told, transactions) = batch(vec![upsert("a", 1), upsert("b", 2), upsert("c", 3)]);
    assert_eq!(told, ["Inserted", "Inserted", "Inserted"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");

    let increment = || -> BatchCall {
        Box::new(|w| {
            let totals = w.upsert_increment::<Hits>("home".to_owned(), [1]).unwrap();
            format!("{}", totals[0])
        })
    };
    let (mut told, transactions) = batch(vec![increment(), increment(), increment()]);
    told.sort();
    assert_eq!(told, ["1", "2", "3"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");

    // Two upserts of one key with a kept column: one statement (the last row, the first's kept
    // column), its `Inserted` told to the first.
    let stamped = |k: &'static str, v: i64| -> BatchCall {
        Box::new(move |w| {
            let row = Stamped {
                k: k.into(),
                v,
                first_v: v,
            };
            format!("{:?}", w.upsert(row).unwrap())
        })
    };
    let (mut told, transactions) = batch(vec![stamped("s", 1), stamped("s", 2), stamped("t", 3)]);
    told.sort();
    assert_eq!(told, ["Inserted", "Inserted", "Updated"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");

    // A closure atomic by itself: alone in its batch, no transaction; with company, one.
    let atomic = |k: &'static str| -> BatchCall {
        Box::new(move |w| {
            let row = Entry { k: k.into(), v: 9 };
            format!(
                "{:?}",
                w.run_atomic(move |c| upsert_kit::atomic_upsert(c, &row))
                    .unwrap()
            )
        })
    };
    let (told, transactions) = batch(vec![atomic("e")]);
    assert_eq!(told, ["Inserted"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");
    let (mut told, transactions) = batch(vec![atomic("e"), atomic("f")]);
    told.sort();
    assert_eq!(told, ["Inserted", "Updated"]);
    assert_eq!(transactions, 2, "the holding call's, and the batch's");

    let stats = |k: &'static str, v: i64| -> BatchCall {
        Box::new(move |w| format!("{:?}", w.upsert_stats(Entry { k: k.into(), v }).unwrap()))
    };
    let (mut told, transactions) = batch(vec![stats("d", 1), stats("d", 2)]);
    told.sort();
    assert_eq!(told, ["Inserted", "Updated"]);
    assert_eq!(
        transactions, 2,
        "the holding call's, and the two rounds' one"
    );
    let mut conn = db.conn();
    let stored: Vec<(String, i64)> = entries::table.order(entries::k).load(&mut conn).unwrap();
    assert_eq!(stored.len(), 6);
    assert!(stored.contains(&("d".to_owned(), 2)) || stored.contains(&("d".to_owned(), 1)));
}

/// On MySQL/MariaDB, upserts of distinct keys merged into one statement go out with no
/// transaction around it too: the statement writes every row but one that meets another unique
/// index than the key, which is then written alone and fails its own caller.
#[test]
fn on_mysql_merged_upserts_of_distinct_keys_need_no_transaction() {
    let db = TestMysql::with_sql(MYSQL_SQL);
    let (writer, begins) = counted_writer::<diesel::MysqlConnection>(db.url());
    let tagged = |k: &'static str, tag: &'static str| -> BatchCall<diesel::MysqlConnection> {
        Box::new(move |w| {
            match w.upsert(Tagged {
                k: k.into(),
                tag: tag.into(),
            }) {
                Ok(outcome) => format!("{outcome:?}"),
                Err(Error::Constraint { kind, .. }) => format!("{kind:?}"),
                Err(e) => panic!("{e:?}"),
            }
        })
    };
    let (told, transactions) = counted_batch(
        &writer,
        &begins,
        vec![
            tagged("a", "red"),
            tagged("b", "blue"),
            tagged("c", "green"),
        ],
    );
    assert_eq!(told, ["Inserted", "Inserted", "Inserted"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");
    let (told, transactions) = counted_batch(
        &writer,
        &begins,
        vec![
            tagged("a", "red"),
            tagged("b", "pink"),
            tagged("d", "green"),
        ],
    );
    assert_eq!(told, ["Updated", "Updated", "Unique"]);
    assert_eq!(transactions, 1, "the holding call's transaction only");
    let stored: Vec<(String, String)> =
        tagged::table.order(tagged::k).load(&mut db.conn()).unwrap();
    let expected = [("a", "red"), ("b", "pink"), ("c", "green")];
    assert_eq!(
        stored,
        expected.map(|(k, t)| (k.to_owned(), t.to_owned())).to_vec()
    );
}
