//! What the pool knows about each provider: whether it can take work (from probes and from
//! the calls themselves), why not, and how it has been doing (latency, errors, cancels,
//! hedges).

use std::time::{Duration, Instant};

use reaper_core::schema::{AuthStatus, ProviderStatus};

use crate::error::ProviderError;

/// First wait before a provider found unavailable is tried again; it doubles on each
/// further failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before an unavailable provider is tried again.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failures in a row that were not refusals (5xx, malformed or dropped streams, timeouts)
/// after which a provider is set aside like an unreachable one.
const ERRORS_BEFORE_ASIDE: u32 = 3;
/// Completion latencies kept for the percentiles (the most recent ones: a provider's speed
/// changes with its load and the model it has loaded).
const WINDOW: usize = 128;
/// Weight of the newest sample in the latency moving average.
const EWMA_ALPHA: f64 = 0.2;

/// Whether a provider can take work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Availability {
    /// Not probed yet; asked anyway.
    Checking,
    /// Answering.
    Available,
    /// Not reachable, failing, or without its model; tried again after `until`.
    Unavailable { until: Instant },
    /// Asked to slow down; tried again after `until`.
    RateLimited { until: Instant },
    /// Credentials missing or refused; asked again only after a probe succeeds.
    NeedsAuth,
    /// `enabled = false`.
    Disabled,
}

/// A provider's condition and record.
#[derive(Debug)]
pub(crate) struct ProviderState {
    pub(crate) availability: Availability,
    auth: AuthStatus,
    /// Why it is not plainly available, or what the user should know although it is.
    message: Option<String>,
    /// What the last successful probe said (kept as the message while available).
    note: Option<String>,
    /// Why it last failed, while it has not worked since.
    last_error: Option<ProviderError>,
    backoff: Duration,
    errors_in_a_row: u32,
    authorised_once: bool,
    pub(crate) stats: Stats,
}

impl ProviderState {
    /// A provider that needs `auth` (or not), enabled or not.
    pub(crate) fn new(enabled: bool, needs_key: bool) -> ProviderState {
        ProviderState {
            availability: if enabled {
                Availability::Checking
            } else {
                Availability::Disabled
            },
            auth: if needs_key {
                AuthStatus::Authenticated
            } else {
                AuthStatus::NotRequired
            },
            message: (!enabled).then(|| "enabled = false in reaper.toml".to_owned()),
            note: None,
            last_error: None,
            backoff: FIRST_BACKOFF,
            errors_in_a_row: 0,
            authorised_once: false,
            stats: Stats::default(),
        }
    }

    /// Whether a completion may be sent to it at `now`.
    pub(crate) fn eligible(&self, now: Instant) -> bool {
        match self.availability {
            Availability::Checking | Availability::Available => true,
            Availability::Unavailable { until } | Availability::RateLimited { until } => {
                now >= until
            }
            Availability::NeedsAuth | Availability::Disabled => false,
        }
    }

    /// A successful probe, with what it noted. A rate limit stands until its `Retry-After`
    /// even so: the probe's endpoint (a models listing) is not what the server is limiting.
    pub(crate) fn probed(&mut self, note: Option<String>) {
        self.note = note;
        if let Availability::RateLimited { until } = self.availability {
            if Instant::now() < until {
                return;
            }
        }
        self.succeeded();
    }

    /// A call or probe that worked.
    pub(crate) fn succeeded(&mut self) {
        if self.availability == Availability::Disabled {
            return;
        }
        self.availability = Availability::Available;
        self.message = self.note.clone();
        self.last_error = None;
        self.backoff = FIRST_BACKOFF;
        self.errors_in_a_row = 0;
        if self.auth != AuthStatus::NotRequired {
            self.auth = AuthStatus::Authenticated;
            self.authorised_once = true;
        }
    }

    /// A call or probe that failed with `error` at `now`.
    pub(crate) fn failed(&mut self, error: &ProviderError, now: Instant) {
        if self.availability == Availability::Disabled {
            return;
        }
        self.message = Some(error.to_string());
        self.last_error = Some(error.clone());
        match error {
            ProviderError::Unauthorized { .. }
            | ProviderError::MissingKey { .. }
            | ProviderError::NotSignedIn { .. } => {
                self.availability = Availability::NeedsAuth;
                // A key that worked and now does not has expired (or was revoked).
                self.auth = if self.authorised_once
                    && matches!(error, ProviderError::Unauthorized { .. })
                {
                    AuthStatus::Expired
                } else {
                    AuthStatus::NeedsAuth
                };
            }
            ProviderError::RateLimited { retry_after, .. } => {
                self.availability = Availability::RateLimited {
                    until: now + *retry_after,
                };
            }
            ProviderError::Unreachable { .. } | ProviderError::ModelNotFound { .. } => {
                self.set_aside(now);
            }
            // A timeout counts too: a server that accepts connections and never answers must
            // not stay first in line, costing every call its whole budget.
            ProviderError::Http { .. }
            | ProviderError::Stream { .. }
            | ProviderError::Malformed { .. }
            | ProviderError::Dropped { .. }
            | ProviderError::TimedOut { .. }
            | ProviderError::Panicked { .. } => {
                self.errors_in_a_row += 1;
                if self.errors_in_a_row >= ERRORS_BEFORE_ASIDE {
                    self.set_aside(now);
                }
            }
            ProviderError::Unsupported { .. } => {}
        }
    }

    fn set_aside(&mut self, now: Instant) {
        self.availability = Availability::Unavailable {
            until: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The status `Provider.list` shows at `now`.
    pub(crate) fn status(&self, now: Instant) -> ProviderStatus {
        match self.availability {
            Availability::Checking => ProviderStatus::Checking,
            Availability::Available => ProviderStatus::Available,
            // Its wait is over, but nothing has shown it works again yet.
            Availability::Unavailable { .. } | Availability::NeedsAuth => {
                ProviderStatus::Unavailable
            }
            Availability::RateLimited { until } if until > now => ProviderStatus::RateLimited,
            Availability::RateLimited { .. } => ProviderStatus::Checking,
            Availability::Disabled => ProviderStatus::Disabled,
        }
    }

    pub(crate) fn auth(&self) -> AuthStatus {
        self.auth
    }

    pub(crate) fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Why it last failed, if it has not worked since.
    pub(crate) fn last_error(&self) -> Option<&ProviderError> {
        self.last_error.as_ref()
    }
}

/// A provider's record since the daemon started.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Completions it answered.
    pub(crate) answered: u64,
    /// Completions it failed.
    pub(crate) errors: u64,
    /// Completions abandoned while it worked on them (the call was cancelled, superseded or
    /// out of time, or another provider answered first).
    pub(crate) cancelled: u64,
    /// Times it had not answered by its p95 and the next provider was asked too.
    pub(crate) hedged: u64,
    /// Chats answered (whole answers, empty ones included).
    pub(crate) chats: u64,
    /// Times a chat streaming from it gave way to a completion.
    pub(crate) chat_yields: u64,
    /// Latencies of recent answers, in microseconds (a ring).
    window: Vec<u32>,
    next: usize,
    ewma_ms: Option<f64>,
}

impl Stats {
    /// An answer that took `took`.
    pub(crate) fn answered(&mut self, took: Duration) {
        self.answered += 1;
        self.sample(took);
    }

    fn sample(&mut self, took: Duration) {
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        if self.window.len() < WINDOW {
            self.window.push(us);
        } else {
            self.window[self.next] = us;
        }
        self.next = (self.next + 1) % WINDOW;
        let ms = took.as_secs_f64() * 1000.0;
        self.ewma_ms = Some(self.ewma_ms.map_or(ms, |avg| avg + EWMA_ALPHA * (ms - avg)));
    }

    /// A completion that ran out of time after `took`: a latency sample (so the provider
    /// ranks as slow as it is), not an answer.
    pub(crate) fn timed_out(&mut self, took: Duration) {
        self.sample(took);
    }

    /// The moving average of answer latency, in milliseconds.
    pub(crate) fn latency_ms(&self) -> Option<f64> {
        self.ewma_ms
    }

    /// The `q` quantile (0..=1) of recent answer latencies, if there are at least `min`.
    pub(crate) fn quantile(&self, q: f64, min: usize) -> Option<Duration> {
        self.quantiles([q], min).map(|[d]| d)
    }

    /// Several quantiles of recent answer latencies from one sorted copy of the window, if
    /// there are at least `min`.
    pub(crate) fn quantiles<const N: usize>(
        &self,
        qs: [f64; N],
        min: usize,
    ) -> Option<[Duration; N]> {
        if self.window.len() < min.max(1) {
            return None;
        }
        let mut sorted = self.window.clone();
        sorted.sort_unstable();
        let last = (sorted.len() - 1) as f64;
        Some(qs.map(|q| {
            Duration::from_micros(u64::from(
                sorted[(last * q.clamp(0.0, 1.0)).round() as usize],
            ))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> ProviderError {
        ProviderError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "Connection refused".into(),
            source: None,
        }
    }

    #[test]
    fn unreachable_providers_back_off_doubling_and_recover_on_success() {
        let now = Instant::now();
        let mut state = ProviderState::new(true, false);
        assert!(state.eligible(now));
        state.failed(&unreachable(), now);
        assert!(!state.eligible(now));
        assert!(state.eligible(now + FIRST_BACKOFF));
        state.failed(&unreachable(), now);
        assert!(!state.eligible(now + FIRST_BACKOFF));
        assert!(state.eligible(now + FIRST_BACKOFF * 2));
        assert!(state.message().unwrap().contains("Connection refused"));
        assert_eq!(state.status(now), ProviderStatus::Unavailable);
        state.succeeded();
        assert_eq!(state.status(now), ProviderStatus::Available);
        assert_eq!(state.message(), None);
    }

    #[test]
    fn a_rate_limit_outlasts_a_successful_probe() {
        let now = Instant::now();
        let limited = ProviderError::RateLimited {
            url: "u".into(),
            status: 429,
            retry_after: Duration::from_secs(7),
            message: "slow down".into(),
        };
        let mut state = ProviderState::new(true, false);
        state.failed(&limited, now);
        state.probed(None);
        assert_eq!(state.status(Instant::now()), ProviderStatus::RateLimited);
        assert!(state.eligible(now + Duration::from_secs(7)));
    }

    #[test]
    fn refused_keys_need_auth_and_a_key_that_worked_has_expired() {
        let now = Instant::now();
        let refused = ProviderError::Unauthorized {
            url: "u".into(),
            status: 401,
            message: String::new(),
            hint: "set KEY".into(),
        };
        let mut state = ProviderState::new(true, true);
        state.failed(&refused, now);
        assert_eq!(state.auth(), AuthStatus::NeedsAuth);
        assert!(!state.eligible(now + MAX_BACKOFF * 10));
        state.probed(None);
        state.failed(&refused, now);
        assert_eq!(state.auth(), AuthStatus::Expired);
    }

    #[test]
    fn a_few_server_errors_in_a_row_set_a_provider_aside() {
        let now = Instant::now();
        let error = ProviderError::Http {
            url: "u".into(),
            status: 500,
            message: "boom".into(),
        };
        let mut state = ProviderState::new(true, false);
        for _ in 1..ERRORS_BEFORE_ASIDE {
            state.failed(&error, now);
            assert!(state.eligible(now));
        }
        state.failed(&error, now);
        assert!(!state.eligible(now));
    }

    #[test]
    fn quantiles_come_from_the_recent_window() {
        let mut stats = Stats::default();
        assert_eq!(stats.quantile(0.95, 1), None);
        for ms in 1..=100u64 {
            stats.answered(Duration::from_millis(ms));
        }
        assert_eq!(stats.quantile(0.5, 20), Some(Duration::from_millis(51)));
        assert_eq!(stats.quantile(0.95, 20), Some(Duration::from_millis(95)));
        for _ in 0..WINDOW {
            stats.answered(Duration::from_millis(7));
        }
        assert_eq!(stats.quantile(0.95, 20), Some(Duration::from_millis(7)));
        assert_eq!(stats.answered, 100 + WINDOW as u64);
    }
}
