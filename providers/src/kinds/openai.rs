//! `kind = "openai"`: any OpenAI-compatible server (llama.cpp, vLLM, LM Studio, OpenAI).
//!
//! When the server is llama.cpp and its model has FIM tokens, completions go to its own
//! `/infill` endpoint, which applies the model's tokens and takes the repository context as
//! `input_extra` files; the first `/infill` that answers 404 or 501 ("not supported by this
//! model") switches the provider to `/v1/completions` for good. There the prompt is the model
//! family's FIM template (or the user's `fim_template`), or for a model of no known family the
//! text before the cursor; a chat-only model (`gpt-4o`) is asked to fill the hole through
//! `/v1/chat/completions` instead. Chat is `/v1/chat/completions`; the probe lists
//! `/v1/models`. Every answer is streamed, so dropping the request stops the server.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use reaper_core::schema::{CompletionRequest, Role};
use serde::Deserialize;
use serde_json::json;

use super::{answer_text, millis_until, role_name, Remote, MODEL_CONFIDENCE};
use crate::error::ProviderError;
use crate::http::Body;
use crate::prompt::{self, Around, Family, Template};
use crate::provider::{
    Capabilities, ChatInput, ChatPiece, ChatStream, CompletionInput, ProbeReport, Proposal,
    TokenUsage,
};
use crate::stream::{SseItem, SseReader};
use crate::tools::{self, CallParts, ConverseInput};

/// Whether `/infill` works, learnt from the server.
const INFILL_UNKNOWN: u8 = 0;
const INFILL_YES: u8 = 1;
const INFILL_NO: u8 = 2;

/// Largest streamed completion accepted, in bytes.
const MAX_COMPLETION_STREAM: usize = 1024 * 1024;
/// Largest streamed chat answer accepted, in bytes.
const MAX_CHAT_STREAM: usize = 32 * 1024 * 1024;

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAi {
    remote: Remote,
    infill: AtomicU8,
    template: Template,
    /// llama.cpp's `total_slots` (0: not known).
    slots: AtomicUsize,
    /// Whether the probe found a server that continues a last assistant message.
    continues: AtomicBool,
}

impl OpenAi {
    pub(crate) fn new(remote: Remote) -> OpenAi {
        // A template of the user's own replaces the server's FIM altogether.
        let infill = if remote.settings.fim_template.is_some() {
            INFILL_NO
        } else {
            INFILL_UNKNOWN
        };
        let template = Template::choose(
            remote.settings.fim_template.as_deref(),
            &remote.settings.model,
        );
        // A chat-only model has no /infill either.
        let infill = if template == Template::Family(Family::Chat) {
            INFILL_NO
        } else {
            infill
        };
        OpenAi {
            remote,
            infill: AtomicU8::new(infill),
            template,
            slots: AtomicUsize::new(0),
            continues: AtomicBool::new(false),
        }
    }

    /// The server's root, where llama.cpp's own endpoints live (`/infill`): the base URL
    /// without its `/v1`.
    fn root_url(&self, path: &str) -> String {
        let base = &self.remote.settings.base_url;
        format!("{}{path}", base.strip_suffix("/v1").unwrap_or(base))
    }

    /// Whether the server is one known to continue a last assistant message: llama.cpp (by
    /// itself) or vLLM (told with `continue_final_message`), as its models listing says
    /// (`owned_by`). Other OpenAI-compatible servers may start a new answer instead.
    fn continues_answers_now(&self) -> bool {
        self.continues.load(Ordering::Relaxed)
    }

    /// How many requests llama.cpp generates for at once, from its `/props` (other servers do
    /// not say).
    fn backend_slots_now(&self) -> Option<usize> {
        match self.slots.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The model chat answers come from.
    fn chat_model_now(&self) -> &str {
        &self.remote.settings.model
    }

    /// What it can do now.
    fn capabilities_now(&self) -> Capabilities {
        Capabilities::remote(
            self.template.fills_in_the_middle() || self.infill.load(Ordering::Relaxed) != INFILL_NO,
        )
    }

    /// POSTs `body` to `url` and reads the answer as server-sent events, at most `limit`
    /// bytes. An answer that is not an event stream (LM Studio answers an unknown route with
    /// 200 and a JSON error) is `Malformed`, with the server's words.
    async fn stream(
        &self,
        url: &str,
        body: &serde_json::Value,
        limit: usize,
    ) -> Result<SseReader, ProviderError> {
        let request = self
            .remote
            .with_bearer(self.remote.http.post_json(url, body))?;
        let response = self
            .remote
            .http
            .send(url, request, &self.remote.auth_hint())
            .await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !content_type.starts_with("text/event-stream") {
            let bytes = Body::new(url, response, 64 * 1024)
                .bytes()
                .await
                .unwrap_or_default();
            return Err(ProviderError::Malformed {
                url: url.to_owned(),
                detail: format!(
                    "expected an event stream, got {content_type:?}: {}",
                    crate::http::error_message(&bytes)
                ),
            });
        }
        Ok(SseReader::new(Body::new(url, response, limit)))
    }

    async fn complete_inner(&self, input: CompletionInput<'_>) -> Result<Proposal, ProviderError> {
        let around = Around::of(input.request, input.context);
        if self.infill.load(Ordering::Relaxed) != INFILL_NO {
            let unknown = self.infill.load(Ordering::Relaxed) == INFILL_UNKNOWN;
            match self.infill(input, around).await {
                // No such endpoint (404/405), no FIM tokens (llama.cpp's 501), or, the first
                // time, something that is not an /infill answer at all.
                Err(
                    ref error @ (ProviderError::Http {
                        status: 404 | 405 | 501,
                        ..
                    }
                    | ProviderError::Malformed { .. }),
                ) if unknown || !matches!(error, ProviderError::Malformed { .. }) => {
                    tracing::info!(
                        provider = self.remote.name,
                        reason = %error,
                        "/infill is not available: completing from the text before the cursor with /v1/completions"
                    );
                    self.infill.store(INFILL_NO, Ordering::Relaxed);
                }
                other => {
                    if other.is_ok() {
                        self.infill.store(INFILL_YES, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        let request = input.request;
        let Some(prompt) = self
            .template
            .prompt(&around, input.context, &request.language)
        else {
            return self.fill_hole_by_chat(input, around).await;
        };
        let url = self.remote.url("/completions");
        let body = json!({
            "model": self.remote.settings.model,
            "prompt": prompt,
            "max_tokens": self.remote.settings.max_tokens.get(),
            "temperature": 0.1,
            "stream": true,
            "stop": self.template.stop(request),
        });
        let mut events = self.stream(&url, &body, MAX_COMPLETION_STREAM).await?;
        let text = completion_text(&mut events).await?;
        Ok(proposal(request, &text))
    }

    /// A chat-only model fills the hole when asked in words.
    async fn fill_hole_by_chat(
        &self,
        input: CompletionInput<'_>,
        around: Around<'_>,
    ) -> Result<Proposal, ProviderError> {
        let url = self.remote.url("/chat/completions");
        let user = prompt::hole_filler_user(input.request, around, input.context);
        let body = json!({
            "model": self.remote.settings.model,
            "messages": [
                {"role": "system", "content": prompt::HOLE_FILLER_SYSTEM},
                {"role": "user", "content": user},
            ],
            "max_tokens": self.remote.settings.max_tokens.get(),
            "temperature": 0.0,
            "stream": true,
        });
        let deltas = chat_deltas(self.stream(&url, &body, MAX_COMPLETION_STREAM).await?);
        let text = answer_text(deltas).await?;
        Ok(proposal(input.request, prompt::strip_fences(&text)))
    }

    /// llama.cpp's `/infill`: prefix and suffix go separately, and the server applies the
    /// model's own FIM tokens.
    async fn infill(
        &self,
        input: CompletionInput<'_>,
        around: Around<'_>,
    ) -> Result<Proposal, ProviderError> {
        let url = self.root_url("/infill");
        let extra: Vec<_> = input
            .context
            .snippets_far_to_near()
            .map(|s| json!({"filename": s.path, "text": s.text}))
            .collect();
        let body = json!({
            "input_prefix": around.prefix,
            "input_suffix": around.suffix,
            "input_extra": extra,
            "n_predict": self.remote.settings.max_tokens.get(),
            "t_max_predict_ms": millis_until(input.deadline),
            "cache_prompt": true,
            "temperature": 0.1,
            "stream": true,
            "stop": prompt::stop(input.request),
        });
        let mut events = self.stream(&url, &body, MAX_COMPLETION_STREAM).await?;
        let mut text = String::new();
        // `/infill` streams llama.cpp's native chunks and ends with `"stop": true`, no [DONE].
        loop {
            match events.next_json::<InfillChunk>().await? {
                None => {
                    return Err(ProviderError::Dropped {
                        url,
                        detail: format!("no final chunk after {} bytes of text", text.len()),
                    })
                }
                Some(SseItem::Done) => break,
                Some(SseItem::Data { data, .. }) => {
                    if let Some(error) = data.error {
                        return Err(ProviderError::Stream {
                            url,
                            message: error.message(),
                        });
                    }
                    text.push_str(&data.content);
                    if data.stop {
                        break;
                    }
                }
            }
        }
        Ok(proposal(input.request, &text))
    }

    async fn chat_inner<'a>(&'a self, input: ChatInput<'a>) -> Result<ChatStream, ProviderError> {
        let url = self.remote.url("/chat/completions");
        let body = chat_body(&self.remote.settings.model, input, true);
        Ok(chat_deltas(
            self.stream(&url, &body, MAX_CHAT_STREAM).await?,
        ))
    }

    /// llama.cpp's `total_slots`, from `GET /props`.
    async fn total_slots(&self) -> Option<usize> {
        #[derive(Deserialize)]
        struct Props {
            total_slots: usize,
        }
        let url = self.root_url("/props");
        let request = self.remote.with_bearer(self.remote.http.get(&url)).ok()?;
        let response = self
            .remote
            .http
            .send(&url, request, &self.remote.auth_hint())
            .await
            .ok()?;
        let props: Props = Body::new(&url, response, crate::http::MAX_BODY)
            .json()
            .await
            .ok()?;
        (props.total_slots > 0).then_some(props.total_slots)
    }

    async fn converse_inner(&self, input: ConverseInput<'_>) -> Result<ChatStream, ProviderError> {
        let url = self.remote.url("/chat/completions");
        let mut body = json!({
            "model": self.remote.settings.model,
            "messages": tools::openai_messages(input.turns, false),
            "max_tokens": input.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !input.tools.is_empty() {
            body["tools"] = json!(tools::openai_tools(input.tools));
        }
        Ok(chat_deltas(
            self.stream(&url, &body, MAX_CHAT_STREAM).await?,
        ))
    }

    async fn probe_inner(&self) -> Result<ProbeReport, ProviderError> {
        let models = self
            .remote
            .list_models(&self.remote.url("/models"), |r| self.remote.with_bearer(r))
            .await?;
        let owned_by = |owner: &str| {
            models
                .data
                .iter()
                .any(|m| m.owned_by.as_deref() == Some(owner))
        };
        let llama_cpp = owned_by("llamacpp");
        self.continues
            .store(llama_cpp || owned_by("vllm"), Ordering::Relaxed);
        if llama_cpp {
            // How many requests it serves at once: a chat gives way to a completion only when
            // the two cannot both be served (`chat_yields`). Not knowing is no failure.
            if let Some(slots) = self.total_slots().await {
                self.slots.store(slots, Ordering::Relaxed);
            }
        }
        // Only llama.cpp has /infill; on any other server the first completion need not try.
        if !llama_cpp {
            let _ = self.infill.compare_exchange(
                INFILL_UNKNOWN,
                INFILL_NO,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let note = (self.infill.load(Ordering::Relaxed) == INFILL_NO
            && !self.template.fills_in_the_middle())
        .then(|| format!("no FIM for model {:?} (no /infill, no known family): completions see only the text before the cursor; set fim_template to a family ({}) or a template if the model was trained with FIM tokens", self.remote.settings.model, Family::names().collect::<Vec<_>>().join(", ")));
        Ok(ProbeReport { note })
    }
}

remote_provider!(OpenAi, "openai");

/// The text of an OpenAI-style streamed completion (`choices[].text`, first choice), to
/// `[DONE]`; an `error` object mid-stream ends it with the server's message. Copilot's
/// completions stream the same way.
pub(crate) async fn completion_text(events: &mut SseReader) -> Result<String, ProviderError> {
    let mut text = String::new();
    let mut finished = false;
    loop {
        match events.next_json::<Chunk>().await? {
            // Some servers end the stream after the last choice without [DONE].
            None if finished => return Ok(text),
            None => {
                return Err(ProviderError::Dropped {
                    url: events.url().to_owned(),
                    detail: format!("no [DONE] after {} bytes of text", text.len()),
                })
            }
            Some(SseItem::Done) => return Ok(text),
            Some(SseItem::Data { data, .. }) => {
                if let Some(error) = data.error {
                    return Err(ProviderError::Stream {
                        url: events.url().to_owned(),
                        message: error.message(),
                    });
                }
                for choice in data.choices.into_iter().filter(|c| c.index == 0) {
                    text.push_str(choice.text.as_deref().unwrap_or(""));
                    finished |= choice.finish_reason.is_some();
                }
            }
        }
    }
}

/// A model's answer to `request`, tidied ([`prompt::tidy`]), as a proposal.
pub(crate) fn proposal(request: &CompletionRequest, answer: &str) -> Proposal {
    let text = prompt::tidy::tidy(&request.prefix, &request.suffix, answer);
    let confidence = if text.is_empty() {
        0.0
    } else {
        MODEL_CONFIDENCE
    };
    Proposal { text, confidence }
}

/// The body of an OpenAI-style streamed chat request (Copilot's chat speaks it too). With
/// `include_usage` the server is asked for the token counts in a last chunk (OpenAI sends
/// them only when asked; llama.cpp and vLLM honour the same option).
pub(crate) fn chat_body(
    model: &str,
    input: ChatInput<'_>,
    include_usage: bool,
) -> serde_json::Value {
    let mut messages = Vec::with_capacity(input.messages.len() + 1);
    if let Some(system) = input.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in input.messages {
        messages.push(json!({"role": role_name(&m.role), "content": m.content}));
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": input.max_tokens,
        "stream": true,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    if input
        .messages
        .last()
        .is_some_and(|m| m.role == Role::Assistant)
    {
        // An answer to go on from (a chat that gave way to a completion): llama.cpp
        // continues a last assistant message by itself; vLLM needs to be told.
        body["continue_final_message"] = json!(true);
        body["add_generation_prompt"] = json!(false);
    }
    body
}

/// The pieces of an OpenAI-style chat stream (text deltas, and the token counts if the server
/// sends them), ending at `[DONE]`.
pub(crate) fn chat_deltas(events: SseReader) -> ChatStream {
    struct State {
        events: SseReader,
        finished: bool,
        /// Read but not given out yet: a chunk can carry text, the end of tool calls and the
        /// counts at once.
        pending: VecDeque<ChatPiece>,
        /// Tool calls streamed in pieces, until their choice finishes.
        calls: CallParts,
        ended: bool,
    }
    let state = State {
        events,
        finished: false,
        pending: VecDeque::new(),
        calls: CallParts::default(),
        ended: false,
    };
    Box::pin(futures::stream::try_unfold(state, |mut state| async move {
        loop {
            if let Some(piece) = state.pending.pop_front() {
                return Ok(Some((piece, state)));
            }
            if state.ended {
                return Ok(None);
            }
            match state.events.next_json::<ChatChunk>().await? {
                // Some servers end the stream after the last choice without [DONE].
                None if state.finished => state.ended = true,
                None => {
                    return Err(ProviderError::Dropped {
                        url: state.events.url().to_owned(),
                        detail: "no [DONE] and no finish_reason".to_owned(),
                    })
                }
                Some(SseItem::Done) => state.ended = true,
                Some(SseItem::Data { data, .. }) => {
                    if let Some(error) = data.error {
                        return Err(ProviderError::Stream {
                            url: state.events.url().to_owned(),
                            message: error.message(),
                        });
                    }
                    let mut delta = String::new();
                    let mut finished = false;
                    for choice in data.choices {
                        if let Some(d) = choice.delta {
                            if let Some(text) = d.content {
                                delta.push_str(&text);
                            }
                            if let Some(calls) = &d.tool_calls {
                                state.calls.feed(calls);
                            }
                        }
                        finished |= choice.finish_reason.is_some();
                    }
                    state.finished |= finished;
                    if !delta.is_empty() {
                        state.pending.push_back(ChatPiece::Text(delta));
                    }
                    if finished {
                        let calls = state.calls.finish();
                        state
                            .pending
                            .extend(calls.into_iter().map(ChatPiece::ToolCall));
                    }
                    if let Some(u) = data.usage {
                        state.pending.push_back(ChatPiece::Usage(TokenUsage {
                            input: u.prompt_tokens,
                            output: u.completion_tokens,
                        }));
                    }
                    continue;
                }
            }
            // The end: calls whose choice never said it finished are still calls.
            let calls = state.calls.finish();
            state
                .pending
                .extend(calls.into_iter().map(ChatPiece::ToolCall));
        }
    }))
}

/// A streamed `/v1/completions` chunk.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    #[serde(default)]
    index: u32,
    text: Option<String>,
    finish_reason: Option<String>,
}

/// A streamed `/infill` chunk (llama.cpp's native format).
#[derive(Debug, Deserialize)]
struct InfillChunk {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    error: Option<ApiError>,
}

/// A streamed `/v1/chat/completions` chunk.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChatChoice>,
    error: Option<ApiError>,
    usage: Option<Usage>,
}

/// Token counts (`usage` of a last chunk, when asked for with `include_usage`).
#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    delta: Option<ChatDelta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatDelta {
    content: Option<String>,
    /// Tool calls, streamed in pieces by index.
    tool_calls: Option<serde_json::Value>,
}

/// An error object inside a stream: `{"message": ...}` (OpenAI, llama.cpp) or a bare string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ApiError {
    Object {
        #[serde(default)]
        message: String,
    },
    Text(String),
}

impl ApiError {
    pub(crate) fn message(self) -> String {
        match self {
            ApiError::Object { message } | ApiError::Text(message) => message,
        }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelList {
    #[serde(default)]
    pub(crate) data: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ModelEntry {
    pub(crate) id: String,
    /// `llamacpp` on llama.cpp's server.
    pub(crate) owned_by: Option<String>,
}
