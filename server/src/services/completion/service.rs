//! `Completion.complete`: the fast path on the event loop, and everything else on the
//! provider runtime.
//!
//! On the loop, in the pass that decoded the request: validate it (rkyv in place), answer from
//! the cache or by typing through the last suggestion — no thread hop. A miss becomes a task on
//! the provider runtime, which asks the provider pool; the answer comes back to the loop over
//! the services' one channel, is sent, and is cached. The loop keeps every call in flight with
//! its deadline and its task: a deadline that passes ends the call with DEADLINE_EXCEEDED, a
//! client's reset ends it quietly, and a newer completion for the same file on the same
//! connection ends it with CANCELLED; in each case the task is aborted, which drops its HTTP
//! requests, which closes their connections, which stops the model generating. Each task
//! carries a sequence number, so a result that arrives for a call that has since ended (and
//! whose stream id a new call reuses) is recognised and dropped.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use reaper_core::config::Config;
use reaper_core::encoding::access_archived;
use reaper_core::rpc::{CallId, ConnId, IncomingCall, RpcServer};
use reaper_core::schema::{CompletionRequest, CompletionResponse};
use reaper_core::{Code, Encoding, Status, WireMessage};
use reaper_providers::{Answer, Pool};
use tokio::task::AbortHandle;

use super::cache::{
    CacheCounters, Cached, CompletionCache, KeyParts, OwnedKey, TypingContext, TypingRef,
    TypingThrough,
};
use crate::services::errors::pool_status;
use crate::services::{Done, Finished};

/// A miss's answer, back on the loop.
#[derive(Debug)]
pub struct JobDone {
    id: CallId,
    seq: u64,
    result: Result<Answer, Status>,
}

/// A call waiting for the pool.
struct Pending {
    seq: u64,
    deadline: Instant,
    received_at: Instant,
    task: AbortHandle,
    file: Option<Box<str>>,
    key: Option<OwnedKey>,
    typing: Option<TypingContext>,
}

/// What a miss needs once the request is owned.
struct MissPlan {
    file: Option<Box<str>>,
    key: Option<OwnedKey>,
    typing: Option<TypingContext>,
}

/// What the fast path decided.
enum FastPath {
    /// The call is answered (a hit or an error).
    Done(Outcome),
    /// A miss: it goes to the provider pool.
    Miss(MissPlan),
}

/// How a completion call went, for the caller's metrics.
#[derive(Debug)]
pub enum Outcome {
    /// Answered now (a hit, or an error) with this status.
    Answered(Status),
    /// Handed to the pool; the answer comes later through [`CompletionService::on_done`].
    Pending,
    /// The call was no longer open.
    Gone,
}

/// A call that ended, with when it arrived: for latency metrics.
pub type Ended = (Status, Instant);

/// The completion service, owned by the event loop.
pub struct CompletionService {
    cache: Option<CompletionCache>,
    typing: TypingThrough,
    pending: HashMap<CallId, Pending>,
    /// The call in flight per connection and file (by hash; the file is kept to rule out a
    /// collision), for superseding.
    by_file: HashMap<(ConnId, u64), (Box<str>, CallId)>,
    /// Calls ended as a side effect (superseded), waiting to be counted.
    side_endings: Vec<Ended>,
    pool: Arc<Pool>,
    runtime: tokio::runtime::Handle,
    done: Done,
    next_seq: u64,
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
    /// The service: misses go to `pool` on `runtime`, and their answers come back on `done`.
    pub fn new(
        config: &Config,
        pool: Arc<Pool>,
        runtime: tokio::runtime::Handle,
        done: Done,
    ) -> CompletionService {
        let cache = config.cache.enabled.then(|| {
            CompletionCache::new(
                NonZeroUsize::new(config.cache.max_size.get() as usize)
                    .unwrap_or(NonZeroUsize::MIN),
                Duration::from_secs(config.cache.ttl.get()),
            )
        });
        CompletionService {
            cache,
            typing: TypingThrough::default(),
            pending: HashMap::new(),
            by_file: HashMap::new(),
            side_endings: Vec::new(),
            pool,
            runtime,
            done,
            next_seq: 0,
            key_prefix: config.cache.key_prefix_bytes.get() as usize,
            key_suffix: config.cache.key_suffix_bytes as usize,
            max_prefix: config.completion.max_prefix_bytes.get() as usize,
            max_suffix: config.completion.max_suffix_bytes.get() as usize,
            timeout: Duration::from_millis(config.rpc.completion_timeout.get()),
        }
    }

    /// Cache counters and size, for `Health.check`.
    pub fn cache_stats(&self) -> (CacheCounters, usize) {
        self.cache
            .as_ref()
            .map_or((CacheCounters::default(), 0), |c| (c.counters(), c.len()))
    }

    /// Calls waiting for the pool.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Calls ended as a side effect of others (superseded) since the last call of this.
    pub fn take_side_endings(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.side_endings)
    }

    /// Serves a new call: from the cache if possible, else by queueing a job.
    pub fn on_call(
        &mut self,
        server: &mut RpcServer,
        call: &IncomingCall,
        now: Instant,
    ) -> Outcome {
        let bad =
            |e: &dyn std::fmt::Display| invalid(format!("reaper.Completion/complete request: {e}"));
        match call.encoding {
            Encoding::Rkyv => {
                let r = match access_archived::<CompletionRequest>(&call.message) {
                    Ok(r) => r,
                    Err(e) => return fail(server, call.id, bad(&e)),
                };
                let view = View {
                    prefix: &r.prefix,
                    suffix: &r.suffix,
                    language: &r.language,
                    file: r.file_path.as_ref().map(|p| p.as_str()),
                    context_bytes: context_bytes!(r.context),
                };
                let plan = match self.fast_path(server, call, now, &view) {
                    FastPath::Done(outcome) => return outcome,
                    FastPath::Miss(plan) => plan,
                };
                match rkyv::deserialize::<CompletionRequest, rkyv::rancor::Error>(r) {
                    Ok(owned) => self.dispatch(call, plan, owned),
                    Err(e) => fail(server, call.id, bad(&e)),
                }
            }
            Encoding::Json => {
                let r = match CompletionRequest::decode(Encoding::Json, &call.message) {
                    Ok(r) => r,
                    Err(e) => return fail(server, call.id, bad(&e)),
                };
                let view = View {
                    prefix: &r.prefix,
                    suffix: &r.suffix,
                    language: &r.language,
                    file: r.file_path.as_deref(),
                    context_bytes: context_bytes!(r.context),
                };
                match self.fast_path(server, call, now, &view) {
                    FastPath::Done(outcome) => outcome,
                    FastPath::Miss(plan) => self.dispatch(call, plan, r),
                }
            }
        }
    }

    /// Answers from the cache when it can; otherwise says what a miss needs.
    fn fast_path(
        &mut self,
        server: &mut RpcServer,
        call: &IncomingCall,
        now: Instant,
        request: &View<'_>,
    ) -> FastPath {
        if let Err(status) = self.validate(request) {
            return FastPath::Done(fail(server, call.id, status));
        }
        let file = request.file.unwrap_or("");
        let conn = call.id.connection();
        // A newer request for the file ends an older one still running.
        self.supersede(server, conn, file);
        let Some(cache) = self.cache.as_mut() else {
            return FastPath::Miss(MissPlan {
                file: (!file.is_empty()).then(|| file.into()),
                key: None,
                typing: None,
            });
        };
        let parts = KeyParts::new(
            request.language,
            file,
            request.prefix,
            request.suffix,
            self.key_prefix,
            self.key_suffix,
        );
        let typing = TypingRef::new(file, request.language, request.prefix, request.suffix);
        let hit = match self.typing.continue_with(conn, &typing) {
            Some(rest) => {
                cache.count_typed_through();
                Some(rest)
            }
            None => cache.get(&parts, now).cloned(),
        };
        match hit {
            Some(hit) => {
                let latency_ms = now.saturating_duration_since(call.received_at).as_millis() as u32;
                let outcome = respond(server, call.id, &hit, latency_ms, true);
                self.typing.remember(conn, typing.to_owned(), hit);
                FastPath::Done(outcome)
            }
            None => FastPath::Miss(MissPlan {
                file: (!file.is_empty()).then(|| file.into()),
                key: Some(parts.to_owned_key()),
                typing: Some(typing.to_owned()),
            }),
        }
    }

    /// Hands a miss to the pool, on the provider runtime.
    fn dispatch(
        &mut self,
        call: &IncomingCall,
        plan: MissPlan,
        request: CompletionRequest,
    ) -> Outcome {
        let limit = call.received_at + self.timeout;
        let deadline = call.deadline.map_or(limit, |d| d.min(limit));
        let seq = self.next_seq;
        self.next_seq += 1;
        let (id, pool, done) = (call.id, self.pool.clone(), self.done.clone());
        let task = self.runtime.spawn(async move {
            // A bug in a provider must cost one call, not the answer to it.
            let result = match AssertUnwindSafe(pool.complete(&request, deadline))
                .catch_unwind()
                .await
            {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(error)) => Err(pool_status(&error)),
                Err(_) => {
                    tracing::error!(
                        "a completion provider panicked; the call fails, the daemon goes on"
                    );
                    Err(Status::new(
                        Code::Internal,
                        "a provider panicked (a bug; see the daemon log)",
                    ))
                }
            };
            // The loop is gone only at shutdown, when nobody waits for this answer.
            let _ = done.send(Finished::Completion(JobDone { id, seq, result }));
        });
        if let Some(file) = &plan.file {
            let key = (call.id.connection(), file_hash(file));
            self.by_file.insert(key, (file.clone(), call.id));
        }
        self.pending.insert(
            call.id,
            Pending {
                seq,
                deadline,
                received_at: call.received_at,
                task: task.abort_handle(),
                file: plan.file,
                key: plan.key,
                typing: plan.typing,
            },
        );
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
        if r.language.len() > MAX_LANGUAGE_BYTES {
            return Err(invalid(format!(
                "language is {} bytes, over the {MAX_LANGUAGE_BYTES}-byte limit: send the editor's language id, e.g. \"rust\"",
                r.language.len()
            )));
        }
        if let Some(file) = r.file.filter(|f| !f.is_empty()) {
            if file.len() > MAX_FILE_PATH_BYTES {
                return Err(invalid(format!(
                    "file_path is {} bytes, over the {MAX_FILE_PATH_BYTES}-byte limit",
                    file.len()
                )));
            }
            if !file.starts_with('/') {
                return Err(invalid(format!("file_path {file:?} must be absolute")));
            }
        }
        if r.context_bytes > MAX_CONTEXT_BYTES {
            return Err(invalid(format!(
                "context is {} bytes, over the {MAX_CONTEXT_BYTES}-byte limit: send the symbols near the cursor",
                r.context_bytes
            )));
        }
        Ok(())
    }

    /// Ends the call still running for the same file on the same connection.
    fn supersede(&mut self, server: &mut RpcServer, conn: ConnId, file: &str) {
        if file.is_empty() || self.by_file.is_empty() {
            return;
        }
        let key = (conn, file_hash(file));
        let Some((_, old)) = self.by_file.get(&key).filter(|(f, _)| **f == *file) else {
            return;
        };
        let old = *old;
        self.by_file.remove(&key);
        if let Some(pending) = self.pending.remove(&old) {
            pending.task.abort();
            let status = Status::new(
                Code::Cancelled,
                "superseded by a newer completion for the same file",
            );
            if server.finish(old, &status) {
                self.side_endings.push((status, pending.received_at));
            }
        }
    }

    /// The pool's answer. Returns how the call ended, if this answer ended it.
    pub fn on_done(
        &mut self,
        server: &mut RpcServer,
        done: JobDone,
        now: Instant,
    ) -> Option<Ended> {
        // A result for a call that has ended meanwhile (its stream id may be a new call's).
        if self.pending.get(&done.id).is_none_or(|p| p.seq != done.seq) {
            return None;
        }
        let pending = self.pending.remove(&done.id)?;
        self.forget_file(&pending, done.id);
        if pending.deadline <= now {
            return self.end(server, done.id, pending.received_at, deadline_status());
        }
        let answer = match done.result {
            Ok(answer) => answer,
            Err(status) => return self.end(server, done.id, pending.received_at, status),
        };
        let cached = Cached {
            completion: answer.proposal.text,
            confidence: answer.proposal.confidence,
            provider: answer.provider,
        };
        let latency_ms = now
            .saturating_duration_since(pending.received_at)
            .as_millis() as u32;
        let outcome = respond(server, done.id, &cached, latency_ms, false);
        // Silence is not cached: it often means the workspace was still being indexed.
        if let (Some(cache), Some(key)) = (self.cache.as_mut(), pending.key) {
            if !cached.completion.is_empty() {
                cache.insert(key, cached.clone(), now);
            }
        }
        if let Some(typing) = pending.typing {
            self.typing.remember(done.id.connection(), typing, cached);
        }
        match outcome {
            Outcome::Answered(status) => Some((status, pending.received_at)),
            _ => None,
        }
    }

    fn end(
        &mut self,
        server: &mut RpcServer,
        id: CallId,
        received_at: Instant,
        status: Status,
    ) -> Option<Ended> {
        server.finish(id, &status).then_some((status, received_at))
    }

    fn forget_file(&mut self, pending: &Pending, id: CallId) {
        if let Some(file) = &pending.file {
            let key = (id.connection(), file_hash(file));
            if self.by_file.get(&key).is_some_and(|(_, c)| *c == id) {
                self.by_file.remove(&key);
            }
        }
    }

    /// The client cancelled a call: stop its work. Returns when it arrived, if it was ours.
    pub fn on_cancelled(&mut self, id: CallId) -> Option<Instant> {
        let pending = self.pending.remove(&id)?;
        pending.task.abort();
        self.forget_file(&pending, id);
        Some(pending.received_at)
    }

    /// A connection closed: forget what was suggested on it. (Its calls still running were
    /// cancelled just before, one `Cancelled` event each, which aborted their work.)
    pub fn on_disconnected(&mut self, conn: ConnId) {
        self.typing.forget_connection(conn);
    }

    /// The earliest deadline of a call in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Ends calls whose deadline has passed.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) -> Vec<Ended> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        let due: Vec<CallId> = self
            .pending
            .iter()
            .filter_map(|(id, p)| (p.deadline <= now).then_some(*id))
            .collect();
        let mut ended = Vec::new();
        for id in due {
            if let Some(pending) = self.pending.remove(&id) {
                pending.task.abort();
                self.forget_file(&pending, id);
                ended.extend(self.end(server, id, pending.received_at, deadline_status()));
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
    /// Bytes of `context` (symbols, git status, project file paths).
    context_bytes: usize,
}

/// Bytes of a request's `context`, the same for the archived (rkyv, read in place) and the
/// decoded (JSON) request, whose fields have the same names and methods.
macro_rules! context_bytes {
    ($context:expr) => {
        $context.as_ref().map_or(0, |c| {
            c.lsp_symbols.as_ref().map_or(0, |s| s.len())
                + c.git_status.as_ref().map_or(0, |s| s.len())
                + c.project_files
                    .as_ref()
                    .map_or(0, |files| files.iter().map(|f| f.len() + 1).sum())
        })
    };
}
use context_bytes;

/// Longest `language` accepted: names are short ("rust", "typescriptreact"); the field is part
/// of every cache key, so its length is memory held per entry.
const MAX_LANGUAGE_BYTES: usize = 64;
/// Longest `file_path` accepted (Linux's PATH_MAX), for the same reason.
const MAX_FILE_PATH_BYTES: usize = 4096;
/// Most bytes of `context` accepted. Work on the editor's symbols grows faster than their
/// size (80,000 symbols took 8 s), and no prompt shows more than a few hundred bytes of them.
const MAX_CONTEXT_BYTES: usize = 256 * 1024;

fn file_hash(file: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    file.hash(&mut h);
    h.finish()
}

fn deadline_status() -> Status {
    Status::new(
        Code::DeadlineExceeded,
        "the completion did not finish before its deadline",
    )
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
    id: CallId,
    value: &Cached,
    latency_ms: u32,
    cached: bool,
) -> Outcome {
    let encoding = server.encoding_of(id).unwrap_or(Encoding::Rkyv);
    let response = CompletionResponse {
        completion: value.completion.clone(),
        confidence: value.confidence,
        provider: value.provider.clone(),
        latency_ms,
        cached,
    };
    match server.respond(id, |out| {
        response
            .encode(encoding, out)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the response: {e}")))
    }) {
        Some(status) => Outcome::Answered(status),
        None => Outcome::Gone,
    }
}
