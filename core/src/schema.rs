//! The messages of reaper's five services.
//!
//! Every type derives rkyv's `Archive` (validated with bytecheck, so a server can read a request
//! in place without trusting it) and serde (for the `json` encoding that clients in any language
//! can speak). JSON field names are the Rust field names; enums are lower-case strings.
//! Fields follow the original design note one for one; fields added since are marked.

use serde::{Deserialize, Serialize};

macro_rules! wire_type {
    ($(#[$meta:meta])* $vis:vis $kind:ident $name:ident $body:tt) => {
        #[derive(
            Debug, Clone, PartialEq,
            Serialize, Deserialize,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        $(#[$meta])*
        $vis $kind $name $body
    };
}

/// One RPC method: which service, which name, and how its messages flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `reaper.Completion/complete`: unary.
    CompletionComplete,
    /// `reaper.Chat/send`: server streaming.
    ChatSend,
    /// `reaper.Agent/execute`: streaming both ways (the client may send control messages).
    AgentExecute,
    /// `reaper.Provider/list`: unary.
    ProviderList,
    /// `reaper.Health/check`: unary.
    HealthCheck,
    /// `reaper.Completion/feedback`: unary (added: what the editor did with a completion).
    CompletionFeedback,
}

impl Method {
    /// Every method, in a fixed order (used to index per-method metrics).
    pub const ALL: [Method; 6] = [
        Method::CompletionComplete,
        Method::ChatSend,
        Method::AgentExecute,
        Method::ProviderList,
        Method::HealthCheck,
        Method::CompletionFeedback,
    ];

    /// The method's path on the wire, e.g. `reaper.Health/check`.
    pub fn path(self) -> &'static str {
        match self {
            Method::CompletionComplete => "reaper.Completion/complete",
            Method::ChatSend => "reaper.Chat/send",
            Method::AgentExecute => "reaper.Agent/execute",
            Method::ProviderList => "reaper.Provider/list",
            Method::HealthCheck => "reaper.Health/check",
            Method::CompletionFeedback => "reaper.Completion/feedback",
        }
    }

    /// Looks a method up by its path.
    pub fn from_path(path: &[u8]) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|method| method.path().as_bytes() == path)
    }

    /// Position in [`Method::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the server answers with a stream of messages rather than exactly one.
    pub fn server_streams(self) -> bool {
        matches!(self, Method::ChatSend | Method::AgentExecute)
    }

    /// Whether the client may send further messages after the first (control messages); on
    /// every other method a second message is refused.
    pub fn client_streams(self) -> bool {
        matches!(self, Method::AgentExecute)
    }

    /// Whether a call may be served from 0-RTT data, before the client has finished its
    /// handshake. 0-RTT data can be replayed by anyone who captured it, so only calls that are
    /// harmless twice qualify: they read state and change none that matters (Health,
    /// Provider.list; a Completion at worst warms the cache and spends a model's time on an
    /// answer that only the original client can read). Never Agent (its steps write files and
    /// run commands), Chat (a model's time, streamed) or Completion.feedback (it counts what
    /// the editor did). The daemon holds any other call that arrives early until the handshake
    /// completes, which a replay never does (`docs/protocol.md`, "0-RTT").
    pub fn replay_safe(self) -> bool {
        matches!(
            self,
            Method::HealthCheck | Method::ProviderList | Method::CompletionComplete
        )
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}

// ---- reaper.Completion ----

wire_type! {
    /// What the editor knows around the cursor, beyond the buffer itself.
    pub struct ContextMetadata {
        /// Symbols from the language server, as the editor formats them.
        pub lsp_symbols: Option<String>,
        /// `git status` of the file's repository.
        pub git_status: Option<String>,
        /// Paths of other files in the project.
        pub project_files: Option<Vec<String>>,
    }
}

wire_type! {
    /// `reaper.Completion/complete` request.
    pub struct CompletionRequest {
        /// Buffer content before the cursor.
        pub prefix: String,
        /// Buffer content after the cursor.
        pub suffix: String,
        /// Language of the buffer, e.g. `rust`.
        pub language: String,
        /// Path of the file being edited, for context.
        pub file_path: Option<String>,
        /// Additional context (LSP, git, project files).
        pub context: Option<ContextMetadata>,
    }
}

wire_type! {
    /// `reaper.Completion/complete` response.
    pub struct CompletionResponse {
        /// Text to insert at the cursor.
        pub completion: String,
        /// How likely the completion is to be accepted, in `[0, 1]`.
        pub confidence: f32,
        /// The provider that produced it.
        pub provider: String,
        /// Time the daemon spent on it, in milliseconds.
        pub latency_ms: u32,
        /// Whether it came from the cache (added: the design note has no such field).
        #[serde(default)]
        pub cached: bool,
    }
}

wire_type! {
    /// What the editor did with a completion it showed.
    #[serde(rename_all = "snake_case")]
    pub enum FeedbackEvent { Shown, Accepted, Rejected }
}

wire_type! {
    /// `reaper.Completion/feedback` request (added): one event for one completion, counted in
    /// `Health` for an acceptance rate.
    pub struct CompletionFeedback {
        /// What happened to it.
        pub event: FeedbackEvent,
        /// The provider that produced it (`CompletionResponse.provider`), at most 256 bytes.
        pub provider: String,
        /// Characters of it the user kept (accepted: all or part of it; otherwise 0).
        pub accepted_chars: u32,
    }
}

wire_type! {
    /// `reaper.Completion/feedback` response: nothing but the OK status.
    pub struct FeedbackResponse {}
}

wire_type! {
    /// The daemon's budgets and their use now (added): what bounds memory and handshakes.
    #[derive(Default)]
    pub struct BudgetStats {
        /// Bytes held for requests still arriving, over every connection.
        pub buffered_request_bytes: u64,
        /// `[rpc] max_buffered_requests`.
        pub max_buffered_requests: u64,
        /// Handshakes in progress.
        pub handshakes: u32,
        /// `[rpc] max_handshakes`.
        pub max_handshakes: u32,
        /// Memory the workspaces' indexes take.
        pub index_bytes: u64,
        /// `[providers.offline] max_index_bytes`.
        pub max_index_bytes: u64,
        /// Workspaces indexed now.
        pub workspaces: u32,
        /// What QUIC may hold for one connection that presented the token, beyond what the
        /// daemon reads (4 × `[rpc] max_stream_data`).
        pub connection_window: u64,
        /// The same for a connection that has not presented the token yet.
        pub unauthenticated_window: u64,
    }
}

wire_type! {
    /// Editor feedback counters since the daemon started (added).
    #[derive(Default)]
    pub struct FeedbackStats {
        /// Completions the editor reported shown.
        pub shown: u64,
        /// Completions accepted, wholly or in part.
        pub accepted: u64,
        /// Completions the editor reported rejected (dismissed).
        pub rejected: u64,
        /// Characters accepted, over all accepted completions.
        pub accepted_chars: u64,
    }
}

// ---- reaper.Chat ----

wire_type! {
    /// Who wrote a chat message.
    #[serde(rename_all = "snake_case")]
    pub enum Role { User, Assistant, System }
}

wire_type! {
    /// One message of a conversation.
    pub struct ChatMessage {
        /// Who wrote it.
        pub role: Role,
        /// What it says.
        pub content: String,
        /// When, in seconds since the Unix epoch (0 when absent from JSON: informational).
        #[serde(default)]
        pub timestamp: i64,
    }
}

wire_type! {
    /// `reaper.Chat/send` request.
    pub struct ChatRequest {
        /// The conversation so far; the last message is the one to answer.
        pub messages: Vec<ChatMessage>,
        /// The model to answer with: a provider whose chat model this is answers.
        pub model: Option<String>,
        /// Upper bound on generated tokens.
        pub max_tokens: Option<u32>,
        /// The provider to answer with, by its name in `reaper.toml` (added).
        #[serde(default)]
        pub provider: Option<String>,
    }
}

wire_type! {
    /// Tokens a chat answer cost, as the provider's server counted them (added).
    #[derive(Copy, Default)]
    pub struct ChatUsage {
        /// Tokens of the prompt (the conversation).
        pub input_tokens: u32,
        /// Tokens generated.
        pub output_tokens: u32,
    }
}

wire_type! {
    /// One streamed piece of a chat answer.
    pub struct ChatChunk {
        /// Text to append (may be empty, as in the last chunk).
        pub delta: String,
        /// Whether this is the last chunk.
        pub done: bool,
        /// On the last chunk: the provider that answered, by its name in `reaper.toml`
        /// (added; absent from JSON on the others).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub provider: Option<String>,
        /// On the last chunk: the model that answered (added).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<String>,
        /// On the last chunk, when the provider counted them: the tokens used (added).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub usage: Option<ChatUsage>,
    }
}

// ---- reaper.Agent ----

wire_type! {
    /// `reaper.Agent/execute` request: the task to run.
    pub struct AgentTask {
        /// What the user asked for.
        pub instruction: String,
        /// Working directory the agent may read and write under.
        pub cwd: String,
        /// Time limit in seconds.
        pub timeout: Option<u32>,
    }
}

wire_type! {
    /// Phase of an agent step.
    #[serde(rename_all = "snake_case")]
    pub enum StepStatus { Planning, Executing, Verifying, Completed, Failed }
}

wire_type! {
    /// One streamed progress update of an agent task.
    pub struct StepUpdate {
        /// Step number, from 1.
        pub step: u32,
        /// What the step does.
        pub description: String,
        /// Its phase.
        pub status: StepStatus,
        /// Result or error text.
        pub message: Option<String>,
        /// The task this update belongs to: `reaper agent undo TASK_ID` puts back what it
        /// changed (added).
        #[serde(default)]
        pub task_id: String,
        /// The tool the step calls, if it calls one (added).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tool: Option<String>,
        /// Whether the task waits for the client to approve or reject this step (added).
        #[serde(default)]
        pub needs_approval: bool,
        /// What the step will do, for approval: a diff of a change, a command line, a call's
        /// arguments (added).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub detail: Option<String>,
    }
}

wire_type! {
    /// What a client may tell a running agent task (added: the design note's stream is one-way).
    #[serde(rename_all = "snake_case")]
    pub enum AgentAction { Approve, Reject, Cancel }
}

wire_type! {
    /// A control message the client sends on an `execute` stream after the task.
    pub struct AgentControl {
        /// What to do.
        pub action: AgentAction,
        /// The step it concerns, if any.
        pub step: Option<u32>,
    }
}

// ---- reaper.Provider ----

wire_type! {
    /// Whether a provider can take work now (`checking` and `disabled` added: the design note
    /// has the first three).
    #[derive(Copy, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum ProviderStatus {
        /// Answering.
        Available,
        /// Not reachable, failing, without its model, or without working credentials: the
        /// provider's `message` says which.
        Unavailable,
        /// It asked to slow down; asked again after its `Retry-After`.
        RateLimited,
        /// Not checked yet (the first probe runs at start).
        Checking,
        /// `enabled = false` in `reaper.toml`.
        Disabled,
    }
}

wire_type! {
    /// Whether the daemon holds working credentials for a provider (`not_required` added).
    #[derive(Copy, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum AuthStatus {
        /// Credentials are configured and were not refused.
        Authenticated,
        /// No credentials, or they were refused: the provider's `message` says what to do.
        NeedsAuth,
        /// Credentials that worked were refused later (revoked or expired).
        Expired,
        /// The provider takes no credentials (a local server, the offline model).
        NotRequired,
    }
}

wire_type! {
    /// One configured provider.
    pub struct ProviderInfo {
        /// Its name in `reaper.toml`, e.g. `offline`.
        pub name: String,
        /// The API it speaks: `offline`, `ollama`, `openai`, `anthropic`, `copilot` (added).
        #[serde(default)]
        pub kind: String,
        /// The model it asks (added).
        #[serde(default)]
        pub model: String,
        /// Whether it can take work now.
        pub status: ProviderStatus,
        /// Its measured latency (moving average), in milliseconds.
        pub latency_ms: u32,
        /// Whether its credentials work.
        pub auth_status: AuthStatus,
        /// Why it is not plainly available, or what the user should know although it is
        /// (added).
        #[serde(default)]
        pub message: Option<String>,
    }
}

wire_type! {
    /// `reaper.Provider/list` request (empty).
    pub struct ProviderListRequest {}
}

wire_type! {
    /// `reaper.Provider/list` response.
    pub struct ProviderListResponse {
        /// Every configured provider.
        pub providers: Vec<ProviderInfo>,
    }
}

// ---- reaper.Health ----

wire_type! {
    /// `reaper.Health/check` request (empty).
    pub struct HealthRequest {}
}

wire_type! {
    /// Whether the daemon takes new calls.
    #[serde(rename_all = "snake_case")]
    pub enum ServingStatus { Serving, Draining }
}

wire_type! {
    /// Calls of one method since the daemon started.
    pub struct MethodCalls {
        /// The method's path, e.g. `reaper.Health/check`.
        pub method: String,
        /// Calls that ended `OK`.
        pub served: u64,
        /// Calls that ended with any other status.
        pub failed: u64,
    }
}

wire_type! {
    /// Latency percentiles of served calls, in microseconds, from an HDR histogram.
    pub struct LatencySummary {
        /// Calls measured.
        pub count: u64,
        /// Median.
        pub p50_us: u64,
        /// 90th percentile.
        pub p90_us: u64,
        /// 99th percentile.
        pub p99_us: u64,
        /// 99.9th percentile.
        pub p999_us: u64,
        /// Slowest call.
        pub max_us: u64,
        /// Mean.
        pub mean_us: f64,
    }
}

wire_type! {
    /// `reaper.Health/check` response.
    pub struct HealthResponse {
        /// `serving`, or `draining` once shutdown has begun.
        pub status: ServingStatus,
        /// The daemon's version.
        pub version: String,
        /// Seconds since the daemon started.
        pub uptime_s: u64,
        /// Open QUIC connections (one that resumed a session counts from the first call it
        /// had served from 0-RTT data, if that came before its handshake completed).
        pub connections: u32,
        /// All calls handled (the design note's request count).
        pub requests: u64,
        /// Calls that did not end `OK`.
        pub errors: u64,
        /// `errors / requests`, 0 when there were none.
        pub error_rate: f64,
        /// Per-method counts.
        pub calls: Vec<MethodCalls>,
        /// Latency of calls handled, measured from the complete request to the trailer.
        pub latency: LatencySummary,
        /// The completion cache.
        pub cache: CacheStats,
        /// Each provider's record (added).
        #[serde(default)]
        pub providers: Vec<ProviderStats>,
        /// What editors reported doing with completions (added).
        #[serde(default)]
        pub feedback: FeedbackStats,
        /// The memory and handshake budgets, and how much of each is in use (added).
        #[serde(default)]
        pub budgets: BudgetStats,
    }
}

wire_type! {
    /// One provider's completions since the daemon started.
    pub struct ProviderStats {
        /// Its name in `reaper.toml`.
        pub name: String,
        /// Completions it answered.
        pub answered: u64,
        /// Completions it failed (error status, unreachable, malformed, out of time).
        pub errors: u64,
        /// Completions abandoned while it worked on them: cancelled, superseded or out of time,
        /// or another provider answered first.
        pub cancelled: u64,
        /// Times it had not answered by its p95 latency and the next provider was asked too.
        pub hedged: u64,
        /// Chat answers it gave whole (added).
        #[serde(default)]
        pub chats: u64,
        /// Times a chat streaming from it stopped for a completion and went on after (added:
        /// `chat_yields`).
        #[serde(default)]
        pub chat_yields: u64,
        /// Median answer latency over its recent answers, in microseconds (0: none yet).
        pub p50_us: u64,
        /// 95th percentile of the same.
        pub p95_us: u64,
    }
}

wire_type! {
    /// Completion cache counters since the daemon started.
    pub struct CacheStats {
        /// Entries held now.
        pub entries: u64,
        /// Completions answered from the cache (typing through included).
        pub hits: u64,
        /// Completions that went to a provider.
        pub misses: u64,
        /// Entries dropped to make room.
        pub evictions: u64,
        /// Hits answered with the rest of a suggestion the user was typing through.
        pub typed_through: u64,
    }
}
