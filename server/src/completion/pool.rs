//! The provider pool: which provider answers a completion.
//!
//! Providers are tried by configured priority, then by measured latency (a moving average);
//! one that is unavailable or rate-limited is skipped until its back-off passes; one that fails
//! or overruns its budget is passed over for the next, and the embedded `offline` provider,
//! which needs nothing and is always there, answers last. The response names who answered.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_core::schema::{AuthStatus, CompletionRequest, ProviderInfo, ProviderStatus};

use crate::offline::{self, Workspaces};

/// What a provider proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Text to insert (empty: nothing worth proposing).
    pub text: String,
    /// How likely it is right, in `[0, 1]`.
    pub confidence: f32,
}

/// Why a provider did not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// Not reachable now (connection refused, server down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It asked us to slow down.
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
    /// It answered with an error.
    #[error("failed: {0}")]
    Failed(String),
    /// The provider stopped: the call was cancelled, or the time it was given ran out.
    #[error("cancelled")]
    Cancelled,
}

/// A source of completions. Implementations must return by `deadline` (remote ones bound their
/// HTTP requests by it) and should give up early when `cancel` is set.
pub trait CompletionProvider: Send + Sync {
    /// Its name in `reaper.toml` and in responses.
    fn name(&self) -> &str;
    /// Proposes a completion.
    fn complete(
        &self,
        request: &CompletionRequest,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<Proposal, ProviderError>;
}

/// The embedded provider: the offline model over the request's workspace and the configured
/// roots.
#[derive(Debug)]
pub struct OfflineProvider {
    workspaces: Workspaces,
    roots: Vec<Arc<offline::Workspace>>,
}

impl OfflineProvider {
    /// The offline provider; configured roots start indexing now.
    pub fn new(workspaces: Workspaces, roots: &[String]) -> OfflineProvider {
        let roots = roots
            .iter()
            .filter_map(|r| workspaces.open(Path::new(r).to_path_buf()))
            .collect();
        OfflineProvider { workspaces, roots }
    }
}

impl CompletionProvider for OfflineProvider {
    fn name(&self) -> &str {
        "offline"
    }

    fn complete(
        &self,
        request: &CompletionRequest,
        _deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<Proposal, ProviderError> {
        let own = request
            .file_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .and_then(|p| self.workspaces.for_file(Path::new(p)));
        let mut corpora: Vec<_> = own
            .iter()
            .chain(&self.roots)
            .filter_map(|w| w.corpus())
            .collect();
        corpora.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let mut best: Option<offline::Prediction> = None;
        let candidates = if corpora.is_empty() {
            vec![None]
        } else {
            corpora.iter().map(|c| Some(&**c)).collect()
        };
        for corpus in candidates {
            if cancel.load(Ordering::Relaxed) {
                return Err(ProviderError::Cancelled);
            }
            let own = request.file_path.as_deref().map(Path::new);
            if let Some(p) = offline::predict(corpus, &request.prefix, &request.suffix, own) {
                if best.as_ref().is_none_or(|b| p.confidence > b.confidence) {
                    best = Some(p);
                }
            }
        }
        // The editor's symbols, when the text alone has nothing: they name identifiers the
        // workspace may not contain yet (a dependency's, a generated one's).
        if best.is_none() {
            let symbols = request
                .context
                .as_ref()
                .and_then(|c| c.lsp_symbols.as_deref());
            best = symbols.and_then(|s| offline::symbols::complete_identifier(&request.prefix, s));
        }
        Ok(best.map_or(
            Proposal {
                text: String::new(),
                confidence: 0.0,
            },
            |p| Proposal {
                text: p.text,
                confidence: p.confidence,
            },
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Available,
    Unavailable { until: Instant },
    RateLimited { until: Instant },
}

struct Entry {
    provider: Arc<dyn CompletionProvider>,
    priority: u32,
    /// Longest a call may take before the next provider is tried.
    budget: Duration,
    latency_ms: Option<f64>,
    health: Health,
}

/// Back-off after a provider is found unavailable.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(10);
/// Weight of the newest sample in the latency moving average.
const EWMA_ALPHA: f64 = 0.2;

/// Picks and calls providers. Shared by the worker threads.
pub struct ProviderPool {
    entries: Mutex<Vec<Entry>>,
    offline: Arc<dyn CompletionProvider>,
    offline_latency_ms: Mutex<Option<f64>>,
    injected_delay: Duration,
}

/// Environment variable that delays every completion by this many milliseconds before any
/// provider runs: a fault-injection aid to see how an editor (or a test) copes with a slow
/// model. The daemon warns at start when it is set.
pub const DELAY_ENV: &str = "REAPER_DEBUG_PROVIDER_DELAY_MS";

impl std::fmt::Debug for ProviderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderPool").finish_non_exhaustive()
    }
}

/// The answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The proposal.
    pub proposal: Proposal,
    /// The provider's name.
    pub provider: String,
}

impl ProviderPool {
    /// A pool with only the fallback provider.
    pub fn new(offline: Arc<dyn CompletionProvider>) -> ProviderPool {
        ProviderPool {
            entries: Mutex::new(Vec::new()),
            offline,
            offline_latency_ms: Mutex::new(None),
            injected_delay: Duration::ZERO,
        }
    }

    /// Delays every completion by `delay` (see [`DELAY_ENV`]).
    pub fn with_injected_delay(mut self, delay: Duration) -> ProviderPool {
        self.injected_delay = delay;
        self
    }

    /// Sleeps the injected delay, in slices, giving up when `cancel` is set or the deadline
    /// comes first (a slow model that overruns).
    fn injected_wait(&self, deadline: Instant, cancel: &AtomicBool) -> Result<(), ProviderError> {
        let until = Instant::now() + self.injected_delay;
        while Instant::now() < until {
            if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return Err(ProviderError::Cancelled);
            }
            let left = until
                .min(deadline)
                .saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
        Ok(())
    }

    /// Adds a provider tried before the fallback; lower `priority` first.
    pub fn add(&self, provider: Arc<dyn CompletionProvider>, priority: u32, budget: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push(Entry {
            provider,
            priority,
            budget,
            latency_ms: None,
            health: Health::Available,
        });
    }

    /// Completes `request`, trying providers in order and falling back to the offline one.
    pub fn complete(
        &self,
        request: &CompletionRequest,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<Answer, ProviderError> {
        if !self.injected_delay.is_zero() {
            self.injected_wait(deadline, cancel)?;
        }
        for (name, provider, budget) in self.candidates(Instant::now()) {
            if cancel.load(Ordering::Relaxed) {
                return Err(ProviderError::Cancelled);
            }
            let started = Instant::now();
            let limit = deadline.min(started + budget);
            let result = provider.complete(request, limit, cancel);
            let finished = Instant::now();
            match result {
                Ok(proposal) if finished <= limit => {
                    self.observe(&name, finished - started, None);
                    return Ok(Answer {
                        proposal,
                        provider: name,
                    });
                }
                Ok(_) => {
                    tracing::debug!(provider = name, "answered past its budget; falling back");
                    self.observe(&name, finished - started, None);
                }
                // Only the caller's flag cancels the call; a provider that gave up at its
                // budget is passed over like any other that did not answer in time.
                Err(ProviderError::Cancelled) if cancel.load(Ordering::Relaxed) => {
                    return Err(ProviderError::Cancelled)
                }
                Err(error) => {
                    tracing::debug!(provider = name, %error, "provider failed; falling back");
                    self.observe(&name, finished - started, Some(error));
                }
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(ProviderError::Cancelled);
        }
        let started = Instant::now();
        let proposal = self.offline.complete(request, deadline, cancel)?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut latency = self
            .offline_latency_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *latency = Some(latency.map_or(ms, |avg| avg + EWMA_ALPHA * (ms - avg)));
        Ok(Answer {
            proposal,
            provider: self.offline.name().to_owned(),
        })
    }

    /// Providers to try now, best first: available ones by priority, then measured latency.
    fn candidates(&self, now: Instant) -> Vec<(String, Arc<dyn CompletionProvider>, Duration)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries.iter_mut() {
            if let Health::Unavailable { until } | Health::RateLimited { until } = entry.health {
                if now >= until {
                    entry.health = Health::Available;
                }
            }
        }
        let mut ready: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.health == Health::Available)
            .collect();
        ready.sort_by(|a, b| {
            a.priority.cmp(&b.priority).then_with(|| {
                let (x, y) = (a.latency_ms.unwrap_or(0.0), b.latency_ms.unwrap_or(0.0));
                x.total_cmp(&y)
            })
        });
        ready
            .into_iter()
            .map(|e| (e.provider.name().to_owned(), e.provider.clone(), e.budget))
            .collect()
    }

    fn observe(&self, name: &str, took: Duration, error: Option<ProviderError>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.iter_mut().find(|e| e.provider.name() == name) else {
            return;
        };
        let ms = took.as_secs_f64() * 1000.0;
        entry.latency_ms = Some(
            entry
                .latency_ms
                .map_or(ms, |avg| avg + EWMA_ALPHA * (ms - avg)),
        );
        let now = Instant::now();
        entry.health = match error {
            Some(ProviderError::RateLimited(wait)) => Health::RateLimited { until: now + wait },
            Some(ProviderError::Unavailable(_)) => Health::Unavailable {
                until: now + UNAVAILABLE_BACKOFF,
            },
            _ => Health::Available,
        };
    }

    /// Every provider, for `Provider.list`.
    pub fn list(&self) -> Vec<ProviderInfo> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<ProviderInfo> = entries
            .iter()
            .map(|e| ProviderInfo {
                name: e.provider.name().to_owned(),
                status: match e.health {
                    Health::RateLimited { until } if until > now => ProviderStatus::RateLimited,
                    Health::Unavailable { until } if until > now => ProviderStatus::Unavailable,
                    _ => ProviderStatus::Available,
                },
                latency_ms: e.latency_ms.map_or(0, |ms| ms.round() as u32),
                auth_status: AuthStatus::Authenticated,
            })
            .collect();
        let offline_ms = *self
            .offline_latency_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        list.push(ProviderInfo {
            name: self.offline.name().to_owned(),
            status: ProviderStatus::Available,
            latency_ms: offline_ms.map_or(0, |ms| ms.ceil() as u32),
            auth_status: AuthStatus::Authenticated,
        });
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider whose behaviour the test sets.
    struct Scripted {
        name: &'static str,
        delay: Duration,
        result: Result<Proposal, ProviderError>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn new(
            name: &'static str,
            delay: Duration,
            result: Result<Proposal, ProviderError>,
        ) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                delay,
                result,
                calls: Mutex::new(0),
            })
        }
        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    impl CompletionProvider for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn complete(
            &self,
            _: &CompletionRequest,
            _: Instant,
            _: &AtomicBool,
        ) -> Result<Proposal, ProviderError> {
            *self.calls.lock().unwrap() += 1;
            std::thread::sleep(self.delay);
            self.result.clone()
        }
    }

    fn ok(text: &str) -> Result<Proposal, ProviderError> {
        Ok(Proposal {
            text: text.into(),
            confidence: 0.9,
        })
    }

    fn request() -> CompletionRequest {
        CompletionRequest {
            prefix: "fn ".into(),
            suffix: String::new(),
            language: "rust".into(),
            file_path: None,
            context: None,
        }
    }

    fn call(pool: &ProviderPool) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(5);
        pool.complete(&request(), deadline, &AtomicBool::new(false))
            .unwrap()
    }

    #[test]
    fn priority_decides_then_failures_fall_back_to_offline() {
        let offline = Scripted::new("offline", Duration::ZERO, ok("from offline"));
        let pool = ProviderPool::new(offline.clone());
        let first = Scripted::new(
            "first",
            Duration::ZERO,
            Err(ProviderError::Failed("500".into())),
        );
        let second = Scripted::new("second", Duration::ZERO, ok("from second"));
        pool.add(second.clone(), 2, Duration::from_secs(1));
        pool.add(first.clone(), 1, Duration::from_secs(1));
        let answer = call(&pool);
        assert_eq!(answer.provider, "second");
        assert_eq!((first.calls(), second.calls(), offline.calls()), (1, 1, 0));
    }

    #[test]
    fn a_provider_past_its_budget_is_passed_over() {
        let offline = Scripted::new("offline", Duration::ZERO, ok("from offline"));
        let pool = ProviderPool::new(offline);
        let slow = Scripted::new("slow", Duration::from_millis(60), ok("late"));
        pool.add(slow, 1, Duration::from_millis(20));
        let answer = call(&pool);
        assert_eq!(answer.provider, "offline");
        assert_eq!(answer.proposal.text, "from offline");
    }

    #[test]
    fn rate_limited_and_unavailable_providers_are_skipped_until_their_backoff_passes() {
        let offline = Scripted::new("offline", Duration::ZERO, ok("o"));
        let pool = ProviderPool::new(offline);
        let limited = Scripted::new(
            "limited",
            Duration::ZERO,
            Err(ProviderError::RateLimited(Duration::from_millis(80))),
        );
        let down = Scripted::new(
            "down",
            Duration::ZERO,
            Err(ProviderError::Unavailable("refused".into())),
        );
        pool.add(limited.clone(), 1, Duration::from_secs(1));
        pool.add(down.clone(), 2, Duration::from_secs(1));
        assert_eq!(call(&pool).provider, "offline");
        assert_eq!(call(&pool).provider, "offline");
        assert_eq!(
            (limited.calls(), down.calls()),
            (1, 1),
            "skipped while backing off"
        );
        let statuses: Vec<_> = pool
            .list()
            .into_iter()
            .map(|p| (p.name, p.status))
            .collect();
        assert!(statuses.contains(&("limited".into(), ProviderStatus::RateLimited)));
        assert!(statuses.contains(&("down".into(), ProviderStatus::Unavailable)));
        std::thread::sleep(Duration::from_millis(100));
        call(&pool);
        assert_eq!(
            limited.calls(),
            2,
            "tried again after the rate limit passed"
        );
    }

    #[test]
    fn equal_priorities_go_to_the_faster_provider() {
        let offline = Scripted::new("offline", Duration::ZERO, ok("o"));
        let pool = ProviderPool::new(offline);
        let slow = Scripted::new("slow", Duration::from_millis(30), ok("s"));
        let fast = Scripted::new("fast", Duration::from_millis(1), ok("f"));
        pool.add(slow.clone(), 1, Duration::from_secs(1));
        pool.add(fast.clone(), 1, Duration::from_secs(1));
        // Unmeasured, they go in the order added; once both are measured, the faster leads.
        assert_eq!(call(&pool).provider, "slow");
        pool.observe("fast", Duration::from_millis(1), None);
        assert_eq!(call(&pool).provider, "fast");
        assert_eq!(call(&pool).provider, "fast");
        assert_eq!(slow.calls(), 1);
    }
}
