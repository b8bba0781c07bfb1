//! `reaper.toml`: every key, its default, and validation.
//!
//! Values are checked while they are parsed (each constrained key has a type that cannot hold a
//! bad value), so every error names the key and its line, the way toml reports it. Unknown keys
//! are errors rather than silently ignored: a typo in a config file should not cost an hour.
//! Keys whose feature is not built yet are accepted and listed by [`Config::not_yet_in_effect`],
//! which the daemon logs once at start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod agent;
mod mcp;
mod providers;
mod range;
pub use agent::{AgentConfig, CommandsConfig, Policy, COMMAND_TOOL, READ_TOOLS, WRITE_TOOLS};
pub use mcp::{McpConfig, McpServerConfig, McpServers};
pub use providers::{
    OfflineConfig, OfflineKind, ProviderKind, ProvidersConfig, RemoteProvider, RemoteSettings,
    COPILOT_DEFAULT_MODEL, DEFAULT_OLLAMA_KEEP_ALIVE, FIM_FAMILIES, OFFLINE,
};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`: where the daemon listens, logs and keeps its state.
    pub daemon: DaemonConfig,
    /// `[rpc]`: transport limits and per-service timeouts.
    pub rpc: RpcConfig,
    /// `[cache]`: the completion cache.
    pub cache: CacheConfig,
    /// `[completion]`: limits of completion requests.
    pub completion: CompletionConfig,
    /// `[providers]`: where completions come from.
    pub providers: ProvidersConfig,
    /// `[mcp]`: the MCP servers agent tasks may use.
    pub mcp: McpConfig,
    /// `[agent]`: what agent tasks may do, and how much.
    pub agent: AgentConfig,
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address to bind.
    pub address: IpAddr,
    /// UDP port to bind; 0 picks a free one (the bound address is written to `STATE_DIR/endpoint`).
    pub port: u16,
    /// TLS is always on; `false` is accepted for compatibility with the design note and ignored
    /// with a warning.
    pub enable_tls: bool,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Append logs to this file instead of standard error.
    pub log_file: Option<String>,
    /// Where the certificate, key, token and endpoint live (overridden by `REAPER_STATE_DIR`):
    /// absolute, and not a directory shared with other users.
    #[serde(deserialize_with = "range::private_dir")]
    pub state_dir: Option<String>,
    /// Seconds to let in-flight calls finish after SIGINT/SIGTERM.
    #[serde(deserialize_with = "range::within::<_, _, 0, 3_600>")]
    pub shutdown_grace: u64,
    /// Microseconds the event loop keeps polling for the next datagram after it last had work,
    /// before it sleeps; 0 sleeps at once. Answers a client on another CPU without the cost of
    /// waking the daemon up (sequential calls across two CPUs: 66 → 40 µs at p50), and yields
    /// to any other thread that wants the CPU meanwhile. Where client and daemon share one
    /// core, 0 is better (8 connections on one CPU: ~10% more calls/s).
    #[serde(deserialize_with = "range::within::<_, _, 0, 10_000>")]
    pub busy_poll_us: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 50051,
            enable_tls: true,
            log_level: LogLevel::Info,
            log_file: None,
            state_dir: None,
            shutdown_grace: 5,
            busy_poll_us: 50,
        }
    }
}

impl DaemonConfig {
    /// The socket address to bind.
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// Log verbosity, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start, stop, connections (the default).
    Info,
    /// Every call, with its status and latency.
    Debug,
    /// Everything, including the QUIC library.
    Trace,
}

impl LogLevel {
    /// The name `tracing` filters use.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `[rpc]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Open connections at most; further ones are refused.
    #[serde(deserialize_with = "range::within::<_, _, 1, 100_000>")]
    pub max_connections: NonZeroU32,
    /// Handshakes in progress at most; they do not count against `max_connections`.
    #[serde(deserialize_with = "range::within::<_, _, 1, 100_000>")]
    pub max_handshakes: NonZeroU32,
    /// Milliseconds a handshake may take before it is abandoned.
    #[serde(deserialize_with = "range::within::<_, _, 100, 600_000>")]
    pub handshake_timeout: NonZeroU64,
    /// Milliseconds a request may take to arrive whole before it is answered DEADLINE_EXCEEDED.
    #[serde(deserialize_with = "range::within::<_, _, 100, 600_000>")]
    pub request_timeout: NonZeroU64,
    /// Seconds a connection may stay silent before it is closed; 0 for never.
    #[serde(deserialize_with = "range::within::<_, _, 0, 86_400>")]
    pub idle_timeout: u64,
    /// Bytes a peer may send on one stream ahead of the reader (QUIC stream flow-control window);
    /// a connection's window is 4 times it. The daemon reads as data arrives, so this bounds
    /// what QUIC holds past a gap, not the size of a message (4 MiB calls took 8.4 ms at 1 MiB
    /// and at 10 MiB).
    #[serde(deserialize_with = "range::within::<_, _, 1_024, 1_073_741_824>")]
    pub max_stream_data: NonZeroU32,
    /// Largest message, in bytes, either side may send in one frame.
    #[serde(deserialize_with = "range::within::<_, _, 1_024, 268_435_456>")]
    pub max_message_size: NonZeroU32,
    /// Bytes of requests still arriving (head and message not yet whole) the daemon holds at
    /// most, over every connection.
    #[serde(deserialize_with = "range::within::<_, _, 1_048_576, 17_179_869_184>")]
    pub max_buffered_requests: NonZeroU64,
    /// Calls in flight on one connection at most (QUIC's concurrent bidirectional streams).
    #[serde(deserialize_with = "range::within::<_, _, 1, 65_536>")]
    pub max_concurrent_calls: NonZeroU32,
    /// Default deadline of a completion, in milliseconds.
    #[serde(deserialize_with = "range::within::<_, _, 1, 600_000>")]
    pub completion_timeout: NonZeroU64,
    /// Default deadline of a chat, in milliseconds.
    #[serde(deserialize_with = "range::within::<_, _, 1, 3_600_000>")]
    pub chat_timeout: NonZeroU64,
    /// Default deadline of an agent task, in milliseconds.
    #[serde(deserialize_with = "range::within::<_, _, 1, 86_400_000>")]
    pub agent_timeout: NonZeroU64,
    /// Threads for provider and agent work.
    #[serde(deserialize_with = "range::within::<_, _, 1, 256>")]
    pub worker_threads: NonZeroU32,
    /// Compress large messages.
    pub enable_compression: bool,
    /// How many times a client tries to reconnect (100 ms doubling to 5 s between tries).
    #[serde(deserialize_with = "range::within::<_, _, 0, 1_000>")]
    pub reconnect_attempts: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_connections: nonzero32(100),
            max_handshakes: nonzero32(64),
            handshake_timeout: nonzero64(10_000),
            request_timeout: nonzero64(10_000),
            idle_timeout: 300,
            max_stream_data: nonzero32(1024 * 1024),
            max_message_size: nonzero32(4 * 1024 * 1024),
            max_buffered_requests: nonzero64(64 * 1024 * 1024),
            max_concurrent_calls: nonzero32(1024),
            completion_timeout: nonzero64(5_000),
            chat_timeout: nonzero64(120_000),
            agent_timeout: nonzero64(600_000),
            worker_threads: nonzero32(4),
            enable_compression: false,
            reconnect_attempts: 5,
        }
    }
}

impl RpcConfig {
    /// `idle_timeout` as a duration, `None` for never.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache completions.
    pub enabled: bool,
    /// Entries at most.
    #[serde(deserialize_with = "range::within::<_, _, 1, 1_000_000>")]
    pub max_size: NonZeroU32,
    /// Seconds an entry stays valid.
    #[serde(deserialize_with = "range::within::<_, _, 1, 604_800>")]
    pub ttl: NonZeroU64,
    /// Bytes of the prefix's end that are part of the key.
    #[serde(deserialize_with = "range::within::<_, _, 1, 1_048_576>")]
    pub key_prefix_bytes: NonZeroU32,
    /// Bytes of the suffix's start that are part of the key.
    #[serde(deserialize_with = "range::within::<_, _, 0, 1_048_576>")]
    pub key_suffix_bytes: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_size: nonzero32(10_000),
            ttl: nonzero64(3_600),
            key_prefix_bytes: nonzero32(512),
            key_suffix_bytes: 128,
        }
    }
}

/// `[completion]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionConfig {
    /// Largest prefix accepted, in bytes; larger requests get INVALID_ARGUMENT.
    #[serde(deserialize_with = "range::within::<_, _, 1, 67_108_864>")]
    pub max_prefix_bytes: NonZeroU32,
    /// Largest suffix accepted, in bytes.
    #[serde(deserialize_with = "range::within::<_, _, 1, 67_108_864>")]
    pub max_suffix_bytes: NonZeroU32,
    /// Bytes of repository context a model is shown with each completion: snippets of other
    /// files related to the cursor's surroundings (from the offline index), the editor's
    /// `context` and the places recently edited. 0 shows the model only the file itself.
    #[serde(deserialize_with = "range::within::<_, _, 0, 1_048_576>")]
    pub context_bytes: u32,
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            max_prefix_bytes: nonzero32(1024 * 1024),
            max_suffix_bytes: nonzero32(1024 * 1024),
            context_bytes: 2048,
        }
    }
}

fn nonzero32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn nonzero64(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file's contents are not a valid configuration.
    #[error("invalid configuration in {origin}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong, with the line (from the TOML parser).
        message: String,
    },
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read config {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Config {
    /// Parses and validates a file's text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        // What no single key's range can say: keys that must agree with each other.
        let (message, budget) = (
            config.rpc.max_message_size.get() as u64,
            config.rpc.max_buffered_requests.get(),
        );
        if message > budget {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                message: format!(
                    "[rpc] max_message_size ({message}) is larger than [rpc] max_buffered_requests ({budget}): no message that large could ever arrive; raise the budget or lower the size"
                ),
            });
        }
        Ok(config)
    }

    /// Finds and parses the config the way both `reaperd` and `reaper` do (see
    /// [`crate::paths::config_candidates`]); `read` reads a file (the caller's I/O). Returns the
    /// config and where it came from; the built-in defaults when no file exists.
    pub fn locate(
        explicit: Option<PathBuf>,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<(Config, String), ConfigError> {
        let named =
            explicit.is_some() || env(crate::paths::CONFIG_ENV).is_some_and(|v| !v.is_empty());
        for path in crate::paths::config_candidates(explicit, env) {
            match read(&path) {
                Ok(text) => {
                    let origin = path.display().to_string();
                    return Ok((Config::from_toml(&text, &origin)?, origin));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => continue,
                Err(source) => return Err(ConfigError::Unreadable { path, source }),
            }
        }
        Ok((Config::default(), "built-in defaults".to_owned()))
    }

    /// Keys set to something this build does not act on yet, as `(key, why)`: the daemon logs
    /// each once at start so nobody believes a setting works when it does not.
    pub fn not_yet_in_effect(&self) -> Vec<(&'static str, &'static str)> {
        let mut keys = Vec::new();
        if !self.daemon.enable_tls {
            keys.push((
                "daemon.enable_tls",
                "TLS 1.3 is always on (the token must never travel in clear); false is ignored",
            ));
        }
        if self.rpc.enable_compression {
            keys.push((
                "rpc.enable_compression",
                "message compression is not built yet",
            ));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = Config::from_toml("", "test").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(
            config.daemon.listen(),
            "127.0.0.1:50051".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn the_design_notes_file_parses() {
        let text = r#"
[daemon]
address = "127.0.0.1"
port = 50051
enable_tls = false
log_level = "info"
log_file = "/tmp/reaper.log"

[rpc]
max_connections = 100
idle_timeout = 300  # seconds
max_stream_data = 1048576  # 1 MiB
completion_timeout = 5000
chat_timeout = 120000
agent_timeout = 600000
worker_threads = 4
enable_compression = true

[cache]
enabled = true
max_size = 10000
ttl = 3600
"#;
        let config = Config::from_toml(text, "test").unwrap();
        assert_eq!(config.rpc.idle_timeout(), Some(Duration::from_secs(300)));
        let pending: Vec<_> = config.not_yet_in_effect().iter().map(|(k, _)| *k).collect();
        assert!(pending.contains(&"daemon.enable_tls"));
        assert!(pending.contains(&"rpc.enable_compression"));
        assert!(!pending.contains(&"rpc.completion_timeout"));
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases = [
            ("[rpc]\nmax_connections = 0\n", "line 2", "nonzero"),
            ("[daemon]\nport = 70000\n", "line 2", "port"),
            ("[daemon]\nlog_level = \"loud\"\n", "line 2", "log_level"),
            ("[rpc]\nmax_conections = 5\n", "line 2", "max_conections"),
            ("[daemon]\naddress = \"nowhere\"\n", "line 2", "address"),
            ("[daemon\n", "line 1", "invalid"),
        ];
        for (text, line, word) in cases {
            let message = Config::from_toml(text, "reaper.toml")
                .unwrap_err()
                .to_string();
            assert!(message.contains("reaper.toml"), "{message}");
            assert!(message.contains(line), "{text:?} -> {message}");
            assert!(message.contains(word), "{text:?} -> {message}");
        }
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    /// The values issue 13 found `--check-config` accepting and the daemon then dying on: each
    /// is refused while parsing, naming the key, its line and the range.
    #[test]
    fn values_the_daemon_cannot_run_on_are_refused_with_the_key_and_line() {
        let cases = [
            ("[daemon]\nshutdown_grace = 18446744073709551615\n", "shutdown_grace"),
            ("[cache]\nttl = 18446744073709551615\n", "ttl"),
            ("[cache]\nmax_size = 4294967295\n", "max_size"),
            ("[rpc]\nworker_threads = 100000\n", "worker_threads"),
            ("[rpc]\nmax_message_size = 1\n", "max_message_size"),
            ("[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\ntimeout_ms = 86400000\n", "timeout_ms"),
            ("[providers.offline]\nmax_file_bytes = 1\n", "max_file_bytes"),
        ];
        for (text, key) in cases {
            let message = Config::from_toml(text, "reaper.toml")
                .unwrap_err()
                .to_string();
            let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
            assert!(message.contains(key), "{text:?} -> {message}");
            assert!(
                message.contains(&format!("line {line}")),
                "{text:?} -> {message}"
            );
            assert!(message.contains("out of range"), "{text:?} -> {message}");
        }
        let message = Config::from_toml(
            "[rpc]\nmax_message_size = 268435456\nmax_buffered_requests = 1048576\n",
            "reaper.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("max_buffered_requests"), "{message}");
        // The ends of each range are accepted.
        Config::from_toml(
            "[daemon]\nshutdown_grace = 3600\n[rpc]\nworker_threads = 256\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn a_state_dir_must_be_absolute_and_not_shared() {
        for (dir, why) in [
            ("", "absolute"),
            ("state", "absolute"),
            ("/tmp", "shared"),
            ("/tmp/", "shared"),
            ("/var/tmp", "shared"),
            ("/", "shared"),
        ] {
            let text = format!("[daemon]\nstate_dir = {dir:?}\n");
            let message = Config::from_toml(&text, "reaper.toml")
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("state_dir")
                    && message.contains("line 2")
                    && message.contains(why),
                "{dir:?} -> {message}"
            );
        }
        let ok = Config::from_toml("[daemon]\nstate_dir = \"/tmp/reaper-me\"\n", "t").unwrap();
        assert_eq!(ok.daemon.state_dir.as_deref(), Some("/tmp/reaper-me"));
    }
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    #[test]
    fn a_missing_default_file_means_defaults_but_a_missing_named_file_is_an_error() {
        let missing = |_: &Path| Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        let (config, origin) = Config::locate(None, |_| None, missing).unwrap();
        assert_eq!(
            (config, origin.as_str()),
            (Config::default(), "built-in defaults")
        );
        let err = Config::locate(Some("/etc/nope.toml".into()), |_| None, missing).unwrap_err();
        assert!(err.to_string().contains("/etc/nope.toml"), "{err}");
        let env = |k: &str| (k == "REAPER_CONFIG").then(|| "/env.toml".to_owned());
        assert!(Config::locate(None, env, missing).is_err());
    }

    #[test]
    fn the_first_file_found_wins() {
        let read = |p: &Path| match p.to_str() {
            Some("reaper.toml") => Ok("[rpc]\nreconnect_attempts = 9\n".to_owned()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let (config, origin) = Config::locate(None, |_| None, read).unwrap();
        assert_eq!(config.rpc.reconnect_attempts, 9);
        assert_eq!(origin, "reaper.toml");
    }
}

#[cfg(test)]
mod shipped_file {
    use super::*;

    /// The commented `reaper.toml` at the top of the repository states the defaults: keep them
    /// true.
    #[test]
    fn the_shipped_reaper_toml_is_the_defaults() {
        let text = include_str!("../../../reaper.toml");
        assert_eq!(
            Config::from_toml(text, "reaper.toml").unwrap(),
            Config::default()
        );
    }
}
