//! `reaper.Agent/execute`: a multi-step task in a working directory, its steps streamed, its
//! approvals and its cancel on the same call.
//!
//! On the loop: a call is counted against `[agent] max_tasks` and handed to a task on the
//! provider runtime, which sets the task up (working directory, journal, tools, MCP servers'
//! tools) and runs it ([`reaper_agent::run`]); each step update comes back over the services'
//! one channel and goes to the client as a `StepUpdate`. Control messages the client sends on
//! the call (approve, reject, cancel) go to the task on a bounded channel; a client that
//! closes its side can approve nothing more, and steps that ask are denied.
//!
//! Flow control is chat's: each update in flight holds a permit of the call's [`CREDIT`]; a
//! client that stops reading holds the task at its next update. A deadline (`[rpc]
//! agent_timeout`, the task's `timeout`, or the call's own), a reset or a lost connection
//! aborts the task; a write under way finishes first (it runs to its end on a blocking
//! thread), so the files and the journal always agree, and `reaper agent undo` works after
//! any of them.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use reaper_agent::command::CommandRules;
use reaper_agent::{journal, Control, Journal, Limits, McpTool, TaskSpec, Toolbox, Workspace};
use reaper_core::config::AgentConfig;
use reaper_core::rpc::{CallId, IncomingCall, RpcServer, Sent};
use reaper_core::schema::{AgentAction, AgentControl, AgentTask, StepStatus, StepUpdate};
use reaper_core::{Code, Encoding, Status, WireMessage};
use reaper_mcp::McpServers;
use reaper_providers::Pool;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::services::errors::agent_status;
use crate::services::{Done, Finished};

/// Updates of one task on their way to the client, at most; past it the task waits.
pub const CREDIT: usize = 16;
/// Control messages waiting for the task, at most; more are dropped (a client has no reason
/// to send more than one per step).
const CONTROL_QUEUE: usize = 16;
/// Longest instruction accepted.
pub const MAX_INSTRUCTION_BYTES: usize = 256 * 1024;
/// Journals kept in `STATE_DIR/agent` (the oldest go first).
pub const KEEP_JOURNALS: usize = 200;

/// What a task reports for one call.
#[derive(Debug)]
pub struct AgentEvent {
    id: CallId,
    seq: u64,
    step: Step,
}

#[derive(Debug)]
enum Step {
    /// An update, holding its credit until the state machine takes it.
    Update(Box<StepUpdate>, OwnedSemaphorePermit),
    /// The task ended (its last update has gone before).
    Ended(Status),
}

struct Running {
    seq: u64,
    deadline: Instant,
    received_at: Instant,
    task: AbortHandle,
    encoding: Encoding,
    /// `None` once the client closed its side.
    controls: Option<mpsc::Sender<Control>>,
    /// Set on the client's cancel: never queued behind approvals, never dropped.
    cancel: watch::Sender<bool>,
    /// Control messages dropped for want of room (logged once per call).
    dropped: u64,
    waiting: VecDeque<Step>,
    /// The task's id and its last step number, for a last update of our own (a deadline).
    task_id: String,
    last_step: u32,
}

/// A call that ended, for metrics.
#[derive(Debug)]
pub struct Ended {
    /// How it ended.
    pub status: Status,
    /// When its request arrived.
    pub received_at: Instant,
}

/// The agent service, owned by the event loop.
pub struct AgentService {
    pool: Arc<Pool>,
    runtime: tokio::runtime::Handle,
    done: Done,
    config: Arc<AgentConfig>,
    mcp: Arc<McpServers>,
    journals: PathBuf,
    timeout: Duration,
    calls: HashMap<CallId, Running>,
    next_seq: u64,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

impl AgentService {
    /// The service: tasks run on `runtime` with models from `pool`, tools of `mcp`'s servers,
    /// and journals in `journals`.
    pub fn new(
        pool: Arc<Pool>,
        runtime: tokio::runtime::Handle,
        done: Done,
        config: &reaper_core::Config,
        mcp: Arc<McpServers>,
        journals: PathBuf,
    ) -> AgentService {
        AgentService {
            pool,
            runtime,
            done,
            config: Arc::new(config.agent.clone()),
            mcp,
            journals,
            timeout: Duration::from_millis(config.rpc.agent_timeout.get()),
            calls: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Tasks running.
    pub fn pending(&self) -> usize {
        self.calls.len()
    }

    /// Starts a task; `Some` if the call ended at once (a bad request, too many tasks).
    pub fn on_call(&mut self, server: &mut RpcServer, call: &IncomingCall) -> Option<Ended> {
        if !server.is_open(call.id) {
            return None;
        }
        let task = match decode(call) {
            Ok(task) => task,
            Err(status) => return end_now(server, call, status),
        };
        let max = self.config.max_tasks.get() as usize;
        if self.calls.len() >= max {
            let status = Status::new(
                Code::ResourceExhausted,
                format!("{max} agent tasks are running already ([agent] max_tasks): wait for one to end"),
            );
            return end_now(server, call, status);
        }
        let asked = task.timeout.map(|s| Duration::from_secs(u64::from(s)));
        let allowed = asked.map_or(self.timeout, |t| t.min(self.timeout));
        let limit = call.received_at + allowed;
        let deadline = call.deadline.map_or(limit, |d| d.min(limit));
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = call.id;
        let task_id = reaper_agent::new_task_id();
        let (controls, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (cancel, cancel_rx) = watch::channel(false);
        let setup = Setup {
            pool: self.pool.clone(),
            config: self.config.clone(),
            mcp: self.mcp.clone(),
            journals: self.journals.clone(),
            task_id: task_id.clone(),
        };
        let done = self.done.clone();
        let handle = self.runtime.spawn(async move {
            let result =
                AssertUnwindSafe(execute(setup, task, control_rx, cancel_rx, id, seq, &done))
                    .catch_unwind()
                    .await;
            let status = result.unwrap_or_else(|_| {
                tracing::error!("an agent task panicked; the call fails, the daemon goes on");
                Status::new(
                    Code::Internal,
                    "the agent task panicked (a bug; see the daemon log)",
                )
            });
            let _ = done.send(Finished::Agent(AgentEvent {
                id,
                seq,
                step: Step::Ended(status),
            }));
        });
        tracing::info!(task = %task_id, "agent task started");
        self.calls.insert(
            id,
            Running {
                seq,
                deadline,
                received_at: call.received_at,
                task: handle.abort_handle(),
                encoding: call.encoding,
                controls: Some(controls),
                cancel,
                dropped: 0,
                waiting: VecDeque::new(),
                task_id,
                last_step: 0,
            },
        );
        None
    }

    /// A control message on a running call; `Some` if it ended the call (it was not one).
    pub fn on_message(
        &mut self,
        server: &mut RpcServer,
        id: CallId,
        message: &[u8],
    ) -> Option<Ended> {
        let call = self.calls.get_mut(&id)?;
        let control = match AgentControl::decode(call.encoding, message) {
            Ok(control) => control,
            Err(error) => {
                let status = Status::new(
                    Code::InvalidArgument,
                    format!("reaper.Agent/execute control message: {error} (send {{\"action\": \"approve\" | \"reject\" | \"cancel\", \"step\": N}})"),
                );
                return self.end(server, id, status);
            }
        };
        let control = match control.action {
            AgentAction::Approve => Control::Approve(control.step),
            AgentAction::Reject => Control::Reject(control.step),
            AgentAction::Cancel => {
                call.cancel.send_replace(true);
                return None;
            }
        };
        if let Some(sender) = &call.controls {
            if sender.try_send(control).is_err() {
                call.dropped += 1;
                if call.dropped == 1 {
                    tracing::warn!(call = %id, "agent control messages arrive faster than steps: dropping the excess");
                }
            }
        }
        None
    }

    /// The client closed its side: nobody can approve a step any more.
    pub fn on_half_closed(&mut self, id: CallId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.controls = None;
        }
    }

    /// A task's update or end, back on the loop; `Some` if the call ended.
    pub fn on_event(&mut self, server: &mut RpcServer, event: AgentEvent) -> Option<Ended> {
        let call = self.calls.get_mut(&event.id)?;
        if call.seq != event.seq {
            return None;
        }
        if let Step::Update(update, _) = &event.step {
            call.last_step = call.last_step.max(update.step);
        }
        call.waiting.push_back(event.step);
        self.deliver(server, event.id)
    }

    /// The client can take more of a call.
    pub fn on_writable(&mut self, server: &mut RpcServer, id: CallId) -> Option<Ended> {
        if self.calls.contains_key(&id) {
            self.deliver(server, id)
        } else {
            None
        }
    }

    fn deliver(&mut self, server: &mut RpcServer, id: CallId) -> Option<Ended> {
        let status = loop {
            let call = self.calls.get_mut(&id)?;
            match call.waiting.pop_front()? {
                Step::Update(update, credit) => match send(server, id, call.encoding, &update) {
                    Sent::Sent => drop(credit),
                    Sent::WouldBlock => {
                        call.waiting.push_front(Step::Update(update, credit));
                        return None;
                    }
                    Sent::Closed => {
                        let received_at = self.forget(id)?;
                        return Some(Ended {
                            status: cancelled(),
                            received_at,
                        });
                    }
                },
                Step::Ended(status) => break status,
            }
        };
        self.end(server, id, status)
    }

    /// Ends a call with `status` (stopping its task).
    fn end(&mut self, server: &mut RpcServer, id: CallId, status: Status) -> Option<Ended> {
        let received_at = self.forget(id)?;
        server.finish(id, &status).then_some(Ended {
            status,
            received_at,
        })
    }

    fn forget(&mut self, id: CallId) -> Option<Instant> {
        let call = self.calls.remove(&id)?;
        call.task.abort();
        Some(call.received_at)
    }

    /// The client cancelled a call (or its connection went): stop its task.
    pub fn on_cancelled(&mut self, id: CallId) -> Option<Ended> {
        let received_at = self.forget(id)?;
        Some(Ended {
            status: cancelled(),
            received_at,
        })
    }

    /// The earliest deadline of a running task.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls.values().map(|c| c.deadline).min()
    }

    /// Ends tasks whose deadline passed, with a last update that says so.
    pub fn expire(&mut self, server: &mut RpcServer, now: Instant) -> Vec<Ended> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        let due: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut ended = Vec::new();
        for id in due {
            let Some(call) = self.calls.get(&id) else {
                continue;
            };
            let allowed = call.deadline.saturating_duration_since(call.received_at);
            let message = format!(
                "the task did not finish within {} s (its timeout, the call's deadline, or [rpc] agent_timeout); what it changed so far can be put back with: reaper agent undo {}",
                allowed.as_secs(),
                call.task_id
            );
            let last = StepUpdate {
                step: call.last_step + 1,
                description: "stopped".to_owned(),
                status: StepStatus::Failed,
                message: Some(message.clone()),
                task_id: call.task_id.clone(),
                tool: None,
                needs_approval: false,
                detail: None,
            };
            // Best effort: a client that is not reading gets the trailer alone.
            let _ = send(server, id, call.encoding, &last);
            ended.extend(self.end(server, id, Status::new(Code::DeadlineExceeded, message)));
        }
        ended
    }
}

fn end_now(server: &mut RpcServer, call: &IncomingCall, status: Status) -> Option<Ended> {
    server.finish(call.id, &status).then_some(Ended {
        status,
        received_at: call.received_at,
    })
}

fn cancelled() -> Status {
    Status::new(Code::Cancelled, "cancelled by the client")
}

fn send(server: &mut RpcServer, id: CallId, encoding: Encoding, update: &StepUpdate) -> Sent {
    server.send_message(id, |out| {
        let _ = update.encode(encoding, out);
    })
}

/// The request, owned and checked.
fn decode(call: &IncomingCall) -> Result<AgentTask, Status> {
    let task = AgentTask::decode(call.encoding, &call.message).map_err(|e| {
        Status::new(
            Code::InvalidArgument,
            format!("reaper.Agent/execute request: {e}"),
        )
    })?;
    let invalid = |message: String| Err(Status::new(Code::InvalidArgument, message));
    if task.instruction.trim().is_empty() {
        return invalid("instruction is empty: say what the task is".to_owned());
    }
    if task.instruction.len() > MAX_INSTRUCTION_BYTES {
        return invalid(format!("instruction is over {MAX_INSTRUCTION_BYTES} bytes"));
    }
    if !task.cwd.starts_with('/') {
        return invalid(format!(
            "cwd {:?} is not an absolute path: send the task's working directory as one",
            task.cwd
        ));
    }
    if task.timeout == Some(0) {
        return invalid(
            "timeout is 0: give seconds, or leave it out for [rpc] agent_timeout".to_owned(),
        );
    }
    Ok(task)
}

/// What a task needs from the service.
struct Setup {
    pool: Arc<Pool>,
    config: Arc<AgentConfig>,
    mcp: Arc<McpServers>,
    journals: PathBuf,
    task_id: String,
}

/// Sets the task up and runs it, forwarding its updates: the status the call ends with.
async fn execute(
    setup: Setup,
    task: AgentTask,
    controls: mpsc::Receiver<Control>,
    cancel: watch::Receiver<bool>,
    id: CallId,
    seq: u64,
    done: &Done,
) -> Status {
    let spec = match prepare(&setup, &task).await {
        Ok(spec) => spec,
        Err(status) => return status,
    };
    let (updates, mut received) = mpsc::channel::<StepUpdate>(1);
    let credit = Arc::new(Semaphore::new(CREDIT));
    let forward = async {
        while let Some(update) = received.recv().await {
            let Ok(permit) = credit.clone().acquire_owned().await else {
                return;
            };
            let step = Step::Update(Box::new(update), permit);
            if done
                .send(Finished::Agent(AgentEvent { id, seq, step }))
                .is_err()
            {
                return;
            }
        }
    };
    let task_id = spec.id.clone();
    let (result, ()) = tokio::join!(
        reaper_agent::run(&setup.pool, spec, updates, controls, cancel),
        forward
    );
    match result {
        Ok(_) => {
            tracing::info!(task = %task_id, "agent task completed");
            Status::ok()
        }
        Err(error) => {
            tracing::info!(task = %task_id, %error, "agent task failed");
            agent_status(&error)
        }
    }
}

/// The task's working directory, journal and tools.
async fn prepare(setup: &Setup, task: &AgentTask) -> Result<TaskSpec, Status> {
    let workspace = Workspace::new(std::path::Path::new(&task.cwd))
        .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
    // The whole disk, or the whole home directory, is no task's working directory: it would
    // put every key and configuration the user has within the model's reach.
    let home = std::env::var_os("HOME").and_then(|h| std::path::Path::new(&h).canonicalize().ok());
    if workspace.root() == std::path::Path::new("/") || Some(workspace.root()) == home.as_deref() {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "cwd {} is too wide: give the task a project directory",
                workspace.root().display()
            ),
        ));
    }
    let journals = setup.journals.clone();
    let (task_id, root) = (setup.task_id.clone(), workspace.root().to_path_buf());
    let made = tokio::task::spawn_blocking(move || {
        journal::prune(&journals, KEEP_JOURNALS);
        let dir = journals.join(&task_id);
        let journal = Journal::create(&dir, &task_id, &root)?;
        let lock = journal::lock(&dir)?.ok_or_else(|| std::io::Error::other("its lock is held"))?;
        Ok::<_, std::io::Error>((journal, lock))
    })
    .await;
    let (journal, lock) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(error)) => {
            return Err(Status::new(
                Code::Internal,
                format!(
                    "the task's undo journal cannot be created in {}: {error}",
                    setup.journals.display()
                ),
            ))
        }
        Err(error) => return Err(Status::new(Code::Internal, error.to_string())),
    };
    let offline = setup.pool.offline().cloned();
    // Never shown to a model: what the offline model never reads (credentials, `deny`), and
    // the daemon's own state directory (its token, its key, other tasks' journals).
    let state_dir = setup
        .journals
        .parent()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
    let private: Arc<dyn Fn(&std::path::Path) -> bool + Send + Sync> = match &offline {
        Some(offline) => {
            let offline = offline.clone();
            Arc::new(move |p: &std::path::Path| offline.excludes(p))
        }
        None => Arc::new(|p: &std::path::Path| reaper_offline::workspace::holds_secrets(p)),
    };
    let excluded: Arc<dyn Fn(&std::path::Path) -> bool + Send + Sync> =
        Arc::new(move |p: &std::path::Path| {
            private(p) || state_dir.as_deref().is_some_and(|d| p.starts_with(d))
        });
    let index = offline.and_then(|o| o.workspace_of(&workspace.root().join("reaper-agent")));
    let commands = CommandRules {
        enabled: setup.config.commands.enabled,
        allow: setup.config.commands.allow.clone(),
        timeout: Duration::from_millis(setup.config.commands.timeout_ms.get()),
        max_output: setup.config.commands.max_output_bytes.get() as usize,
    };
    let mcp_tools = mcp_tools(&setup.mcp, workspace.root()).await;
    let config = setup.config.clone();
    Ok(TaskSpec {
        id: setup.task_id.clone(),
        instruction: task.instruction.clone(),
        toolbox: Toolbox::new(workspace, excluded, commands.clone(), mcp_tools),
        journal,
        lock,
        limits: Limits {
            max_steps: config.max_steps.get(),
            max_tokens: config.max_tokens.get(),
            max_bytes_written: config.max_bytes_written.get(),
        },
        policy: Arc::new(move |name: &str| config.policy_of(name)),
        provider: setup.config.provider.clone(),
        mcp: Some(setup.mcp.clone()),
        index,
        commands,
    })
}

/// Every enabled MCP server's tools, offered as `SERVER__TOOL`; a server that cannot start
/// is left out (and logged), the task goes on without it.
async fn mcp_tools(mcp: &McpServers, root: &std::path::Path) -> Vec<McpTool> {
    if mcp.names().is_empty() {
        return Vec::new();
    }
    mcp.set_roots(vec![reaper_mcp::Root::directory(root)]).await;
    let mut tools = Vec::new();
    for server in mcp.names() {
        match mcp.tools(server).await {
            Ok(listed) => {
                for tool in listed {
                    let offered = McpTool {
                        server: server.to_owned(),
                        tool: tool.name.clone(),
                        description: tool.description.clone().unwrap_or_default(),
                        schema: if tool.input_schema.is_object() {
                            tool.input_schema.clone()
                        } else {
                            serde_json::json!({"type": "object"})
                        },
                    };
                    if reaper_agent::tools::valid_tool_name(&offered.offered_name()) {
                        tools.push(offered);
                    } else {
                        tracing::warn!(
                            server,
                            tool = tool.name,
                            "an MCP tool whose name models do not take, left out"
                        );
                    }
                }
            }
            Err(error) => {
                tracing::warn!(server, %error, "an MCP server's tools are left out of this task")
            }
        }
    }
    tools
}
