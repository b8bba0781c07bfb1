//! `Completion.complete`: the fast path on the event loop, and everything else on workers.
//!
//! On the loop, in the pass that decoded the request: validate it (rkyv in place), answer from
//! the cache or by typing through the last suggestion — no thread hop. A miss becomes a job for
//! the worker threads, which ask the provider pool; the answer comes back to the loop over a
//! channel, is sent, and is cached. The loop keeps every call in flight with its deadline and a
//! cancel flag: a deadline that passes ends the call with DEADLINE_EXCEEDED, a client's reset
//! ends it quietly, and a newer completion for the same file on the same connection ends it
//! with CANCELLED; in each case the flag tells the worker to stop.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_core::config::Config;
use reaper_core::encoding::access_archived;
use reaper_core::rpc::{CallId, ConnId, IncomingCall, RpcServer};
use reaper_core::schema::{CompletionRequest, CompletionResponse};
use reaper_core::{Code, Encoding, Status, WireMessage};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::cache::{CacheCounters, Cached, CompletionCache, KeyParts, OwnedKey, TypingThrough};
use super::pool::{Answer, ProviderError, ProviderPool};

/// A miss handed to a worker.
struct Job {
    id: CallId,
    request: CompletionRequest,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
}

/// A worker's answer, back on the loop.
#[derive(Debug)]
pub struct JobDone {
    id: CallId,
    result: Result<Answer, ProviderError>,
}

/// A call waiting for a worker.
struct Pending {
    deadline: Instant,
    received_at: Instant,
    cancel: Arc<AtomicBool>,
    file: Option<(ConnId, Box<str>)>,
    key: Option<OwnedKey>,
    prefix_for_typing: Option<String>,
}

/// How a completion call ended, for the caller's metrics.
#[derive(Debug)]
pub enum Outcome {
    /// Answered now (a hit, or an error) with this status.
    Answered(Status),
    /// Handed to a worker; the answer comes later through [`CompletionService::on_done`].
    Pending,
    /// The call was no longer open.
    Gone,
}

/// The completion service, owned by the event loop.
pub struct CompletionService {
    cache: Option<CompletionCache>,
    typing: TypingThrough,
    pending: HashMap<CallId, Pending>,
    by_file: HashMap<(ConnId, Box<str>), CallId>,
    jobs: mpsc::Sender<Job>,
    key_prefix: usize,
    key_suffix: usize,
    max_prefix: usize,
    max_suffix: usize,
    timeout: Duration,
}

impl std::fmt::Debug for CompletionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionService")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl CompletionService {
    /// The service, its `workers` threads, and the channel their answers come back on.
    pub fn start(
        config: &Config,
        pool: Arc<ProviderPool>,
        workers: usize,
    ) -> std::io::Result<(CompletionService, UnboundedReceiver<JobDone>)> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for n in 0..workers.max(1) {
            let (job_rx, done_tx, pool) = (job_rx.clone(), done_tx.clone(), pool.clone());
            std::thread::Builder::new()
                .name(format!("completion-worker-{n}"))
                .spawn(move || work(&job_rx, &done_tx, &pool))?;
        }
        let cache = config.cache.enabled.then(|| {
            CompletionCache::new(
                NonZeroUsize::new(config.cache.max_size.get() as usize)
                    .unwrap_or(NonZeroUsize::MIN),
                Duration::from_secs(config.cache.ttl.get()),
            )
        });
        let service = CompletionService {
            cache,
            typing: TypingThrough::default(),
            pending: HashMap::new(),
            by_file: HashMap::new(),
            jobs,
            key_prefix: config.cache.key_prefix_bytes.get() as usize,
            key_suffix: config.cache.key_suffix_bytes as usize,
            max_prefix: config.completion.max_prefix_bytes.get() as usize,
            max_suffix: config.completion.max_suffix_bytes.get() as usize,
            timeout: Duration::from_millis(config.rpc.completion_timeout.get()),
        };
        Ok((service, done_rx))
    }

    /// Cache counters and size, for `Health.check`.
    pub fn cache_stats(&self) -> (CacheCounters, usize) {
        self.cache
            .as_ref()
            .map_or((CacheCounters::default(), 0), |c| (c.counters(), c.len()))
    }

    /// Calls waiting for a worker.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Serves a new call: from the cache if possible, else by queueing a job.
    pub fn on_call(
        &mut self,
        server: &mut RpcServer,
        call: &IncomingCall,
        now: Instant,
    ) -> Outcome {
        match call.encoding {
            Encoding::Rkyv => match access_archived::<CompletionRequest>(&call.message) {
                Ok(r) => {
                    let file = r.file_path.as_ref().map(|p| p.as_str());
                    self.serve(
                        server,
                        call,
                        now,
                        View {
                            prefix: &r.prefix,
                            suffix: &r.suffix,
                            language: &r.language,
                            file,
                        },
                        || rkyv::deserialize::<CompletionRequest, rkyv::rancor::Error>(r).ok(),
                    )
                }
                Err(e) => fail(
                    server,
                    call.id,
                    invalid(format!("reaper.Completion/complete request: {e}")),
                ),
            },
            Encoding::Json => match CompletionRequest::decode(Encoding::Json, &call.message) {
                Ok(r) => {
                    let view = View {
                        prefix: &r.prefix,
                        suffix: &r.suffix,
                        language: &r.language,
                        file: r.file_path.as_deref(),
                    };
                    self.serve(server, call, now, view, || Some(r.clone()))
                }
                Err(e) => fail(
                    server,
                    call.id,
                    invalid(format!("reaper.Completion/complete request: {e}")),
                ),
            },
        }
    }

    fn serve(
        &mut self,
        server: &mut RpcServer,
        call: &IncomingCall,
        now: Instant,
        request: View<'_>,
        owned: impl FnOnce() -> Option<CompletionRequest>,
    ) -> Outcome {
        if let Err(status) = self.validate(&request) {
            return fail(server, call.id, status);
        }
        let file = request.file.unwrap_or("");
        let conn = call.id.connection();
        let parts = KeyParts::new(
            request.language,
            file,
            request.prefix,
            request.suffix,
            self.key_prefix,
            self.key_suffix,
        );
        let hit = match self.cache.as_mut() {
            Some(cache) => {
                let typed = self.typing.continue_with(conn, file, request.prefix);
                if typed.is_some() {
                    cache.count_typed_through();
                }
                typed.or_else(|| cache.get(&parts, now).cloned())
            }
            None => None,
        };
        if let Some(hit) = hit {
            // A newer request for the file ends an older one still running.
            self.supersede(server, conn, file);
            let latency_ms = now.saturating_duration_since(call.received_at).as_millis() as u32;
            self.typing.remember(conn, file, request.prefix, &hit);
            return respond(server, call, &hit, latency_ms, true);
        }

        let Some(request_owned) = owned() else {
            return fail(
                server,
                call.id,
                Status::new(Code::Internal, "cannot copy the request"),
            );
        };
        self.supersede(server, conn, file);
        let deadline = call.deadline.map_or(call.received_at + self.timeout, |d| {
            d.min(call.received_at + self.timeout)
        });
        let cancel = Arc::new(AtomicBool::new(false));
        let file_key = (!file.is_empty()).then(|| (conn, Box::<str>::from(file)));
        if let Some(key) = &file_key {
            self.by_file.insert(key.clone(), call.id);
        }
        self.pending.insert(
            call.id,
            Pending {
                deadline,
                received_at: call.received_at,
                cancel: cancel.clone(),
                file: file_key,
                key: self.cache.is_some().then(|| parts.to_owned_key()),
                prefix_for_typing: Some(request.prefix.to_owned()),
            },
        );
        let job = Job {
            id: call.id,
            request: request_owned,
            deadline,
            cancel,
        };
        if self.jobs.send(job).is_err() {
            self.pending.remove(&call.id);
            return fail(
                server,
                call.id,
                Status::new(Code::Unavailable, "no completion worker is running"),
            );
        }
        Outcome::Pending
    }

    fn validate(&self, r: &View<'_>) -> Result<(), Status> {
        if r.language.trim().is_empty() {
            return Err(invalid(
                "language is empty: say which language the buffer is in, e.g. \"rust\"",
            ));
        }
        if r.prefix.len() > self.max_prefix {
            return Err(invalid(format!(
                "prefix is {} bytes, over the {}-byte limit ([completion] max_prefix_bytes): send the text near the cursor",
                r.prefix.len(),
                self.max_prefix
            )));
        }
        if r.suffix.len() > self.max_suffix {
            return Err(invalid(format!(
                "suffix is {} bytes, over the {}-byte limit ([completion] max_suffix_bytes)",
                r.suffix.len(),
                self.max_suffix
            )));
        }
        if let Some(file) = r.file.filter(|f| !f.is_empty()) {
            if !file.starts_with('/') {
                return Err(invalid(format!("file_path {file:?} must be absolute")));
            }
        }
        Ok(())
    }

    /// Ends the call still running for the same file on the same connection.
    fn supersede(&mut self, server: &mut RpcServer, conn: ConnId, file: &str) {
        if file.is_empty() {
            return;
        }
        if let Some(old) = self.by_file.remove(&(conn, Box::<str>::from(file))) {
            if let Some(pending) = self.pending.remove(&old) {
                pending.cancel.store(true, Ordering::Relaxed);
                server.finish(
                    old,
                    &Status::new(
                        Code::Cancelled,
                        "superseded by a newer completion for the same file",
                    ),
                );
            }
        }
    }

    /// A worker's answer.
    pub fn on_done(
        &mut self,
        server: &mut RpcServer,
        done: JobDone,
        now: Instant,
    ) -> Option<(Status, Instant)> {
        if self
            .pending
            .get(&done.id)
            .is_some_and(|p| p.deadline <= now)
        {
            // Too late: the deadline ends it, whatever the worker found.
            return self.expire(server, now).into_iter().next();
        }
        let pending = self.pending.remove(&done.id);
        let answer = match done.result {
            Ok(answer) => answer,
            Err(error) => {
                let pending = pending?;
                self.forget_file(&pending, done.id);
                let status = match error {
                    ProviderError::Cancelled => return None,
                    other => Status::new(
                        Code::Unavailable,
                        format!("no provider could complete: {other}"),
                    ),
                };
                return server
                    .finish(done.id, &status)
                    .then_some((status, pending.received_at));
            }
        };
        let cached = Cached {
            completion: answer.proposal.text,
            confidence: answer.proposal.confidence,
            provider: answer.provider,
        };
        let pending = pending?;
        // Silence is not cached: it often means the workspace was still being indexed.
        if let (Some(cache), Some(key)) = (self.cache.as_mut(), pending.key.clone()) {
            if !cached.completion.is_empty() {
                cache.insert(key, cached.clone(), now);
            }
        }
        self.forget_file(&pending, done.id);
        if let (Some((conn, file)), Some(prefix)) = (&pending.file, &pending.prefix_for_typing) {
            self.typing.remember(*conn, file, prefix, &cached);
        }
        let latency_ms = now
            .saturating_duration_since(pending.received_at)
            .as_millis() as u32;
        let call = CallRef { id: done.id };
        match respond_ref(server, call, &cached, latency_ms, false) {
            Outcome::Answered(status) => Some((status, pending.received_at)),
            _ => None,
        }
    }

    fn forget_file(&mut self, pending: &Pending, id: CallId) {
        if let Some(key) = &pending.file {
            if self.by_file.get(key) == Some(&id) {
                self.by_file.remove(key);
            }
        }
    }

    /// The client cancelled a call: stop its work.
    pub fn on_cancelled(&mut self, id: CallId) -> bool {
        match self.pending.remove(&id) {
            Some(pending) => {
                pending.cancel.store(true, Ordering::Relaxed);
                self.forget_file(&pending, id);
                true
            }
            None => false,
        }
    }

    /// A connection closed: forget what was suggested on it.
    pub fn on_disconnected(&mut self, conn: ConnId) {
        self.typing.forget_connection(conn);
    }

    /// The earliest deadline of a call in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Ends calls whose deadline has passed. Returns them for metrics.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) -> Vec<(Status, Instant)> {
        let due: Vec<CallId> = self
            .pending
            .iter()
            .filter_map(|(id, p)| (p.deadline <= now).then_some(*id))
            .collect();
        let mut ended = Vec::new();
        for id in due {
            if let Some(pending) = self.pending.remove(&id) {
                pending.cancel.store(true, Ordering::Relaxed);
                self.forget_file(&pending, id);
                let status = Status::new(
                    Code::DeadlineExceeded,
                    "the completion did not finish before its deadline",
                );
                if server.finish(id, &status) {
                    ended.push((status, pending.received_at));
                }
            }
        }
        ended
    }
}

/// The fields of a request the fast path reads, borrowed from either encoding.
struct View<'a> {
    prefix: &'a str,
    suffix: &'a str,
    language: &'a str,
    file: Option<&'a str>,
}

struct CallRef {
    id: CallId,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, message)
}

fn fail(server: &mut RpcServer, id: CallId, status: Status) -> Outcome {
    if server.finish(id, &status) {
        Outcome::Answered(status)
    } else {
        Outcome::Gone
    }
}

fn respond(
    server: &mut RpcServer,
    call: &IncomingCall,
    hit: &Cached,
    latency_ms: u32,
    cached: bool,
) -> Outcome {
    respond_ref(server, CallRef { id: call.id }, hit, latency_ms, cached)
}

fn respond_ref(
    server: &mut RpcServer,
    call: CallRef,
    value: &Cached,
    latency_ms: u32,
    cached: bool,
) -> Outcome {
    let encoding = server.encoding_of(call.id).unwrap_or(Encoding::Rkyv);
    let response = CompletionResponse {
        completion: value.completion.clone(),
        confidence: value.confidence,
        provider: value.provider.clone(),
        latency_ms,
        cached,
    };
    match server.respond(call.id, |out| {
        response
            .encode(encoding, out)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the response: {e}")))
    }) {
        Some(status) => Outcome::Answered(status),
        None => Outcome::Gone,
    }
}

fn work(jobs: &Mutex<mpsc::Receiver<Job>>, done: &UnboundedSender<JobDone>, pool: &ProviderPool) {
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.cancel.load(Ordering::Relaxed) {
            continue;
        }
        let result = pool.complete(&job.request, job.deadline, &job.cancel);
        if done.send(JobDone { id: job.id, result }).is_err() {
            return;
        }
    }
}
