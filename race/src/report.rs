//! The race report as a table, as JSON, and as an SVG plot.

use crate::Row;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// The rows as an aligned text table, then the throughput ratios of each cell: atomic/naive,
/// and atomic/diesel where plain Diesel ran.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    // As wide as the longest scenario name, at least 13.
    let w = rows.iter().map(|r| r.scenario.len()).fold(13, usize::max);
    let _ = writeln!(
        out,
        "{:<w$} {:<7} {:>7} {:>10} {:>12} {:>10} {:>10} {:>7} {:>7} {:>9} {:>8} {:>8} {:>10}",
        "scenario",
        "pattern",
        "workers",
        "operations",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "err %",
        "dup rows",
        "lost upd",
        "doubled",
        "over-limit"
    );
    for r in rows {
        let _ =
            writeln!(
            out,
            "{:<w$} {:<7} {:>7} {:>10} {:>12} {:>10.3} {:>10.3} {:>7} {:>7.2} {:>9} {:>8} {:>8} {:>10}",
            r.scenario,
            r.pattern,
            r.workers,
            r.operations,
            format!("{:.0}{}", r.per_sec, if r.unit == "ops" { "" } else { " rows" }),
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.errors,
            r.error_rate * 100.0,
            r.duplicate_rows,
            r.lost_updates,
            r.double_counted,
            r.over_limit
        );
    }
    for peer in ["naive", "diesel"] {
        let ratios = ratios(rows, peer);
        if !ratios.is_empty() {
            let _ = writeln!(out, "\natomic/{peer} throughput: {}", ratios.join(", "));
        }
    }
    out
}

/// `scenario xW: atomic/peer` for each cell where both ran.
fn ratios(rows: &[Row], peer: &str) -> Vec<String> {
    rows.iter()
        .filter(|a| a.pattern == "atomic")
        .filter_map(|a| {
            let n = rows.iter().find(|n| {
                n.pattern == peer && n.scenario == a.scenario && n.workers == a.workers
            })?;
            (n.per_sec > 0.0).then(|| {
                format!(
                    "{} x{}: {:.2}",
                    a.scenario,
                    a.workers,
                    a.per_sec / n.per_sec
                )
            })
        })
        .collect()
}

/// Reads rows written by [`write_json`].
pub fn read_json(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an upsert-race JSON report", path.display()))
}

/// Writes the rows as a JSON array.
pub fn write_json(rows: &[Row], path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e:?}")
}

/// Draws, for each scenario, throughput, error rate and anomalies (duplicate rows, lost
/// updates, double counts and over-limit units per 100 operations) against workers, one line
/// per pattern.
pub fn write_plot(rows: &[Row], path: &Path) -> Result<()> {
    let mut scenarios: Vec<&str> = Vec::new();
    for r in rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    if scenarios.is_empty() {
        return Err(anyhow!("no rows to plot"));
    }
    let height = 260 * scenarios.len() as u32;
    let root = SVGBackend::new(path, (1500, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((scenarios.len(), 3));
    for (i, scenario) in scenarios.iter().enumerate() {
        let cells: Vec<&Row> = rows.iter().filter(|r| r.scenario == *scenario).collect();
        let unit = if cells[0].unit == "ops" {
            "ops/s"
        } else {
            "rows/s"
        };
        draw(
            &panels[3 * i],
            &format!("{scenario}: {unit}"),
            &cells,
            |r| r.per_sec,
        )?;
        draw(
            &panels[3 * i + 1],
            &format!("{scenario}: error rate (%)"),
            &cells,
            |r| r.error_rate * 100.0,
        )?;
        draw(
            &panels[3 * i + 2],
            &format!("{scenario}: dup + lost + doubled + over-limit per 100 ops"),
            &cells,
            |r| {
                let damage =
                    (r.duplicate_rows + r.lost_updates + r.double_counted + r.over_limit) as f64;
                if r.operations == 0 {
                    0.0
                } else {
                    100.0 * damage / r.operations as f64
                }
            },
        )?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    cells: &[&Row],
    value: impl Fn(&Row) -> f64,
) -> Result<()> {
    let mut workers: Vec<usize> = cells.iter().map(|r| r.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    let top = cells.iter().map(|r| value(r)).fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3_f64..(workers.len() as f64 - 0.7), 0.0_f64..top)
        .map_err(plot_error)?;
    let labels = workers.clone();
    chart
        .configure_mesh()
        .x_labels(workers.len())
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&move |y| {
            if top < 10.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.0}")
            }
        })
        .x_desc("workers")
        .draw()
        .map_err(plot_error)?;
    for (pattern, color) in [("naive", RED), ("diesel", GREEN), ("atomic", BLUE)] {
        let points: Vec<(f64, f64)> = workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                cells
                    .iter()
                    .find(|r| r.pattern == pattern && r.workers == *w)
                    .map(|r| (i as f64, value(r)))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(pattern)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}
