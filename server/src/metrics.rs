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
    ///
    /// One pass over the recorded values instead of one `value_at_quantile` per percentile:
    /// each of those walks every bucket of the histogram (tens of thousands at this range and
    /// precision), which would make `Health.check` the slowest call the daemon serves.
    pub fn latency(&self) -> LatencySummary {
        let h = &self.latency_us;
        let total = h.len();
        let quantiles = [0.50, 0.90, 0.99, 0.999];
        let mut values = [0u64; 4];
        let mut next = 0;
        let mut seen = 0u64;
        for bucket in h.iter_recorded() {
            seen += bucket.count_since_last_iteration();
            while next < quantiles.len() && seen as f64 >= quantiles[next] * total as f64 {
                values[next] = h.highest_equivalent(bucket.value_iterated_to());
                next += 1;
            }
            if next == quantiles.len() {
                break;
            }
        }
        LatencySummary {
            count: total,
            p50_us: values[0],
            p90_us: values[1],
            p99_us: values[2],
            p999_us: values[3],
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
        assert!((49..=52).contains(&latency.p50_us), "{latency:?}");
        assert!((99..=100).contains(&latency.p99_us), "{latency:?}");
        assert_eq!(latency.max_us, 100);
        // Agrees with the library's own percentile lookup.
        for (q, v) in [
            (0.5, latency.p50_us),
            (0.9, latency.p90_us),
            (0.99, latency.p99_us),
        ] {
            assert_eq!(v, m.latency_us.value_at_quantile(q), "quantile {q}");
        }
    }
}
