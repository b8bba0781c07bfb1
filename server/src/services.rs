//! The services behind the RPC state machine, and the routing of calls to them.
//!
//! Health and Provider are answered inline, on the event loop, in the same pass that decoded the
//! request: they touch only in-memory state. Completion answers cache hits inline and sends
//! misses to its workers (see [`crate::completion`]). Chat and Agent are routed but not built
//! yet; they answer UNIMPLEMENTED with a message rather than anything that looks like output.

use std::sync::Arc;
use std::time::Instant;

use reaper_core::config::Config;
use reaper_core::encoding::access_archived;
use reaper_core::rpc::{CallId, ConnId, IncomingCall, RpcServer};
use reaper_core::schema::*;
use reaper_core::{Code, Encoding, Method, Status, WireMessage};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::completion::pool::DELAY_ENV;
use crate::completion::{CompletionService, JobDone, OfflineProvider, Outcome, ProviderPool};
use crate::metrics::Metrics;
use crate::offline::{IndexLimits, Workspaces};

/// What the services need to know about the transport when answering.
#[derive(Debug, Clone, Copy)]
pub struct TransportInfo {
    /// Open connections.
    pub connections: usize,
    /// Whether shutdown has begun.
    pub draining: bool,
}

/// All services, owned by the event loop.
#[derive(Debug)]
pub struct Services {
    started: Instant,
    metrics: Metrics,
    pool: Arc<ProviderPool>,
    completion: CompletionService,
}

impl Services {
    /// Services for a daemon that started at `started`, with their worker threads; the
    /// receiver yields the workers' answers, for the event loop to pass to
    /// [`Services::on_completion_done`].
    pub fn start(
        config: &Config,
        started: Instant,
    ) -> std::io::Result<(Services, UnboundedReceiver<JobDone>)> {
        let offline = &config.providers.offline;
        let workspaces = Workspaces::new(IndexLimits {
            max_file_bytes: offline.max_file_bytes.get() as u64,
            max_workspace_bytes: offline.max_workspace_bytes.get() as usize,
        });
        let mut pool =
            ProviderPool::new(Arc::new(OfflineProvider::new(workspaces, &offline.roots)));
        if let Some(ms) = std::env::var(DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tracing::warn!(
                "{DELAY_ENV}={ms}: every completion is delayed by {ms} ms (fault injection)"
            );
            pool = pool.with_injected_delay(std::time::Duration::from_millis(ms));
        }
        let pool = Arc::new(pool);
        let workers = config.rpc.worker_threads.get() as usize;
        let (completion, done) = CompletionService::start(config, pool.clone(), workers)?;
        let services = Services {
            started,
            metrics: Metrics::default(),
            pool,
            completion,
        };
        Ok((services, done))
    }

    /// A worker finished a completion.
    pub fn on_completion_done(&mut self, server: &mut RpcServer, done: JobDone, now: Instant) {
        if let Some((status, received_at)) = self.completion.on_done(server, done, now) {
            self.record(Some(Method::CompletionComplete), &status, received_at, now);
        }
    }

    /// Ends calls whose deadline passed.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) {
        for (status, received_at) in self.completion.expire(server, now) {
            self.record(Some(Method::CompletionComplete), &status, received_at, now);
        }
    }

    /// When [`Services::expire`] should next run.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.completion.next_deadline()
    }

    /// Calls still being worked on.
    pub fn in_flight(&self) -> usize {
        self.completion.pending()
    }

    /// The client cancelled a call.
    pub fn on_cancelled(&mut self, id: CallId, now: Instant) {
        if let Some(received_at) = self.completion.on_cancelled(id) {
            let status = Status::new(Code::Cancelled, "cancelled by the client");
            self.record(Some(Method::CompletionComplete), &status, received_at, now);
        }
    }

    /// A connection closed.
    pub fn on_disconnected(&mut self, conn: ConnId) {
        self.completion.on_disconnected(conn);
    }

    /// Serves one call.
    pub fn on_call(
        &mut self,
        server: &mut RpcServer,
        call: IncomingCall,
        info: TransportInfo,
        now: Instant,
    ) {
        let sent = if call.deadline.is_some_and(|d| d <= now) {
            let status = Status::new(
                Code::DeadlineExceeded,
                "the call's deadline passed before it was served",
            );
            server.finish(call.id, &status).then_some(status)
        } else {
            match call.method {
                Method::HealthCheck => match validate::<HealthRequest>(&call) {
                    Ok(()) => {
                        let response = self.health(info, now);
                        reply(server, &call, &response)
                    }
                    Err(status) => server.finish(call.id, &status).then_some(status),
                },
                Method::ProviderList => match validate::<ProviderListRequest>(&call) {
                    Ok(()) => {
                        let response = ProviderListResponse {
                            providers: self.pool.list(),
                        };
                        reply(server, &call, &response)
                    }
                    Err(status) => server.finish(call.id, &status).then_some(status),
                },
                Method::CompletionComplete => {
                    let outcome = self.completion.on_call(server, &call, now);
                    for (status, received_at) in self.completion.take_side_endings() {
                        self.record(Some(Method::CompletionComplete), &status, received_at, now);
                    }
                    match outcome {
                        Outcome::Answered(status) => Some(status),
                        Outcome::Pending | Outcome::Gone => None,
                    }
                }
                Method::ChatSend | Method::AgentExecute => {
                    let status = Status::new(
                        Code::Unimplemented,
                        format!(
                            "{} is not built yet in reaperd {}: Health, Provider and Completion are served",
                            call.method,
                            reaper_core::VERSION
                        ),
                    );
                    server.finish(call.id, &status).then_some(status)
                }
            }
        };
        // `None`: the client cancelled the call before it could be answered.
        if let Some(status) = sent {
            self.record(Some(call.method), &status, call.received_at, now);
        }
    }

    /// Counts a call the state machine refused itself (auth, routing, framing).
    pub fn on_rejected(
        &mut self,
        method: Option<Method>,
        status: &Status,
        received_at: Instant,
        now: Instant,
    ) {
        self.record(method, status, received_at, now);
    }

    fn record(
        &mut self,
        method: Option<Method>,
        status: &Status,
        received_at: Instant,
        now: Instant,
    ) {
        let latency = now.saturating_duration_since(received_at);
        self.metrics.record(method, status.is_ok(), latency);
        tracing::debug!(
            method = method.map_or("(unknown)", Method::path),
            status = status.code.name(),
            latency_us = latency.as_micros() as u64,
            message = %status.message,
            "call"
        );
    }

    fn health(&self, info: TransportInfo, now: Instant) -> HealthResponse {
        HealthResponse {
            status: if info.draining {
                ServingStatus::Draining
            } else {
                ServingStatus::Serving
            },
            version: reaper_core::VERSION.to_owned(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            connections: info.connections as u32,
            requests: self.metrics.requests(),
            errors: self.metrics.errors(),
            error_rate: self.metrics.error_rate(),
            calls: self.metrics.per_method(),
            latency: self.metrics.latency(),
            cache: {
                let (c, entries) = self.completion.cache_stats();
                CacheStats {
                    entries: entries as u64,
                    hits: c.hits,
                    misses: c.misses,
                    evictions: c.evictions,
                    typed_through: c.typed_through,
                }
            },
        }
    }
}

/// Answers `call` with `message`, encoded straight into the reply buffer.
fn reply<T: WireMessage>(
    server: &mut RpcServer,
    call: &IncomingCall,
    message: &T,
) -> Option<Status> {
    server.respond(call.id, |out| {
        message.encode(call.encoding, out).map_err(|error| {
            Status::new(
                Code::Internal,
                format!("cannot encode the response: {error}"),
            )
        })
    })
}

/// Checks a request is a well-formed `T` in the call's encoding. rkyv requests are validated in
/// place (no copy); JSON is parsed.
fn validate<T>(call: &IncomingCall) -> Result<(), Status>
where
    T: WireMessage + rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Portable,
{
    let result = match call.encoding {
        Encoding::Rkyv => access_archived::<T>(&call.message).map(|_| ()),
        Encoding::Json => T::decode(Encoding::Json, &call.message).map(|_| ()),
    };
    result.map_err(|error| {
        Status::new(
            Code::InvalidArgument,
            format!("{} request: {error}", call.method),
        )
    })
}
