//! One agent task: plan, act, verify, until the model says it is done.
//!
//! Each turn the model is given the conversation so far and the tools, and answers with text
//! and tool calls (**planning**). Each call is checked and worked out without touching
//! anything, then, by its tool's policy, run at once, run once the client approves it, or
//! refused (**executing**); what it did is checked — a change read back from disk — and given
//! to the model (**verifying**). A turn without calls ends the task: every file it changed is
//! checked against the journal once more, and the model's last words are the task's result
//! (**completed**). Anything that stops it early — the client's cancel, a limit, a provider
//! that fails — ends it as **failed** with why, and what it changed stays undoable.
//!
//! Every update goes out on a bounded channel: a client that stops reading holds the task
//! back, it does not grow the daemon. Control messages (approve, reject, cancel) come in on
//! another; a cancel is heard while the model writes, while a command runs and while an
//! approval is pending.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_core::config::Policy;
use reaper_core::schema::{StepStatus, StepUpdate};
use reaper_mcp::McpServers;
use reaper_providers::{ChatError, ChatPiece, ConverseAsk, Pool, ToolCall, Turn};
use tokio::sync::{mpsc, watch};

use crate::atomic;
use crate::command::{self, CommandRules};
use crate::journal::{digest, Journal};
use crate::tools::{self, Prepared, ToolError, Toolbox};

/// Longest answer per turn, in tokens.
pub const TURN_MAX_TOKENS: u32 = 4096;
/// Most of a tool's result the model is given.
pub const MAX_RESULT: usize = 128 * 1024;
/// Most of a message shown in a step update (the model gets the whole result).
pub const MAX_UPDATE_TEXT: usize = 8 * 1024;
/// Fewest milliseconds between two progress updates of one MCP call.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Calls run per turn at most; a model that asks for more is told they were not run.
pub const MAX_CALLS_PER_TURN: usize = 32;
/// Longest a task's last update waits for a client that does not read.
const LAST_UPDATE_WAIT: Duration = Duration::from_secs(2);

/// What the client decides about a step waiting for approval. (A cancel does not queue
/// behind these: it is a `watch` of its own, so it is never dropped.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Run the step waiting for approval (`Some(n)`: only if it is step n).
    Approve(Option<u32>),
    /// Refuse it.
    Reject(Option<u32>),
}

/// How much a task may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Model turns.
    pub max_steps: u32,
    /// Tokens, prompt and answers together.
    pub max_tokens: u64,
    /// Bytes written over all changes.
    pub max_bytes_written: u64,
}

/// Everything a task needs.
pub struct TaskSpec {
    /// Its id (`reaper agent undo ID`).
    pub id: String,
    /// What the user asked.
    pub instruction: String,
    /// Its tools, in its working directory.
    pub toolbox: Toolbox,
    /// Its undo journal.
    pub journal: Journal,
    /// The journal's lock, held while the task runs and while a write it started finishes
    /// (undo waits for both).
    pub lock: crate::journal::TaskLock,
    /// Its limits.
    pub limits: Limits,
    /// Each tool's policy.
    pub policy: Arc<dyn Fn(&str) -> Policy + Send + Sync>,
    /// The provider to ask, if one is named.
    pub provider: Option<String>,
    /// The MCP servers whose tools it offers.
    pub mcp: Option<Arc<McpServers>>,
    /// The offline index of its working directory, if there is one.
    pub index: Option<Arc<reaper_offline::Workspace>>,
    /// How commands run.
    pub commands: CommandRules,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("id", &self.id)
            .field("toolbox", &self.toolbox)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why a task ended without completing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The model could not be asked, or stopped answering.
    #[error(transparent)]
    Provider(#[from] ChatError),
    /// The client cancelled it.
    #[error("cancelled by the client")]
    Cancelled,
    /// It took every turn it may take.
    #[error("the task took its {0} turns without finishing ([agent] max_steps)")]
    Steps(u32),
    /// It spent the tokens it may spend.
    #[error("the task spent {used} tokens, over its limit of {limit} ([agent] max_tokens)")]
    Tokens {
        /// Spent.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// Its journal could not be written: nothing more is changed without one.
    #[error("the undo journal could not be written ({0}): the task stops rather than change what it could not undo")]
    Journal(String),
}

/// A new task id: 12 hex digits, unique enough for one user's tasks.
pub fn new_task_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The instructions every task's model gets.
fn system_prompt(root: &str, commands: bool) -> String {
    format!(
        "You are a coding agent working in the directory {root}. Use the tools to look before you change anything: \
         read files, list directories, search. Change files with edit_file (an exact passage, or a unified diff) or \
         write_file (a whole file). Paths are relative to that directory; you cannot leave it. {}\
         A call may be refused by the user: then do something else or stop. When the task is done, answer with a short \
         summary of what you changed and call no tool.",
        if commands { "run_command runs allowed programs, e.g. to test your change. " } else { "" }
    )
}

/// Sends updates, numbering steps.
struct Reporter {
    id: String,
    updates: mpsc::Sender<StepUpdate>,
    step: u32,
    cancel: watch::Receiver<bool>,
}

impl Reporter {
    /// Sends an update, waiting for the client to take it; a cancel stops the wait (and
    /// the update is dropped: the task is ending).
    async fn send(
        &self,
        status: StepStatus,
        description: String,
        fill: impl FnOnce(&mut StepUpdate),
    ) {
        let update = self.update(status, description, fill);
        let mut cancel = self.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => {}
            // The receiver goes only when the call has ended: nobody to tell.
            _ = self.updates.send(update) => {}
        }
    }

    /// Sends an update if the client has room for it now, else drops it (progress).
    fn offer(&self, status: StepStatus, description: String, fill: impl FnOnce(&mut StepUpdate)) {
        let _ = self
            .updates
            .try_send(self.update(status, description, fill));
    }

    /// Sends the task's last update, waiting a little for a client that is not reading.
    async fn send_last(&self, status: StepStatus, message: String) {
        let description = if status == StepStatus::Completed {
            "done"
        } else {
            "stopped"
        };
        let update = self.update(status, description.to_owned(), |u| {
            u.message = Some(cut(&message, MAX_UPDATE_TEXT));
        });
        let _ = tokio::time::timeout(LAST_UPDATE_WAIT, self.updates.send(update)).await;
    }

    fn update(
        &self,
        status: StepStatus,
        description: String,
        fill: impl FnOnce(&mut StepUpdate),
    ) -> StepUpdate {
        let mut update = StepUpdate {
            step: self.step,
            description,
            status,
            message: None,
            task_id: self.id.clone(),
            tool: None,
            needs_approval: false,
            detail: None,
        };
        fill(&mut update);
        update
    }
}

/// The control messages of a task.
struct Controls {
    rx: mpsc::Receiver<Control>,
    closed: bool,
    cancel: watch::Receiver<bool>,
}

/// What the client decided about a step.
enum Decision {
    Approved,
    Denied(String),
}

impl Controls {
    /// Waits for a cancel; approvals arriving now are for no step, and are dropped.
    /// Cancel-safe.
    async fn cancelled(&mut self) {
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.wait_for(|c| *c) => return,
                message = self.rx.recv(), if !self.closed => match message {
                    Some(other) => tracing::debug!(?other, "a control message for no pending step, dropped"),
                    None => self.closed = true,
                },
                // The cancel's sender is gone: only the call's end remains, which aborts us.
                () = std::future::pending::<()>(), if self.closed => {}
            }
        }
    }

    /// Waits for the client's decision on `step`; `Err` if it cancels the task.
    async fn decide(&mut self, step: u32) -> Result<Decision, TaskError> {
        loop {
            if self.closed {
                return Ok(Decision::Denied(
                    "no one can approve it: the client closed its side of the call".to_owned(),
                ));
            }
            tokio::select! {
                biased;
                _ = self.cancel.wait_for(|c| *c) => return Err(TaskError::Cancelled),
                message = self.rx.recv() => match message {
                    Some(Control::Approve(n)) if n.is_none_or(|n| n == step) => return Ok(Decision::Approved),
                    Some(Control::Reject(n)) if n.is_none_or(|n| n == step) => {
                        return Ok(Decision::Denied("the user denied it".to_owned()))
                    }
                    Some(other) => tracing::debug!(?other, step, "a control message for another step, dropped"),
                    None => self.closed = true,
                },
            }
        }
    }
}

/// Runs `spec` to its end: `Ok` with the model's last words, or why it stopped. Every update,
/// the last included, has gone out on `updates` when it returns.
pub async fn run(
    pool: &Pool,
    spec: TaskSpec,
    updates: mpsc::Sender<StepUpdate>,
    controls: mpsc::Receiver<Control>,
    cancel: watch::Receiver<bool>,
) -> Result<String, TaskError> {
    let mut reporter = Reporter {
        id: spec.id.clone(),
        updates,
        step: 0,
        cancel: cancel.clone(),
    };
    let mut controls = Controls {
        rx: controls,
        closed: false,
        cancel,
    };
    let journal = Arc::new(Mutex::new(spec.journal));
    let mut task = Task {
        pool,
        toolbox: Arc::new(spec.toolbox),
        lock: Arc::new(spec.lock),
        journal: journal.clone(),
        limits: spec.limits,
        policy: spec.policy,
        provider: spec.provider,
        mcp: spec.mcp,
        index: spec.index,
        commands: spec.commands,
        tokens: 0,
        written: 0,
    };
    let result = task
        .run(&spec.instruction, &mut reporter, &mut controls)
        .await;
    // A write under way (a cancelled task's) holds the journal: waited for off the runtime.
    let changed = {
        let (journal, toolbox) = (journal.clone(), task.toolbox.clone());
        tokio::task::spawn_blocking(move || changed_files(&journal, toolbox.workspace()))
            .await
            .unwrap_or_default()
    };
    match &result {
        Ok(words) => {
            reporter.step += 1;
            let message = if changed.is_empty() {
                words.clone()
            } else {
                format!(
                    "{words}\n\nChanged: {}. To put them back: reaper agent undo {}",
                    changed.join(", "),
                    spec.id
                )
            };
            reporter.send_last(StepStatus::Completed, message).await;
        }
        Err(error) => {
            reporter.step += 1;
            let mut message = error.to_string();
            if !changed.is_empty() {
                message.push_str(&format!(
                    "; changed so far: {}. To put them back: reaper agent undo {}",
                    changed.join(", "),
                    spec.id
                ));
            }
            reporter.send_last(StepStatus::Failed, message).await;
        }
    }
    result
}

/// The files a task changed, as shown.
fn changed_files(journal: &Mutex<Journal>, workspace: &crate::Workspace) -> Vec<String> {
    let journal = journal.lock().unwrap_or_else(|e| e.into_inner());
    journal
        .changed()
        .map(|e| workspace.relative(&e.path))
        .collect()
}

struct Task<'a> {
    pool: &'a Pool,
    toolbox: Arc<Toolbox>,
    /// Held by every write under way, so that undo waits for it even after the task is gone.
    lock: Arc<crate::journal::TaskLock>,
    journal: Arc<Mutex<Journal>>,
    limits: Limits,
    policy: Arc<dyn Fn(&str) -> Policy + Send + Sync>,
    provider: Option<String>,
    mcp: Option<Arc<McpServers>>,
    index: Option<Arc<reaper_offline::Workspace>>,
    commands: CommandRules,
    tokens: u64,
    written: u64,
}

/// One turn's answer.
#[derive(Default)]
struct Answer {
    text: String,
    calls: Vec<ToolCall>,
}

impl Task<'_> {
    async fn run(
        &mut self,
        instruction: &str,
        reporter: &mut Reporter,
        controls: &mut Controls,
    ) -> Result<String, TaskError> {
        let root = self.toolbox.workspace().root().display().to_string();
        let mut turns = vec![
            Turn::System(system_prompt(&root, self.commands.enabled)),
            Turn::User(instruction.to_owned()),
        ];
        let specs = self.toolbox.specs();
        for turn in 1..=self.limits.max_steps {
            reporter.step += 1;
            let ask = ConverseAsk {
                turns: &turns,
                tools: &specs,
                max_tokens: TURN_MAX_TOKENS,
                model: None,
                provider: self.provider.as_deref(),
            };
            let mut answer = self.pool.converse(ask)?;
            let who = answer
                .provider()
                .map_or_else(|| "the model".to_owned(), |(p, m)| format!("{m} ({p})"));
            reporter
                .send(
                    StepStatus::Planning,
                    format!("turn {turn}: asking {who}"),
                    |_| {},
                )
                .await;
            let sent: usize = turns.iter().map(turn_bytes).sum();
            let read = async {
                let mut got = Answer::default();
                let mut counted = None;
                while let Some(piece) = answer.next().await {
                    match piece? {
                        ChatPiece::Text(text) => got.text.push_str(&text),
                        ChatPiece::ToolCall(call) => got.calls.push(call),
                        ChatPiece::Usage(usage) => {
                            counted = Some(u64::from(usage.input) + u64::from(usage.output))
                        }
                    }
                }
                Ok::<_, TaskError>((got, counted))
            };
            let (got, counted) = tokio::select! {
                biased;
                () = controls.cancelled() => return Err(TaskError::Cancelled),
                read = read => read?,
            };
            // The provider's slots go back now: tools may wait minutes for an approval.
            drop(answer);
            // Providers that do not count: about four bytes a token.
            self.tokens += counted.unwrap_or(((sent + got.text.len()) / 4) as u64);
            if !got.text.trim().is_empty() {
                let text = got.text.trim().to_owned();
                reporter
                    .send(
                        StepStatus::Planning,
                        format!("turn {turn}: {who} answered"),
                        |u| {
                            u.message = Some(cut(&text, MAX_UPDATE_TEXT));
                        },
                    )
                    .await;
            }
            if self.tokens > self.limits.max_tokens {
                return Err(TaskError::Tokens {
                    used: self.tokens,
                    limit: self.limits.max_tokens,
                });
            }
            if got.calls.is_empty() {
                self.verify_all(reporter).await?;
                let words = got.text.trim();
                return Ok(if words.is_empty() {
                    "the model finished without a word".to_owned()
                } else {
                    words.to_owned()
                });
            }
            turns.push(Turn::Assistant {
                text: got.text.clone(),
                calls: got.calls.clone(),
            });
            for (n, call) in got.calls.iter().enumerate() {
                if n >= MAX_CALLS_PER_TURN {
                    // Every call needs its result (the APIs refuse a conversation without).
                    turns.push(Turn::Tool {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        content: format!(
                            "not run: at most {MAX_CALLS_PER_TURN} calls are run per turn"
                        ),
                        is_error: true,
                    });
                    continue;
                }
                if self.tokens > self.limits.max_tokens {
                    return Err(TaskError::Tokens {
                        used: self.tokens,
                        limit: self.limits.max_tokens,
                    });
                }
                reporter.step += 1;
                let (content, is_error) = self.act(call, reporter, controls).await?;
                // What the model will read is counted before it reads it.
                self.tokens += (content.len().min(MAX_RESULT) / 4) as u64;
                turns.push(Turn::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: cut(&content, MAX_RESULT),
                    is_error,
                });
            }
        }
        Err(TaskError::Steps(self.limits.max_steps))
    }

    /// One call: checked, decided on, run and verified. What the model is told.
    async fn act(
        &mut self,
        call: &ToolCall,
        reporter: &Reporter,
        controls: &mut Controls,
    ) -> Result<(String, bool), TaskError> {
        let description = describe(call);
        // Reading and diffing a large file is work for a blocking thread, not a worker of
        // the runtime (where a cancel could not be heard).
        let toolbox = self.toolbox.clone();
        let asked = call.clone();
        let prepared = tokio::select! {
            biased;
            () = controls.cancelled() => return Err(TaskError::Cancelled),
            prepared = tokio::task::spawn_blocking(move || toolbox.prepare(&asked)) => prepared,
        };
        let prepared =
            match prepared.map_err(|e| TaskError::Journal(format!("a tool panicked: {e}")))? {
                Ok(prepared) => prepared,
                Err(error) => return Ok(refuse(reporter, description, call, &error).await),
            };
        let detail = match &prepared {
            Prepared::Change(change) => Some(change.preview.clone()),
            Prepared::Command { words } => Some(cut(&words.join(" "), MAX_UPDATE_TEXT)),
            _ => (!call.arguments.is_null())
                .then(|| cut(&call.arguments.to_string(), MAX_UPDATE_TEXT)),
        };
        if let Prepared::Change(change) = &prepared {
            let wanted = change.contents.len() as u64;
            if self.written + wanted > self.limits.max_bytes_written {
                let error = ToolError::Budget {
                    wanted,
                    limit: self.limits.max_bytes_written,
                };
                return Ok(refuse(reporter, description, call, &error).await);
            }
        }
        let policy = (self.policy)(&call.name);
        let ask = policy == Policy::Ask;
        reporter
            .send(StepStatus::Executing, description.clone(), |u| {
                u.tool = Some(call.name.clone());
                u.detail = detail.clone();
                u.needs_approval = ask && policy != Policy::Deny;
                if policy == Policy::Deny {
                    u.message = Some(format!("{} is denied by [agent.policy]", call.name));
                }
            })
            .await;
        let denied = match policy {
            Policy::Deny => Some(format!(
                "{} is denied by the user's policy ([agent.policy] in reaper.toml)",
                call.name
            )),
            Policy::Allow => None,
            Policy::Ask => match controls.decide(reporter.step).await? {
                Decision::Approved => None,
                Decision::Denied(why) => Some(why),
            },
        };
        if let Some(why) = denied {
            let message = format!("not run: {why}");
            reporter
                .send(StepStatus::Verifying, description, |u| {
                    u.tool = Some(call.name.clone());
                    u.message = Some(message.clone());
                })
                .await;
            return Ok((message, true));
        }
        let outcome = tokio::select! {
            biased;
            () = controls.cancelled() => return Err(TaskError::Cancelled),
            outcome = self.execute(&prepared, reporter, &description) => outcome,
        };
        let (message, is_error) = match outcome {
            Ok((text, failed)) => (text, failed),
            Err(ToolErrorOrJournal::Tool(error)) => (format!("failed: {error}"), true),
            Err(ToolErrorOrJournal::Journal(error)) => return Err(TaskError::Journal(error)),
        };
        reporter
            .send(StepStatus::Verifying, description, |u| {
                u.tool = Some(call.name.clone());
                u.message = Some(cut(&message, MAX_UPDATE_TEXT));
            })
            .await;
        Ok((message, is_error))
    }

    /// Runs a checked call: its result, and whether it failed.
    async fn execute(
        &mut self,
        prepared: &Prepared,
        reporter: &Reporter,
        description: &str,
    ) -> Result<(String, bool), ToolErrorOrJournal> {
        match prepared {
            Prepared::Change(change) => {
                let journal = self.journal.clone();
                let toolbox = self.toolbox.clone();
                let lock = self.lock.clone();
                let change = change.clone();
                let size = change.contents.len() as u64;
                // The write runs to its end even if the task is cancelled or aborted
                // meanwhile, holding the journal's lock: the file and the journal always
                // agree, and an undo waits for it.
                let applied = tokio::task::spawn_blocking(move || {
                    let _held = lock;
                    let mut journal = journal.lock().unwrap_or_else(|e| e.into_inner());
                    tools::apply(&change, &mut journal, toolbox.workspace())
                })
                .await
                .map_err(|e| ToolErrorOrJournal::Journal(e.to_string()))?;
                match applied {
                    Ok(text) => {
                        self.written += size;
                        Ok((text, false))
                    }
                    // A journal that cannot be written ends the task; anything else is for the
                    // model to read.
                    Err(ToolError::Io { path, source })
                        if source.kind() == std::io::ErrorKind::StorageFull =>
                    {
                        Err(ToolErrorOrJournal::Journal(format!("{path}: {source}")))
                    }
                    Err(error) => Err(ToolErrorOrJournal::Tool(error)),
                }
            }
            Prepared::Command { words } => {
                let ran = command::run(words, self.toolbox.workspace().root(), &self.commands)
                    .await
                    .map_err(|e| ToolErrorOrJournal::Tool(e.into()))?;
                Ok((ran.report(), !ran.succeeded()))
            }
            Prepared::Mcp {
                server,
                tool,
                arguments,
            } => {
                let Some(mcp) = &self.mcp else {
                    return Ok(("no MCP server is configured".to_owned(), true));
                };
                let (progress_tx, mut progress) = mpsc::unbounded_channel();
                let call = mcp.call_tool(server, tool, arguments.clone(), Some(progress_tx));
                tokio::pin!(call);
                let mut last: Option<Instant> = None;
                loop {
                    tokio::select! {
                        result = &mut call => {
                            return Ok(match result {
                                Ok(result) => (result.text(), result.is_error),
                                Err(error) => (format!("{server} failed: {error}"), true),
                            });
                        }
                        Some(p) = progress.recv() => {
                            // At most one update every PROGRESS_EVERY: a chatty server cannot
                            // flood the client.
                            if last.is_none_or(|l| l.elapsed() >= PROGRESS_EVERY) {
                                last = Some(Instant::now());
                                let text = match (p.total, &p.message) {
                                    (Some(total), Some(m)) => format!("{}/{total}: {m}", p.progress),
                                    (Some(total), None) => format!("{}/{total}", p.progress),
                                    (None, Some(m)) => format!("{}: {m}", p.progress),
                                    (None, None) => format!("{}", p.progress),
                                };
                                // Offered, never waited for: the progress channel is
                                // drained whatever the client's pace.
                                reporter.offer(StepStatus::Executing, description.to_owned(), |u| {
                                    u.tool = Some(format!("{server}__{tool}"));
                                    u.message = Some(cut(&format!("progress {text}"), MAX_UPDATE_TEXT));
                                });
                            }
                        }
                    }
                }
            }
            read => {
                let toolbox = self.toolbox.clone();
                // The index answers for its whole repository: used when it is this task's
                // directory, else the directory is scanned (a lookup in a larger repository
                // could fill its hits from elsewhere).
                let corpus = self
                    .index
                    .as_ref()
                    .filter(|w| w.root() == toolbox.workspace().root())
                    .and_then(|w| w.corpus());
                let read = read.clone();
                let done =
                    tokio::task::spawn_blocking(move || toolbox.read(&read, corpus.as_deref()))
                        .await
                        .map_err(|e| {
                            ToolErrorOrJournal::Journal(format!("a tool panicked: {e}"))
                        })?;
                match done {
                    Ok(text) => Ok((text, false)),
                    Err(error) => Err(ToolErrorOrJournal::Tool(error)),
                }
            }
        }
    }

    /// The last check: every file the task changed still holds what it wrote.
    async fn verify_all(&self, reporter: &mut Reporter) -> Result<(), TaskError> {
        let entries: Vec<crate::journal::Entry> = {
            let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            journal.changed().cloned().collect()
        };
        if entries.is_empty() {
            return Ok(());
        }
        reporter.step += 1;
        let mut differ = Vec::new();
        for entry in &entries {
            let now = atomic::read(&entry.path).ok().map(|b| digest(&b));
            if now != entry.after {
                differ.push(self.toolbox.workspace().relative(&entry.path));
            }
        }
        let message = if differ.is_empty() {
            format!("{} file(s) hold what the task wrote", entries.len())
        } else {
            format!(
                "changed since the task wrote them (by someone else?): {}",
                differ.join(", ")
            )
        };
        reporter
            .send(
                StepStatus::Verifying,
                "checking the files changed".to_owned(),
                |u| u.message = Some(message),
            )
            .await;
        Ok(())
    }
}

/// A call refused before it ran: the update that says so, and what the model is told.
async fn refuse(
    reporter: &Reporter,
    description: String,
    call: &ToolCall,
    error: &ToolError,
) -> (String, bool) {
    let message = format!("refused: {error}");
    reporter
        .send(StepStatus::Verifying, description, |u| {
            u.tool = Some(call.name.clone());
            u.message = Some(message.clone());
        })
        .await;
    (message, true)
}

enum ToolErrorOrJournal {
    Tool(ToolError),
    Journal(String),
}

/// A call in a line: its tool and its main argument.
fn describe(call: &ToolCall) -> String {
    let arg = ["path", "pattern", "command"]
        .iter()
        .find_map(|k| call.arguments.get(k).and_then(|v| v.as_str()));
    match arg {
        Some(arg) => format!("{} {}", call.name, cut(arg, 200)),
        None => call.name.clone(),
    }
}

/// `text` cut at `max` bytes (at a character boundary), saying so.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let head = reaper_core::text::head(text, max);
    format!("{head}\n[{} more bytes cut]", text.len() - head.len())
}

/// Bytes of a turn, for estimating tokens.
fn turn_bytes(turn: &Turn) -> usize {
    match turn {
        Turn::System(t) | Turn::User(t) => t.len(),
        Turn::Assistant { text, calls } => {
            text.len()
                + calls
                    .iter()
                    .map(|c| c.arguments.to_string().len())
                    .sum::<usize>()
        }
        Turn::Tool { content, .. } => content.len(),
    }
}
