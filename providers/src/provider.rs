//! The one interface every provider implements, and the values that cross it.
//!
//! A provider is asked for a completion or a chat stream, and probed for its status. It is
//! never told about cancellation: the caller drops the future, which drops the HTTP request,
//! which closes the connection, which is how a model server learns to stop generating. The
//! pool bounds every call by a deadline the same way (`tokio::time::timeout_at`), so an
//! implementation only forwards the deadline to servers that can use it (llama.cpp's
//! `t_max_predict_ms`).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use reaper_core::schema::{ChatMessage, CompletionRequest};

use crate::error::ProviderError;
use crate::prompt::RepoContext;
use crate::tools::{ConverseInput, ToolCall};

/// A boxed future, so that providers can sit behind `dyn Provider`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The pieces of a streamed chat answer, in order; it ends after the last one. It owns what it
/// reads from (the request went out before it was returned), so an answer can outlive the
/// conversation it was asked with: a chat that yields to a completion asks again with a longer
/// one.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatPiece, ProviderError>> + Send>>;

/// One piece of a streamed chat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatPiece {
    /// Text to append to the answer (never empty).
    Text(String),
    /// Tokens counted so far, as the server reports them (usually once, at the end; a later
    /// report replaces an earlier one).
    Usage(TokenUsage),
    /// A tool the model calls (only when it was given tools: [`Provider::converse`]).
    ToolCall(ToolCall),
}

/// Tokens a chat answer cost, as the provider's server counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Tokens of the prompt (the conversation and the system instruction).
    pub input: u32,
    /// Tokens generated.
    pub output: u32,
}

/// What a provider can do. Fixed per kind, except `fim`, which the provider learns from its
/// server (a model without FIM tokens completes from the prefix alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Code completion at a cursor.
    pub completion: bool,
    /// Completion that sees the text after the cursor too (fill-in-the-middle).
    pub fim: bool,
    /// Streamed chat.
    pub chat: bool,
    /// Tool calls in a conversation ([`Provider::converse`]).
    pub tools: bool,
    /// Lists the models its server offers.
    pub list_models: bool,
}

impl Capabilities {
    /// A remote model's: completion, chat, tool calls and a models listing, with or without
    /// FIM.
    pub const fn remote(fim: bool) -> Capabilities {
        Capabilities {
            completion: true,
            fim,
            chat: true,
            tools: true,
            list_models: true,
        }
    }
}

/// A completion to make.
#[derive(Debug, Clone, Copy)]
pub struct CompletionInput<'a> {
    /// The editor's request.
    pub request: &'a CompletionRequest,
    /// When the answer stops being useful.
    pub deadline: Instant,
    /// What else of the repository the model may be shown (empty for the offline model,
    /// which reads the index itself).
    pub context: &'a RepoContext,
}

/// What a provider proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Text to insert (empty: nothing worth proposing).
    pub text: String,
    /// How likely it is right, in `[0, 1]`.
    pub confidence: f32,
}

impl Proposal {
    /// Nothing worth proposing.
    pub fn nothing() -> Proposal {
        Proposal {
            text: String::new(),
            confidence: 0.0,
        }
    }
}

/// A chat to run.
#[derive(Debug, Clone, Copy)]
pub struct ChatInput<'a> {
    /// The conversation so far; the last message is the user's.
    pub messages: &'a [ChatMessage],
    /// An instruction for the model, sent the way its API takes one.
    pub system: Option<&'a str>,
    /// Longest answer, in tokens.
    pub max_tokens: u32,
}

/// What a probe found out, when the provider can take work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeReport {
    /// Something the user should know although the provider works (e.g. "no FIM template:
    /// completions see only the text before the cursor").
    pub note: Option<String>,
}

/// A source of completions and chat answers.
pub trait Provider: Send + Sync {
    /// Its name in `reaper.toml` and in responses.
    fn name(&self) -> &str;
    /// Its kind, as `reaper.toml` spells it (`ollama`, `openai`, `anthropic`, `copilot`,
    /// `offline`).
    fn kind(&self) -> &'static str;
    /// The model it asks.
    fn model(&self) -> &str;
    /// The model it asks for chat answers (the same, but for Copilot, whose chat models are
    /// not its completion model).
    fn chat_model(&self) -> &str {
        self.model()
    }
    /// Requests its server generates for at once, when the server says (llama.cpp's
    /// `total_slots`); `None` when unknown.
    fn backend_slots(&self) -> Option<usize> {
        None
    }
    /// Whether its server, asked with an answer's beginning as the conversation's last
    /// (assistant) message, goes on from there rather than starting a new answer: what a chat
    /// that gave way to a completion needs to be asked again.
    fn continues_answers(&self) -> bool {
        false
    }
    /// What it can do now.
    fn capabilities(&self) -> Capabilities;
    /// Proposes a completion.
    fn complete<'a>(
        &'a self,
        input: CompletionInput<'a>,
    ) -> BoxFuture<'a, Result<Proposal, ProviderError>>;
    /// Starts a streamed chat answer.
    fn chat<'a>(&'a self, input: ChatInput<'a>)
        -> BoxFuture<'a, Result<ChatStream, ProviderError>>;
    /// Starts one step of an agent's conversation: the model's answer, with the tools it
    /// calls (`ChatPiece::ToolCall`), streamed. Only providers with `capabilities().tools`.
    fn converse<'a>(
        &'a self,
        input: ConverseInput<'a>,
    ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
        let _ = input;
        Box::pin(async { Err(ProviderError::Unsupported { what: "tool calls" }) })
    }
    /// Checks that the provider can take work: reachable, authorised, the model present. Cheap
    /// (a models listing), run in the background.
    fn probe(&self) -> BoxFuture<'_, Result<ProbeReport, ProviderError>>;
}
