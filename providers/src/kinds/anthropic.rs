//! `kind = "anthropic"`: Anthropic's Messages API (and servers that speak it, such as
//! llama.cpp's `/v1/messages`).
//!
//! Claude models are chat models, so a completion is a hole-filling request: the file with a
//! `<CURSOR>` marker, and an instruction to answer with exactly the code that goes there. The
//! answer streams as server-sent events: `message_start`, `content_block_start`,
//! `content_block_delta` (`text_delta`), `content_block_stop`, `message_delta`,
//! `message_stop`, with `ping`s between and `error` (e.g. `overloaded_error`) in place of
//! the rest. The probe lists `/v1/models`.

use serde::Deserialize;
use serde_json::json;

use super::{role_name, Remote};
use crate::error::ProviderError;
use crate::http::{Body, DEFAULT_RETRY_AFTER};
use crate::kinds::openai::proposal;
use crate::prompt::{self, Around};
use crate::provider::{
    Capabilities, ChatInput, ChatPiece, ChatStream, CompletionInput, ProbeReport, Proposal,
    TokenUsage,
};
use crate::stream::{SseItem, SseReader};
use crate::tools::{self, ConverseInput, ToolCall};

/// The API version this client speaks (sent as `anthropic-version`).
const API_VERSION: &str = "2023-06-01";
/// Largest streamed answer accepted, in bytes.
const MAX_STREAM: usize = 32 * 1024 * 1024;

/// An Anthropic provider.
#[derive(Debug)]
pub struct Anthropic {
    remote: Remote,
}

impl Anthropic {
    pub(crate) fn new(remote: Remote) -> Anthropic {
        Anthropic { remote }
    }

    fn with_headers(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let request = request.header("anthropic-version", API_VERSION);
        Ok(match self.remote.key()? {
            Some(key) => request.header("x-api-key", key.header("")),
            None => request,
        })
    }

    /// Starts a `/v1/messages` stream.
    async fn messages(&self, body: serde_json::Value) -> Result<Deltas, ProviderError> {
        let url = self.remote.url("/v1/messages");
        let request = self.with_headers(self.remote.http.post_json(&url, &body))?;
        let response = self
            .remote
            .http
            .send(&url, request, &self.remote.auth_hint())
            .await?;
        Ok(Deltas {
            events: SseReader::new(Body::new(&url, response, MAX_STREAM)),
            usage: TokenUsage::default(),
            tool: None,
        })
    }

    /// The Messages API continues a last assistant message (its "prefill").
    fn continues_answers_now(&self) -> bool {
        true
    }

    /// Its server does not say how many requests it serves at once.
    fn backend_slots_now(&self) -> Option<usize> {
        None
    }

    /// The model chat answers come from.
    fn chat_model_now(&self) -> &str {
        &self.remote.settings.model
    }

    /// What it can do now.
    fn capabilities_now(&self) -> Capabilities {
        Capabilities::remote(true)
    }

    async fn complete_inner(&self, input: CompletionInput<'_>) -> Result<Proposal, ProviderError> {
        let around = Around::of(input.request, input.context);
        let body = json!({
            "model": self.remote.settings.model,
            "max_tokens": self.remote.settings.max_tokens.get(),
            "temperature": 0.0,
            "system": prompt::HOLE_FILLER_SYSTEM,
            "messages": [{"role": "user", "content": prompt::hole_filler_user(input.request, around, input.context)}],
            "stream": true,
        });
        let mut deltas = self.messages(body).await?;
        let mut text = String::new();
        while let Some(piece) = deltas.next().await? {
            if let ChatPiece::Text(delta) = piece {
                text.push_str(&delta);
            }
        }
        Ok(proposal(input.request, prompt::strip_fences(&text)))
    }

    async fn chat_inner<'a>(&'a self, input: ChatInput<'a>) -> Result<ChatStream, ProviderError> {
        // The Messages API takes the system prompt apart and only user/assistant turns.
        let mut system: Vec<&str> = input.system.into_iter().collect();
        let mut messages = Vec::new();
        for m in input.messages {
            match role_name(&m.role) {
                "system" => system.push(&m.content),
                role => messages.push(json!({"role": role, "content": m.content})),
            }
        }
        let mut body = json!({
            "model": self.remote.settings.model,
            "max_tokens": input.max_tokens,
            "messages": messages,
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        let deltas = self.messages(body).await?;
        Ok(Box::pin(futures::stream::try_unfold(
            deltas,
            |mut deltas| async move { Ok(deltas.next().await?.map(|delta| (delta, deltas))) },
        )))
    }

    async fn converse_inner(&self, input: ConverseInput<'_>) -> Result<ChatStream, ProviderError> {
        let (system, messages) = tools::anthropic_messages(input.turns);
        let mut body = json!({
            "model": self.remote.settings.model,
            "max_tokens": input.max_tokens,
            "messages": messages,
            "stream": true,
        });
        if let Some(system) = system {
            body["system"] = json!(system);
        }
        if !input.tools.is_empty() {
            body["tools"] = json!(tools::anthropic_tools(input.tools));
        }
        let deltas = self.messages(body).await?;
        Ok(Box::pin(futures::stream::try_unfold(
            deltas,
            |mut deltas| async move { Ok(deltas.next().await?.map(|piece| (piece, deltas))) },
        )))
    }

    async fn probe_inner(&self) -> Result<ProbeReport, ProviderError> {
        // The list is paginated (20 by default); one page of 1,000 holds every model.
        let url = self.remote.url("/v1/models?limit=1000");
        self.remote
            .list_models(&url, |r| self.with_headers(r))
            .await?;
        Ok(ProbeReport {
            note: Some(
                "a chat model: completions are asked as a fill-in-the-hole instruction".to_owned(),
            ),
        })
    }
}

remote_provider!(Anthropic, "anthropic");

/// The pieces of a Messages stream.
struct Deltas {
    events: SseReader,
    /// The counts so far: the prompt's from `message_start`, the answer's from
    /// `message_delta` (cumulative).
    usage: TokenUsage,
    /// The tool call being streamed: its id, name and input so far.
    tool: Option<(String, String, String)>,
}

impl Deltas {
    /// The next piece: text, or the counts after a `message_delta`; `None` after
    /// `message_stop`.
    async fn next(&mut self) -> Result<Option<ChatPiece>, ProviderError> {
        loop {
            let item = self.events.next_json::<serde_json::Value>().await?;
            let url = self.events.url().to_owned();
            let (name, value) = match item {
                None => {
                    return Err(ProviderError::Dropped {
                        url,
                        detail: "no message_stop".to_owned(),
                    })
                }
                Some(SseItem::Done) => return Ok(None),
                Some(SseItem::Data { event, data }) => (event, data),
            };
            // Anthropic sends `{"type": "error", "error": {...}}`; llama.cpp's `/v1/messages`
            // sends its bare error object under `event: error`.
            if name == "error" || value.get("type").and_then(|t| t.as_str()) == Some("error") {
                let body = value.get("error").cloned().unwrap_or(value);
                let error: ErrorBody = serde_json::from_value(body).unwrap_or_default();
                return Err(match error.kind.as_str() {
                    "overloaded_error" | "rate_limit_error" => ProviderError::RateLimited {
                        url,
                        status: if error.kind == "overloaded_error" {
                            529
                        } else {
                            429
                        },
                        retry_after: DEFAULT_RETRY_AFTER,
                        // The API's own name for it, as its documentation and status page use.
                        message: format!("{}: {}", error.kind, error.message),
                    },
                    _ => ProviderError::Stream {
                        url,
                        message: format!("{}: {}", error.kind, error.message),
                    },
                });
            }
            let event: Event =
                serde_json::from_value(value).map_err(|e| ProviderError::Malformed {
                    url: url.clone(),
                    detail: format!("a {name} event is not what the Messages API sends: {e}"),
                })?;
            match event {
                Event::ContentBlockDelta {
                    delta: Delta::Text { text },
                } => {
                    if !text.is_empty() {
                        return Ok(Some(ChatPiece::Text(text)));
                    }
                }
                Event::ContentBlockStart {
                    content_block: Block::ToolUse { id, name },
                } => self.tool = Some((id, name, String::new())),
                Event::ContentBlockDelta {
                    delta: Delta::InputJson { partial_json },
                } => {
                    if let Some((_, _, input)) = &mut self.tool {
                        input.push_str(&partial_json);
                    }
                }
                Event::ContentBlockStop => {
                    if let Some((id, name, input)) = self.tool.take() {
                        return Ok(Some(ChatPiece::ToolCall(ToolCall {
                            id,
                            name,
                            arguments: tools::parse_arguments(&input),
                        })));
                    }
                }
                Event::MessageStart { message } => {
                    if let Some(usage) = message.usage {
                        self.usage.input = usage.input_tokens;
                    }
                }
                Event::MessageDelta { usage } => {
                    if let Some(usage) = usage {
                        self.usage.output = usage.output_tokens;
                        return Ok(Some(ChatPiece::Usage(self.usage)));
                    }
                }
                Event::MessageStop => return Ok(None),
                // Text blocks' start, ping, thinking deltas, and event types added after this
                // was written.
                Event::ContentBlockStart {
                    content_block: Block::Other,
                }
                | Event::ContentBlockDelta {
                    delta: Delta::Other,
                }
                | Event::Other => {}
            }
        }
    }
}

/// One event of a Messages stream; unknown types are tolerated, as the API asks.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    ContentBlockStart {
        content_block: Block,
    },
    ContentBlockDelta {
        delta: Delta,
    },
    ContentBlockStop,
    MessageStart {
        message: StartMessage,
    },
    MessageDelta {
        usage: Option<Usage>,
    },
    MessageStop,
    #[serde(other)]
    Other,
}

/// The parts of `message_start`'s message read here.
#[derive(Debug, Deserialize)]
struct StartMessage {
    usage: Option<Usage>,
}

/// Token counts: `input_tokens` in `message_start`, the cumulative `output_tokens` in
/// `message_delta`.
#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    /// A piece of a tool call's input, as JSON text.
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(other)]
    Other,
}

/// The start of a content block: a tool call's id and name; text blocks need nothing.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

/// `{"type": "overloaded_error", "message": "Overloaded"}`, or llama.cpp's bare
/// `{"code": 500, "message": ..., "type": "server_error"}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}
