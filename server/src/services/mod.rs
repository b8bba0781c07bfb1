//! The services behind the RPC state machine, one room each, and the routing of calls to
//! them.
//!
//! Each room (`health`, `provider`, `completion`, `chat`, `agent`) is a module with one
//! service type that the router calls with the call and the state machine.
//! Health, Provider and Completion's feedback are answered inline, on the event loop, in the
//! same pass that decoded the request: they touch only memory. Completion answers cache hits
//! inline and sends misses to the provider pool, which runs on a tokio runtime of its own
//! (`[rpc] worker_threads` threads: reqwest needs tokio, and the loop must never wait on a
//! provider); Chat streams its answers from the same pool, and Agent runs its tasks there
//! (with the MCP servers they use). Whatever work leaves the loop comes back on one channel,
//! as a [`Finished`]: a completion's answer, a step of a chat's, an agent task's update.

pub mod agent;
pub mod chat;
pub mod completion;
pub mod errors;
pub mod health;
pub mod provider;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reaper_core::config::Config;
use reaper_core::encoding::access_archived;
use reaper_core::rpc::{CallId, ConnId, IncomingCall, RpcServer};
use reaper_core::schema::*;
use reaper_core::{transport, Code, Encoding, Method, Status, WireMessage};
use reaper_providers::{Pool, DELAY_ENV};
use tokio::sync::mpsc::UnboundedReceiver;

use self::agent::{AgentEvent, AgentService};
use self::chat::{ChatEvent, ChatService};
use self::completion::{CompletionService, Feedback, JobDone, Outcome};
use self::health::{HealthService, Snapshot};
use self::provider::ProviderService;
use crate::io::wake::{Waker, WakingSender};
use crate::metrics::Metrics;

/// What the services need to know about the transport when answering.
#[derive(Debug, Clone, Copy)]
pub struct TransportInfo {
    /// Open connections.
    pub connections: usize,
    /// Whether shutdown has begun.
    pub draining: bool,
}

/// The services' channel back to the loop: each message wakes it.
pub type Done = WakingSender<Finished>;

/// Work that left the loop, finished: the one kind of message on the services' channel.
#[derive(Debug)]
pub enum Finished {
    /// A completion the pool answered (or failed).
    Completion(JobDone),
    /// A step of a chat answer: text, its end, or its failure.
    Chat(ChatEvent),
    /// An agent task's update, or its end.
    Agent(AgentEvent),
}

/// All services, owned by the event loop.
#[derive(Debug)]
pub struct Services {
    metrics: Metrics,
    health: HealthService,
    provider: ProviderService,
    completion: CompletionService,
    chat: ChatService,
    agent: AgentService,
    /// The MCP servers agent tasks use: stopped with the services.
    mcp: Arc<reaper_mcp::McpServers>,
    feedback: Feedback,
    pool: Arc<Pool>,
    /// The configured budgets, reported by Health beside their use.
    budgets: BudgetStats,
    /// Held for its threads; shut down without waiting when the services go.
    _runtime: ProviderRuntime,
}

/// The runtime providers run on. A multi-threaded tokio runtime cannot be dropped from inside
/// another runtime (the loop's), so it is shut down in the background instead.
#[derive(Debug)]
struct ProviderRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ProviderRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why the services could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The provider runtime's threads could not be started.
    #[error("cannot start the provider threads: {0}")]
    Runtime(#[from] std::io::Error),
    /// A provider could not be set up.
    #[error(transparent)]
    Providers(#[from] reaper_providers::BuildError),
}

impl Services {
    /// Services for a daemon that started at `started`, with the provider runtime and its
    /// background probes running; the receiver yields finished work, for the event loop to pass
    /// to [`Services::on_finished`].
    /// Agent tasks keep their undo journals in `journals`.
    pub fn start(
        config: &Config,
        started: Instant,
        journals: std::path::PathBuf,
        waker: Waker,
    ) -> Result<(Services, UnboundedReceiver<Finished>), StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.rpc.worker_threads.get() as usize)
            .thread_name("provider")
            .enable_all()
            .build()?;
        let mut pool = Pool::from_config(&config.providers, &|k| std::env::var(k).ok())?
            .with_context_budget(config.completion.context_bytes as usize);
        if let Some(ms) = std::env::var(DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tracing::warn!(
                "{DELAY_ENV}={ms}: every completion is delayed by {ms} ms (fault injection)"
            );
            pool = pool.with_injected_delay(Duration::from_millis(ms));
        }
        let pool = Arc::new(pool);
        for p in pool.list() {
            tracing::info!(provider = p.name, kind = p.kind, model = p.model, status = ?p.status, "provider configured");
        }
        runtime.spawn(pool.clone().watch());
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let done_tx = Done::new(done_tx, waker);
        let completion = CompletionService::new(
            config,
            pool.clone(),
            runtime.handle().clone(),
            done_tx.clone(),
        );
        let mcp = Arc::new(reaper_mcp::McpServers::new(&config.mcp));
        let agent = AgentService::new(
            pool.clone(),
            runtime.handle().clone(),
            done_tx.clone(),
            config,
            mcp.clone(),
            journals,
        );
        let chat = ChatService::new(
            pool.clone(),
            runtime.handle().clone(),
            done_tx,
            Duration::from_millis(config.rpc.chat_timeout.get()),
            config.rpc.max_message_size.get() as usize,
        );
        let services = Services {
            metrics: Metrics::default(),
            health: HealthService::new(started),
            provider: ProviderService::new(pool.clone()),
            completion,
            chat,
            agent,
            mcp,
            feedback: Feedback::default(),
            budgets: BudgetStats {
                max_buffered_requests: config.rpc.max_buffered_requests.get(),
                max_handshakes: config.rpc.max_handshakes.get(),
                max_index_bytes: config.providers.offline.max_index_bytes.get(),
                connection_window: transport::connection_window(&config.rpc).into_inner(),
                unauthenticated_window: transport::UNAUTHENTICATED_WINDOW.into(),
                ..BudgetStats::default()
            },
            pool,
            _runtime: ProviderRuntime(Some(runtime)),
        };
        Ok((services, done_rx))
    }

    /// Work that left the loop has finished.
    pub fn on_finished(&mut self, server: &mut RpcServer, finished: Finished, now: Instant) {
        match finished {
            Finished::Completion(done) => {
                if let Some((status, received_at)) = self.completion.on_done(server, done, now) {
                    self.record(Some(Method::CompletionComplete), &status, received_at, now);
                }
            }
            Finished::Chat(event) => {
                if let Some(ended) = self.chat.on_event(server, event, now) {
                    self.record_chat(ended, now);
                }
            }
            Finished::Agent(event) => {
                if let Some(ended) = self.agent.on_event(server, event) {
                    self.record_agent(ended, now);
                }
            }
        }
    }

    /// A further message on a call (an agent task's control message).
    pub fn on_message(&mut self, server: &mut RpcServer, id: CallId, message: &[u8], now: Instant) {
        if let Some(ended) = self.agent.on_message(server, id, message) {
            self.record_agent(ended, now);
        }
    }

    /// The client of a call has sent all it will.
    pub fn on_half_closed(&mut self, id: CallId) {
        self.agent.on_half_closed(id);
    }

    /// Stops the MCP servers agent tasks started (at shutdown), waiting at most two seconds
    /// for them to exit on their own: no process is left behind either way (a session dropped
    /// kills its server).
    pub async fn stop_mcp_servers(&self) {
        let Some(runtime) = self._runtime.0.as_ref() else {
            return;
        };
        let mcp = self.mcp.clone();
        let stopping = runtime.spawn(async move { mcp.shutdown().await });
        let _ = tokio::time::timeout(Duration::from_secs(2), stopping).await;
    }

    fn record_agent(&mut self, ended: agent::Ended, now: Instant) {
        self.record(
            Some(Method::AgentExecute),
            &ended.status,
            ended.received_at,
            now,
        );
    }

    /// Sends what streamed calls received in this batch of finished work (see
    /// [`ChatService::on_event`]): call after draining the channel.
    pub fn flush_streams(&mut self, server: &mut RpcServer, now: Instant) {
        for ended in self.chat.flush(server, now) {
            self.record_chat(ended, now);
        }
    }

    /// The client of a streamed call can take more: what waits for it is sent.
    pub fn on_writable(&mut self, server: &mut RpcServer, id: CallId, now: Instant) {
        if let Some(ended) = self.chat.on_writable(server, id, now) {
            self.record_chat(ended, now);
        }
        if let Some(ended) = self.agent.on_writable(server, id) {
            self.record_agent(ended, now);
        }
    }

    /// Ends calls whose deadline passed.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) {
        for (status, received_at) in self.completion.expire(server, now) {
            self.record(Some(Method::CompletionComplete), &status, received_at, now);
        }
        for ended in self.chat.expire(server, now) {
            self.record_chat(ended, now);
        }
        for ended in self.agent.expire(server, now) {
            self.record_agent(ended, now);
        }
    }

    /// When [`Services::expire`] should next run.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.completion.next_deadline(),
            self.chat.next_deadline(),
            self.agent.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Calls still being worked on.
    pub fn in_flight(&self) -> usize {
        self.completion.pending() + self.chat.pending() + self.agent.pending()
    }

    /// The client cancelled a call.
    pub fn on_cancelled(&mut self, id: CallId, now: Instant) {
        if let Some(received_at) = self.completion.on_cancelled(id) {
            let status = Status::new(Code::Cancelled, "cancelled by the client");
            self.record(Some(Method::CompletionComplete), &status, received_at, now);
        }
        if let Some(ended) = self.chat.on_cancelled(id) {
            self.record_chat(ended, now);
        }
        if let Some(ended) = self.agent.on_cancelled(id) {
            self.record_agent(ended, now);
        }
    }

    /// Counts a chat that ended. Its latency in `Health` is the time to its first chunk (the
    /// wait a user notices; the whole answer takes as long as the model writes), or to its
    /// end when no chunk went out.
    fn record_chat(&mut self, ended: chat::Ended, now: Instant) {
        let at = ended.first_chunk.unwrap_or(now);
        self.record(Some(Method::ChatSend), &ended.status, ended.received_at, at);
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
                        let snapshot = Snapshot {
                            metrics: &self.metrics,
                            connections: info.connections,
                            draining: info.draining,
                            cache: self.completion.cache_stats(),
                            providers: self.pool.stats(),
                            feedback: self.feedback.stats(),
                            budgets: {
                                let (index_bytes, workspaces) = self.pool.index_usage();
                                BudgetStats {
                                    buffered_request_bytes: server.buffered_request_bytes() as u64,
                                    handshakes: server.handshake_count() as u32,
                                    index_bytes,
                                    workspaces,
                                    ..self.budgets.clone()
                                }
                            },
                        };
                        let response = self.health.check(snapshot, now);
                        reply(server, &call, &response)
                    }
                    Err(status) => server.finish(call.id, &status).then_some(status),
                },
                Method::ProviderList => match validate::<ProviderListRequest>(&call) {
                    Ok(()) => reply(server, &call, &self.provider.list()),
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
                Method::CompletionFeedback => {
                    match self.feedback.record(call.encoding, &call.message) {
                        Ok(()) => reply(server, &call, &FeedbackResponse {}),
                        Err(status) => server.finish(call.id, &status).then_some(status),
                    }
                }
                Method::ChatSend => {
                    if let Some(ended) = self.chat.on_call(server, &call) {
                        self.record_chat(ended, now);
                    }
                    // Counted when it ends.
                    None
                }
                Method::AgentExecute => {
                    if let Some(ended) = self.agent.on_call(server, &call) {
                        self.record_agent(ended, now);
                    }
                    // Counted when it ends.
                    None
                }
            }
        };
        // `None`: the client cancelled the call before it could be answered.
        if let Some(status) = sent {
            self.record(Some(call.method), &status, call.received_at, now);
        }
    }

    /// Counts a call the state machine refused itself (auth, routing, framing), stopping the
    /// work behind it if it had `started`.
    pub fn on_rejected(
        &mut self,
        started: Option<CallId>,
        method: Option<Method>,
        status: &Status,
        received_at: Instant,
        now: Instant,
    ) {
        if let Some(id) = started {
            // Counted once, with the status the client got.
            let _ = self.completion.on_cancelled(id);
            let _ = self.chat.on_cancelled(id);
            let _ = self.agent.on_cancelled(id);
        }
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
