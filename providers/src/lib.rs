//! reaper's providers: where completions, chat answers and an agent's tool calls come from.
//!
//! Every provider implements one trait, [`Provider`]: a completion, a chat stream and a probe,
//! with its [`Capabilities`]. The kinds a user configures in `reaper.toml` are in [`kinds`]:
//! Ollama's native API, any OpenAI-compatible server (llama.cpp, vLLM, LM Studio), Anthropic's
//! Messages API, and GitHub Copilot through the user's existing sign-in. The embedded model of
//! the user's own workspace is [`OfflineProvider`]. The [`Pool`] picks among them by priority
//! and measured latency, hedges a slow one, falls back to the offline model, keeps each
//! provider's status honest from background probes and from the calls themselves, and counts
//! what happened for `Health`.
//!
//! Failures are typed ([`ProviderError`]), and say what to do. Cancellation is dropping the
//! future: the HTTP request goes with it, its connection closes, and the model server stops
//! generating. This crate runs on tokio (reqwest needs it) and never touches the daemon's
//! event loop; its tests need no daemon.

mod chat;
mod converse;
mod error;
mod gather;
mod http;
pub mod kinds;
mod offline;
mod pool;
pub mod prompt;
mod provider;
mod state;
mod stream;
mod tools;

pub use chat::{ChatAnswer, ChatAsk, ChatError, DEFAULT_CHAT_MAX_TOKENS, MAX_CHAT_TOKENS};
pub use converse::{ConverseAsk, StepAnswer};
pub use error::ProviderError;
pub use kinds::Secret;
pub use offline::OfflineProvider;
pub use pool::{
    Answer, BuildError, Placement, Pool, PoolError, DELAY_ENV, HEDGE_MIN_SAMPLES, OFFLINE_RESERVE,
    OFFLINE_SURE,
};
pub use provider::{
    BoxFuture, Capabilities, ChatInput, ChatPiece, ChatStream, CompletionInput, ProbeReport,
    Proposal, Provider, TokenUsage,
};
pub use tools::{ConverseInput, ToolCall, ToolSpec, Turn};
