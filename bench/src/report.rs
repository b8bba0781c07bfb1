//! One row per measured scenario: the terminal table, JSON lines, HDR percentile logs, and
//! ratios between stacks.

use hdrhistogram::Histogram;
use serde_json::json;

/// Microsecond histogram bounds: 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Unmeasured calls before a sequential scenario: a tenth of its calls, and at least this many.
/// The first calls on a new connection are slower (path MTU probing among them); with too few
/// warm-up calls, a round of 500 (`--rounds 4` of `--quick`) measured reaper ~12 µs slower at
/// p50 across CPUs than one round of 2,000 with 200.
const MIN_WARM_UP: u64 = 200;

/// Unmeasured calls before `calls` measured ones.
pub fn warm_up(calls: u64) -> u64 {
    (calls / 10).max(MIN_WARM_UP)
}

/// Times `calls` sequential calls, after [`warm_up`] unmeasured ones. Returns the histogram and
/// the seconds the measured calls took.
pub fn time_sequential(
    calls: u64,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    for _ in 0..warm_up(calls) {
        call()?;
    }
    let mut h = histogram();
    let started = std::time::Instant::now();
    for _ in 0..calls {
        let t = std::time::Instant::now();
        call()?;
        h.saturating_record(t.elapsed().as_micros() as u64);
    }
    Ok((h, started.elapsed().as_secs_f64()))
}

/// [`time_sequential`] for async calls.
pub async fn time_sequential_async(
    calls: u64,
    mut call: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    for _ in 0..warm_up(calls) {
        call().await?;
    }
    let mut h = histogram();
    let started = std::time::Instant::now();
    for _ in 0..calls {
        let t = std::time::Instant::now();
        call().await?;
        h.saturating_record(t.elapsed().as_micros() as u64);
    }
    Ok((h, started.elapsed().as_secs_f64()))
}

/// Runs `sample` `samples` times, each returning how long the part it times took (set-up and
/// tear-down around it are its own, untimed): the histogram and the seconds the timed parts
/// took in all.
pub async fn time_samples(
    samples: u64,
    mut sample: impl AsyncFnMut() -> anyhow::Result<std::time::Duration>,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    let mut h = histogram();
    let mut seconds = 0.0;
    for _ in 0..samples {
        let took = sample().await?;
        seconds += took.as_secs_f64();
        h.saturating_record(took.as_micros() as u64);
    }
    Ok((h, seconds))
}

/// Times `calls` pairs of sequential calls, `a` then `b`, after [`warm_up`] unmeasured pairs: two scenarios whose figures are compared with each other see the same
/// moments of a noisy machine, call for call, instead of one stretch each. Returns each one's
/// histogram and the seconds its measured calls took.
pub async fn time_alternating_async(
    calls: u64,
    mut a: impl AsyncFnMut() -> anyhow::Result<()>,
    mut b: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<[(Histogram<u64>, f64); 2]> {
    for _ in 0..warm_up(calls) {
        a().await?;
        b().await?;
    }
    let (mut ha, mut hb) = (histogram(), histogram());
    let (mut sa, mut sb) = (0.0, 0.0);
    for _ in 0..calls {
        let t = std::time::Instant::now();
        a().await?;
        let between = std::time::Instant::now();
        b().await?;
        let end = std::time::Instant::now();
        ha.saturating_record((between - t).as_micros() as u64);
        hb.saturating_record((end - between).as_micros() as u64);
        sa += (between - t).as_secs_f64();
        sb += (end - between).as_secs_f64();
    }
    Ok([(ha, sa), (hb, sb)])
}

/// Keeps `concurrency` calls in flight for `seconds`, each task starting its next call as its
/// last one ends. Returns the histogram of every call and the seconds the run took.
pub async fn time_in_flight<F, Fut>(
    concurrency: usize,
    seconds: f64,
    call: F,
) -> anyhow::Result<(Histogram<u64>, f64)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                while std::time::Instant::now() < until {
                    let t = std::time::Instant::now();
                    call().await?;
                    h.saturating_record(t.elapsed().as_micros() as u64);
                }
                Ok::<_, anyhow::Error>(h)
            })
        })
        .collect();
    let mut h = histogram();
    for task in tasks {
        h.add(task.await??)?;
    }
    Ok((h, started.elapsed().as_secs_f64()))
}

/// The result of one scenario on one stack.
#[derive(Debug, Clone)]
pub struct Row {
    /// `reaper`, `quinn`, `http1`, `udp`.
    pub stack: &'static str,
    /// What was measured, e.g. `unary_2k`.
    pub scenario: String,
    /// Calls in flight.
    pub concurrency: usize,
    /// Connections the calls were spread over.
    pub connections: usize,
    /// Thread placement.
    pub pin: &'static str,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest call.
    pub max_us: u64,
    /// Throughput.
    pub calls_per_s: f64,
    /// Calls measured.
    pub calls: u64,
    /// Seconds the measured calls took (what `calls_per_s` divides by).
    pub seconds: f64,
    /// Every call's latency, microseconds.
    pub histogram: Histogram<u64>,
}

impl Row {
    /// A row from a histogram of microseconds and the wall time the calls took.
    pub fn new(
        stack: &'static str,
        scenario: &str,
        concurrency: usize,
        pin: &'static str,
        h: &Histogram<u64>,
        seconds: f64,
    ) -> Row {
        Row {
            stack,
            scenario: scenario.to_owned(),
            concurrency,
            connections: 1,
            pin,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            calls_per_s: if seconds > 0.0 {
                h.len() as f64 / seconds
            } else {
                0.0
            },
            calls: h.len(),
            seconds,
            histogram: h.clone(),
        }
    }

    /// The same row, for calls spread over `connections` connections.
    pub fn over_connections(mut self, connections: usize) -> Row {
        self.connections = connections;
        self
    }

    /// The row as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "stack": self.stack,
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "pin": self.pin,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "calls_per_s": self.calls_per_s.round(),
            "calls": self.calls,
        })
    }

    /// The row as a line of the terminal table.
    pub fn line(&self) -> String {
        format!(
            "{:<7} {:<24} {:>4} {:>5} {:<5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10.0}",
            self.stack,
            self.scenario,
            self.concurrency,
            self.connections,
            self.pin,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.calls_per_s
        )
    }
}

/// Rows of several rounds of the same run made one per stack, scenario, concurrency,
/// connections and placement (in the order first measured): every call of every round in one
/// histogram, calls/s over the rounds' measured time together.
pub fn merge_rounds(rows: Vec<Row>) -> anyhow::Result<Vec<Row>> {
    let mut merged: Vec<Row> = Vec::new();
    for row in rows {
        let same = merged.iter_mut().find(|m| {
            m.stack == row.stack
                && m.scenario == row.scenario
                && m.concurrency == row.concurrency
                && m.connections == row.connections
                && m.pin == row.pin
        });
        match same {
            None => merged.push(row),
            Some(m) => {
                let mut h = m.histogram.clone();
                h.add(&row.histogram)?;
                let seconds = m.seconds + row.seconds;
                let connections = m.connections;
                *m = Row::new(m.stack, &m.scenario, m.concurrency, m.pin, &h, seconds)
                    .over_connections(connections);
            }
        }
    }
    Ok(merged)
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<7} {:<24} {:>4} {:>5} {:<5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10}",
        "stack",
        "scenario",
        "in",
        "conns",
        "pin",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "calls/s"
    )
}

/// Reaper's figures next to each peer's, for rows of the same scenario, concurrency and pin.
pub fn ratios(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for ours in rows
        .iter()
        .filter(|r| r.stack == "reaper" && r.connections == 1)
    {
        for peer in rows.iter().filter(|r| {
            r.stack != "reaper"
                && r.scenario == ours.scenario
                && r.concurrency == ours.concurrency
                && r.connections == ours.connections
                && r.pin == ours.pin
        }) {
            out.push(format!(
                "{} in flight {} pin {}: reaper p50 {:.2}x {} ({} vs {} µs), calls/s {:.2}x",
                ours.scenario,
                ours.concurrency,
                ours.pin,
                ours.p50_us as f64 / peer.p50_us.max(1) as f64,
                peer.stack,
                ours.p50_us,
                peer.p50_us,
                ours.calls_per_s / peer.calls_per_s.max(1.0),
            ));
        }
    }
    out
}

/// File name of a row's HDR percentile log.
fn hdr_log_name(row: &Row) -> String {
    format!(
        "{}-{}-c{}-n{}-{}.hgrm",
        row.stack, row.scenario, row.concurrency, row.connections, row.pin
    )
}

/// Writes every row's distribution as an HDR percentile log (the `.hgrm` text that
/// HdrHistogram's `outputPercentileDistribution` prints and its online plotter reads), values
/// in microseconds.
pub fn write_hdr_logs(dir: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for row in rows {
        let path = dir.join(hdr_log_name(row));
        std::fs::write(&path, percentile_distribution(&row.histogram))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The percentile distribution of `h` in HdrHistogram's text format.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for step in h.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            step.value_iterated_to() as f64,
            quantile,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean(),
        h.stdev()
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_merge_into_one_row_per_scenario_with_every_call() {
        let mut fast = histogram();
        let mut slow = histogram();
        for _ in 0..100 {
            fast.record(10).unwrap();
            slow.record(1000).unwrap();
        }
        let rows = vec![
            Row::new("reaper", "health", 1, "same", &fast, 0.001),
            Row::new("tonic", "unary_2k", 1, "same", &fast, 0.001),
            Row::new("reaper", "health", 1, "same", &slow, 0.1),
            Row::new("reaper", "health", 1, "split", &slow, 0.1),
        ];
        let merged = merge_rounds(rows).unwrap();
        assert_eq!(merged.len(), 3, "{merged:?}");
        let health = &merged[0];
        assert_eq!(
            (health.stack, health.pin, health.calls),
            ("reaper", "same", 200)
        );
        assert_eq!(health.p50_us, 10);
        assert!(health.p99_us >= 999, "{}", health.p99_us);
        assert!((health.calls_per_s - 200.0 / 0.101).abs() < 1.0);
        assert_eq!((merged[1].stack, merged[2].pin), ("tonic", "split"));
    }

    #[test]
    fn the_percentile_log_covers_every_call_up_to_the_maximum() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let log = percentile_distribution(&h);
        let rows: Vec<Vec<f64>> = log
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last[2], 1000.0, "the last line counts every call");
        assert!((last[0] - 10_000.0).abs() <= 10.0, "{last:?}");
        let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
        assert!((median[0] - 5_000.0).abs() <= 5.0, "{median:?}");
        assert!(rows
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
        assert!(log.contains("Total count    =         1000"));
    }
}
