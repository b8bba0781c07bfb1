//! The language server: LSP messages in, Completion calls to the daemon, inline items out.
//!
//! One thread reads the client's messages ([`rpc::read`]) into the loop; one thread writes
//! every outgoing message, so a completion task answers without waiting for the loop. The loop
//! keeps the open documents and the completions in flight. Each inline completion is a task of
//! its own; `$/cancelRequest`, a newer request for the same document, `shutdown` and the end
//! of the input abort it, which drops its call and so resets its QUIC stream: the daemon stops
//! the work (and the model its generation). Exactly one response goes out per request: the
//! task and a canceller race on the request's `answered` flag and only the first one answers.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lsp_types::{
    DidChangeTextDocumentParams, DidCloseTextDocumentParams, DidOpenTextDocumentParams,
    InlineCompletionParams, Position, Range,
};
use reaper_client::schema::{
    CompletionFeedback, CompletionRequest, CompletionResponse, FeedbackEvent,
};
use reaper_client::{CallOptions, Code, Error};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::daemon::{Daemon, DaemonError, DaemonOptions};
use crate::rpc::{self, code, Incoming};
use crate::text::{self, Document, PositionEncoding};
use crate::uri;

/// What the bridge sends and keeps; every limit has a default that fits an editor.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// Finding and starting the daemon.
    pub daemon: DaemonOptions,
    /// Bytes of text before the cursor sent with a completion (the rest of the file's start is
    /// not).
    pub prefix_bytes: usize,
    /// Bytes of text after the cursor sent with a completion.
    pub suffix_bytes: usize,
    /// Completions less sure than this are not shown (an empty list instead).
    pub min_confidence: f32,
    /// Longest a completion may take before it is cancelled.
    pub deadline: Duration,
    /// Largest document kept; an edit past it is refused (and logged), the document kept.
    pub max_document_bytes: usize,
    /// Most documents open at once; more are refused until some close.
    pub max_documents: usize,
    /// Largest message accepted from the client.
    pub max_message_bytes: usize,
}

impl Default for BridgeOptions {
    fn default() -> BridgeOptions {
        BridgeOptions {
            daemon: DaemonOptions {
                state_dir: None,
                reaperd: None,
                start: true,
            },
            prefix_bytes: 16 * 1024,
            suffix_bytes: 4 * 1024,
            min_confidence: 0.5,
            deadline: Duration::from_secs(5),
            max_document_bytes: 8 * 1024 * 1024,
            max_documents: 1024,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// How the session ended: LSP's `exit` after `shutdown` is a clean end (exit code 0); an
/// `exit` without it, or the input closing first, is not (1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `shutdown`, then `exit`.
    Clean,
    /// `exit` without `shutdown`, or the input ended.
    Abrupt,
}

/// Serves one editor on `input`/`output` until it exits. Needs a tokio runtime with I/O and
/// time (the daemon's client runs on it).
pub async fn serve(
    input: impl BufRead + Send + 'static,
    output: impl Write + Send + 'static,
    options: BridgeOptions,
) -> Ending {
    let (incoming_tx, mut incoming) = mpsc::channel::<Incoming>(64);
    let max_message = options.max_message_bytes;
    std::thread::Builder::new()
        .name("lsp-reader".to_owned())
        .spawn(move || {
            let mut input = input;
            loop {
                match rpc::read(&mut input, max_message) {
                    Ok(Some(message)) => {
                        if incoming_tx.blocking_send(message).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, "reading from the editor failed");
                        return;
                    }
                }
            }
        })
        .ok();
    let (out, outgoing) = std::sync::mpsc::channel::<Value>();
    let writer = std::thread::Builder::new()
        .name("lsp-writer".to_owned())
        .spawn(move || {
            let mut output = output;
            for message in outgoing {
                if let Err(error) = rpc::write(&mut output, &message) {
                    tracing::warn!(%error, "writing to the editor failed");
                    return;
                }
            }
        })
        .ok();
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    let mut server = Server {
        out: Outgoing(out),
        daemon: Arc::new(Daemon::new(options.daemon.clone())),
        options,
        state: State::Uninitialized,
        encoding: PositionEncoding::Utf16,
        documents: HashMap::new(),
        flights: HashMap::new(),
        latest: HashMap::new(),
        done: done_tx,
        feedback_in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let ending = loop {
        tokio::select! {
            message = incoming.recv() => match message {
                None => break Ending::Abrupt,
                Some(Incoming::Malformed { code, message }) => {
                    tracing::warn!(code, %message, "a malformed message from the editor");
                    server.out.send(rpc::error(&Value::Null, code, message));
                }
                Some(Incoming::Message(value)) => {
                    if let Some(ending) = server.handle(value) {
                        break ending;
                    }
                }
            },
            Some(key) = done.recv() => {
                server.flights.remove(&key);
            }
        }
    };
    server.cancel_all("the editor is exiting");
    drop(server);
    if let Some(writer) = writer {
        // Everything answered before `exit` reaches the editor before the process ends.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    tracing::info!(?ending, "editor session ended");
    ending
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Uninitialized,
    Running,
    ShutDown,
}

/// A completion in flight.
struct Flight {
    uri: String,
    answered: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

#[derive(Clone)]
struct Outgoing(std::sync::mpsc::Sender<Value>);

impl Outgoing {
    fn send(&self, message: Value) {
        // The writer is gone only when the editor's end is: nothing left to tell it.
        let _ = self.0.send(message);
    }

    fn log(&self, kind: u8, message: String) {
        self.send(rpc::notification(
            "window/logMessage",
            json!({"type": kind, "message": message}),
        ));
    }
}

struct Server {
    out: Outgoing,
    daemon: Arc<Daemon>,
    options: BridgeOptions,
    state: State,
    encoding: PositionEncoding,
    documents: HashMap<String, Document>,
    /// By request id (its JSON text).
    flights: HashMap<String, Flight>,
    /// The request id in flight for each document.
    latest: HashMap<String, String>,
    done: mpsc::UnboundedSender<String>,
    /// Feedback calls to the daemon not finished yet (bounded by [`MAX_FEEDBACK_IN_FLIGHT`]).
    feedback_in_flight: Arc<AtomicUsize>,
}

/// The command an inline item runs once the editor has inserted it (LSP 3.18's
/// `InlineCompletionItem.command`: Neovim, VS Code's client and lsp-mode execute it through
/// `workspace/executeCommand`): how the bridge learns a completion was accepted. The names
/// end in the bridge's process id: vscode-languageclient registers a server's commands
/// window-wide, and a second bridge in the same window (a multi-root workspace) would
/// otherwise fail to start with "command already exists".
const ACCEPTED_COMMAND: &str = "reaper.accepted";
/// The command an editor (or a user's key mapping) may run when a completion is dismissed.
const REJECTED_COMMAND: &str = "reaper.rejected";

/// `command` with this process's suffix, as advertised and put on items.
fn command_name(command: &str) -> String {
    format!("{command}.{}", std::process::id())
}

/// The event a command name stands for, with or without a process id suffix.
fn command_event(name: &str) -> Option<FeedbackEvent> {
    let is = |command: &str| {
        name.strip_prefix(command)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    if is(ACCEPTED_COMMAND) {
        Some(FeedbackEvent::Accepted)
    } else if is(REJECTED_COMMAND) {
        Some(FeedbackEvent::Rejected)
    } else {
        None
    }
}
/// Feedback calls in flight at most; events past it are dropped (and logged), not queued.
const MAX_FEEDBACK_IN_FLIGHT: usize = 32;
/// Longest a feedback call may take.
const FEEDBACK_DEADLINE: Duration = Duration::from_secs(2);

/// LSP's warning and error `MessageType`s.
const LOG_ERROR: u8 = 1;
const LOG_WARNING: u8 = 2;

impl Server {
    /// Handles one message; `Some` when the session ends.
    fn handle(&mut self, message: Value) -> Option<Ending> {
        let Some(object) = message.as_object() else {
            self.out.send(rpc::error(
                &Value::Null,
                code::INVALID_REQUEST,
                "a JSON-RPC message is an object",
            ));
            return None;
        };
        let id = object.get("id").cloned();
        let method = object.get("method").and_then(Value::as_str);
        let params = object.get("params").cloned().unwrap_or(Value::Null);
        match (method, id) {
            (Some(method), Some(id)) => {
                self.request(method, id, params);
                None
            }
            (Some(method), None) => self.notification(method, params),
            // A response to a request of ours: the bridge sends none that need one.
            (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => {
                None
            }
            (None, id) => {
                self.out.send(rpc::error(
                    &id.unwrap_or(Value::Null),
                    code::INVALID_REQUEST,
                    "a message with neither a method nor a result",
                ));
                None
            }
        }
    }

    fn request(&mut self, method: &str, id: Value, params: Value) {
        match (self.state, method) {
            (State::Uninitialized, "initialize") => {
                let result = self.initialize(&params);
                self.state = State::Running;
                self.out.send(rpc::result(&id, result));
                // Reach (or start) the daemon now, not at the first keystroke.
                let daemon = self.daemon.clone();
                let out = self.out.clone();
                tokio::spawn(async move {
                    if let Err(error) = daemon.client().await {
                        out.log(LOG_ERROR, format!("reaper: {error}"));
                    }
                });
            }
            (State::Uninitialized, _) => self.out.send(rpc::error(
                &id,
                code::SERVER_NOT_INITIALIZED,
                "send initialize first",
            )),
            (_, "initialize") => self.out.send(rpc::error(
                &id,
                code::INVALID_REQUEST,
                "initialize was already sent",
            )),
            (State::ShutDown, _) => self.out.send(rpc::error(
                &id,
                code::INVALID_REQUEST,
                "shutdown was requested: only exit is expected now",
            )),
            (State::Running, "shutdown") => {
                self.state = State::ShutDown;
                self.cancel_all("the editor is shutting down");
                self.out.send(rpc::result(&id, Value::Null));
            }
            (State::Running, "textDocument/inlineCompletion") => self.inline_completion(id, params),
            (State::Running, "workspace/executeCommand") => {
                let command = params.get("command").and_then(Value::as_str);
                let argument = params
                    .pointer("/arguments/0")
                    .cloned()
                    .unwrap_or(Value::Null);
                let event = match command.and_then(command_event) {
                    Some(event) => event,
                    None => {
                        self.out.send(rpc::error(
                            &id,
                            code::INVALID_PARAMS,
                            format!(
                                "reaper lsp runs only {ACCEPTED_COMMAND} and {REJECTED_COMMAND}, not {}",
                                command.unwrap_or("(no command)")
                            ),
                        ));
                        return;
                    }
                };
                self.feedback(event, &argument, None);
                self.out.send(rpc::result(&id, Value::Null));
            }
            (State::Running, _) => self.out.send(rpc::error(
                &id,
                code::METHOD_NOT_FOUND,
                format!("reaper lsp does not serve {method}"),
            )),
        }
    }

    fn notification(&mut self, method: &str, params: Value) -> Option<Ending> {
        match method {
            "exit" => {
                return Some(if self.state == State::ShutDown {
                    Ending::Clean
                } else {
                    Ending::Abrupt
                })
            }
            "$/cancelRequest" => {
                if let Some(id) = params.get("id") {
                    self.cancel(&id.to_string(), "cancelled by the editor");
                }
            }
            "textDocument/didOpen" => {
                self.with_params(method, params, |s, p: DidOpenTextDocumentParams| s.open(p))
            }
            "textDocument/didChange" => {
                self.with_params(method, params, |s, p: DidChangeTextDocumentParams| {
                    s.change(p)
                })
            }
            "textDocument/didClose" => {
                self.with_params(method, params, |s, p: DidCloseTextDocumentParams| {
                    let uri = p.text_document.uri.as_str().to_owned();
                    s.documents.remove(&uri);
                    if let Some(key) = s.latest.remove(&uri) {
                        s.cancel(&key, "the document was closed");
                    }
                })
            }
            // What GitHub Copilot's language server is told by its clients, where a client
            // sends the same for any server: the item it showed, or how much of it was kept.
            "textDocument/didShowCompletion" => {
                let argument = params.pointer("/item/command/arguments/0").cloned();
                self.feedback(FeedbackEvent::Shown, &argument.unwrap_or(Value::Null), None);
            }
            "textDocument/didPartiallyAcceptCompletion" => {
                let argument = params.pointer("/item/command/arguments/0").cloned();
                let kept = params.get("acceptedLength").and_then(Value::as_u64);
                self.feedback(
                    FeedbackEvent::Accepted,
                    &argument.unwrap_or(Value::Null),
                    kept,
                );
            }
            // `initialized`, `$/setTrace`, `workspace/didChangeConfiguration`…: nothing to do.
            _ => {}
        }
        None
    }

    /// Tells the daemon, in the background, what the editor did with a completion whose item
    /// carried `argument` (`{"provider": …, "chars": …}`); `kept` overrides the characters
    /// (an editor's `acceptedLength`, in its own units).
    fn feedback(&self, event: FeedbackEvent, argument: &Value, kept: Option<u64>) {
        let provider = argument
            .get("provider")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let chars = kept.or_else(|| argument.get("chars").and_then(Value::as_u64));
        let feedback = CompletionFeedback {
            accepted_chars: match event {
                FeedbackEvent::Accepted => chars.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                _ => 0,
            },
            event,
            provider: provider.chars().take(64).collect(),
        };
        let in_flight = self.feedback_in_flight.clone();
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_FEEDBACK_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(?feedback, "feedback dropped: too many still on their way");
            return;
        }
        let daemon = self.daemon.clone();
        tokio::spawn(async move {
            let options = CallOptions {
                deadline: Some(FEEDBACK_DEADLINE),
            };
            let sent = match daemon.client().await {
                Ok(client) => client
                    .feedback(&feedback, options)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match sent {
                Ok(_) => tracing::debug!(?feedback, "feedback sent"),
                Err(error) => tracing::warn!(?feedback, %error, "feedback not delivered"),
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Parses a notification's params, or tells the editor's log why not.
    fn with_params<P: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        params: Value,
        apply: impl FnOnce(&mut Server, P),
    ) {
        match serde_json::from_value::<P>(params) {
            Ok(p) => apply(self, p),
            Err(error) => {
                tracing::warn!(method, %error, "invalid notification params");
                self.out.log(
                    LOG_WARNING,
                    format!("reaper: {method} ignored: invalid params ({error})"),
                );
            }
        }
    }

    fn initialize(&mut self, params: &Value) -> Value {
        let offered = params
            .pointer("/capabilities/general/positionEncodings")
            .and_then(Value::as_array);
        if offered.is_some_and(|list| list.iter().any(|e| e == "utf-8")) {
            self.encoding = PositionEncoding::Utf8;
        }
        let client = params.pointer("/clientInfo/name").and_then(Value::as_str);
        let mut roots: Vec<String> = params
            .get("workspaceFolders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("uri").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        if roots.is_empty() {
            roots.extend(
                params
                    .get("rootUri")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
        }
        tracing::info!(
            client = client.unwrap_or("unknown"),
            encoding = self.encoding.name(),
            ?roots,
            "editor connected"
        );
        json!({
            "capabilities": {
                "positionEncoding": self.encoding.name(),
                "textDocumentSync": {"openClose": true, "change": 2},
                "inlineCompletionProvider": true,
                "executeCommandProvider": {
                    "commands": [command_name(ACCEPTED_COMMAND), command_name(REJECTED_COMMAND)],
                },
            },
            "serverInfo": {"name": "reaper", "version": env!("CARGO_PKG_VERSION")},
        })
    }

    fn open(&mut self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        let uri = doc.uri.as_str().to_owned();
        if doc.text.len() > self.options.max_document_bytes {
            self.refuse(&uri, doc.text.len());
            return;
        }
        if !self.documents.contains_key(&uri) && self.documents.len() >= self.options.max_documents
        {
            self.out.log(
                LOG_WARNING,
                format!(
                    "reaper: {uri} not kept: {} documents are open, the bridge's limit",
                    self.options.max_documents
                ),
            );
            return;
        }
        self.documents.insert(
            uri,
            Document {
                text: doc.text,
                language: doc.language_id,
                version: doc.version,
            },
        );
    }

    fn change(&mut self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.uri.as_str().to_owned();
        let Some(doc) = self.documents.get_mut(&uri) else {
            tracing::warn!(%uri, "a change to a document that is not open");
            return;
        };
        doc.version = params.text_document.version;
        for change in params.content_changes {
            if let Err(error) = doc.apply(
                change.range,
                &change.text,
                self.encoding,
                self.options.max_document_bytes,
            ) {
                tracing::warn!(%uri, %error, "edit refused");
                self.out.log(LOG_WARNING, format!("reaper: {uri}: {error}"));
                return;
            }
        }
    }

    fn refuse(&self, uri: &str, bytes: usize) {
        self.out.log(
            LOG_WARNING,
            format!(
                "reaper: {uri} not kept: {bytes} bytes, over the bridge's limit of {}",
                self.options.max_document_bytes
            ),
        );
    }

    fn inline_completion(&mut self, id: Value, params: Value) {
        let params: InlineCompletionParams = match serde_json::from_value(params) {
            Ok(p) => p,
            Err(error) => {
                self.out.send(rpc::error(
                    &id,
                    code::INVALID_PARAMS,
                    format!("invalid inlineCompletion params: {error}"),
                ));
                return;
            }
        };
        let position = params.text_document_position.position;
        let uri = params
            .text_document_position
            .text_document
            .uri
            .as_str()
            .to_owned();
        let Some(doc) = self.documents.get(&uri) else {
            self.out.send(rpc::error(
                &id,
                code::INVALID_PARAMS,
                format!("{uri} is not open: send textDocument/didOpen first"),
            ));
            return;
        };
        let at = text::offset(&doc.text, position, self.encoding);
        let cursor = text::position(&doc.text, at, self.encoding);
        let request = CompletionRequest {
            prefix: text::tail(&doc.text[..at], self.options.prefix_bytes).to_owned(),
            suffix: text::head(&doc.text[at..], self.options.suffix_bytes).to_owned(),
            language: doc.language.clone(),
            file_path: uri::file_path(&uri).map(|p: PathBuf| p.display().to_string()),
            context: None,
        };
        let key = id.to_string();
        if let Some(previous) = self.latest.insert(uri.clone(), key.clone()) {
            self.cancel(&previous, "superseded by a newer request for the document");
        }
        let answered = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(complete(
            self.daemon.clone(),
            request,
            self.options.clone(),
            Reply {
                id,
                key: key.clone(),
                cursor,
                answered: answered.clone(),
                out: self.out.clone(),
                done: self.done.clone(),
            },
        ));
        self.flights.insert(
            key,
            Flight {
                uri,
                answered,
                task: task.abort_handle(),
            },
        );
    }

    /// Answers request `key` with RequestCancelled (unless it was answered) and stops its call.
    fn cancel(&mut self, key: &str, why: &str) {
        let Some(flight) = self.flights.remove(key) else {
            return;
        };
        if self.latest.get(&flight.uri).is_some_and(|k| k == key) {
            self.latest.remove(&flight.uri);
        }
        flight.task.abort();
        if !flight.answered.swap(true, Ordering::AcqRel) {
            tracing::debug!(request = key, why, "completion cancelled");
            if let Ok(id) = serde_json::from_str::<Value>(key) {
                self.out
                    .send(rpc::error(&id, code::REQUEST_CANCELLED, why.to_owned()));
            }
        }
    }

    fn cancel_all(&mut self, why: &str) {
        let keys: Vec<String> = self.flights.keys().cloned().collect();
        for key in keys {
            self.cancel(&key, why);
        }
    }
}

/// Where a completion's answer goes.
struct Reply {
    id: Value,
    key: String,
    cursor: Position,
    answered: Arc<AtomicBool>,
    out: Outgoing,
    done: mpsc::UnboundedSender<String>,
}

/// One inline completion: the call (once more on a new connection if the daemon went away),
/// then its answer, unless a canceller answered first.
async fn complete(
    daemon: Arc<Daemon>,
    request: CompletionRequest,
    options: BridgeOptions,
    reply: Reply,
) {
    let result = call(&daemon, &request, options.deadline).await;
    if reply.answered.swap(true, Ordering::AcqRel) {
        return;
    }
    let message = match result {
        Ok(answer) => rpc::result(
            &reply.id,
            items(&answer, reply.cursor, options.min_confidence),
        ),
        Err(Failure::Cancelled(why)) => rpc::error(&reply.id, code::REQUEST_CANCELLED, why),
        Err(Failure::Failed(why)) => {
            tracing::warn!(%why, "completion failed");
            rpc::error(&reply.id, code::REQUEST_FAILED, why)
        }
    };
    reply.out.send(message);
    let _ = reply.done.send(reply.key);
}

enum Failure {
    Cancelled(String),
    Failed(String),
}

async fn call(
    daemon: &Daemon,
    request: &CompletionRequest,
    deadline: Duration,
) -> Result<CompletionResponse, Failure> {
    let options = CallOptions {
        deadline: Some(deadline),
    };
    let mut retried = false;
    loop {
        let client = daemon.client().await.map_err(|e| match e {
            DaemonError::Client(error) => failure(&error),
            other => Failure::Failed(format!("reaper: {other}")),
        })?;
        match client.complete(request, options).await {
            Ok(answer) => return Ok(answer),
            Err(error @ (Error::Transport(_) | Error::Connect { .. })) => {
                // The daemon went away (or restarted elsewhere): a fresh look at the state
                // directory, once, starting a daemon if none is there.
                daemon.forget(&client).await;
                if retried {
                    return Err(failure(&error));
                }
                tracing::info!(%error, "reconnecting to the daemon");
                retried = true;
            }
            Err(error @ Error::DeadlineExceeded(_)) => {
                // A slow model, or a daemon that vanished without closing the connection: a
                // quick Health call tells which, and a dead connection is forgotten.
                let alive = tokio::time::timeout(Duration::from_millis(500), client.health())
                    .await
                    .is_ok_and(|r| r.is_ok());
                if !alive {
                    daemon.forget(&client).await;
                }
                return Err(failure(&error));
            }
            Err(error) => return Err(failure(&error)),
        }
    }
}

fn failure(error: &Error) -> Failure {
    let status = error.status();
    let text = format!("reaperd: {}: {}", status.code.name(), status.message);
    if status.code == Code::Cancelled {
        Failure::Cancelled(text)
    } else {
        Failure::Failed(text)
    }
}

/// The `InlineCompletionList` for an answer: one item inserted at the cursor, or none when
/// the answer is empty or not sure enough to show.
fn items(answer: &CompletionResponse, cursor: Position, min_confidence: f32) -> Value {
    if answer.completion.trim().is_empty() || answer.confidence < min_confidence {
        return json!({"items": []});
    }
    let range = Range {
        start: cursor,
        end: cursor,
    };
    let command = json!({
        "title": "reaper: completion accepted",
        "command": command_name(ACCEPTED_COMMAND),
        "arguments": [{"provider": answer.provider, "chars": answer.completion.chars().count()}],
    });
    json!({"items": [{"insertText": answer.completion, "range": range, "command": command}]})
}
