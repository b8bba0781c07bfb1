//! `reaper.Health/check`: the daemon's status, counters and latency, answered on the loop
//! from memory.

use std::time::Instant;

use reaper_core::schema::{
    BudgetStats, CacheStats, FeedbackStats, HealthResponse, ProviderStats, ServingStatus,
};

use super::completion::cache::CacheCounters;
use crate::metrics::Metrics;

/// What the other rooms report for a health answer.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Call counters and latencies.
    pub metrics: &'a Metrics,
    /// Open connections.
    pub connections: usize,
    /// Whether shutdown has begun.
    pub draining: bool,
    /// Completion cache counters and size.
    pub cache: (CacheCounters, usize),
    /// Each provider's record.
    pub providers: Vec<ProviderStats>,
    /// What editors reported doing with completions.
    pub feedback: FeedbackStats,
    /// The budgets and their use now.
    pub budgets: BudgetStats,
}

/// The Health service.
#[derive(Debug)]
pub struct HealthService {
    started: Instant,
}

impl HealthService {
    /// For a daemon that started at `started`.
    pub fn new(started: Instant) -> HealthService {
        HealthService { started }
    }

    /// The answer at `now`.
    pub fn check(&self, s: Snapshot<'_>, now: Instant) -> HealthResponse {
        let (cache, entries) = s.cache;
        HealthResponse {
            status: if s.draining {
                ServingStatus::Draining
            } else {
                ServingStatus::Serving
            },
            version: reaper_core::VERSION.to_owned(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            connections: s.connections as u32,
            requests: s.metrics.requests(),
            errors: s.metrics.errors(),
            error_rate: s.metrics.error_rate(),
            calls: s.metrics.per_method(),
            latency: s.metrics.latency(),
            cache: CacheStats {
                entries: entries as u64,
                hits: cache.hits,
                misses: cache.misses,
                evictions: cache.evictions,
                typed_through: cache.typed_through,
            },
            providers: s.providers,
            feedback: s.feedback,
            budgets: s.budgets,
        }
    }
}
