//! One MCP server process and the session with it: started, initialized, asked, and stopped.
//!
//! The process speaks JSON-RPC on its standard input and output, a message per line (MCP's
//! stdio transport); what it writes on standard error is kept (the last 4 KiB) to say why it
//! died. Three tasks serve the session: a writer that owns the server's stdin, a reader that
//! owns its stdout and the process itself, and a drain of its stderr. A request waits for its
//! answer on a one-shot channel the reader fills; a request that times out, or whose caller
//! goes away, is told to the server with `notifications/cancelled`. Requests of the server's
//! own (`roots/list`, `ping`) are answered by the reader. A line that is not JSON-RPC fails the
//! requests waiting (the server is broken, and which one it meant cannot be known) but not the
//! session; a process that exits fails them with its status and last words.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reaper_core::config::McpServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::McpError;
use crate::message::{self, Incoming, Outgoing, RpcError, METHOD_NOT_FOUND};
use crate::types::{
    Progress, Prompt, Resource, ResourceContents, Root, ServerInfo, Tool, ToolResult,
};

/// Protocol versions this client speaks, newest first: it asks for the first, and takes any
/// of them if the server answers with another.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Longest line read from a server; a longer one ends the session (it cannot be resynced).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Standard error kept, for saying why a server died.
const STDERR_KEPT: usize = 4 * 1024;
/// Pages of a listing read at most (a server that always says there is more is broken).
const MAX_PAGES: usize = 100;
/// How long a server is given to exit by itself once its input is closed.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// A request waiting for its answer.
struct Pending {
    method: String,
    reply: oneshot::Sender<Result<Value, McpError>>,
}

/// What the session's tasks and its handle share.
struct Shared {
    name: String,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Progress notifications wanted, by progress token.
    progress: Mutex<HashMap<String, mpsc::UnboundedSender<Progress>>>,
    roots: Mutex<Vec<Root>>,
    /// Counts `notifications/tools/list_changed`.
    tools_changed: watch::Sender<u64>,
    /// Why the session is over, once it is.
    closed: Mutex<Option<McpError>>,
    stderr: Mutex<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain maps behind: still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Fails every request waiting with `error`.
    fn fail_pending(&self, error: &McpError) {
        for (_, pending) in lock(&self.pending).drain() {
            let _ = pending.reply.send(Err(error.clone()));
        }
    }

    fn stderr_tail(&self) -> String {
        lock(&self.stderr).clone()
    }
}

/// A running, initialized MCP server.
pub struct Session {
    shared: Arc<Shared>,
    info: ServerInfo,
    timeout: Duration,
    next_id: AtomicU64,
    outgoing: mpsc::UnboundedSender<String>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    pid: Option<u32>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.shared.name)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The reader owns the process: stopping it kills the process (`kill_on_drop`).
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Session {
    /// Starts the server `config` describes and initializes the session, offering `roots`.
    pub async fn start(config: &McpServerConfig, roots: Vec<Root>) -> Result<Session, McpError> {
        let name = config.name.clone();
        let mut command = Command::new(&config.command);
        command
            .args(&config.args)
            .envs(&config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| McpError::Spawn {
            server: name.clone(),
            command: config.command.clone(),
            reason: e.to_string(),
        })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(McpError::Spawn {
                server: name,
                command: config.command.clone(),
                reason: "its standard streams could not be opened".to_owned(),
            });
        };
        let shared = Arc::new(Shared {
            name: name.clone(),
            pending: Mutex::default(),
            progress: Mutex::default(),
            roots: Mutex::new(roots),
            tools_changed: watch::Sender::new(0),
            closed: Mutex::default(),
            stderr: Mutex::default(),
        });
        let (outgoing, lines) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(write_lines(stdin, lines)),
            tokio::spawn(keep_stderr(stderr, shared.clone())),
            tokio::spawn(read_messages(
                child,
                stdout,
                shared.clone(),
                outgoing.clone(),
                stopped,
            )),
        ];
        let mut session = Session {
            shared,
            info: ServerInfo {
                name: String::new(),
                version: String::new(),
                protocol_version: String::new(),
                instructions: None,
                capabilities: Value::Null,
            },
            timeout: Duration::from_millis(config.timeout_ms.get()),
            next_id: AtomicU64::new(1),
            outgoing,
            stop: Mutex::new(Some(stop)),
            pid,
            tasks,
        };
        session.info = session.initialize().await?;
        Ok(session)
    }

    /// `initialize`, the version agreed, then `notifications/initialized`.
    async fn initialize(&self) -> Result<ServerInfo, McpError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSIONS[0],
            "capabilities": {"roots": {"listChanged": true}},
            "clientInfo": {"name": "reaper", "version": reaper_core::VERSION},
        });
        let result = self.request("initialize", Some(params)).await?;
        let version = result["protocolVersion"].as_str().unwrap_or("").to_owned();
        if !PROTOCOL_VERSIONS.contains(&version.as_str()) {
            return Err(McpError::Version {
                server: self.shared.name.clone(),
                theirs: if version.is_empty() {
                    "(none given)".to_owned()
                } else {
                    version
                },
                ours: PROTOCOL_VERSIONS.join(", "),
            });
        }
        self.notify("notifications/initialized", None);
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        Ok(ServerInfo {
            name: text(&result["serverInfo"]["name"]),
            version: text(&result["serverInfo"]["version"]),
            protocol_version: version,
            instructions: result["instructions"].as_str().map(str::to_owned),
            capabilities: result["capabilities"].clone(),
        })
    }

    // ---- getters ----

    /// Who the server is and what it agreed to.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Why the session is over, if it is (the process exited, or was stopped).
    pub fn closed(&self) -> Option<McpError> {
        lock(&self.shared.closed).clone()
    }

    /// Counts the server's `notifications/tools/list_changed`: a change means the tools
    /// listed before are stale.
    pub fn tools_changed(&self) -> watch::Receiver<u64> {
        self.shared.tools_changed.subscribe()
    }

    // ---- requests ----

    /// Every tool, page by page.
    pub async fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        self.list("tools/list", "tools").await
    }

    /// Every resource, page by page.
    pub async fn list_resources(&self) -> Result<Vec<Resource>, McpError> {
        self.list("resources/list", "resources").await
    }

    /// Every prompt, page by page.
    pub async fn list_prompts(&self) -> Result<Vec<Prompt>, McpError> {
        self.list("prompts/list", "prompts").await
    }

    /// A resource's contents.
    pub async fn read_resource(&self, uri: &str) -> Result<Vec<ResourceContents>, McpError> {
        let result = self
            .request("resources/read", Some(json!({ "uri": uri })))
            .await?;
        self.field(result, "contents", "resources/read")
    }

    /// Calls tool `name` with `arguments`; progress notifications, if the tool sends any, go
    /// to `progress`. Dropping the future cancels the call (the server is told).
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Value,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<ToolResult, McpError> {
        let mut params = json!({ "name": name, "arguments": arguments });
        let token = progress.map(|sender| {
            let token = format!("reaper-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
            lock(&self.shared.progress).insert(token.clone(), sender);
            params["_meta"] = json!({ "progressToken": token });
            ProgressToken {
                shared: self.shared.clone(),
                token,
            }
        });
        let result = self.request("tools/call", Some(params)).await;
        drop(token);
        let result = result?;
        let content = match result.get("content") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(other) => {
                return Err(self.broken(format!("tools/call answered content {other} (not a list)")))
            }
        };
        Ok(ToolResult {
            content,
            structured: result
                .get("structuredContent")
                .cloned()
                .filter(|v| !v.is_null()),
            is_error: result["isError"].as_bool().unwrap_or(false),
        })
    }

    /// Replaces the roots offered, and tells the server they changed.
    pub fn set_roots(&self, roots: Vec<Root>) {
        let changed = *lock(&self.shared.roots) != roots;
        if changed {
            *lock(&self.shared.roots) = roots;
            self.notify("notifications/roots/list_changed", None);
        }
    }

    /// Ends the session: the server's input is closed, it is given [`EXIT_GRACE`] to exit,
    /// then killed.
    pub async fn shutdown(mut self) {
        // Its input closes with the writer: a well-behaved server exits on that.
        if let Some(writer) = self.tasks.first() {
            writer.abort();
        }
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        // The reader waits for the process to end, kill included.
        if let Some(reader) = self.tasks.pop() {
            let _ = tokio::time::timeout(EXIT_GRACE * 4, reader).await;
        }
    }

    // ---- plumbing ----

    fn notify(&self, method: &str, params: Option<Value>) {
        let _ = self
            .outgoing
            .send(Outgoing::notification(method, params).line());
    }

    fn broken(&self, detail: String) -> McpError {
        McpError::Protocol {
            server: self.shared.name.clone(),
            detail,
        }
    }

    fn field<T: serde::de::DeserializeOwned>(
        &self,
        mut result: Value,
        field: &str,
        method: &str,
    ) -> Result<T, McpError> {
        serde_json::from_value(result[field].take()).map_err(|e| {
            self.broken(format!(
                "{method} answered a `{field}` that is not what MCP says ({e})"
            ))
        })
    }

    /// A listing, following `nextCursor` page by page.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        field: &str,
    ) -> Result<Vec<T>, McpError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.as_ref().map(|c| json!({ "cursor": c }));
            let mut result = self.request(method, params).await?;
            let next = result["nextCursor"].as_str().map(str::to_owned);
            let page: Vec<T> = self.field(result.take(), field, method)?;
            all.extend(page);
            match next {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(all),
            }
        }
        Err(self.broken(format!("{method} went on for more than {MAX_PAGES} pages")))
    }

    /// Sends a request and waits for its answer, at most the server's timeout.
    pub async fn request(&self, method: &str, params: Option<Value>) -> Result<Value, McpError> {
        if let Some(error) = self.closed() {
            return Err(error);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.shared.pending).insert(
            id,
            Pending {
                method: method.to_owned(),
                reply,
            },
        );
        let mut guard = InFlight {
            shared: self.shared.clone(),
            outgoing: self.outgoing.clone(),
            id,
            reason: "the request was cancelled",
            done: false,
        };
        let _ = self
            .outgoing
            .send(Outgoing::request(id, method, params).line());
        let result = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            // The reader is gone: the session ended.
            Ok(Err(_)) => Err(self.closed().unwrap_or_else(|| McpError::Exited {
                server: self.shared.name.clone(),
                status: None,
                stderr: self.shared.stderr_tail(),
            })),
            Err(_) => {
                guard.reason = "timed out";
                return Err(McpError::TimedOut {
                    server: self.shared.name.clone(),
                    method: method.to_owned(),
                    after: self.timeout,
                });
            }
        };
        guard.done = true;
        result
    }
}

/// A request on its way: if it ends without an answer (timed out, or its caller dropped it),
/// the server is told to stop working on it.
struct InFlight {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<String>,
    id: u64,
    reason: &'static str,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if lock(&self.shared.pending).remove(&self.id).is_some() {
            let params = json!({ "requestId": self.id, "reason": self.reason });
            let _ = self
                .outgoing
                .send(Outgoing::notification("notifications/cancelled", Some(params)).line());
        }
    }
}

/// A progress token registered for one call; unregistered when the call ends.
struct ProgressToken {
    shared: Arc<Shared>,
    token: String,
}

impl Drop for ProgressToken {
    fn drop(&mut self) {
        lock(&self.shared.progress).remove(&self.token);
    }
}

/// Writes queued lines to the server's stdin until the queue closes or the pipe breaks.
async fn write_lines(
    mut stdin: tokio::process::ChildStdin,
    mut lines: mpsc::UnboundedReceiver<String>,
) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// Keeps the end of what the server writes on stderr, and logs it.
async fn keep_stderr(stderr: tokio::process::ChildStderr, shared: Arc<Shared>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(server = shared.name, "MCP server stderr: {line}");
        let mut kept = lock(&shared.stderr);
        kept.push_str(&line);
        kept.push('\n');
        if kept.len() > STDERR_KEPT {
            let cut = kept.len() - STDERR_KEPT;
            let cut = (cut..kept.len())
                .find(|&i| kept.is_char_boundary(i))
                .unwrap_or(kept.len());
            kept.drain(..cut);
        }
    }
}

/// Reads the server's messages until it exits (or is stopped): answers go to the requests
/// waiting, the server's own requests are answered, notifications are passed on. Owns the
/// process, and reaps it.
async fn read_messages(
    mut child: Child,
    stdout: ChildStdout,
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<String>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let ended = loop {
        line.clear();
        let read = tokio::select! {
            read = read_line(&mut reader, &mut line) => read,
            _ = &mut stop => break None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => break Some(None),
            Err(detail) => break Some(Some(detail)),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match message::parse(&line) {
            Ok(message) => dispatch(&shared, &outgoing, message),
            Err(why) => {
                let quoted: String = String::from_utf8_lossy(&line).chars().take(200).collect();
                tracing::warn!(server = shared.name, "MCP server wrote {why}: {quoted:?}");
                shared.fail_pending(&McpError::Protocol {
                    server: shared.name.clone(),
                    detail: format!("it wrote {why}: {quoted:?}"),
                });
            }
        }
    };
    // Stopped, or the output ended: close its input, give it a moment, then kill it.
    drop(outgoing);
    let status = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => Some(status.to_string()),
        _ => {
            let _ = child.kill().await;
            child.wait().await.ok().map(|s| s.to_string())
        }
    };
    let error = match ended {
        None => McpError::Exited {
            server: shared.name.clone(),
            status: Some("stopped by reaperd".to_owned()),
            stderr: String::new(),
        },
        Some(Some(detail)) => McpError::Protocol {
            server: shared.name.clone(),
            detail,
        },
        Some(None) => McpError::Exited {
            server: shared.name.clone(),
            status,
            stderr: shared.stderr_tail(),
        },
    };
    tracing::info!(server = shared.name, %error, "MCP server session ended");
    *lock(&shared.closed) = Some(error.clone());
    shared.fail_pending(&error);
}

/// Reads one line (without its newline) into `line`: `Ok(false)` at the end of the output,
/// `Err` for a line longer than [`MAX_LINE`] or a read error.
async fn read_line(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
) -> Result<bool, String> {
    loop {
        let buffer = reader
            .fill_buf()
            .await
            .map_err(|e| format!("reading its output failed: {e}"))?;
        if buffer.is_empty() {
            return Ok(!line.is_empty());
        }
        let (taken, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buffer.len(), false),
        };
        line.extend_from_slice(&buffer[..taken]);
        reader.consume(taken);
        if line.len() > MAX_LINE {
            return Err(format!("it wrote a line longer than {MAX_LINE} bytes"));
        }
        if done {
            line.pop();
            return Ok(true);
        }
    }
}

/// Handles one message from the server.
fn dispatch(shared: &Shared, outgoing: &mpsc::UnboundedSender<String>, message: Incoming) {
    match message {
        Incoming::Response { id, result } => {
            let Some(pending) = lock(&shared.pending).remove(&id) else {
                // An answer to a request given up on (timed out or cancelled).
                tracing::debug!(server = shared.name, id, "late MCP answer dropped");
                return;
            };
            let result = result.map_err(|RpcError { code, message }| McpError::Rpc {
                server: shared.name.clone(),
                method: pending.method,
                code,
                message,
            });
            let _ = pending.reply.send(result);
        }
        Incoming::Request { id, method, .. } => {
            let answer = match method.as_str() {
                "roots/list" => Ok(json!({ "roots": *lock(&shared.roots) })),
                "ping" => Ok(json!({})),
                other => Err(RpcError {
                    code: METHOD_NOT_FOUND,
                    message: format!("reaper does not serve {other}"),
                }),
            };
            let _ = outgoing.send(Outgoing::response(id, answer).line());
        }
        Incoming::Notification { method, params } => match method.as_str() {
            "notifications/tools/list_changed" => {
                shared.tools_changed.send_modify(|n| *n += 1);
            }
            "notifications/progress" => {
                let params = params.unwrap_or_default();
                let token = match &params["progressToken"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Some(sender) = lock(&shared.progress).get(&token) {
                    let _ = sender.send(Progress {
                        progress: params["progress"].as_f64().unwrap_or(0.0),
                        total: params["total"].as_f64(),
                        message: params["message"].as_str().map(str::to_owned),
                    });
                }
            }
            "notifications/message" => {
                let params = params.unwrap_or_default();
                tracing::debug!(server = shared.name, level = %params["level"], "MCP server log: {}", params["data"]);
            }
            _ => tracing::debug!(server = shared.name, method, "MCP notification ignored"),
        },
    }
}
