//! `run_command`: one program from the allowlist, in the task's working directory, with a time
//! limit and an output cap.
//!
//! No shell: the command line is split into words the way a POSIX shell would quote them, and
//! the first word must be a program `[agent.commands] allow` names, so `cargo test; rm -rf ~`
//! runs `cargo` with three odd arguments rather than two commands. The program runs in a
//! process group of its own with standard input closed, and the whole group is killed at the
//! time limit, or when the task is cancelled. Only the variables a build needs are passed on
//! ([`PASSED_VARIABLES`], and `LC_*`), never one whose name looks like a credential: a model
//! that runs `env` must not read the daemon's API keys, its database URL or its SSH agent.
//! An allowed program is trusted with the working directory: `cargo` runs build scripts,
//! `git` runs hooks; allow what you would run yourself there.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a command did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// `[agent.commands] enabled` is false.
    #[error("running commands is off: set enabled = true and list the programs in [agent.commands] allow in reaper.toml")]
    Disabled,
    /// Not a command line (empty, or with an unclosed quote).
    #[error("{0:?} is not a command line (empty, or a quote is not closed)")]
    Unparsable(String),
    /// The program is not on the allowlist.
    #[error("{program:?} is not allowed: [agent.commands] allow lists {}", if .allowed.is_empty() { "no program".to_owned() } else { .allowed.join(", ") })]
    NotAllowed {
        /// The program asked for.
        program: String,
        /// What is allowed.
        allowed: Vec<String>,
    },
    /// The program could not be started.
    #[error("{program} could not be started: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
}

/// How commands may run.
#[derive(Debug, Clone)]
pub struct CommandRules {
    /// Whether they may at all.
    pub enabled: bool,
    /// Programs allowed, by name.
    pub allow: Vec<String>,
    /// Longest a command may run.
    pub timeout: Duration,
    /// Bytes of output kept.
    pub max_output: usize,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Its exit code; `None` if a signal ended it (or the time limit did).
    pub code: Option<i32>,
    /// Whether the time limit killed it.
    pub timed_out: bool,
    /// Its standard output and error, interleaved as they came, up to the cap.
    pub output: String,
    /// Bytes of output beyond the cap, dropped.
    pub dropped: u64,
    /// How long it ran.
    pub took: Duration,
}

impl Ran {
    /// The result as the model reads it.
    pub fn report(&self) -> String {
        let mut text = match (self.timed_out, self.code) {
            (true, _) => format!("killed after {} ms (time limit)", self.took.as_millis()),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "ended by a signal".to_owned(),
        };
        text.push('\n');
        text.push_str(&self.output);
        if self.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes of output cut]", self.dropped));
        }
        text
    }

    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Splits `line` into the program and its arguments, checking the program is allowed.
pub fn parse(line: &str, rules: &CommandRules) -> Result<Vec<String>, CommandError> {
    if !rules.enabled {
        return Err(CommandError::Disabled);
    }
    let words = shlex::split(line)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| CommandError::Unparsable(line.to_owned()))?;
    let program = &words[0];
    // A program is named, not given by path: `./cargo` or `/tmp/cargo` is not `cargo`.
    if program.contains('/') || !rules.allow.iter().any(|a| a == program) {
        return Err(CommandError::NotAllowed {
            program: program.clone(),
            allowed: rules.allow.clone(),
        });
    }
    Ok(words)
}

/// The daemon's variables a command gets (with `LC_*`), when their names do not look like
/// credentials.
pub const PASSED_VARIABLES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_DIR",
    "RUSTFLAGS",
    "GOPATH",
    "GOROOT",
    "GOCACHE",
    "GOMODCACHE",
    "JAVA_HOME",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "NODE_PATH",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
];

/// Whether an environment variable's name looks like it holds a credential.
fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "DSN",
        "URL",
        "SOCK",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Whether a command gets variable `name`.
fn passed(name: &str) -> bool {
    (PASSED_VARIABLES.contains(&name) || name.starts_with("LC_")) && !looks_secret(name)
}

/// Kills a process group when dropped: the command, and whatever it started.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self
            .0
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Runs `words` (from [`parse`]) in `cwd`.
pub async fn run(words: &[String], cwd: &Path, rules: &CommandRules) -> Result<Ran, CommandError> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&words[0]);
    command
        .args(&words[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .env_clear();
    for (name, value) in std::env::vars_os() {
        if name.to_str().is_some_and(passed) {
            command.env(name, value);
        }
    }
    let mut child = command.spawn().map_err(|e| CommandError::Spawn {
        program: words[0].clone(),
        reason: e.to_string(),
    })?;
    let group = Group(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(CommandError::Spawn {
            program: words[0].clone(),
            reason: "its output could not be captured".to_owned(),
        });
    };
    let mut output = Capped::new(rules.max_output);
    let mut out = Reader::new(stdout);
    let mut err = Reader::new(stderr);
    let collect = async {
        // Both pipes read as they fill, into one capped buffer, until the program exits;
        // then what is left in them, briefly: a child it left in the background may hold
        // them open for ever.
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                piece = out.next(), if !out.done => output.push(&piece),
                piece = err.next(), if !err.done => output.push(&piece),
            }
        };
        let rest = async {
            while !(out.done && err.done) {
                tokio::select! {
                    piece = out.next(), if !out.done => output.push(&piece),
                    piece = err.next(), if !err.done => output.push(&piece),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), rest).await;
        status
    };
    let (code, timed_out) = match tokio::time::timeout(rules.timeout, collect).await {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(_)) => (None, false),
        Err(_) => (None, true),
    };
    // The group goes either way: a command that exits leaves no children running behind the
    // task's back.
    drop(group);
    Ok(Ran {
        code,
        timed_out,
        output: String::from_utf8_lossy(&output.kept).into_owned(),
        dropped: output.dropped,
        took: started.elapsed(),
    })
}

/// Output kept up to a cap, the rest counted.
struct Capped {
    kept: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            kept: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    fn push(&mut self, piece: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        let take = piece.len().min(room);
        self.kept.extend_from_slice(&piece[..take]);
        self.dropped += (piece.len() - take) as u64;
    }
}

/// One pipe, read a piece at a time until it ends.
struct Reader<R> {
    pipe: R,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(pipe: R) -> Reader<R> {
        Reader {
            pipe,
            buf: vec![0; 16 * 1024],
            done: false,
        }
    }

    async fn next(&mut self) -> Vec<u8> {
        match self.pipe.read(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.done = true;
                Vec::new()
            }
            Ok(n) => self.buf[..n].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str]) -> CommandRules {
        CommandRules {
            enabled: true,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(10),
            max_output: 1024,
        }
    }

    #[test]
    fn only_listed_programs_by_name_run() {
        let rules = rules(&["echo", "sh"]);
        assert_eq!(parse("echo 'a b' c", &rules).unwrap(), ["echo", "a b", "c"]);
        assert!(matches!(
            parse("rm -rf /", &rules),
            Err(CommandError::NotAllowed { .. })
        ));
        assert!(matches!(
            parse("/bin/echo x", &rules),
            Err(CommandError::NotAllowed { .. })
        ));
        assert!(matches!(
            parse("echo 'open", &rules),
            Err(CommandError::Unparsable(_))
        ));
        assert!(matches!(
            parse("   ", &rules),
            Err(CommandError::Unparsable(_))
        ));
        // No shell: the separator is an argument.
        assert_eq!(
            parse("echo a; rm x", &rules).unwrap(),
            ["echo", "a;", "rm", "x"]
        );
        let off = CommandRules {
            enabled: false,
            ..rules
        };
        assert_eq!(parse("echo", &off), Err(CommandError::Disabled));
    }

    #[tokio::test]
    async fn output_is_capped_and_the_time_limit_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut rules = rules(&["sh"]);
        let words = parse("sh -c 'yes | head -c 5000; echo done >&2; exit 3'", &rules).unwrap();
        let ran = run(&words, dir.path(), &rules).await.unwrap();
        assert_eq!(ran.code, Some(3));
        assert_eq!(ran.output.len() as u64 + ran.dropped, 5005);
        assert_eq!(ran.output.len(), 1024);
        // A child that would outlive the command is killed with it.
        rules.timeout = Duration::from_millis(300);
        let marker = dir.path().join("late");
        let line = format!("sh -c '(sleep 1; touch {}) & sleep 30'", marker.display());
        let words = parse(&line, &rules).unwrap();
        let ran = run(&words, dir.path(), &rules).await.unwrap();
        assert!(ran.timed_out, "{ran:?}");
        assert!(ran.took < Duration::from_secs(5), "{ran:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "the background child was killed with its group"
        );
    }

    #[tokio::test]
    async fn credentials_in_the_environment_are_not_passed_on() {
        assert!(looks_secret("OPENAI_API_KEY"));
        assert!(looks_secret("github_token"));
        assert!(!looks_secret("PATH"));
        std::env::set_var("REAPER_TEST_FAKE_API_KEY", "sk-not-for-models");
        std::env::set_var("DATABASE_URL", "postgres://user:pw@db/app");
        let dir = tempfile::tempdir().unwrap();
        let rules = rules(&["env"]);
        let ran = run(&parse("env", &rules).unwrap(), dir.path(), &rules)
            .await
            .unwrap();
        assert!(ran.output.contains("PATH="), "{}", ran.output);
        assert!(!ran.output.contains("sk-not-for-models"));
        assert!(!ran.output.contains("postgres://"));
        for line in ran.output.lines() {
            let name = line.split('=').next().unwrap_or("");
            assert!(!looks_secret(name), "{line}");
        }
    }
}
