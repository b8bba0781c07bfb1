//! The services behind the RPC state machine, and the routing of calls to them.
//!
//! Health and Provider are answered inline, on the event loop, in the same pass that decoded the
//! request: they touch only in-memory state. Completion, Chat and Agent are routed but not built
//! yet; they answer UNIMPLEMENTED with a message rather than anything that looks like output.

use std::time::Instant;

use reaper_core::encoding::access_archived;
use reaper_core::rpc::{IncomingCall, RpcServer};
use reaper_core::schema::*;
use reaper_core::{Code, Encoding, Method, Status, WireMessage};

use crate::metrics::Metrics;

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
    providers: Vec<ProviderInfo>,
}

impl Services {
    /// Services for a daemon that started at `started`.
    pub fn new(started: Instant) -> Services {
        Services {
            started,
            metrics: Metrics::default(),
            // The embedded offline provider arrives with the Completion service; until then the
            // honest list is empty.
            providers: Vec::new(),
        }
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
                            providers: self.providers.clone(),
                        };
                        reply(server, &call, &response)
                    }
                    Err(status) => server.finish(call.id, &status).then_some(status),
                },
                Method::CompletionComplete | Method::ChatSend | Method::AgentExecute => {
                    let status = Status::new(
                        Code::Unimplemented,
                        format!(
                            "{} is not built yet in reaperd {}: only reaper.Health/check and reaper.Provider/list are served",
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
