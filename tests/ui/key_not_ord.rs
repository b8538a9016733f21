// A key whose type is not `Ord`: bulk upserts sort and collapse rows by key.
use upsert_kit::UpsertModel;

diesel::table! {
    readings (value) {
        value -> Double,
        label -> Text,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = readings)]
#[upsert(key(value))]
struct Reading {
    value: f64,
    label: String,
}

fn main() {}
