//! `reaper.Chat/send`: a conversation's answer streamed as it is generated.
//!
//! On the loop: the request is validated and handed to a task on the provider runtime, which
//! reads the answer from the pool ([`Pool::chat`]) and sends each piece back over the
//! services' one channel; the loop sends it to the client as a `ChatChunk` the moment it
//! arrives. Nothing buffers the whole answer.
//!
//! Flow control, end to end: each piece carries a permit of the call's credit
//! ([`CREDIT`] pieces). A piece the state machine refuses (the client reads slower than the
//! model writes: [`Sent::WouldBlock`]) waits here with its permit until
//! [`ServerEvent::Writable`](reaper_core::rpc::ServerEvent::Writable); with the credit spent,
//! the task stops reading the provider's HTTP body, so TCP's own flow control holds the model
//! server back. A reader that stops reading costs the daemon the client's QUIC stream window,
//! [`reaper_core::rpc::MAX_UNSENT_PER_CALL`] and at most [`CREDIT`] pieces, however long the
//! answer.
//!
//! A call ends with the last chunk (`done`, with the provider, model and token counts) and an
//! OK trailer; or with the status of what went wrong, after whatever was said. A deadline
//! (`[rpc] chat_timeout`, or the call's own), a client's reset or the connection's loss aborts
//! the task, which drops the HTTP request, which stops the model generating.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use reaper_core::rpc::{CallId, IncomingCall, RpcServer, Sent};
use reaper_core::schema::{ChatChunk, ChatRequest, ChatUsage, Role};
use reaper_core::{Code, Encoding, Status, WireMessage};
use reaper_providers::{ChatAsk, ChatPiece, Pool, DEFAULT_CHAT_MAX_TOKENS, MAX_CHAT_TOKENS};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::services::errors::chat_status;
use crate::services::{Done, Finished};

/// Pieces of one answer on their way between the task and the client, at most: read from the
/// provider but not yet taken by the state machine. Past it the task stops reading.
pub const CREDIT: usize = 16;
/// Most text in one chunk: pieces that come in together are sent as one chunk up to this, and
/// a piece larger than it (no model sends one) is cut. An eighth of `[rpc] max_message_size`
/// when that is smaller: JSON may write a byte of text as six (`\u0001`), and the client
/// reads with the same limit.
const MAX_CHUNK_TEXT: usize = 64 * 1024;
/// Longest `model` or `provider` name accepted.
const MAX_NAME_BYTES: usize = 256;

/// What the task reports for one call.
#[derive(Debug)]
pub struct ChatEvent {
    id: CallId,
    seq: u64,
    step: Step,
}

/// One step of an answer.
#[derive(Debug)]
enum Step {
    /// Text to send, with the credit it holds until the state machine takes it (one permit
    /// per piece it was read as).
    Text(String, Vec<OwnedSemaphorePermit>),
    /// The answer is complete.
    Done {
        provider: String,
        model: String,
        usage: Option<ChatUsage>,
    },
    /// The answer failed (before or after some text).
    Failed(Status),
}

/// A call being answered.
struct Streaming {
    seq: u64,
    deadline: Instant,
    received_at: Instant,
    task: AbortHandle,
    encoding: Encoding,
    /// Steps the state machine has not taken yet (it said WouldBlock), oldest first.
    waiting: VecDeque<Step>,
    /// When its first chunk went out (the call's latency in `Health`).
    first_chunk: Option<Instant>,
}

/// A call that ended, with when it arrived and when its first chunk went out: for metrics.
#[derive(Debug)]
pub struct Ended {
    /// How it ended.
    pub status: Status,
    /// When its request arrived.
    pub received_at: Instant,
    /// When its first chunk went out, if one did.
    pub first_chunk: Option<Instant>,
}

/// The chat service, owned by the event loop.
pub struct ChatService {
    pool: Arc<Pool>,
    runtime: tokio::runtime::Handle,
    done: Done,
    calls: HashMap<CallId, Streaming>,
    /// Calls with text waiting for [`ChatService::flush`].
    to_flush: Vec<CallId>,
    next_seq: u64,
    timeout: Duration,
    /// Most text in one chunk ([`MAX_CHUNK_TEXT`], or less for a small `max_message_size`).
    chunk_text: usize,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

impl ChatService {
    /// The service: answers come from `pool` on `runtime`, and their pieces back on `done`.
    pub fn new(
        pool: Arc<Pool>,
        runtime: tokio::runtime::Handle,
        done: Done,
        timeout: Duration,
        max_message_size: usize,
    ) -> ChatService {
        ChatService {
            pool,
            runtime,
            done,
            calls: HashMap::new(),
            to_flush: Vec::new(),
            next_seq: 0,
            timeout,
            chunk_text: MAX_CHUNK_TEXT.min(max_message_size / 8).max(16),
        }
    }

    /// Calls being answered.
    pub fn pending(&self) -> usize {
        self.calls.len()
    }

    /// Starts answering a call; `Some` if it ended at once (a bad request).
    pub fn on_call(&mut self, server: &mut RpcServer, call: &IncomingCall) -> Option<Ended> {
        if !server.is_open(call.id) {
            // Refused by the state machine in the same read (a second message): nothing to
            // start.
            return None;
        }
        let request = match decode(call) {
            Ok(request) => request,
            Err(status) => return self.end_now(server, call, status),
        };
        let ask_check = ChatAsk {
            messages: &request.messages,
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_CHAT_MAX_TOKENS),
            model: request.model.as_deref(),
            provider: request.provider.as_deref(),
        };
        // Who may answer is decided now, so that a wrong name is an error before anything
        // leaves the loop (it is decided again in the task, from the same pool).
        let refused = self.pool.chat(ask_check).err().map(|e| chat_status(&e));
        if let Some(status) = refused {
            return self.end_now(server, call, status);
        }
        let limit = call.received_at + self.timeout;
        let deadline = call.deadline.map_or(limit, |d| d.min(limit));
        let seq = self.next_seq;
        self.next_seq += 1;
        let (id, pool, done) = (call.id, self.pool.clone(), self.done.clone());
        let task = self.runtime.spawn(async move {
            // A bug in a provider must cost this answer, not the daemon.
            let result = AssertUnwindSafe(answer(&pool, &request, id, seq, &done))
                .catch_unwind()
                .await;
            if result.is_err() {
                tracing::error!("a chat provider panicked; the call fails, the daemon goes on");
                let step = Step::Failed(Status::new(
                    Code::Internal,
                    "a provider panicked (a bug; see the daemon log)",
                ));
                let _ = done.send(Finished::Chat(ChatEvent { id, seq, step }));
            }
        });
        self.calls.insert(
            call.id,
            Streaming {
                seq,
                deadline,
                received_at: call.received_at,
                task: task.abort_handle(),
                encoding: call.encoding,
                waiting: VecDeque::new(),
                first_chunk: None,
            },
        );
        None
    }

    fn end_now(
        &mut self,
        server: &mut RpcServer,
        call: &IncomingCall,
        status: Status,
    ) -> Option<Ended> {
        server.finish(call.id, &status).then_some(Ended {
            status,
            received_at: call.received_at,
            first_chunk: None,
        })
    }

    /// A step of an answer, back on the loop. Text waits for [`ChatService::flush`], which the
    /// loop calls once it has taken every finished piece of work waiting for it: pieces that
    /// came in together then go out as one chunk (under load, one frame for several tokens;
    /// one at a time, each the moment it comes). An end or a failure is sent at once: `Some`
    /// if it ended the call.
    pub fn on_event(
        &mut self,
        server: &mut RpcServer,
        event: ChatEvent,
        now: Instant,
    ) -> Option<Ended> {
        let call = self.calls.get_mut(&event.id)?;
        // A step for a call that has ended meanwhile (its stream id may be a new call's).
        if call.seq != event.seq {
            return None;
        }
        let text = matches!(event.step, Step::Text(..));
        call.waiting.push_back(event.step);
        if text {
            if !self.to_flush.contains(&event.id) {
                self.to_flush.push(event.id);
            }
            return None;
        }
        self.deliver(server, event.id, now)
    }

    /// Sends the text that came in since the last flush; the calls that ended.
    pub fn flush(&mut self, server: &mut RpcServer, now: Instant) -> Vec<Ended> {
        let mut ended = Vec::new();
        for id in std::mem::take(&mut self.to_flush) {
            ended.extend(self.deliver(server, id, now));
        }
        ended
    }

    /// The client can take more of a call.
    pub fn on_writable(
        &mut self,
        server: &mut RpcServer,
        id: CallId,
        now: Instant,
    ) -> Option<Ended> {
        if self.calls.contains_key(&id) {
            self.deliver(server, id, now)
        } else {
            None
        }
    }

    /// Sends what waits for a call, in order, until the state machine refuses a chunk or the
    /// call ends. Texts waiting together go out as one chunk.
    fn deliver(&mut self, server: &mut RpcServer, id: CallId, now: Instant) -> Option<Ended> {
        let chunk_text = self.chunk_text;
        let status = loop {
            let call = self.calls.get_mut(&id)?;
            let step = call.waiting.pop_front()?;
            let (chunk, credit, end) = match step {
                Step::Text(mut text, mut credit) => {
                    while let Some(Step::Text(more, _)) = call.waiting.front() {
                        if text.len() + more.len() > chunk_text {
                            break;
                        }
                        if let Some(Step::Text(more, permits)) = call.waiting.pop_front() {
                            text.push_str(&more);
                            credit.extend(permits);
                        }
                    }
                    if text.len() > chunk_text {
                        // One piece larger than a chunk (no model sends one, but a provider
                        // may): the rest goes next, holding the credit until it is out.
                        // At a character's boundary: at most 3 bytes short of the limit.
                        let cut = reaper_core::text::head(&text, chunk_text).len().max(1);
                        let cut = (cut..=text.len())
                            .find(|&i| text.is_char_boundary(i))
                            .unwrap_or(text.len());
                        let rest = text.split_off(cut);
                        call.waiting
                            .push_front(Step::Text(rest, std::mem::take(&mut credit)));
                    }
                    (chunk(text, None), credit, None)
                }
                Step::Done {
                    provider,
                    model,
                    usage,
                } => {
                    let last = chunk(String::new(), Some((provider, model, usage)));
                    (last, Vec::new(), Some(Status::ok()))
                }
                Step::Failed(status) => break status,
            };
            match send(server, id, call.encoding, &chunk) {
                Sent::Sent => {
                    call.first_chunk.get_or_insert(now);
                    // The credit goes back: the task may read further.
                    drop(credit);
                    if let Some(status) = end {
                        break status;
                    }
                }
                Sent::WouldBlock => {
                    // Kept whole, credit and all, until the client has read.
                    call.waiting.push_front(match end {
                        None => Step::Text(chunk.delta, credit),
                        Some(_) => Step::Done {
                            provider: chunk.provider.unwrap_or_default(),
                            model: chunk.model.unwrap_or_default(),
                            usage: chunk.usage,
                        },
                    });
                    return None;
                }
                Sent::Closed => {
                    let (received_at, first_chunk) = self.forget(id)?;
                    return Some(Ended {
                        status: cancelled(),
                        received_at,
                        first_chunk,
                    });
                }
            }
        };
        let (received_at, first_chunk) = self.forget(id)?;
        server.finish(id, &status).then_some(Ended {
            status,
            received_at,
            first_chunk,
        })
    }

    /// Drops a call's state and stops its task: when it arrived and when its first chunk
    /// went out.
    fn forget(&mut self, id: CallId) -> Option<(Instant, Option<Instant>)> {
        let call = self.calls.remove(&id)?;
        call.task.abort();
        Some((call.received_at, call.first_chunk))
    }

    /// The client cancelled a call (or its connection went): stop its answer.
    pub fn on_cancelled(&mut self, id: CallId) -> Option<Ended> {
        self.forget(id).map(|(received_at, first_chunk)| Ended {
            status: cancelled(),
            received_at,
            first_chunk,
        })
    }

    /// The earliest deadline of a call being answered.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls.values().map(|c| c.deadline).min()
    }

    /// Ends calls whose deadline has passed, after what they have said.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) -> Vec<Ended> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        let due: Vec<(CallId, Duration)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, c)| (*id, c.deadline.saturating_duration_since(c.received_at)))
            .collect();
        let mut ended = Vec::new();
        for (id, allowed) in due {
            if let Some((received_at, first_chunk)) = self.forget(id) {
                let status = Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "the answer did not finish within {} ms (the call's deadline, or [rpc] chat_timeout)",
                        allowed.as_millis()
                    ),
                );
                if server.finish(id, &status) {
                    ended.push(Ended {
                        status,
                        received_at,
                        first_chunk,
                    });
                }
            }
        }
        ended
    }
}

fn cancelled() -> Status {
    Status::new(Code::Cancelled, "cancelled by the client")
}

/// A chunk of text, or the last one (with who answered and what it cost).
fn chunk(delta: String, last: Option<(String, String, Option<ChatUsage>)>) -> ChatChunk {
    match last {
        None => ChatChunk {
            delta,
            done: false,
            provider: None,
            model: None,
            usage: None,
        },
        Some((provider, model, usage)) => ChatChunk {
            delta,
            done: true,
            provider: Some(provider),
            model: Some(model),
            usage,
        },
    }
}

/// Sends one chunk on a call.
fn send(server: &mut RpcServer, id: CallId, encoding: Encoding, chunk: &ChatChunk) -> Sent {
    server.send_message(id, |out| {
        // Encoding a chunk cannot fail for JSON; rkyv fails only without memory.
        let _ = chunk.encode(encoding, out);
    })
}

/// The request, owned and checked.
fn decode(call: &IncomingCall) -> Result<ChatRequest, Status> {
    let request = ChatRequest::decode(call.encoding, &call.message).map_err(|e| {
        Status::new(
            Code::InvalidArgument,
            format!("reaper.Chat/send request: {e}"),
        )
    })?;
    let invalid = |message: String| Err(Status::new(Code::InvalidArgument, message));
    if !request.messages.iter().any(|m| m.role != Role::System) {
        return invalid(
            "messages holds no user message: send the conversation, ending with the user's question"
                .to_owned(),
        );
    }
    if let Some(max) = request.max_tokens {
        if max == 0 || max > MAX_CHAT_TOKENS {
            return invalid(format!(
                "max_tokens is {max}: it must be 1 to {MAX_CHAT_TOKENS}, or absent for {DEFAULT_CHAT_MAX_TOKENS}"
            ));
        }
    }
    for (field, value) in [("model", &request.model), ("provider", &request.provider)] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_NAME_BYTES) {
            return invalid(format!(
                "{field} is over {MAX_NAME_BYTES} bytes: send a name from `reaper providers`"
            ));
        }
    }
    Ok(request)
}

/// Reads the answer from the pool and sends each step back to the loop, holding one unit of
/// the call's credit per text in flight.
async fn answer(pool: &Pool, request: &ChatRequest, id: CallId, seq: u64, done: &Done) {
    let send = |step: Step| {
        // The loop is gone only at shutdown, when nobody waits for this answer.
        done.send(Finished::Chat(ChatEvent { id, seq, step }))
            .is_ok()
    };
    let ask = ChatAsk {
        messages: &request.messages,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_CHAT_MAX_TOKENS),
        model: request.model.as_deref(),
        provider: request.provider.as_deref(),
    };
    let mut answer = match pool.chat(ask) {
        Ok(answer) => answer,
        Err(error) => {
            send(Step::Failed(chat_status(&error)));
            return;
        }
    };
    let credit = Arc::new(Semaphore::new(CREDIT));
    let mut usage = None;
    loop {
        // Credit first: with none left, the provider's body is not read any further.
        let Ok(permit) = credit.clone().acquire_owned().await else {
            return;
        };
        let step = match answer.next().await {
            Some(Ok(ChatPiece::Text(text))) => Step::Text(text, vec![permit]),
            Some(Ok(ChatPiece::Usage(counted))) => {
                usage = Some(ChatUsage {
                    input_tokens: counted.input,
                    output_tokens: counted.output,
                });
                continue;
            }
            // A plain chat is given no tools: a call cannot come; ignored if one does.
            Some(Ok(ChatPiece::ToolCall(_))) => continue,
            Some(Err(error)) => {
                send(Step::Failed(chat_status(&error)));
                return;
            }
            None => {
                let (provider, model) = answer
                    .provider()
                    .map(|(p, m)| (p.to_owned(), m.to_owned()))
                    .unwrap_or_default();
                send(Step::Done {
                    provider,
                    model,
                    // Counts from before a pause cover only a part of the answer.
                    usage: usage.filter(|_| answer.yields() == 0),
                });
                return;
            }
        };
        if !send(step) {
            return;
        }
    }
}
