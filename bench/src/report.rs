//! One row per measured scenario: the terminal table, JSON lines, and ratios between stacks.

use hdrhistogram::Histogram;
use serde_json::json;

/// Microsecond histogram bounds: 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Times `calls` sequential calls, after a tenth as many unmeasured warm-up calls. Returns the
/// histogram and the seconds the measured calls took.
pub fn time_sequential(
    calls: u64,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    for _ in 0..calls / 10 {
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
    for _ in 0..calls / 10 {
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
        }
    }

    /// The row as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "stack": self.stack,
            "scenario": self.scenario,
            "concurrency": self.concurrency,
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
            "{:<7} {:<28} {:>4} {:<5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10.0}",
            self.stack,
            self.scenario,
            self.concurrency,
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

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<7} {:<28} {:>4} {:<5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10}",
        "stack",
        "scenario",
        "in",
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
    for ours in rows.iter().filter(|r| r.stack == "reaper") {
        for peer in rows.iter().filter(|r| {
            r.stack != "reaper"
                && r.scenario == ours.scenario
                && r.concurrency == ours.concurrency
                && r.pin == ours.pin
        }) {
            out.push(format!(
                "{} {} in flight {} pin {}: reaper p50 {:.2}x {} ({} vs {} µs), calls/s {:.2}x",
                ours.scenario,
                "",
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
