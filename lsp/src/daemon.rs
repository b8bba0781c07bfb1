//! Finding the one reaperd every editor shares, starting it when none runs, and reconnecting
//! when it restarts.
//!
//! The daemon is found exactly as the rest of the CLI finds it: `--state-dir`, else
//! `$REAPER_STATE_DIR`, else `[daemon] state_dir` of the config, else the platform default.
//! When nothing answers there, the bridge starts `reaperd --state-dir DIR` in a process group
//! of its own (an editor's Ctrl-C or its exit does not reach it: other editors use it), its
//! output appended to `DIR/reaperd.log`. Bridges that start at the same moment take an
//! exclusive lock on `DIR/start.lock` first and look again once they hold it, so exactly one
//! daemon is started however many editors open at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reaper_client::{Client, ClientOptions, Error};
use reaper_core::config::Config;
use reaper_core::paths::{self, files};
use tokio::sync::Mutex;

/// How long a started daemon may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the daemon is and how to start it.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// `--state-dir`, if given.
    pub state_dir: Option<PathBuf>,
    /// The reaperd to start when none runs: `--reaperd`, else `reaperd` beside this binary,
    /// else `reaperd` on `PATH`.
    pub reaperd: Option<PathBuf>,
    /// Whether to start one at all (`--no-start` turns it off).
    pub start: bool,
}

/// Why the daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The client's own error (no state files, connection refused…), with starting off.
    #[error("{0} (the bridge was told not to start reaperd: start it yourself)")]
    NotRunning(Error),
    /// reaperd could not be started.
    #[error("cannot start {binary}: {reason} (install reaperd beside `reaper`, on PATH, or pass --reaperd)")]
    Spawn {
        /// The binary tried.
        binary: PathBuf,
        /// Why not.
        reason: String,
    },
    /// reaperd started but exited or never answered.
    #[error("reaperd was started but {reason}; see {log}")]
    Start {
        /// What happened.
        reason: String,
        /// Its log.
        log: PathBuf,
    },
    /// The state directory or its lock could not be made.
    #[error("cannot prepare the state directory {dir}: {reason}")]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        reason: String,
    },
    /// Connected to a daemon, then the connection failed.
    #[error("{0}")]
    Client(Error),
}

/// A connection to the shared daemon, made (and the daemon started) on first use, and made
/// again after the daemon went away.
#[derive(Debug)]
pub struct Daemon {
    options: DaemonOptions,
    client: Mutex<Option<Arc<Client>>>,
}

impl Daemon {
    /// A daemon handle; nothing is connected until [`Daemon::client`].
    pub fn new(options: DaemonOptions) -> Daemon {
        Daemon {
            options,
            client: Mutex::new(None),
        }
    }

    /// The state directory in use (resolved like the rest of the CLI).
    pub fn state_dir(&self) -> PathBuf {
        resolve_state_dir(self.options.state_dir.clone())
    }

    /// The connected client, connecting (and starting the daemon) if there is none.
    pub async fn client(&self) -> Result<Arc<Client>, DaemonError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Arc::new(self.connect_or_start().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets `failed` (its connection broke) so that the next call connects anew.
    pub async fn forget(&self, failed: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            *slot = None;
        }
    }

    async fn connect_or_start(&self) -> Result<Client, DaemonError> {
        let dir = self.state_dir();
        match try_connect(&dir, 2).await {
            Ok(client) => return Ok(client),
            Err(error) if !self.options.start => return Err(DaemonError::NotRunning(error)),
            Err(error) => tracing::info!(dir = %dir.display(), %error, "no daemon answers"),
        }
        prepare_dir(&dir)?;
        let lock_path = dir.join("start.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| state_error(&dir, &e))?;
        // Blocking: another bridge holds it only while it starts a daemon (seconds at most).
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .map_err(|e| state_error(&dir, &e))?
            .map_err(|e| state_error(&dir, &e))?;
        // Another bridge may have started one while this one waited for the lock.
        if let Ok(client) = try_connect(&dir, 1).await {
            tracing::info!("connected to the daemon another bridge started");
            return Ok(client);
        }
        let result = self.start(&dir).await;
        drop(lock);
        result
    }

    async fn start(&self, dir: &Path) -> Result<Client, DaemonError> {
        let binary = self.reaperd_binary();
        let log = dir.join("reaperd.log");
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| state_error(dir, &e))?;
        let output_err = output.try_clone().map_err(|e| state_error(dir, &e))?;
        // A stale endpoint (a daemon killed without its clean-up) must not be read as the new
        // daemon's: it is written afresh once the new one listens.
        let _ = std::fs::remove_file(dir.join(files::ENDPOINT));
        let mut command = std::process::Command::new(&binary);
        command
            .arg("--state-dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(output)
            .stderr(output_err);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| DaemonError::Spawn {
            binary: binary.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(pid = child.id(), binary = %binary.display(), dir = %dir.display(), "started reaperd");
        let started = Instant::now();
        let client = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(DaemonError::Start {
                    reason: format!("exited at start ({status})"),
                    log,
                });
            }
            if dir.join(files::ENDPOINT).exists() {
                if let Ok(client) = try_connect(dir, 1).await {
                    break client;
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(DaemonError::Start {
                    reason: format!("did not answer within {} s", START_TIMEOUT.as_secs()),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The daemon outlives this bridge (other editors use it); while the bridge lives, a
        // thread waits for it so that its exit leaves no zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(client)
    }

    fn reaperd_binary(&self) -> PathBuf {
        if let Some(explicit) = &self.options.reaperd {
            return explicit.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("reaperd"));
        match beside {
            Some(path) if path.exists() => path,
            _ => PathBuf::from("reaperd"),
        }
    }
}

/// The state directory the CLI and reaperd would use.
pub fn resolve_state_dir(explicit: Option<PathBuf>) -> PathBuf {
    let env = |k: &str| std::env::var(k).ok();
    let configured = Config::locate(None, env, |p| std::fs::read_to_string(p))
        .ok()
        .and_then(|(config, _)| config.daemon.state_dir);
    paths::state_dir(explicit, configured.as_deref(), env)
}

async fn try_connect(dir: &Path, attempts: u32) -> Result<Client, Error> {
    let mut options = ClientOptions::discover(Some(dir.to_path_buf()), None)?;
    options.connect_attempts = attempts;
    // A closed port behind an endpoint file is a daemon that died: start one rather than wait.
    options.retry_refused = false;
    Client::connect(options).await
}

/// Creates the state directory (mode 0700, as reaperd makes it) so that the lock can live in it.
fn prepare_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| state_error(dir, &e))
}

fn state_error(dir: &Path, error: &dyn std::fmt::Display) -> DaemonError {
    DaemonError::StateDir {
        dir: dir.to_path_buf(),
        reason: error.to_string(),
    }
}
