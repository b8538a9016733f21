//! `#[derive(UpsertModel)]` on the structs Diesel users already have: renamed columns, borrowed
//! rows, generics, foreign field types (`uuid::Uuid`) and the field attributes, on real
//! PostgreSQL and SQLite databases. Its compile errors are in `compile_fail.rs`.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::borrow::Cow;
use upsert_kit::{
    atomic_upsert, bulk_upsert, get_or_create, upsert_model, Error, Obtained, Upsert, UpsertModel,
    UpsertOutcome,
};
use upsert_kit_support::{TestDb, TestSqlite};
use uuid::Uuid;

diesel::table! {
    devices (id) {
        id -> Uuid,
        owner -> Nullable<Uuid>,
        serial -> Text,
        label -> Text,
        firmware -> Bytea,
        seen -> Int8,
        registered_at -> Timestamp,
    }
}

const DEVICES: &str = "CREATE TABLE devices (
    id UUID PRIMARY KEY,
    owner UUID,
    serial TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    firmware BYTEA NOT NULL,
    seen BIGINT NOT NULL,
    registered_at TIMESTAMP NOT NULL
)";

fn at(hour: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
}

/// A row that borrows everything it can, names one column differently and keeps another.
#[derive(Debug, Clone, Insertable, UpsertModel)]
#[diesel(table_name = devices)]
#[upsert(key(id))]
struct NewDevice<'a> {
    id: Uuid,
    owner: Option<Uuid>,
    serial: &'a str,
    #[diesel(column_name = label)]
    name: Cow<'a, str>,
    firmware: &'a [u8],
    seen: i64,
    #[upsert(keep)]
    registered_at: NaiveDateTime,
}

#[derive(Debug, Queryable, Selectable, PartialEq)]
#[diesel(table_name = devices)]
struct Device {
    id: Uuid,
    owner: Option<Uuid>,
    serial: String,
    label: String,
    firmware: Vec<u8>,
    seen: i64,
    registered_at: NaiveDateTime,
}

fn device<'a>(id: Uuid, serial: &'a str, name: &'a str, seen: i64) -> NewDevice<'a> {
    NewDevice {
        id,
        owner: None,
        serial,
        name: Cow::Borrowed(name),
        firmware: b"v1",
        seen,
        registered_at: at(seen as u32),
    }
}

fn stored(conn: &mut PgConnection) -> Vec<Device> {
    devices::table
        .select(Device::as_select())
        .order(devices::serial)
        .load(conn)
        .unwrap()
}

#[test]
fn derived_model_lists_columns_by_their_names_not_the_fields() {
    assert_eq!(
        NewDevice::COLUMNS,
        [
            "id",
            "owner",
            "serial",
            "label",
            "firmware",
            "seen",
            "registered_at"
        ]
    );
    assert_eq!(NewDevice::KEY, ["id"]);
    assert_eq!(NewDevice::KEEP, ["registered_at"]);
}

#[test]
fn uuid_fields_borrowed_rows_and_renamed_columns_upsert_on_postgres() {
    let db = TestDb::with_sql(DEVICES);
    let mut conn = db.conn();
    let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let owner = Uuid::from_u128(7);
    let serial = String::from("sn-1");

    assert_eq!(
        atomic_upsert(&mut conn, &device(id, &serial, "hall", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    let moved = NewDevice {
        owner: Some(owner),
        name: Cow::Owned("kitchen".to_owned()),
        ..device(id, &serial, "", 2)
    };
    assert_eq!(
        atomic_upsert(&mut conn, &moved).unwrap(),
        UpsertOutcome::Updated
    );
    assert_eq!(
        stored(&mut conn),
        [Device {
            id,
            owner: Some(owner),
            serial: serial.clone(),
            label: "kitchen".into(),
            firmware: b"v1".to_vec(),
            seen: 2,
            registered_at: at(1), // `#[upsert(keep)]`: written once
        }]
    );
}

#[test]
fn bulk_upsert_of_borrowed_rows_binds_one_array_per_column_on_postgres() {
    let db = TestDb::with_sql(DEVICES);
    let mut conn = db.conn();
    let serials: Vec<String> = (0..3).map(|i| format!("sn-{i}")).collect();
    let rows: Vec<NewDevice<'_>> = serials
        .iter()
        .enumerate()
        .map(|(i, s)| device(Uuid::from_u128(i as u128 + 1), s, "rack", i as i64))
        .chain([device(Uuid::from_u128(1), &serials[0], "desk", 9)])
        .collect();
    let outcome = bulk_upsert(&mut conn, &rows).unwrap();
    assert_eq!(
        (outcome.inserted, outcome.updated, outcome.collapsed),
        (3, 0, 1)
    );
    let labels: Vec<(String, String)> = stored(&mut conn)
        .into_iter()
        .map(|d| (d.serial, d.label))
        .collect();
    assert_eq!(
        labels,
        [
            ("sn-0".to_owned(), "desk".to_owned()),
            ("sn-1".to_owned(), "rack".to_owned()),
            ("sn-2".to_owned(), "rack".to_owned())
        ]
    );
}

#[test]
fn get_or_create_returns_the_stored_row_of_a_derived_model() {
    let db = TestDb::with_sql(DEVICES);
    let mut conn = db.conn();
    let id = Uuid::from_u128(42);
    let first: Obtained<Device> =
        get_or_create(&mut conn, &device(id, "sn-42", "first", 1)).unwrap();
    let again: Obtained<Device> =
        get_or_create(&mut conn, &device(id, "sn-42", "second", 2)).unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.row.label, "first");
}

diesel::table! {
    notes (slug) {
        slug -> Text,
        body -> Text,
        score -> Double,
        views -> BigInt,
    }
}

const NOTES: &str =
    "CREATE TABLE notes (slug TEXT PRIMARY KEY, body TEXT NOT NULL, score DOUBLE PRECISION NOT NULL, views BIGINT NOT NULL)";

/// A model with a type parameter: its field's bounds are on the impls.
#[derive(Debug, UpsertModel)]
#[upsert(table = notes, key(slug))]
struct Note<B> {
    slug: String,
    body: B,
    score: f64,
    #[diesel(skip_insertion)]
    #[allow(dead_code)]
    views_seen: u64,
    views: i64,
}

/// The same table: a score that is not a number is refused unless the field is `unchecked`.
#[derive(Debug, UpsertModel)]
#[upsert(table = notes, key(slug))]
struct RawNote {
    slug: String,
    body: String,
    #[upsert(unchecked)]
    score: f64,
    views: i64,
}

#[test]
fn generic_models_and_skipped_fields_upsert_on_sqlite() {
    let db = TestSqlite::with_sql(NOTES);
    let mut conn = db.conn();
    assert_eq!(Note::<String>::COLUMNS, ["slug", "body", "score", "views"]);
    let note = |body: &'static str, views| Note {
        slug: "intro".to_owned(),
        body,
        score: 1.0,
        views_seen: 99,
        views,
    };
    assert_eq!(
        atomic_upsert(&mut conn, &note("hello", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        Upsert::new(&note("hello again", 2))
            .keep(notes::body)
            .execute(&mut conn)
            .unwrap(),
        UpsertOutcome::Updated
    );
    let row: (String, i64) = notes::table
        .select((notes::body, notes::views))
        .first(&mut conn)
        .unwrap();
    assert_eq!(row, ("hello".to_owned(), 2));
}

#[test]
fn value_checks_refuse_bad_values_unless_the_field_is_unchecked() {
    let db = TestDb::with_sql(NOTES);
    let mut conn = db.conn();
    let checked = Note {
        slug: "n".into(),
        body: String::new(),
        score: f64::NAN,
        views_seen: 0,
        views: 0,
    };
    let err = atomic_upsert(&mut conn, &checked).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(e) if e.field == "score"),
        "{err}"
    );
    let empty_key = Note {
        slug: "  ".into(),
        score: 0.0,
        ..checked
    };
    let err = atomic_upsert(&mut conn, &empty_key).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(e) if e.field == "slug"),
        "{err}"
    );

    let unchecked = RawNote {
        slug: "n".into(),
        body: String::new(),
        score: f64::NAN,
        views: 0,
    };
    assert_eq!(
        atomic_upsert(&mut conn, &unchecked).unwrap(),
        UpsertOutcome::Inserted
    );
    let score: f64 = notes::table.select(notes::score).first(&mut conn).unwrap();
    assert!(score.is_nan());
}

#[test]
fn a_null_key_of_a_foreign_type_is_refused_before_anything_is_sent() {
    diesel::table! {
        owners (owner) {
            owner -> Nullable<Uuid>,
            name -> Text,
        }
    }
    #[derive(UpsertModel)]
    #[upsert(table = owners, key(owner))]
    struct Owner {
        owner: Option<Uuid>,
        name: String,
    }
    let db = TestDb::with_sql("CREATE TABLE owners (owner UUID UNIQUE, name TEXT NOT NULL)");
    let mut conn = db.conn();
    let err = atomic_upsert(
        &mut conn,
        &Owner {
            owner: None,
            name: "nobody".into(),
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(e) if e.field == "owner"),
        "{err}"
    );
    let owner = Owner {
        owner: Some(Uuid::from_u128(1)),
        name: "ada".into(),
    };
    assert_eq!(
        atomic_upsert(&mut conn, &owner).unwrap(),
        UpsertOutcome::Inserted
    );
}

mod schema {
    diesel::table! {
        widgets (code) {
            code -> Text,
            label -> Text,
        }
    }
}
use schema::widgets;

/// No table attribute: Diesel's default name (`Widget` → `widgets`).
#[derive(Debug, UpsertModel)]
#[upsert(key(code))]
struct Widget {
    code: String,
    label: String,
}

/// A table given by its path, and a key named by its column rather than its field.
#[derive(Debug, UpsertModel)]
#[diesel(table_name = schema::widgets)]
#[upsert(key(label))]
struct WidgetByLabel {
    code: String,
    #[diesel(column_name = label)]
    title: String,
}

#[test]
fn tables_are_inferred_or_given_by_path_and_keys_may_name_the_column() {
    assert_eq!(Widget::COLUMNS, ["code", "label"]);
    assert_eq!(WidgetByLabel::KEY, ["label"]);
    let db = TestSqlite::with_sql(
        "CREATE TABLE widgets (code TEXT NOT NULL, label TEXT NOT NULL UNIQUE)",
    );
    let mut conn = db.conn();
    let by_label = |code: &str| WidgetByLabel {
        code: code.into(),
        title: "gear".into(),
    };
    assert_eq!(
        atomic_upsert(&mut conn, &by_label("g-1")).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &by_label("g-2")).unwrap(),
        UpsertOutcome::Updated
    );
    let codes: Vec<String> = widgets::table
        .select(widgets::code)
        .load(&mut conn)
        .unwrap();
    assert_eq!(codes, ["g-2"]);
}

upsert_model! {
    table = notes, key = (slug), keep = (views);
    /// The wrapper puts the derive on the struct: field attributes work inside it.
    #[derive(Debug)]
    struct WrappedNote {
        slug: String,
        #[diesel(column_name = body)]
        text: String,
        score: f64,
        views: i64,
    }
}

#[test]
fn upsert_model_wrapper_declares_the_same_model_as_the_derive() {
    assert_eq!(WrappedNote::COLUMNS, ["slug", "body", "score", "views"]);
    assert_eq!(WrappedNote::KEEP, ["views"]);
    let db = TestSqlite::with_sql(NOTES);
    let mut conn = db.conn();
    let note = |text: &str, views| WrappedNote {
        slug: "w".into(),
        text: text.into(),
        score: 0.5,
        views,
    };
    assert_eq!(
        atomic_upsert(&mut conn, &note("a", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        atomic_upsert(&mut conn, &note("b", 5)).unwrap(),
        UpsertOutcome::Updated
    );
    let row: (String, i64) = notes::table
        .select((notes::body, notes::views))
        .first(&mut conn)
        .unwrap();
    assert_eq!(row, ("b".to_owned(), 1));
    conn.batch_execute("DELETE FROM notes").unwrap();
}

/// The `time` crate's timestamps, checked like chrono's (the library's `time` feature; CI runs
/// this file with it, see `.ci/run`).
#[cfg(feature = "time")]
mod time_fields {
    use super::*;

    diesel::table! {
        events (name) {
            name -> Text,
            at -> Timestamp,
            logged -> Timestamptz,
        }
    }

    #[derive(UpsertModel)]
    #[upsert(table = events, key(name))]
    struct Event {
        name: String,
        at: time::PrimitiveDateTime,
        logged: time::OffsetDateTime,
    }

    /// Midnight of a day (the `time` crate's macros are not enabled here).
    fn midnight(year: i32, month: u8, day: u8) -> time::PrimitiveDateTime {
        let month = time::Month::try_from(month).unwrap();
        time::Date::from_calendar_date(year, month, day)
            .unwrap()
            .midnight()
    }

    #[test]
    fn time_timestamps_outside_years_1_to_9999_are_refused_and_others_stored_on_postgres() {
        let db = TestDb::with_sql(
            "CREATE TABLE events (name TEXT PRIMARY KEY, at TIMESTAMP NOT NULL, logged TIMESTAMPTZ NOT NULL)",
        );
        let mut conn = db.conn();
        let at = midnight(2026, 12, 1);
        let event = Event {
            name: "deploy".into(),
            at,
            logged: at.assume_utc(),
        };
        assert_eq!(
            atomic_upsert(&mut conn, &event).unwrap(),
            UpsertOutcome::Inserted
        );
        let stored: time::PrimitiveDateTime =
            events::table.select(events::at).first(&mut conn).unwrap();
        assert_eq!(stored, at);

        let year_zero = midnight(0, 1, 1);
        let err = atomic_upsert(
            &mut conn,
            &Event {
                at: year_zero,
                ..event
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(e) if e.field == "at"),
            "{err}"
        );
    }
}

diesel::table! {
    /// A MySQL-only column type: `BIGINT UNSIGNED`.
    counters_u (name) {
        name -> Text,
        hits -> Unsigned<BigInt>,
        label -> Text,
    }
}

/// A `u64` field fits `Unsigned<BigInt>` only on MySQL: the derive's field check accepts it
/// because upsert-kit is built with `mysql` (the probe of each backend), and borrowed rows
/// upsert there as elsewhere; the value checks run before anything is sent, as on every backend.
#[derive(Debug, Clone, UpsertModel)]
#[diesel(table_name = counters_u)]
#[upsert(key(name))]
struct UnsignedRow<'a> {
    name: &'a str,
    hits: u64,
    #[diesel(column_name = label)]
    title: Cow<'a, str>,
}

#[test]
fn a_mysql_only_field_type_and_borrowed_rows_upsert_on_mysql() {
    let db = upsert_kit_support::TestMysql::with_sql(
        "CREATE TABLE counters_u (name VARCHAR(64) PRIMARY KEY, hits BIGINT UNSIGNED NOT NULL, label TEXT NOT NULL)",
    );
    let mut conn = db.conn();
    let big = UnsignedRow {
        name: "a",
        hits: u64::MAX,
        title: Cow::Borrowed("max"),
    };
    assert_eq!(
        atomic_upsert(&mut conn, &big).unwrap(),
        UpsertOutcome::Inserted
    );
    let again = UnsignedRow {
        title: Cow::Owned("max again".into()),
        ..big.clone()
    };
    assert_eq!(bulk_upsert(&mut conn, &[again]).unwrap().updated, 1);
    let (hits, label): (u64, String) = counters_u::table
        .select((counters_u::hits, counters_u::label))
        .first(&mut conn)
        .unwrap();
    assert_eq!((hits, label.as_str()), (u64::MAX, "max again"));
    let empty = UnsignedRow { name: " ", ..big };
    assert!(matches!(
        atomic_upsert(&mut conn, &empty),
        Err(Error::InvalidInput(e)) if e.field == "name"
    ));
}
