//! The configured MCP servers: each started on first use, its tools listed once and again
//! after it says they changed, and started again with a back-off after it dies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_core::config::{McpConfig, McpServerConfig};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::McpError;
use crate::session::Session;
use crate::types::{Progress, Root, Tool, ToolResult};

/// First wait before a server that failed is started again; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a server that failed is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lived this long resets the back-off: its server works.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Where one server stands.
enum State {
    /// Not started (or stopped).
    Idle,
    /// Running, with its tools as last listed.
    Running {
        session: Arc<Session>,
        started: Instant,
        /// Its tools, and the count of `list_changed` they were listed at.
        tools: Option<(Vec<Tool>, u64)>,
    },
    /// Failed; started again after `until`.
    Resting { error: McpError, until: Instant },
}

/// One configured server.
struct Server {
    config: McpServerConfig,
    state: tokio::sync::Mutex<State>,
    backoff: Mutex<Duration>,
}

/// What `reaper mcp list` shows of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStatus {
    /// Its name in `reaper.toml`.
    pub name: String,
    /// `running`, or why not.
    pub state: String,
    /// What it says it is (`serverInfo.name` and `.version`), once started.
    pub version: Option<String>,
    /// The protocol version agreed.
    pub protocol: Option<String>,
    /// Its tools' names.
    pub tools: Vec<String>,
}

/// Every enabled MCP server of the configuration.
pub struct McpServers {
    servers: Vec<Server>,
    roots: Mutex<Vec<Root>>,
}

impl std::fmt::Debug for McpServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServers")
            .field("servers", &self.names())
            .finish_non_exhaustive()
    }
}

impl McpServers {
    /// The enabled servers of `config`, none started yet.
    pub fn new(config: &McpConfig) -> McpServers {
        McpServers {
            servers: config
                .servers
                .0
                .iter()
                .filter(|s| s.enabled)
                .map(|config| Server {
                    config: config.clone(),
                    state: tokio::sync::Mutex::new(State::Idle),
                    backoff: Mutex::new(FIRST_BACKOFF),
                })
                .collect(),
            roots: Mutex::default(),
        }
    }

    /// The servers' names, in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.servers
            .iter()
            .map(|s| s.config.name.as_str())
            .collect()
    }

    /// Sets the roots every server is offered (a task's working directory), telling those
    /// running.
    pub async fn set_roots(&self, roots: Vec<Root>) {
        *self.roots.lock().unwrap_or_else(|e| e.into_inner()) = roots.clone();
        for server in &self.servers {
            if let State::Running { session, .. } = &*server.state.lock().await {
                session.set_roots(roots.clone());
            }
        }
    }

    fn server(&self, name: &str) -> Result<&Server, McpError> {
        self.servers
            .iter()
            .find(|s| s.config.name == name)
            .ok_or_else(|| McpError::Unknown {
                server: name.to_owned(),
                known: self.names().into_iter().map(str::to_owned).collect(),
            })
    }

    /// The session with server `name`, started if it is not running (unless it is resting
    /// after a failure).
    pub async fn session(&self, name: &str) -> Result<Arc<Session>, McpError> {
        let server = self.server(name)?;
        let mut state = server.state.lock().await;
        self.running(server, &mut state).await
    }

    async fn running(&self, server: &Server, state: &mut State) -> Result<Arc<Session>, McpError> {
        let now = Instant::now();
        // A session that ended (the process died) gives way to a new one after the back-off.
        if let State::Running {
            session, started, ..
        } = &*state
        {
            match session.closed() {
                None => return Ok(session.clone()),
                Some(error) => {
                    if started.elapsed() >= HEALTHY_AFTER {
                        *server.backoff.lock().unwrap_or_else(|e| e.into_inner()) = FIRST_BACKOFF;
                    }
                    tracing::warn!(server = server.config.name, %error, "MCP server died; it is started again when next used");
                    *state = State::Resting { error, until: now };
                }
            }
        }
        if let State::Resting { error, until } = &*state {
            if now < *until {
                return Err(McpError::Resting {
                    server: server.config.name.clone(),
                    reason: error.to_string(),
                    retry_in: *until - now,
                });
            }
        }
        let roots = self.roots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match Session::start(&server.config, roots).await {
            Ok(session) => {
                let info = session.info();
                tracing::info!(
                    server = server.config.name,
                    name = info.name,
                    version = info.version,
                    protocol = info.protocol_version,
                    "MCP server started"
                );
                let session = Arc::new(session);
                *state = State::Running {
                    session: session.clone(),
                    started: now,
                    tools: None,
                };
                Ok(session)
            }
            Err(error) => {
                let mut backoff = server.backoff.lock().unwrap_or_else(|e| e.into_inner());
                let wait = *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                tracing::warn!(server = server.config.name, %error, retry_in_s = wait.as_secs(), "MCP server failed to start");
                *state = State::Resting {
                    error: error.clone(),
                    until: Instant::now() + wait,
                };
                Err(error)
            }
        }
    }

    /// Server `name`'s tools: listed when first asked, and again after the server said they
    /// changed.
    pub async fn tools(&self, name: &str) -> Result<Vec<Tool>, McpError> {
        let server = self.server(name)?;
        let mut state = server.state.lock().await;
        let session = self.running(server, &mut state).await?;
        let changes = *session.tools_changed().borrow();
        if let State::Running {
            tools: Some((tools, seen)),
            ..
        } = &*state
        {
            if *seen == changes {
                return Ok(tools.clone());
            }
        }
        let tools = session.list_tools().await?;
        if let State::Running { tools: cached, .. } = &mut *state {
            *cached = Some((tools.clone(), changes));
        }
        Ok(tools)
    }

    /// Calls `tool` on server `name`; its progress, if any, goes to `progress`.
    pub async fn call_tool(
        &self,
        name: &str,
        tool: &str,
        arguments: Value,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<ToolResult, McpError> {
        let session = self.session(name).await?;
        session.call_tool(tool, arguments, progress).await
    }

    /// Every server's state, version and tools, starting those not running.
    pub async fn status(&self) -> Vec<ServerStatus> {
        let mut all = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let name = server.config.name.clone();
            let status = match self.tools(&name).await {
                Ok(tools) => {
                    let session = self.session(&name).await.ok();
                    let info = session.as_ref().map(|s| s.info().clone());
                    ServerStatus {
                        name,
                        state: "running".to_owned(),
                        version: info.as_ref().map(|i| format!("{} {}", i.name, i.version)),
                        protocol: info.map(|i| i.protocol_version),
                        tools: tools.into_iter().map(|t| t.name).collect(),
                    }
                }
                Err(error) => ServerStatus {
                    name,
                    state: error.to_string(),
                    version: None,
                    protocol: None,
                    tools: Vec::new(),
                },
            };
            all.push(status);
        }
        all
    }

    /// Stops every server (at shutdown): no process is left behind.
    pub async fn shutdown(&self) {
        for server in &self.servers {
            let state = std::mem::replace(&mut *server.state.lock().await, State::Idle);
            if let State::Running { session, .. } = state {
                match Arc::try_unwrap(session) {
                    Ok(session) => session.shutdown().await,
                    // Still in use by a call: dropped with its last user, which kills it.
                    Err(shared) => drop(shared),
                }
            }
        }
    }
}
