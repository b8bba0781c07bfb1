//! `[mcp.servers.NAME]`: the MCP servers whose tools and context agent tasks may use.
//!
//! Each is a program the daemon starts on demand and talks to over its standard input and
//! output (the MCP stdio transport). Values in `env` often hold tokens: they never appear in
//! `Debug` output, so never in a log.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::nonzero64;

/// `[mcp]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// `[mcp.servers.NAME]`, in file order.
    pub servers: McpServers,
}

/// The `[mcp.servers.NAME]` tables, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpServers(pub Vec<McpServerConfig>);

/// One MCP server.
#[derive(Clone, PartialEq)]
pub struct McpServerConfig {
    /// Its name in `reaper.toml`: its tools are offered as `NAME__TOOL`.
    pub name: String,
    /// The program to run (a path, or a name found on the daemon's `PATH`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to its environment (the daemon's own are passed on too).
    pub env: BTreeMap<String, String>,
    /// Its working directory (absolute); default: the daemon's.
    pub cwd: Option<String>,
    /// Whether it is used at all.
    pub enabled: bool,
    /// Longest one request to it may take before it is cancelled, in milliseconds.
    pub timeout_ms: NonZeroU64,
}

impl fmt::Debug for McpServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment's values are secrets as often as not.
        let env: Vec<&str> = self.env.keys().map(String::as_str).collect();
        f.debug_struct("McpServerConfig")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field("enabled", &self.enabled)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Default for `timeout_ms`.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// A server table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    enabled: Option<bool>,
    #[serde(
        default,
        deserialize_with = "super::range::within_opt::<_, _, 100, 3_600_000>"
    )]
    timeout_ms: Option<NonZeroU64>,
}

impl<'de> Deserialize<'de> for McpServers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ServersVisitor)
    }
}

struct ServersVisitor;

impl<'de> Visitor<'de> for ServersVisitor {
    type Value = McpServers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MCP server tables, e.g. [mcp.servers.git] with command = \"mcp-server-git\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut servers: Vec<McpServerConfig> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if name.is_empty() || name.len() > 32 || !name.chars().all(plain) || name.contains("__")
            {
                return Err(de::Error::custom(format!(
                    "[mcp.servers.{name}]: a server name is 1 to 32 letters, digits, '-' or '_' (not \"__\": its tools are named NAME__TOOL)"
                )));
            }
            if servers.iter().any(|s| s.name == name) {
                return Err(de::Error::custom(format!(
                    "[mcp.servers.{name}] is defined twice"
                )));
            }
            let table: ServerTable = map.next_value()?;
            let command = match table.command {
                Some(command) if !command.trim().is_empty() => command,
                _ => {
                    return Err(de::Error::custom(format!(
                        "[mcp.servers.{name}]: missing key `command`: the program that serves MCP on its standard input and output, e.g. \"mcp-server-git\""
                    )))
                }
            };
            if let Some(cwd) = &table.cwd {
                if !cwd.starts_with('/') {
                    return Err(de::Error::custom(format!(
                        "[mcp.servers.{name}]: `cwd` = {cwd:?} must be an absolute path"
                    )));
                }
            }
            servers.push(McpServerConfig {
                name,
                command,
                args: table.args,
                env: table.env,
                cwd: table.cwd,
                enabled: table.enabled.unwrap_or(true),
                timeout_ms: table.timeout_ms.unwrap_or(nonzero64(DEFAULT_TIMEOUT_MS)),
            });
        }
        Ok(McpServers(servers))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, "reaper.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn servers_keep_file_order_defaults_and_hide_their_environment() {
        let config = parse(
            r#"
[mcp.servers.git]
command = "mcp-server-git"
args = ["--repository", "/src/reaper"]

[mcp.servers.fs]
command = "/usr/bin/mcp-server-filesystem"
env = { GITHUB_TOKEN = "ghp_secret" }
cwd = "/tmp"
timeout_ms = 5000
enabled = false
"#,
        )
        .unwrap();
        let servers = &config.mcp.servers.0;
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].name, "git");
        assert_eq!(servers[0].args, ["--repository", "/src/reaper"]);
        assert!(servers[0].enabled);
        assert_eq!(servers[0].timeout_ms.get(), 30_000);
        assert_eq!(servers[1].timeout_ms.get(), 5_000);
        assert!(!servers[1].enabled);
        let shown = format!("{:?}", servers[1]);
        assert!(
            shown.contains("GITHUB_TOKEN") && !shown.contains("ghp_secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_server_tables_are_refused_naming_the_key() {
        for (text, says) in [
            ("[mcp.servers.x]\nargs = []\n", "missing key `command`"),
            ("[mcp.servers.x]\ncommand = \"\"\n", "missing key `command`"),
            ("[mcp.servers.a__b]\ncommand = \"x\"\n", "a server name"),
            (
                "[mcp.servers.x]\ncommand = \"x\"\ncwd = \"rel\"\n",
                "absolute",
            ),
            (
                "[mcp.servers.x]\ncommand = \"x\"\ntimeout_ms = 5\n",
                "out of range",
            ),
            (
                "[mcp.servers.x]\ncommand = \"x\"\nkommand = \"y\"\n",
                "kommand",
            ),
            ("[mcp]\nserver = 1\n", "server"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
