//! A real `reaperd` process for tests: temp state dir, port 0, logs kept, always reaped.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use reaper_client::ClientOptions;

pub fn reaperd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reaperd"))
}

/// The `reaper` CLI. Cargo builds only this package's binaries for its tests, so the CLI (in
/// `reaper-client`) is built here, once, into the same target directory and profile.
pub fn reaper_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = reaperd_bin().with_file_name("reaper");
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "--quiet", "-p", "reaper-client", "--bin", "reaper"]);
            if path.parent().and_then(|p| p.file_name()) == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the reaper CLI failed");
            path
        })
        .clone()
}

pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("reaperd.log")).unwrap();
        let child = Command::new(reaperd_bin())
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "debug,quinn_proto=info")
            .env_remove("REAPER_CONFIG")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child: Some(child),
            dir,
        };
        let endpoint = daemon.state_dir().join("endpoint");
        let start = Instant::now();
        while !endpoint.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "reaperd did not start: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions::from_state_dir(&self.state_dir(), None).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reaperd.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(reaper_bin())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the daemon has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
