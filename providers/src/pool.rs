//! The pool: which provider answers a completion.
//!
//! Providers are asked in order of configured priority, then of measured latency (a moving
//! average), skipping those that are unavailable, rate-limited or without credentials until
//! their wait is over. One that fails is passed over for the next at once. One that has not
//! answered by its own observed p95 is *hedged*: the next remote provider is asked too, the
//! first answer wins, and the loser's request is dropped, which closes its connection and stops
//! its generation. Each provider gets at most `timeout_ms`, and at most `max_in_flight` of
//! its requests run at once. The embedded `offline` provider, which needs nothing, is asked
//! first and answers alone when it is sure ([`OFFLINE_SURE`]: its confidence is the measured
//! probability of being exactly right); otherwise it is the last resort: asked when every
//! other provider failed or gave nothing, or when the call's deadline is [`OFFLINE_RESERVE`]
//! away, so the editor gets something in time. A remote model is shown the repository context
//! ([`crate::gather`]), gathered only once it is known a model will be asked.
//!
//! The whole completion is one future: dropping it (the call was cancelled, superseded by a
//! newer one for the same file, or ran out of time) drops every request in it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use reaper_core::config::{ProviderKind, ProvidersConfig};
use reaper_core::schema::{CompletionRequest, ProviderInfo, ProviderStats};
use tokio::sync::{watch, Semaphore};

use crate::error::ProviderError;
use crate::gather::Gatherer;
use crate::offline::OfflineProvider;
use crate::prompt::RepoContext;
use crate::provider::{CompletionInput, Proposal, Provider};
use crate::state::{Availability, ProviderState, MAX_BACKOFF};

/// What the offline model is given as context: nothing (it reads its index itself).
static NO_CONTEXT: RepoContext = RepoContext::EMPTY;

/// Time before the call's deadline at which the offline provider is asked if nothing has
/// answered: it answers in about a millisecond even on a large workspace (`docs/offline.md`),
/// and the answer still has to travel back.
pub const OFFLINE_RESERVE: Duration = Duration::from_millis(15);
/// Confidence at which the offline model's answer is taken without asking a model: at 0.8 and
/// above it is exactly the rest of the line 78–100% of the time on each of eight crates
/// (`docs/offline.md`), more than any model reaper has been measured with.
pub const OFFLINE_SURE: f32 = 0.8;
/// Answers a provider must have given before its p95 is trusted for hedging.
pub const HEDGE_MIN_SAMPLES: usize = 20;
/// Never hedge sooner than this: below it the second request costs more than it saves.
const HEDGE_FLOOR: Duration = Duration::from_millis(10);
/// How often an available provider is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Longest a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the pool treats one provider.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Lower is asked first.
    pub priority: u32,
    /// Longest one completion may take from it.
    pub timeout: Duration,
    /// Its requests in flight at most.
    pub max_in_flight: usize,
    /// Whether it is asked at all.
    pub enabled: bool,
    /// Slots of `max_in_flight` chats may never take, kept for completions (at least one slot
    /// is left to chats).
    pub completion_reserve: usize,
    /// Whether a chat streaming from it stops while a completion asks it, and goes on after
    /// (a local model server, whose one backend both share).
    pub chat_yields: bool,
}

/// A provider in the pool.
pub(crate) struct Entry {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) placement: Placement,
    /// The offline model: asked last, never hedged to, never probed.
    pub(crate) last_resort: bool,
    /// `max_in_flight` requests at once, completions and chats together.
    pub(crate) slots: Semaphore,
    /// What chats may hold of `slots`: all but `completion_reserve` of them, so a keystroke's
    /// completion never waits behind chats for a slot (`crate::chat`).
    pub(crate) chat_slots: Semaphore,
    /// Completions asking this provider now (waiting for a slot or answering): a chat on a
    /// provider that `chat_yields` gives way while it is above zero.
    pub(crate) demand: watch::Sender<usize>,
    /// Chats streaming from this provider now.
    pub(crate) streaming: AtomicUsize,
    pub(crate) state: Mutex<ProviderState>,
}

impl Entry {
    pub(crate) fn state(&self) -> MutexGuard<'_, ProviderState> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

/// Why no provider answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no provider could complete: {}", describe(.failures, .skipped))]
pub struct PoolError {
    /// Each provider that was asked and failed, in the order asked, with why.
    pub failures: Vec<(String, ProviderError)>,
    /// Each provider that was not asked, in the order configured.
    pub skipped: Vec<Skipped>,
}

/// A provider the pool did not ask.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// Its name.
    pub name: String,
    /// Why, for people (disabled, waiting out a back-off or a rate limit, needs auth).
    pub why: String,
    /// The failure that set it aside, if one did.
    pub error: Option<ProviderError>,
}

pub(crate) fn describe(failures: &[(String, ProviderError)], skipped: &[Skipped]) -> String {
    let mut parts: Vec<String> = failures
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect();
    parts.extend(
        skipped
            .iter()
            .map(|s| format!("{}: not asked ({})", s.name, s.why)),
    );
    if parts.is_empty() {
        "none is configured and enabled".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Why the pool could not be built from a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The HTTP client could not be set up (TLS roots, resolver).
    #[error("cannot set up the HTTP client of [providers.{name}]: {source}")]
    Http {
        /// The provider.
        name: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A table that is not a remote provider was given as one.
    #[error("[providers.{name}] is not a remote provider")]
    NotRemote {
        /// The provider.
        name: String,
    },
}

/// Picks and calls providers; shared by every completion in flight.
pub struct Pool {
    pub(crate) entries: Vec<Arc<Entry>>,
    injected_delay: Duration,
    context: Gatherer,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.provider.name()).collect();
        f.debug_struct("Pool")
            .field("providers", &names)
            .finish_non_exhaustive()
    }
}

/// Environment variable that delays every completion by this many milliseconds before any
/// provider is asked: a fault-injection aid to see how an editor (or a test) copes with a slow
/// model. The daemon warns at start when it is set.
pub const DELAY_ENV: &str = "REAPER_DEBUG_PROVIDER_DELAY_MS";

impl Pool {
    /// An empty pool; add providers with [`Pool::add`].
    pub fn new() -> Pool {
        Pool {
            entries: Vec::new(),
            injected_delay: Duration::ZERO,
            context: Gatherer::new(None, 0),
        }
    }

    /// The pool `config` describes, API keys looked up with `env`.
    pub fn from_config(
        config: &ProvidersConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Pool, BuildError> {
        let mut pool = Pool::new();
        for remote in &config.remote {
            let s = &remote.settings;
            let placement = Placement {
                priority: s.priority,
                timeout: Duration::from_millis(s.timeout_ms.get()),
                max_in_flight: s.max_in_flight.get() as usize,
                enabled: s.enabled,
                completion_reserve: s.completion_reserve as usize,
                chat_yields: s.chat_yields,
            };
            let needs_key = s.api_key_env.is_some() || s.kind == ProviderKind::Copilot;
            let provider = crate::kinds::build(&remote.name, s, env)?;
            pool.push(provider, placement, false, needs_key);
        }
        let offline = &config.offline;
        let provider = Arc::new(OfflineProvider::new(offline));
        pool.context = Gatherer::new(Some(provider.clone()), 0);
        pool.add_offline(provider, offline.priority, offline.enabled);
        Ok(pool)
    }

    /// Shows remote models up to `bytes` of repository context with each completion
    /// (`[completion] context_bytes`); 0, the default, shows them the file alone.
    pub fn with_context_budget(mut self, bytes: usize) -> Pool {
        self.context = Gatherer::new(self.context.offline().cloned(), bytes);
        self
    }

    /// Adds a remote provider.
    pub fn add(&mut self, provider: Arc<dyn Provider>, placement: Placement, needs_key: bool) {
        self.push(provider, placement, false, needs_key);
    }

    /// Adds the last-resort provider: after every other unless `priority` says otherwise.
    pub fn add_offline(
        &mut self,
        provider: Arc<dyn Provider>,
        priority: Option<u32>,
        enabled: bool,
    ) {
        let placement = Placement {
            priority: priority.unwrap_or(u32::MAX),
            timeout: Duration::MAX,
            max_in_flight: Semaphore::MAX_PERMITS,
            enabled,
            completion_reserve: 0,
            chat_yields: false,
        };
        self.push(provider, placement, true, false);
        // It needs nothing to work: available from the start.
        if let Some(entry) = self.entries.last().filter(|_| enabled) {
            entry.state().succeeded();
        }
    }

    fn push(
        &mut self,
        provider: Arc<dyn Provider>,
        placement: Placement,
        last_resort: bool,
        needs_key: bool,
    ) {
        let slots = placement.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let chat_slots = slots.saturating_sub(placement.completion_reserve).max(1);
        self.entries.push(Arc::new(Entry {
            provider,
            placement,
            last_resort,
            slots: Semaphore::new(slots),
            chat_slots: Semaphore::new(chat_slots),
            demand: watch::Sender::new(0),
            streaming: AtomicUsize::new(0),
            state: Mutex::new(ProviderState::new(placement.enabled, needs_key)),
        }));
    }

    /// Delays every completion by `delay` (see [`DELAY_ENV`]).
    pub fn with_injected_delay(mut self, delay: Duration) -> Pool {
        self.injected_delay = delay;
        self
    }

    /// Completes `request` by `deadline`: see the module documentation for the order, the
    /// hedge and the fallback. An empty proposal is an answer only when nobody has better.
    pub async fn complete(
        &self,
        request: &CompletionRequest,
        deadline: Instant,
    ) -> Result<Answer, PoolError> {
        if !self.injected_delay.is_zero() {
            tokio::time::sleep_until(deadline.min(Instant::now() + self.injected_delay).into())
                .await;
        }
        let (mut order, skipped) = self.candidates(Instant::now());
        self.context.note(request);
        if self.context.is_private(request) {
            // A buffer of credentials never leaves the machine.
            order.retain(|e| e.last_resort);
        }
        let last_resort = self
            .entries
            .iter()
            .find(|e| e.last_resort && e.placement.enabled)
            .cloned();
        if let Some(entry) = &last_resort {
            if order.iter().any(|e| !e.last_resort) {
                if let Some(answer) = sure_offline(entry, request, deadline).await {
                    return Ok(answer);
                }
            }
        }
        // Gathered before any provider is asked, and only when a remote one will be.
        let context = if order.iter().any(|e| !e.last_resort) {
            self.context.gather(request)
        } else {
            RepoContext::default()
        };
        let mut race = Race {
            request,
            context: &context,
            deadline,
            order,
            next: 0,
            running: FuturesUnordered::new(),
            last_started: None,
            last_resort_started: false,
            started: 0,
        };
        let mut failures: Vec<(usize, String, ProviderError)> = Vec::new();
        let mut blank: Option<Answer> = None;
        race.start_next();
        loop {
            if race.running.is_empty() {
                if race.start_next() {
                    continue;
                }
                match &last_resort {
                    Some(entry) if !race.last_resort_started => {
                        race.start(entry.clone());
                        continue;
                    }
                    _ => break,
                }
            }
            let hedge_at = race.hedge_at();
            let fallback_at = last_resort
                .as_ref()
                .filter(|_| !race.last_resort_started)
                .map(|_| deadline.checked_sub(OFFLINE_RESERVE).unwrap_or(deadline));
            tokio::select! {
                biased;
                Some(done) = race.running.next() => {
                    let Done { entry, result, took, asked } = done;
                    match result {
                        Ok(proposal) => {
                            let mut state = entry.state();
                            state.succeeded();
                            state.stats.answered(took);
                            drop(state);
                            let answer = Answer { proposal, provider: entry.provider.name().to_owned() };
                            if !answer.proposal.text.is_empty() {
                                // Dropping `race` drops the others' requests (counted as
                                // cancelled by their guards).
                                return Ok(answer);
                            }
                            blank.get_or_insert(answer);
                        }
                        Err(error) => {
                            tracing::debug!(provider = entry.provider.name(), %error, "provider failed; asking the next");
                            let mut state = entry.state();
                            state.failed(&error, Instant::now());
                            state.stats.errors += 1;
                            if matches!(error, ProviderError::TimedOut { .. }) {
                                state.stats.timed_out(took);
                            }
                            drop(state);
                            failures.push((asked, entry.provider.name().to_owned(), error));
                        }
                    }
                    race.start_next();
                }
                () = sleep_until(hedge_at), if hedge_at.is_some() => {
                    if let Some((entry, _)) = &race.last_started {
                        entry.state().stats.hedged += 1;
                        tracing::debug!(provider = entry.provider.name(), "slower than its p95: asking the next provider too");
                    }
                    // Something runs, so this starts the next remote provider, never the
                    // last resort.
                    race.start_next();
                }
                () = sleep_until(fallback_at), if fallback_at.is_some() => {
                    if let Some(entry) = &last_resort {
                        race.start(entry.clone());
                    }
                }
            }
        }
        // Attempts finish in any order; the error that decides the call's status is that of
        // the provider the user ranked first.
        failures.sort_by_key(|(asked, ..)| *asked);
        let failures = failures.into_iter().map(|(_, name, e)| (name, e)).collect();
        blank.ok_or(PoolError { failures, skipped })
    }

    /// Providers to ask now, best first, and those passed over with why.
    pub(crate) fn candidates(&self, now: Instant) -> (Vec<Arc<Entry>>, Vec<Skipped>) {
        let mut ready = Vec::new();
        let mut skipped = Vec::new();
        for entry in &self.entries {
            let state = entry.state();
            if state.eligible(now) {
                ready.push((entry.clone(), state.stats.latency_ms().unwrap_or(0.0)));
            } else {
                skipped.push(Skipped {
                    name: entry.provider.name().to_owned(),
                    why: state.message().unwrap_or("unavailable").to_owned(),
                    error: state.last_error().cloned(),
                });
            }
        }
        // Stable: equal priorities and latencies keep the order of the config file.
        ready.sort_by(|(a, la), (b, lb)| {
            a.placement
                .priority
                .cmp(&b.placement.priority)
                .then(la.total_cmp(lb))
        });
        (ready.into_iter().map(|(e, _)| e).collect(), skipped)
    }

    /// Every provider, for `Provider.list`.
    pub fn list(&self) -> Vec<ProviderInfo> {
        let now = Instant::now();
        self.entries
            .iter()
            .map(|e| {
                let state = e.state();
                ProviderInfo {
                    name: e.provider.name().to_owned(),
                    kind: e.provider.kind().to_owned(),
                    model: e.provider.model().to_owned(),
                    status: state.status(now),
                    latency_ms: state.stats.latency_ms().map_or(0, |ms| ms.ceil() as u32),
                    auth_status: state.auth(),
                    message: state.message().map(str::to_owned),
                }
            })
            .collect()
    }

    /// The embedded offline provider, when it is configured: its workspace indexes (which
    /// the agent searches) and its rules of what must never be read.
    pub fn offline(&self) -> Option<&Arc<OfflineProvider>> {
        self.context.offline()
    }

    /// Memory the offline provider's indexes take, and how many workspaces it indexes.
    pub fn index_usage(&self) -> (u64, u32) {
        self.context.offline().map_or((0, 0), |o| o.index_usage())
    }

    /// Every provider's record, for `Health.check`.
    pub fn stats(&self) -> Vec<ProviderStats> {
        self.entries
            .iter()
            .map(|e| {
                let state = e.state();
                let [p50, p95] = state
                    .stats
                    .quantiles([0.5, 0.95], 1)
                    .map_or([0, 0], |ds| ds.map(|d| d.as_micros() as u64));
                ProviderStats {
                    name: e.provider.name().to_owned(),
                    answered: state.stats.answered,
                    errors: state.stats.errors,
                    cancelled: state.stats.cancelled,
                    hedged: state.stats.hedged,
                    chats: state.stats.chats,
                    chat_yields: state.stats.chat_yields,
                    p50_us: p50,
                    p95_us: p95,
                }
            })
            .collect()
    }

    /// Probes every enabled remote provider now and then for as long as it runs: at once, then
    /// every [`PROBE_INTERVAL`] while it is available, sooner while it is not (its back-off,
    /// or the server's `Retry-After`). Spawn it on the runtime the providers run on.
    pub async fn watch(self: Arc<Self>) {
        let watchers = self
            .entries
            .iter()
            .filter(|e| !e.last_resort && e.placement.enabled)
            .map(|e| watch_one(e.clone()));
        futures::future::join_all(watchers).await;
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

async fn watch_one(entry: Arc<Entry>) {
    loop {
        let started = Instant::now();
        let probe = AssertUnwindSafe(entry.provider.probe()).catch_unwind();
        let result = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                tracing::error!(
                    provider = entry.provider.name(),
                    "a provider's probe panicked (a bug); probing goes on"
                );
                Err(ProviderError::Panicked { what: "probing" })
            }
            Err(_) => Err(ProviderError::TimedOut {
                url: format!("[providers.{}] probe", entry.provider.name()),
                after: PROBE_TIMEOUT,
            }),
        };
        let now = Instant::now();
        let wait = {
            let mut state = entry.state();
            match result {
                Ok(report) => {
                    if state.availability != Availability::Available {
                        tracing::info!(
                            provider = entry.provider.name(),
                            took_ms = (now - started).as_millis() as u64,
                            "provider available"
                        );
                    }
                    state.probed(report.note);
                    PROBE_INTERVAL
                }
                Err(error) => {
                    let was = state.availability;
                    state.failed(&error, now);
                    if was != state.availability {
                        tracing::warn!(provider = entry.provider.name(), %error, "provider not available");
                    }
                    match state.availability {
                        Availability::Unavailable { until }
                        | Availability::RateLimited { until } => until
                            .saturating_duration_since(now)
                            .max(Duration::from_millis(100)),
                        // A timed-out probe, or one that errors without setting the provider
                        // aside yet: look again soon.
                        Availability::Checking | Availability::Available => {
                            MAX_BACKOFF.min(Duration::from_secs(5))
                        }
                        Availability::NeedsAuth | Availability::Disabled => PROBE_INTERVAL,
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Sleeps until `at`; forever when `None` (the branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The providers working on one completion.
struct Race<'a> {
    request: &'a CompletionRequest,
    context: &'a RepoContext,
    deadline: Instant,
    order: Vec<Arc<Entry>>,
    next: usize,
    running: FuturesUnordered<futures::future::BoxFuture<'a, Done>>,
    /// The provider started last and when: the one a hedge is timed from.
    last_started: Option<(Arc<Entry>, Instant)>,
    last_resort_started: bool,
    /// Attempts started so far (each attempt's rank in asking order).
    started: usize,
}

/// One provider's attempt, finished.
struct Done {
    entry: Arc<Entry>,
    result: Result<Proposal, ProviderError>,
    took: Duration,
    /// Its rank in asking order.
    asked: usize,
}

impl<'a> Race<'a> {
    /// Starts the next provider in order; false when there is none. The last resort is
    /// started in its turn only when nothing else runs (while a provider works, the offline
    /// model waits for the reserve before the deadline, or for everything else to end).
    fn start_next(&mut self) -> bool {
        while let Some(entry) = self.order.get(self.next).cloned() {
            self.next += 1;
            if entry.last_resort && (self.last_resort_started || !self.running.is_empty()) {
                continue;
            }
            self.start(entry);
            return true;
        }
        false
    }

    fn start(&mut self, entry: Arc<Entry>) {
        let now = Instant::now();
        self.last_resort_started |= entry.last_resort;
        self.last_started = Some((entry.clone(), now));
        let asked = self.started;
        self.started += 1;
        let attempt = attempt(entry, self.request, self.context, self.deadline, asked);
        self.running.push(Box::pin(attempt));
    }

    /// When to ask the next provider too: the last one started has not answered by its p95.
    /// Only between remote providers (the last resort is asked by its own rule), and only once
    /// its p95 rests on enough answers.
    fn hedge_at(&self) -> Option<Instant> {
        let (entry, started) = self.last_started.as_ref()?;
        let next = self.order[self.next..].iter().find(|e| !e.last_resort)?;
        if entry.last_resort || next.last_resort {
            return None;
        }
        let p95 = entry.state().stats.quantile(0.95, HEDGE_MIN_SAMPLES)?;
        Some(*started + p95.max(HEDGE_FLOOR))
    }
}

/// A completion asking a provider, counted in its `demand` for as long as it lives.
struct Demand(Arc<Entry>);

impl Demand {
    fn new(entry: Arc<Entry>) -> Demand {
        entry.demand.send_modify(|asking| *asking += 1);
        Demand(entry)
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.demand.send_modify(|asking| *asking -= 1);
    }
}

/// Counts an attempt as cancelled if it is dropped before it finishes.
struct CancelGuard {
    entry: Arc<Entry>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.entry.state().stats.cancelled += 1;
        }
    }
}

/// One provider's attempt at `request`, bounded by its timeout and the call's deadline, after
/// waiting for one of its slots.
/// The offline model's answer when it is sure of it ([`OFFLINE_SURE`]): it costs a fraction
/// of a millisecond, and a model asked instead would cost hundreds and be right less often.
async fn sure_offline(
    entry: &Arc<Entry>,
    request: &CompletionRequest,
    deadline: Instant,
) -> Option<Answer> {
    let started = Instant::now();
    let input = CompletionInput {
        request,
        deadline,
        context: &NO_CONTEXT,
    };
    let proposal = AssertUnwindSafe(entry.provider.complete(input))
        .catch_unwind()
        .await
        .ok()?
        .ok()?;
    if proposal.confidence < OFFLINE_SURE || proposal.text.is_empty() {
        return None;
    }
    let mut state = entry.state();
    state.succeeded();
    state.stats.answered(started.elapsed());
    drop(state);
    Some(Answer {
        proposal,
        provider: entry.provider.name().to_owned(),
    })
}

async fn attempt(
    entry: Arc<Entry>,
    request: &CompletionRequest,
    context: &RepoContext,
    deadline: Instant,
    asked: usize,
) -> Done {
    let started = Instant::now();
    let limit = started
        .checked_add(entry.placement.timeout)
        .map_or(deadline, |t| t.min(deadline));
    let mut guard = CancelGuard {
        entry: entry.clone(),
        finished: false,
    };
    // From now until the attempt ends, however it ends, a chat on this provider gives way.
    let demand = (!entry.last_resort).then(|| Demand::new(entry.clone()));
    let work = async {
        // Waiting for a slot counts against the budget: a provider whose slots are all busy
        // is, for this call, a slow provider.
        let _slot = entry.slots.acquire().await;
        entry
            .provider
            .complete(CompletionInput {
                request,
                deadline: limit,
                // The offline model reads its index itself.
                context: if entry.last_resort {
                    &NO_CONTEXT
                } else {
                    context
                },
            })
            .await
    };
    // A panic in one provider costs that provider this call, not the whole race (the others
    // and the offline fallback go on).
    let work = AssertUnwindSafe(work).catch_unwind();
    let result = match tokio::time::timeout_at(limit.into(), work).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            tracing::error!(
                provider = entry.provider.name(),
                "a provider panicked (a bug); the call goes on without it"
            );
            Err(ProviderError::Panicked { what: "completing" })
        }
        Err(_) => Err(ProviderError::TimedOut {
            url: format!("[providers.{}]", entry.provider.name()),
            after: limit - started,
        }),
    };
    guard.finished = true;
    drop(demand);
    Done {
        entry,
        result,
        took: started.elapsed(),
        asked,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use reaper_core::schema::ProviderStatus;

    use super::*;
    use crate::provider::{BoxFuture, Capabilities, ChatInput, ChatStream, ProbeReport};

    /// A provider whose answer and pace the test sets.
    struct Scripted {
        name: &'static str,
        delay: Duration,
        result: Result<Proposal, ProviderError>,
        calls: AtomicU32,
        /// A provider with a bug: its completions and probes panic.
        panics: bool,
        /// The repository context of each call.
        contexts: Mutex<Vec<RepoContext>>,
    }

    impl Scripted {
        fn new(
            name: &'static str,
            delay_ms: u64,
            result: Result<&str, ProviderError>,
        ) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                delay: Duration::from_millis(delay_ms),
                result: result.map(|text| Proposal {
                    text: text.to_owned(),
                    // Below OFFLINE_SURE: an offline answer here is a fallback, not a
                    // shortcut (`sure` makes one that is).
                    confidence: 0.4,
                }),
                calls: AtomicU32::new(0),
                panics: false,
                contexts: Mutex::default(),
            })
        }

        /// An offline model sure of its answer.
        fn sure(name: &'static str, text: &str) -> Arc<Scripted> {
            let scripted = Arc::into_inner(Scripted::new(name, 0, Ok(text))).expect("just made");
            Arc::new(Scripted {
                result: Ok(Proposal {
                    text: text.to_owned(),
                    confidence: OFFLINE_SURE,
                }),
                ..scripted
            })
        }

        fn panicking(name: &'static str) -> Arc<Scripted> {
            Arc::new(Scripted {
                panics: true,
                ..Arc::into_inner(Scripted::new(name, 0, Ok(""))).expect("just made")
            })
        }
        fn calls(&self) -> u32 {
            self.calls.load(Ordering::Relaxed)
        }
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn model(&self) -> &str {
            "m"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn complete<'a>(
            &'a self,
            input: CompletionInput<'a>,
        ) -> BoxFuture<'a, Result<Proposal, ProviderError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                self.contexts.lock().unwrap().push(input.context.clone());
                assert!(!self.panics, "a bug in a provider");
                tokio::time::sleep(self.delay).await;
                self.result.clone()
            })
        }
        fn chat<'a>(
            &'a self,
            _: ChatInput<'a>,
        ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
            Box::pin(async { Err(ProviderError::Unsupported { what: "chat" }) })
        }
        fn probe(&self) -> BoxFuture<'_, Result<ProbeReport, ProviderError>> {
            Box::pin(async move {
                assert!(!self.panics, "a bug in a probe");
                Ok(ProbeReport::default())
            })
        }
    }

    /// `pool` with provider `index` replaced by `provider`, keeping what the pool has learnt
    /// about it (its latency window among the rest).
    fn swap(pool: &Pool, index: usize, provider: Arc<dyn Provider>) -> Pool {
        let entries = pool
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if i != index {
                    return e.clone();
                }
                let learnt = std::mem::replace(&mut *e.state(), ProviderState::new(true, false));
                Arc::new(Entry {
                    provider: provider.clone(),
                    placement: e.placement,
                    last_resort: e.last_resort,
                    slots: Semaphore::new(e.placement.max_in_flight),
                    chat_slots: Semaphore::new(e.placement.max_in_flight),
                    demand: watch::Sender::new(0),
                    streaming: AtomicUsize::new(0),
                    state: Mutex::new(learnt),
                })
            })
            .collect();
        Pool {
            entries,
            injected_delay: Duration::ZERO,
            context: Gatherer::new(None, 0),
        }
    }

    fn placement(priority: u32) -> Placement {
        Placement {
            priority,
            timeout: Duration::from_secs(2),
            max_in_flight: 4,
            enabled: true,
            completion_reserve: 1,
            chat_yields: false,
        }
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

    async fn ask(pool: &Pool, within_ms: u64) -> Result<Answer, PoolError> {
        pool.complete(
            &request(),
            Instant::now() + Duration::from_millis(within_ms),
        )
        .await
    }

    fn server_error() -> ProviderError {
        ProviderError::Http {
            url: "http://x".into(),
            status: 500,
            message: "boom".into(),
        }
    }

    #[tokio::test]
    async fn remote_models_see_related_code_and_secret_buffers_stay_home() {
        let shop = reaper_testkit::workspace::Shop::new();
        let root = shop.root();
        let offline = Arc::new(OfflineProvider::new(&Default::default()));
        let typed = root.join("src/client.rs");
        let workspace = offline.workspace_of(&typed).unwrap();
        let start = Instant::now();
        while workspace.corpus().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the index is built"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let remote = Scripted::new("model", 0, Ok("policy.max_attempts"));
        let mut pool = Pool::new();
        pool.add(remote.clone(), placement(1), false);
        pool.add_offline(offline.clone(), None, true);
        let pool = pool.with_context_budget(0);
        assert!(pool.context.offline().is_none());
        let mut pool = pool;
        pool.context = Gatherer::new(Some(offline), 1024);

        let mut asked = request();
        asked.file_path = Some(typed.display().to_string());
        asked.prefix = "fn call(policy: &RetryPolicy, attempt: u32) -> u64 {\n    let wait = policy.next_delay(attempt);\n    if attempt < ".into();
        let answer = pool
            .complete(&asked, Instant::now() + Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(answer.provider, "model");
        let context = remote.contexts.lock().unwrap().pop().unwrap();
        assert_eq!(context.repo_name(), "shop");
        assert_eq!(context.current_path(), "src/client.rs");
        let first = &context.snippets()[0];
        assert_eq!(first.path, "src/retry.rs");
        assert!(first.text.contains("max_attempts"), "{first:?}");
        assert!(context.bytes() <= 1024);

        // A .env buffer is completed by the offline model alone.
        let mut secret = request();
        secret.file_path = Some(root.join(".env").display().to_string());
        secret.prefix = "OPENAI_API_KEY=sk-".into();
        let _ = pool
            .complete(&secret, Instant::now() + Duration::from_secs(2))
            .await;
        assert_eq!(
            remote.calls(),
            1,
            "the remote model never saw the .env buffer"
        );
    }

    #[tokio::test]
    async fn a_sure_offline_answer_is_taken_without_asking_a_model() {
        let mut pool = Pool::new();
        let model = Scripted::new("model", 0, Ok("from the model"));
        let offline = Scripted::sure("offline", "from offline");
        pool.add(model.clone(), placement(1), false);
        pool.add_offline(offline.clone(), None, true);
        let answer = ask(&pool, 1000).await.unwrap();
        assert_eq!(answer.provider, "offline");
        assert_eq!((model.calls(), offline.calls()), (0, 1));
        assert_eq!(pool.stats()[1].answered, 1);
        // Less sure: the model is asked, and its answer wins.
        let unsure = Scripted::new("offline", 0, Ok("from offline"));
        let pool = swap(&pool, 1, unsure.clone());
        let answer = ask(&pool, 1000).await.unwrap();
        assert_eq!(answer.provider, "model");
        assert_eq!((model.calls(), unsure.calls()), (1, 1));
    }

    #[tokio::test]
    async fn priority_decides_and_failures_fall_through_to_the_next() {
        let mut pool = Pool::new();
        let first = Scripted::new("first", 0, Err(server_error()));
        let second = Scripted::new("second", 0, Ok("from second"));
        let offline = Scripted::new("offline", 0, Ok("from offline"));
        pool.add(second.clone(), placement(2), false);
        pool.add(first.clone(), placement(1), false);
        pool.add_offline(offline.clone(), None, true);
        let answer = ask(&pool, 1000).await.unwrap();
        assert_eq!(answer.provider, "second");
        // The offline model was asked once, first, and was not sure enough to answer alone.
        assert_eq!((first.calls(), second.calls(), offline.calls()), (1, 1, 1));
        let stats = pool.stats();
        assert_eq!((stats[1].name.as_str(), stats[1].errors), ("first", 1));
        assert_eq!(stats[0].answered, 1);
    }

    #[tokio::test]
    async fn the_offline_model_answers_when_every_other_fails_or_is_too_slow() {
        let mut pool = Pool::new();
        let down = Scripted::new("down", 0, Err(server_error()));
        let slow = Scripted::new("slow", 5_000, Ok("late"));
        pool.add(down, placement(1), false);
        pool.add(slow.clone(), placement(2), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("fallback")), None, true);
        let started = Instant::now();
        let answer = ask(&pool, 200).await.unwrap();
        assert_eq!(answer.provider, "offline");
        // Asked OFFLINE_RESERVE before the 200 ms deadline, long before the slow provider's 5 s
        // (the bound leaves room for a stalled CI machine's late timer).
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            pool.stats()[1].cancelled,
            1,
            "the slow provider's request was dropped"
        );
    }

    #[tokio::test]
    async fn with_the_offline_model_disabled_every_reason_reaches_the_caller() {
        let mut pool = Pool::new();
        pool.add(
            Scripted::new("a", 0, Err(server_error())),
            placement(1),
            false,
        );
        pool.add_offline(Scripted::new("offline", 0, Ok("x")), None, false);
        let error = ask(&pool, 500).await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("a: http://x answered HTTP 500: boom"),
            "{text}"
        );
        assert!(
            text.contains("offline: not asked (enabled = false"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_provider_slower_than_its_p95_is_hedged_and_the_loser_cancelled() {
        let mut pool = Pool::new();
        let tail = Scripted::new("tail", 20, Ok("t"));
        let backup = Scripted::new("backup", 30, Ok("b"));
        pool.add(tail.clone(), placement(1), false);
        pool.add(backup.clone(), placement(2), false);
        let pool = pool;
        // Teach the pool tail's usual latency (20 ms)...
        for _ in 0..HEDGE_MIN_SAMPLES {
            assert_eq!(ask(&pool, 1000).await.unwrap().provider, "tail");
        }
        assert_eq!(backup.calls(), 0, "no hedge while tail keeps to its p95");
        // ...then make it slow: past its p95 the backup is asked too, and wins.
        let slow_tail = Scripted::new("tail", 400, Ok("late"));
        let hedging_pool = swap(&pool, 0, slow_tail);
        let started = Instant::now();
        let answer = ask(&hedging_pool, 1000).await.unwrap();
        assert_eq!(answer.provider, "backup");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        let stats = hedging_pool.stats();
        assert_eq!((stats[0].hedged, stats[0].cancelled), (1, 1));
    }

    #[tokio::test]
    async fn rate_limited_providers_are_skipped_until_retry_after() {
        let mut pool = Pool::new();
        let limited = Scripted::new(
            "limited",
            0,
            Err(ProviderError::RateLimited {
                url: "u".into(),
                status: 429,
                retry_after: Duration::from_millis(150),
                message: String::new(),
            }),
        );
        pool.add(limited.clone(), placement(1), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("o")), None, true);
        assert_eq!(ask(&pool, 500).await.unwrap().provider, "offline");
        assert_eq!(ask(&pool, 500).await.unwrap().provider, "offline");
        assert_eq!(limited.calls(), 1, "skipped while it waits");
        assert_eq!(pool.list()[0].status, ProviderStatus::RateLimited);
        tokio::time::sleep(Duration::from_millis(200)).await;
        ask(&pool, 500).await.unwrap();
        assert_eq!(limited.calls(), 2, "asked again after Retry-After");
    }

    #[tokio::test]
    async fn an_empty_answer_gives_way_to_a_provider_with_something() {
        let mut pool = Pool::new();
        pool.add(Scripted::new("quiet", 0, Ok("")), placement(1), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("something")), None, true);
        assert_eq!(ask(&pool, 500).await.unwrap().provider, "offline");
        let mut pool = Pool::new();
        pool.add(Scripted::new("quiet", 0, Ok("")), placement(1), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("")), None, true);
        let answer = ask(&pool, 500).await.unwrap();
        assert_eq!(
            (answer.provider.as_str(), answer.proposal.text.as_str()),
            ("quiet", "")
        );
    }

    #[tokio::test]
    async fn dropping_a_completion_cancels_the_providers_working_on_it() {
        let mut pool = Pool::new();
        let slow = Scripted::new("slow", 5_000, Ok("late"));
        pool.add(slow, placement(1), false);
        let pool = Arc::new(pool);
        let task = tokio::spawn({
            let pool = pool.clone();
            async move { ask(&pool, 10_000).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        task.abort();
        let _ = task.await;
        assert_eq!(pool.stats()[0].cancelled, 1);
    }

    #[tokio::test]
    async fn a_panicking_provider_costs_itself_the_call_not_the_others() {
        let mut pool = Pool::new();
        pool.add(Scripted::panicking("buggy"), placement(1), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("still here")), None, true);
        let answer = ask(&pool, 500).await.unwrap();
        assert_eq!(answer.provider, "offline");
        assert_eq!(pool.stats()[0].errors, 1);
        let pool = Arc::new(pool);
        let watch = tokio::spawn(pool.clone().watch());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !watch.is_finished(),
            "probing goes on after a probe panicked"
        );
        watch.abort();
        assert!(pool.list()[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("a bug"));
    }

    #[tokio::test]
    async fn the_offline_model_does_not_jump_ahead_of_a_hedged_provider_still_working() {
        let mut pool = Pool::new();
        let fails = Scripted::new("fails", 5, Ok("x"));
        let backup = Scripted::new("backup", 80, Ok("from backup"));
        pool.add(fails.clone(), placement(1), false);
        pool.add(backup.clone(), placement(2), false);
        pool.add_offline(Scripted::new("offline", 0, Ok("from offline")), None, true);
        for _ in 0..HEDGE_MIN_SAMPLES {
            ask(&pool, 1000).await.unwrap();
        }
        // Now the first one is slow and then fails: by then the backup runs (hedged), and it,
        // not the offline model, answers.
        let slow_failure = Scripted::new("fails", 40, Err(server_error()));
        let pool = swap(&pool, 0, slow_failure);
        assert_eq!(ask(&pool, 1000).await.unwrap().provider, "backup");
    }

    #[tokio::test]
    async fn max_in_flight_makes_later_requests_wait_for_a_slot() {
        let mut pool = Pool::new();
        let one = Scripted::new("one", 100, Ok("x"));
        pool.add(
            one,
            Placement {
                max_in_flight: 1,
                ..placement(1)
            },
            false,
        );
        let pool = Arc::new(pool);
        let started = Instant::now();
        let (a, b) = tokio::join!(ask(&pool, 2000), ask(&pool, 2000));
        assert!(a.is_ok() && b.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
}
