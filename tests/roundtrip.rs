//! One validation for every backend, and nothing accepted that cannot be read back
//! (`upsert_kit::limits`): generated rows, hostile ones among them, go through the same upsert on
//! PostgreSQL and SQLite. A row the checks refuse is refused on both with the same typed error
//! naming the field, before anything is sent (the table stays as it was); a row they accept is
//! written on both and loaded back with Diesel equal to what was written, with the documented
//! exceptions of `upsert_kit::limits` (sub-microsecond time on PostgreSQL, a JSON `-0.0` and a
//! float `1e16` and above in `jsonb`).

use chrono::{DateTime, NaiveDateTime};
use diesel::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use upsert_kit::limits::{MAX_JSON_DEPTH, MAX_KEY_BYTES};
use upsert_kit::{atomic_upsert, Error, UpsertModel};
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

diesel::table! {
    samples (k) {
        k -> Text,
        label -> Text,
        doc -> Jsonb,
        ratio -> Double,
        at -> Timestamp,
        bytes -> Binary,
        n -> BigInt,
    }
}

const PG_SQL: &str = "CREATE TABLE samples (
    k TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    doc JSONB NOT NULL,
    ratio DOUBLE PRECISION NOT NULL,
    at TIMESTAMP NOT NULL,
    bytes BYTEA NOT NULL,
    n BIGINT NOT NULL
)";

const SQLITE_SQL: &str = "CREATE TABLE samples (
    k TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    doc BLOB NOT NULL,
    ratio REAL NOT NULL,
    at TIMESTAMP NOT NULL,
    bytes BLOB NOT NULL,
    n BIGINT NOT NULL
)";

/// The same table on MySQL/MariaDB, where JSON is `JSON` (Diesel has no `Jsonb` there) and a
/// timestamp `DATETIME(6)`. The key is a `VARCHAR(768)` (InnoDB's 3,072-byte index key in
/// `utf8mb4`) with a binary `NO PAD` collation, as `upsert_kit::limits` advises.
mod on_mysql {
    diesel::table! {
        samples (k) {
            k -> Text,
            label -> Text,
            doc -> Json,
            ratio -> Double,
            at -> Datetime,
            bytes -> Blob,
            n -> BigInt,
        }
    }
}

const MYSQL_SQL: &str = "CREATE TABLE samples (
    k VARCHAR(768) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PRIMARY KEY,
    label LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    doc JSON NOT NULL,
    ratio DOUBLE NOT NULL,
    at DATETIME(6) NOT NULL,
    bytes BLOB NOT NULL,
    n BIGINT NOT NULL
)";

/// [`Sample`] on MySQL's table.
#[derive(Debug, Clone, PartialEq, Insertable, Queryable, Selectable, UpsertModel)]
#[diesel(table_name = on_mysql::samples)]
#[upsert(key(k))]
struct MysqlSample {
    k: String,
    label: String,
    doc: Value,
    ratio: f64,
    at: NaiveDateTime,
    bytes: Vec<u8>,
    n: i64,
}

impl From<&Sample> for MysqlSample {
    fn from(s: &Sample) -> Self {
        let s = s.clone();
        MysqlSample {
            k: s.k,
            label: s.label,
            doc: s.doc,
            ratio: s.ratio,
            at: s.at,
            bytes: s.bytes,
            n: s.n,
        }
    }
}

impl From<MysqlSample> for Sample {
    fn from(s: MysqlSample) -> Self {
        Sample {
            k: s.k,
            label: s.label,
            doc: s.doc,
            ratio: s.ratio,
            at: s.at,
            bytes: s.bytes,
            n: s.n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Insertable, Queryable, Selectable, UpsertModel)]
#[diesel(table_name = samples)]
#[upsert(key(k))]
struct Sample {
    k: String,
    label: String,
    doc: Value,
    ratio: f64,
    at: NaiveDateTime,
    bytes: Vec<u8>,
    n: i64,
}

/// Keys: mostly short, some blank, some with NUL, some around [`MAX_KEY_BYTES`], some far above
/// (the 10 kB key PostgreSQL's index refuses).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => "[a-z0-9]{1,12}",
        4 => "\\PC{1,12}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "[a-z]{1,4}\u{0}[a-z]{0,4}",
        1 => (MAX_KEY_BYTES - 2..MAX_KEY_BYTES + 3).prop_map(|n| "k".repeat(n)),
        1 => Just("é".repeat(MAX_KEY_BYTES / 2 + 1)),
        1 => Just("x".repeat(10_000)),
    ]
}

/// Floats, with the edges: extremes, subnormals, signed zero, integral values at 1e16 and up.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        18 => any::<f64>(),
        1 => prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN),
            Just(f64::MIN_POSITIVE),
            Just(5e-324),
            Just(-0.0),
            Just(0.1),
            Just(1e16),
            Just(1e300),
            Just(-1.5e-310),
            Just(f64::NAN),
            Just(f64::INFINITY),
        ],
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("not JSON", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        float().prop_filter_map("not JSON", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,8}".prop_map(Value::String),
        "\\PC{0,8}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 1..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn json() -> impl Strategy<Value = Value> {
    let tree = json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        24 => tree,
        1 => (MAX_JSON_DEPTH - 2..MAX_JSON_DEPTH + 3).prop_map(nested),
        1 => Just(nested(300)),
    ]
}

/// Timestamps with nanoseconds, and years on both sides of 1–9999.
fn timestamp() -> impl Strategy<Value = NaiveDateTime> {
    let in_range = (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000);
    let around = prop_oneof![
        (-62_135_596_900i64..-62_135_596_700, 0u32..1_000_000_000),
        (253_402_300_700i64..253_402_300_900, 0u32..1_000_000_000),
    ];
    prop_oneof![29 => in_range, 1 => around].prop_map(|(secs, nanos)| {
        DateTime::from_timestamp(secs, nanos)
            .expect("within chrono's range")
            .naive_utc()
    })
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        key(),
        prop_oneof![16 => "\\PC{0,24}", 2 => any::<String>(), 1 => "[a-z]{0,5}\u{0}[a-z]{0,5}"],
        json(),
        float(),
        timestamp(),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<i64>(),
    )
        .prop_map(|(k, label, doc, ratio, at, bytes, n)| Sample {
            k,
            label,
            doc,
            ratio,
            at,
            bytes,
            n,
        })
}

/// JSON equal as `upsert_kit::limits` documents: numbers by value (a `jsonb` `-0.0` is `0`, a
/// float `1e16` an integer), everything else exactly.
fn json_equal(written: &Value, read: &Value) -> bool {
    match (written, read) {
        (Value::Number(a), Value::Number(b)) => {
            a == b || (a.is_f64() || b.is_f64()) && a.as_f64() == b.as_f64()
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && json_equal(va, vb))
        }
        _ => written == read,
    }
}

/// `at` as MySQL keeps it through Diesel: whole microseconds, the rest dropped.
fn floor_micros(at: NaiveDateTime) -> NaiveDateTime {
    use chrono::Timelike;
    at.with_nanosecond(at.nanosecond() / 1000 * 1000).unwrap()
}

/// `at` as PostgreSQL keeps it through Diesel: whole microseconds counted from 2000-01-01, the
/// rest dropped (toward 2000: down after it, up before it).
fn micros(at: NaiveDateTime) -> NaiveDateTime {
    use chrono::Timelike;
    let down = at.with_nanosecond(at.nanosecond() / 1000 * 1000).unwrap();
    let pg_epoch = DateTime::from_timestamp(946_684_800, 0)
        .unwrap()
        .naive_utc();
    if at < pg_epoch && down != at {
        down + chrono::TimeDelta::microseconds(1)
    } else {
        down
    }
}

/// What one backend did with one row: refused with (field, reason), or read back.
#[derive(Debug)]
enum Verdict {
    Refused(String, String),
    Stored(Sample),
}

/// Writes `row` with the upsert and reads it back, or returns the refusal; asserts that a
/// refused row left the table as it was and that the server refuses nothing the checks accept.
macro_rules! case_on {
    ($name:ident, $conn:ty, $backend:literal, $table:path, $model:ty) => {
        fn $name(conn: &mut $conn, row: &Sample) -> Verdict {
            use $table as samples;
            let before: i64 = samples::table.count().get_result(conn).unwrap();
            let written = <$model>::from(row);
            match atomic_upsert(conn, &written) {
                Ok(_) => Verdict::Stored(
                    samples::table
                        .find(&row.k)
                        .select(<$model>::as_select())
                        .get_result::<$model>(conn)
                        .unwrap_or_else(|e| {
                            panic!(
                                concat!($backend, " stored the row but cannot load it: {}"),
                                e
                            )
                        })
                        .into(),
                ),
                Err(Error::InvalidInput(e)) => {
                    let after: i64 = samples::table.count().get_result(conn).unwrap();
                    assert_eq!(before, after, "a refused row changed the table");
                    Verdict::Refused(e.field, e.reason)
                }
                Err(e) => panic!(
                    concat!($backend, " refused a row the checks accepted: {} ({:?})"),
                    e, row
                ),
            }
        }
    };
}

impl From<&Sample> for Sample {
    fn from(s: &Sample) -> Self {
        s.clone()
    }
}

case_on!(pg_case, PgConnection, "PostgreSQL", self::samples, Sample);
case_on!(
    sqlite_case,
    SqliteConnection,
    "SQLite",
    self::samples,
    Sample
);
case_on!(
    mysql_case,
    MysqlConnection,
    "MySQL",
    on_mysql::samples,
    MysqlSample
);

/// The number of generated rows; `ROUNDTRIP_CASES` raises it for a longer run.
fn cases() -> u32 {
    std::env::var("ROUNDTRIP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

#[test]
fn every_row_is_refused_alike_or_read_back_equal_on_every_backend() {
    let pg = TestDb::with_sql(PG_SQL);
    let sqlite = TestSqlite::with_sql(SQLITE_SQL);
    let mysql = TestMysql::with_sql(MYSQL_SQL);
    let conns = std::cell::RefCell::new((pg.conn(), sqlite.conn(), mysql.conn()));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let counts = std::cell::Cell::new((0usize, 0usize));
    runner
        .run(&sample(), |row| {
            let verdicts = {
                let (pg, lite, my) = &mut *conns.borrow_mut();
                [
                    ("PostgreSQL", pg_case(pg, &row)),
                    ("SQLite", sqlite_case(lite, &row)),
                    ("MySQL", mysql_case(my, &row)),
                ]
            };
            let (mut r, mut s) = counts.get();
            if let (_, Verdict::Refused(field, why)) = &verdicts[0] {
                for (backend, v) in &verdicts[1..] {
                    match v {
                        Verdict::Refused(f, w) => prop_assert_eq!(
                            (f, w),
                            (field, why),
                            "{}: one error on every backend",
                            backend
                        ),
                        Verdict::Stored(_) => prop_assert!(
                            false,
                            "PostgreSQL refused {} ({}), {} stored it",
                            field,
                            why,
                            backend
                        ),
                    }
                }
                r += 1;
            } else {
                for (backend, v) in &verdicts {
                    let Verdict::Stored(got) = v else {
                        prop_assert!(false, "PostgreSQL stored the row, {} {:?}", backend, v);
                        unreachable!()
                    };
                    let at = match *backend {
                        "PostgreSQL" => micros(row.at),
                        "MySQL" => floor_micros(row.at),
                        _ => row.at,
                    };
                    prop_assert_eq!(&got.k, &row.k, "{} key", backend);
                    prop_assert_eq!(&got.label, &row.label, "{} label", backend);
                    prop_assert!(
                        json_equal(&row.doc, &got.doc),
                        "{} doc: wrote {} read {}",
                        backend,
                        row.doc,
                        got.doc
                    );
                    // SQLite stores an integral REAL as an integer and MySQL's DOUBLE drops the
                    // sign of zero: `-0.0` comes back `0.0` there.
                    let ratio = if *backend != "PostgreSQL" && row.ratio == 0.0 {
                        0.0
                    } else {
                        row.ratio
                    };
                    prop_assert_eq!(
                        got.ratio.to_bits(),
                        ratio.to_bits(),
                        "{} ratio {} read {}",
                        backend,
                        row.ratio,
                        got.ratio
                    );
                    prop_assert_eq!(got.at, at, "{} timestamp", backend);
                    prop_assert_eq!(&got.bytes, &row.bytes, "{} bytes", backend);
                    prop_assert_eq!(got.n, row.n, "{} integer", backend);
                }
                s += 1;
            }
            counts.set((r, s));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (refused, stored) = counts.get();
    eprintln!("round trip: {} rows, {refused} refused alike, {stored} read back equal on PostgreSQL, SQLite and MySQL", refused + stored);
    // Both sides of the property were exercised.
    assert!(
        refused > cases() as usize / 20,
        "too few refused rows: {refused}"
    );
    assert!(
        stored > cases() as usize / 5,
        "too few stored rows: {stored}"
    );
}

fn plain(k: &str) -> Sample {
    Sample {
        k: k.into(),
        label: "label".into(),
        doc: serde_json::json!({"count": 1}),
        ratio: 0.5,
        at: DateTime::from_timestamp(1_764_590_400, 0)
            .unwrap()
            .naive_utc(),
        bytes: vec![0, 1, 2],
        n: 7,
    }
}

/// The hostile inputs of the issue that one backend stored and another refused or could not
/// read back: each is now the same `InvalidInput`, naming the field, on every backend; and the
/// values at the edge of each limit are stored and read back on every backend.
#[test]
fn hostile_values_get_one_typed_error_on_every_backend() {
    let pg = TestDb::with_sql(PG_SQL);
    let sqlite = TestSqlite::with_sql(SQLITE_SQL);
    let mysql = TestMysql::with_sql(MYSQL_SQL);
    let (mut pg, mut lite, mut my) = (pg.conn(), sqlite.conn(), mysql.conn());
    let refused: Vec<(&str, Sample)> = vec![
        (
            "label",
            Sample {
                label: "a\0b".into(),
                ..plain("nul-text")
            },
        ),
        (
            "doc",
            Sample {
                doc: serde_json::json!({"a": "x\u{0}"}),
                ..plain("nul-json")
            },
        ),
        (
            "doc",
            Sample {
                doc: serde_json::json!({"a\u{0}": 1}),
                ..plain("nul-json-key")
            },
        ),
        ("k", plain(&"k".repeat(10_000))),
        ("k", plain(&"k".repeat(MAX_KEY_BYTES + 1))),
        ("k", plain("a\0b")),
        (
            "doc",
            Sample {
                doc: serde_json::json!({"count": u64::MAX}),
                ..plain("u64")
            },
        ),
        (
            "doc",
            Sample {
                doc: nested(200),
                ..plain("deep")
            },
        ),
        (
            "doc",
            Sample {
                doc: nested(MAX_JSON_DEPTH + 1),
                ..plain("deep-by-one")
            },
        ),
    ];
    for (field, row) in &refused {
        let a = pg_case(&mut pg, row);
        let b = sqlite_case(&mut lite, row);
        let c = mysql_case(&mut my, row);
        match (&a, &b, &c) {
            (
                Verdict::Refused(f1, why1),
                Verdict::Refused(f2, why2),
                Verdict::Refused(f3, why3),
            ) => {
                assert_eq!([f1, f2, f3], [*field; 3], "{row:?}");
                assert!(why1 == why2 && why2 == why3, "one message on every backend");
            }
            _ => panic!(
                "expected {field} refused everywhere: PostgreSQL {a:?}, SQLite {b:?}, MySQL {c:?}"
            ),
        }
    }
    let accepted = vec![
        plain(&"k".repeat(MAX_KEY_BYTES)),
        Sample {
            doc: serde_json::json!([f64::MAX, f64::MIN, 5e-324, i64::MAX, i64::MIN]),
            ..plain("extremes")
        },
        Sample {
            doc: nested(MAX_JSON_DEPTH),
            ..plain("deep-at-limit")
        },
        Sample {
            ratio: f64::MAX,
            ..plain("ratio-max")
        },
    ];
    for row in &accepted {
        for (backend, verdict) in [
            ("PostgreSQL", pg_case(&mut pg, row)),
            ("SQLite", sqlite_case(&mut lite, row)),
            ("MySQL", mysql_case(&mut my, row)),
        ] {
            match verdict {
                Verdict::Stored(got) => {
                    assert!(
                        json_equal(&row.doc, &got.doc),
                        "{backend}: wrote {} read {}",
                        row.doc,
                        got.doc
                    );
                    assert_eq!((&got.k, got.ratio), (&row.k, row.ratio), "{backend}");
                }
                Verdict::Refused(f, why) => panic!("{backend} refused {f}: {why}"),
            }
        }
    }
}
