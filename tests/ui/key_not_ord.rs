// A key whose type is not `Ord`: bulk upserts sort and collapse rows by key.
use upsert_kit::Upsert;

diesel::table! {
    readings (value) {
        value -> Double,
        label -> Text,
    }
}

#[derive(Upsert)]
#[diesel(table_name = readings)]
#[upsert(key(value))]
struct Reading {
    value: f64,
    label: String,
}

fn main() {}
