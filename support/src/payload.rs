//! The payload the benches and the race report write: a "last 7 days" coding-time summary of
//! about 1 KB of JSON, the size the sync jobs store per row.

use serde_json::{json, Value};

/// A stats payload of about 1 KB; `seed` varies the figures (not the shape or the size).
pub fn stats_payload(seed: u64) -> Value {
    let languages = [
        "Rust",
        "SQL",
        "Python",
        "TypeScript",
        "Markdown",
        "YAML",
        "Bash",
    ];
    let editors = ["VS Code", "Neovim", "IntelliJ IDEA"];
    let n = |i: u64| (seed.wrapping_mul(31).wrapping_add(i * 7919)) % 36_000;
    json!({
        "range": "last_7_days",
        "start": "2026-11-22T00:00:00Z",
        "end": "2026-11-29T00:00:00Z",
        "timezone": "UTC",
        "total_seconds": n(1) * 10,
        "daily_average": n(2),
        "is_up_to_date": true,
        "languages": languages.iter().enumerate().map(|(i, name)| json!({
            "name": name,
            "total_seconds": n(i as u64 + 3),
            "percent": (n(i as u64 + 3) % 10_000) as f64 / 100.0,
            "digital": format!("{}:{:02}", n(i as u64 + 3) / 3600, n(i as u64 + 3) / 60 % 60),
        })).collect::<Vec<_>>(),
        "editors": editors.iter().enumerate().map(|(i, name)| json!({
            "name": name,
            "total_seconds": n(i as u64 + 20),
            "percent": (n(i as u64 + 20) % 10_000) as f64 / 100.0,
        })).collect::<Vec<_>>(),
        "operating_systems": [{"name": "Linux", "total_seconds": n(30), "percent": 100.0}],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_payload_is_about_one_kilobyte() {
        let size = super::stats_payload(7).to_string().len();
        assert!((800..=1400).contains(&size), "{size} bytes");
    }
}
