//! `kind = "ollama"`: Ollama's native API.
//!
//! Completions are `POST /api/generate`, streamed as newline-delimited JSON. A model whose
//! template uses `.Suffix` (Ollama reports the `insert` capability) gets the text after the
//! cursor as `suffix` and Ollama applies the model's FIM template; any other model is given
//! the text before the cursor as a raw prompt (no chat template), and `Provider.list` says so.
//! A model Ollama cannot fill in the middle for but whose family reaper knows (from its name)
//! gets the family's FIM prompt raw, and so does a `fim_template` of the user's own. The
//! repository context goes before the text, as comments. `keep_alive` keeps the model loaded between
//! bursts of typing. Chat is `/api/chat`, and so are an agent's steps (with `tools`); the probe reads `/api/tags` (is the model pulled?)
//! and `/api/show` (can it fill in the middle?).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use serde_json::json;

use super::{role_name, Remote};
use crate::error::ProviderError;
use crate::http::Body;
use crate::kinds::openai::proposal;
use crate::prompt::{Around, Family, RepoContext, Template};
use crate::provider::{
    Capabilities, ChatInput, ChatPiece, ChatStream, CompletionInput, ProbeReport, Proposal,
    TokenUsage,
};
use crate::stream::NdjsonReader;
use crate::tools::{self, ConverseInput, ToolCall};

/// Largest streamed completion accepted, in bytes (Ollama repeats the model name and a
/// timestamp on every token's line).
const MAX_COMPLETION_STREAM: usize = 4 * 1024 * 1024;
/// Largest streamed chat answer accepted, in bytes.
const MAX_CHAT_STREAM: usize = 64 * 1024 * 1024;

/// An Ollama provider.
#[derive(Debug)]
pub struct Ollama {
    remote: Remote,
    /// The user's `fim_template`, or the family recognised from the model's name.
    template: Template,
    /// Whether the model fills in the middle (`insert`); assumed until `/api/show` or a
    /// refused `suffix` says otherwise.
    fim: AtomicBool,
}

impl Ollama {
    pub(crate) fn new(remote: Remote) -> Ollama {
        let template = Template::choose(
            remote.settings.fim_template.as_deref(),
            &remote.settings.model,
        );
        Ollama {
            remote,
            template,
            fim: AtomicBool::new(true),
        }
    }

    /// Ollama continues a last assistant message.
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
        Capabilities::remote(
            self.remote.settings.fim_template.is_some()
                || self.fim.load(Ordering::Relaxed)
                || self.template.fills_in_the_middle(),
        )
    }

    async fn complete_inner(&self, input: CompletionInput<'_>) -> Result<Proposal, ProviderError> {
        let around = Around::of(input.request, input.context);
        let fim = self.fim.load(Ordering::Relaxed);
        match self.generate(input, around, fim).await {
            // The model has no FIM template after all: remember, and ask with the prefix only.
            Err(ProviderError::Http {
                status: 400,
                ref message,
                ..
            }) if message.contains("does not support insert") => {
                tracing::info!(
                    provider = self.remote.name,
                    "the model does not support insert: completing from the text before the cursor"
                );
                self.fim.store(false, Ordering::Relaxed);
                self.generate(input, around, false).await
            }
            other => other,
        }
    }

    async fn generate(
        &self,
        input: CompletionInput<'_>,
        around: Around<'_>,
        fim: bool,
    ) -> Result<Proposal, ProviderError> {
        let settings = &self.remote.settings;
        let (context, language): (&RepoContext, &str) = (input.context, &input.request.language);
        let url = self.remote.url("/api/generate");
        let mut body = json!({
            "model": settings.model,
            "stream": true,
            "options": {
                "num_predict": settings.max_tokens.get(),
                "temperature": 0.1,
                "stop": self.template.stop(input.request),
            },
        });
        if let Some(keep_alive) = &settings.keep_alive {
            body["keep_alive"] = json!(keep_alive);
        }
        let own_fim = fim && settings.fim_template.is_none();
        if own_fim {
            // Ollama applies the model's own template to prompt and suffix.
            body["prompt"] = json!(format!(
                "{}{}",
                context.as_comments(language),
                around.prefix
            ));
            body["suffix"] = json!(around.suffix);
        } else {
            let raw = self
                .template
                .prompt(&around, context, language)
                .or_else(|| Template::Family(Family::Plain).prompt(&around, context, language))
                .unwrap_or_default();
            body["prompt"] = json!(raw);
            body["raw"] = json!(true);
        }
        let response = self.send(&url, &body).await?;
        let mut lines = NdjsonReader::new(Body::new(&url, response, MAX_COMPLETION_STREAM));
        let mut text = String::new();
        loop {
            let Some(line) = lines.next::<GenerateLine>().await? else {
                return Err(ProviderError::Dropped {
                    url,
                    detail: format!(
                        "no line with \"done\": true after {} bytes of text",
                        text.len()
                    ),
                });
            };
            if let Some(message) = line.error {
                return Err(ProviderError::Stream { url, message });
            }
            text.push_str(&line.response);
            if line.done {
                return Ok(proposal(input.request, &text));
            }
        }
    }

    /// POSTs `body`; a 404 is the model not being pulled.
    async fn send(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let request = self
            .remote
            .with_bearer(self.remote.http.post_json(url, body))?;
        match self
            .remote
            .http
            .send(url, request, &self.remote.auth_hint())
            .await
        {
            Err(ProviderError::Http {
                status: 404,
                message,
                ..
            }) => Err(self.not_pulled(url, message)),
            other => other,
        }
    }

    fn not_pulled(&self, url: &str, detail: String) -> ProviderError {
        ProviderError::ModelNotFound {
            url: url.to_owned(),
            model: self.remote.settings.model.clone(),
            detail: format!(
                "{detail}; run `ollama pull {}` on that machine",
                self.remote.settings.model
            ),
        }
    }

    async fn chat_inner<'a>(&'a self, input: ChatInput<'a>) -> Result<ChatStream, ProviderError> {
        let url = self.remote.url("/api/chat");
        let mut messages = Vec::with_capacity(input.messages.len() + 1);
        if let Some(system) = input.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        for m in input.messages {
            messages.push(json!({"role": role_name(&m.role), "content": m.content}));
        }
        let body = json!({
            "model": self.remote.settings.model,
            "messages": messages,
            "stream": true,
            "options": {"num_predict": input.max_tokens},
        });
        self.chat_lines(url, body).await
    }

    async fn converse_inner(&self, input: ConverseInput<'_>) -> Result<ChatStream, ProviderError> {
        let url = self.remote.url("/api/chat");
        let mut body = json!({
            "model": self.remote.settings.model,
            "messages": tools::openai_messages(input.turns, true),
            "stream": true,
            "options": {"num_predict": input.max_tokens},
        });
        if !input.tools.is_empty() {
            body["tools"] = json!(tools::openai_tools(input.tools));
        }
        self.chat_lines(url, body).await
    }

    /// Sends a `/api/chat` request and reads its lines as pieces.
    async fn chat_lines(
        &self,
        url: String,
        mut body: serde_json::Value,
    ) -> Result<ChatStream, ProviderError> {
        if let Some(keep_alive) = &self.remote.settings.keep_alive {
            body["keep_alive"] = json!(keep_alive);
        }
        let response = self.send(&url, &body).await?;
        let lines = NdjsonReader::new(Body::new(&url, response, MAX_CHAT_STREAM));
        // A line may carry text, tool calls, and the last one the counts too: what is read
        // waits in `pending` to go out one piece at a time. Ollama sends each call whole;
        // ids are made up when it gives none.
        let state = (lines, url, VecDeque::new(), false, 0usize);
        Ok(Box::pin(futures::stream::try_unfold(
            state,
            |(mut lines, url, mut pending, mut done, mut calls)| async move {
                loop {
                    if let Some(piece) = pending.pop_front() {
                        return Ok(Some((piece, (lines, url, pending, done, calls))));
                    }
                    if done {
                        return Ok(None);
                    }
                    let Some(line) = lines.next::<ChatLine>().await? else {
                        return Err(ProviderError::Dropped {
                            url,
                            detail: "no line with \"done\": true".to_owned(),
                        });
                    };
                    if let Some(message) = line.error {
                        return Err(ProviderError::Stream { url, message });
                    }
                    if let Some(message) = line.message {
                        if !message.content.is_empty() {
                            pending.push_back(ChatPiece::Text(message.content));
                        }
                        for call in message.tool_calls {
                            let id = call.id.unwrap_or_else(|| format!("call_{calls}"));
                            calls += 1;
                            let arguments = match call.function.arguments {
                                serde_json::Value::String(raw) => tools::parse_arguments(&raw),
                                serde_json::Value::Null => json!({}),
                                other => other,
                            };
                            pending.push_back(ChatPiece::ToolCall(ToolCall {
                                id,
                                name: call.function.name,
                                arguments,
                            }));
                        }
                    }
                    if line.done {
                        done = true;
                        if let Some((input, output)) = line.prompt_eval_count.zip(line.eval_count) {
                            pending.push_back(ChatPiece::Usage(TokenUsage { input, output }));
                        }
                    }
                }
            },
        )))
    }

    async fn probe_inner(&self) -> Result<ProbeReport, ProviderError> {
        let url = self.remote.url("/api/tags");
        let request = self.remote.with_bearer(self.remote.http.get(&url))?;
        let response = self
            .remote
            .http
            .send(&url, request, &self.remote.auth_hint())
            .await?;
        let tags: Tags = Body::new(&url, response, crate::http::MAX_BODY)
            .json()
            .await?;
        let wanted = &self.remote.settings.model;
        // `ollama pull x` lists `x:latest`.
        let pulled = tags.models.iter().any(|m| {
            let name = m.name.as_deref().or(m.model.as_deref()).unwrap_or("");
            name == wanted || name.strip_suffix(":latest") == Some(wanted)
        });
        if !pulled {
            let names: Vec<&str> = tags
                .models
                .iter()
                .filter_map(|m| m.name.as_deref())
                .take(10)
                .collect();
            return Err(self.not_pulled(&url, format!("pulled models: {names:?}")));
        }
        let url = self.remote.url("/api/show");
        let response = self.send(&url, &json!({"model": wanted})).await?;
        let show: Show = Body::new(&url, response, crate::http::MAX_BODY)
            .json()
            .await?;
        // Newer Ollama lists capabilities; older ones only the template, whose `.Suffix` is
        // what makes a model FIM-capable.
        let fim = match &show.capabilities {
            Some(capabilities) => capabilities.iter().any(|c| c == "insert"),
            None => show
                .template
                .as_deref()
                .is_some_and(|t| t.contains(".Suffix")),
        };
        self.fim.store(fim, Ordering::Relaxed);
        let note = (!fim && !self.template.fills_in_the_middle()).then(|| {
            "the model's template has no .Suffix (no FIM): completions see only the text before the cursor".to_owned()
        });
        Ok(ProbeReport { note })
    }
}

remote_provider!(Ollama, "ollama");

/// A line of `/api/generate`'s stream.
#[derive(Debug, Deserialize)]
struct GenerateLine {
    #[serde(default)]
    response: String,
    #[serde(default)]
    done: bool,
    error: Option<String>,
}

/// A line of `/api/chat`'s stream.
#[derive(Debug, Deserialize)]
struct ChatLine {
    message: Option<ChatMessageLine>,
    #[serde(default)]
    done: bool,
    error: Option<String>,
    /// Tokens of the prompt (on the last line).
    prompt_eval_count: Option<u32>,
    /// Tokens generated (on the last line).
    eval_count: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ChatMessageLine {
    #[serde(default)]
    content: String,
    /// Calls the model made, each whole.
    #[serde(default)]
    tool_calls: Vec<OllamaToolCall>,
}

/// One of `message.tool_calls`.
#[derive(Debug, Deserialize)]
struct OllamaToolCall {
    id: Option<String>,
    function: OllamaFunction,
}

#[derive(Debug, Deserialize)]
struct OllamaFunction {
    name: String,
    /// An object (Ollama); tolerated as a JSON string too.
    #[serde(default)]
    arguments: serde_json::Value,
}

/// `GET /api/tags`.
#[derive(Debug, Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    name: Option<String>,
    model: Option<String>,
}

/// The parts of `POST /api/show` read here.
#[derive(Debug, Deserialize)]
struct Show {
    template: Option<String>,
    capabilities: Option<Vec<String>>,
}
