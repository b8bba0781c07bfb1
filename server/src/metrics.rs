//! Call counts and latency, as `Health.check` reports them.
//!
//! Owned by the event loop thread, so recording a call is a few counter increments and one
//! histogram record: no atomics, no locks.

use std::time::Duration;

use hdrhistogram::Histogram;
use reaper_core::schema::{LatencySummary, MethodCalls};
use reaper_core::Method;

/// Counters per method, plus calls that named no known method.
#[derive(Debug)]
pub struct Metrics {
    served: [u64; Method::ALL.len()],
    failed: [u64; Method::ALL.len()],
    unrouted_failed: u64,
    latency_us: Histogram<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            served: [0; Method::ALL.len()],
            failed: [0; Method::ALL.len()],
            unrouted_failed: 0,
            // 1 µs to 1 hour, 3 significant digits: 0.1% resolution at every scale.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("bounds are valid constants"),
        }
    }
}

impl Metrics {
    /// Records one finished call.
    pub fn record(&mut self, method: Option<Method>, ok: bool, latency: Duration) {
        match (method, ok) {
            (Some(m), true) => self.served[m.index()] += 1,
            (Some(m), false) => self.failed[m.index()] += 1,
            (None, _) => self.unrouted_failed += 1,
        }
        let us = latency.as_micros().clamp(1, 3_600_000_000) as u64;
        self.latency_us.saturating_record(us);
    }

    /// All calls recorded.
    pub fn requests(&self) -> u64 {
        self.served.iter().sum::<u64>() + self.errors()
    }

    /// Calls that did not end OK.
    pub fn errors(&self) -> u64 {
        self.failed.iter().sum::<u64>() + self.unrouted_failed
    }

    /// `errors / requests`.
    pub fn error_rate(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            n => self.errors() as f64 / n as f64,
        }
    }

    /// Per-method counts, in [`Method::ALL`] order.
    pub fn per_method(&self) -> Vec<MethodCalls> {
        Method::ALL
            .iter()
            .map(|m| MethodCalls {
                method: m.path().to_owned(),
                served: self.served[m.index()],
                failed: self.failed[m.index()],
            })
            .collect()
    }

    /// Latency percentiles of every call recorded.
    pub fn latency(&self) -> LatencySummary {
        let h = &self.latency_us;
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let mut m = Metrics::default();
        for i in 1..=100 {
            m.record(Some(Method::HealthCheck), true, Duration::from_micros(i));
        }
        m.record(Some(Method::ChatSend), false, Duration::from_micros(5));
        m.record(None, false, Duration::from_micros(5));
        assert_eq!(m.requests(), 102);
        assert_eq!(m.errors(), 2);
        let health = &m.per_method()[Method::HealthCheck.index()];
        assert_eq!((health.served, health.failed), (100, 0));
        let latency = m.latency();
        assert_eq!(latency.count, 102);
        assert!((49..=51).contains(&latency.p50_us), "{latency:?}");
        assert_eq!(latency.max_us, 100);
    }
}
