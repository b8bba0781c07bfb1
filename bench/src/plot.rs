//! `--plot FILE.svg`: latency by percentile for every stack, one panel per placement.
//!
//! The x axis counts nines (90%, 99%, 99.9%, …) so the tail gets as much room as the median,
//! and the y axis is logarithmic so the UDP floor and the slowest stack fit in one chart.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Row;

/// The scenario every stack runs, one call at a time.
const SCENARIO: &str = "unary_2k";
/// The curves stop at 99.99%.
const MAX_NINES: f64 = 4.0;

fn color(stack: &str) -> RGBColor {
    match stack {
        "reaper" => RGBColor(200, 30, 30),
        "udp" => RGBColor(120, 120, 120),
        "quinn" => RGBColor(30, 90, 200),
        "http1" => RGBColor(30, 150, 60),
        "tonic" => RGBColor(150, 60, 170),
        _ => RGBColor(0, 0, 0),
    }
}

/// Percentile on the "nines" axis: 0 at p0, 1 at p90, 2 at p99, …
fn nines(quantile: f64) -> f64 {
    (-(1.0 - quantile).max(1e-9).log10()).min(MAX_NINES)
}

fn percent_label(nines: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    if percent < 99.0 {
        format!("{percent:.0}%")
    } else {
        let decimals = (*nines - 2.0).round().max(0.0) as usize;
        format!("{percent:.decimals$}%")
    }
}

/// Draws the sequential `unary_2k` curves of every stack, a panel per placement.
pub fn latency_curves(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let curves: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == SCENARIO && r.concurrency == 1 && r.connections == 1)
        .filter(|r| !r.histogram.is_empty())
        .collect();
    let mut pins: Vec<&str> = curves.iter().map(|r| r.pin).collect();
    pins.dedup();
    if pins.is_empty() {
        return Err(anyhow!(
            "nothing to plot: no sequential {SCENARIO} measurement"
        ));
    }
    let lowest = curves.iter().map(|r| r.histogram.min()).min().unwrap_or(1);
    let highest = curves
        .iter()
        .map(|r| r.histogram.value_at_quantile(0.9999))
        .max()
        .unwrap_or(1000);
    let y_range = (lowest.max(1) as f64 * 0.8)..(highest as f64 * 1.25);

    let root = SVGBackend::new(path, (560 * pins.len() as u32, 420)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    for (panel, pin) in root.split_evenly((1, pins.len())).iter().zip(&pins) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{SCENARIO}, one call at a time, pin {pin}"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..MAX_NINES, y_range.clone().log_scale())
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(5)
            .x_label_formatter(&percent_label)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(draw)?;
        for row in curves.iter().filter(|r| r.pin == *pin) {
            let style = color(row.stack).stroke_width(2);
            let points: Vec<(f64, f64)> = row
                .histogram
                .iter_quantiles(5)
                .map(|q| {
                    (
                        nines(q.quantile_iterated_to()),
                        q.value_iterated_to() as f64,
                    )
                })
                .take_while(|(x, _)| *x < MAX_NINES)
                .collect();
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(draw)?
                .label(format!("{} (p50 {} µs)", row.stack, row.p50_us))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
    }
    root.present().map_err(draw)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_counts_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
        assert_eq!(percent_label(&1.0), "90%");
        assert_eq!(percent_label(&2.0), "99%");
        assert_eq!(percent_label(&3.0), "99.9%");
    }
}
