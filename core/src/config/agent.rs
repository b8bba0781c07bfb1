//! `[agent]`: what an agent task may do, and how much of it.
//!
//! Each tool has a policy: `allow` (runs without asking), `ask` (the client approves or
//! denies each call) or `deny` (never runs; the model is told). Reading is allowed, writing
//! and commands are asked, by default; MCP tools are asked unless `mcp` or the tool's own name
//! (`NAME__TOOL`) says otherwise. Commands are off entirely unless `[agent.commands]` enables
//! them, and then only the programs it lists run.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};

use serde::Deserialize;

use super::{nonzero32, nonzero64, range};

/// What a tool may do without the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Runs without asking.
    Allow,
    /// Runs once the client approves that call.
    Ask,
    /// Never runs; the model is told it was refused.
    Deny,
}

/// The built-in tools that only read.
pub const READ_TOOLS: [&str; 3] = ["read_file", "list_dir", "search"];
/// The built-in tools that change files.
pub const WRITE_TOOLS: [&str; 2] = ["write_file", "edit_file"];
/// The built-in tool that runs a program.
pub const COMMAND_TOOL: &str = "run_command";

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Model turns a task may take at most.
    #[serde(deserialize_with = "range::within::<_, _, 1, 1_000>")]
    pub max_steps: NonZeroU32,
    /// Tokens a task may spend at most (prompt and answer, as the provider counts them).
    #[serde(deserialize_with = "range::within::<_, _, 1_000, 100_000_000>")]
    pub max_tokens: NonZeroU64,
    /// Bytes a task may write at most, over all its writes and edits.
    #[serde(deserialize_with = "range::within::<_, _, 1_024, 17_179_869_184>")]
    pub max_bytes_written: NonZeroU64,
    /// Tasks that may run at once; more are refused RESOURCE_EXHAUSTED.
    #[serde(deserialize_with = "range::within::<_, _, 1, 256>")]
    pub max_tasks: NonZeroU32,
    /// The provider agent tasks use (its name in `reaper.toml`); default: the first that
    /// calls tools.
    pub provider: Option<String>,
    /// Policies by tool name (`read_file`, `write_file`, `run_command`, `NAME__TOOL`…), and
    /// `mcp` for every MCP tool not named.
    pub policy: BTreeMap<String, Policy>,
    /// `[agent.commands]`.
    pub commands: CommandsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_steps: nonzero32(40),
            max_tokens: nonzero64(1_000_000),
            max_bytes_written: nonzero64(64 * 1024 * 1024),
            max_tasks: nonzero32(4),
            provider: None,
            policy: BTreeMap::new(),
            commands: CommandsConfig::default(),
        }
    }
}

impl AgentConfig {
    /// The policy of tool `name` (an MCP tool is `SERVER__TOOL`).
    pub fn policy_of(&self, name: &str) -> Policy {
        if let Some(policy) = self.policy.get(name) {
            return *policy;
        }
        if name.contains("__") {
            return self.policy.get("mcp").copied().unwrap_or(Policy::Ask);
        }
        if READ_TOOLS.contains(&name) {
            Policy::Allow
        } else {
            Policy::Ask
        }
    }
}

/// `[agent.commands]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Whether `run_command` exists at all.
    pub enabled: bool,
    /// The programs it may run, by name (`cargo`, `git`, `pytest`…): the first word of a
    /// command. Empty: none.
    pub allow: Vec<String>,
    /// Longest a command may run, in milliseconds, before it is killed.
    #[serde(deserialize_with = "range::within::<_, _, 100, 3_600_000>")]
    pub timeout_ms: NonZeroU64,
    /// Bytes of a command's output kept (standard output and error together); the rest is
    /// cut, and the model told so.
    #[serde(deserialize_with = "range::within::<_, _, 1_024, 16_777_216>")]
    pub max_output_bytes: NonZeroU32,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            enabled: false,
            allow: Vec::new(),
            timeout_ms: nonzero64(120_000),
            max_output_bytes: nonzero32(64 * 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn policies_fall_back_from_the_tool_to_mcp_to_the_built_in_default() {
        let text =
            "[agent.policy]\nwrite_file = \"allow\"\nmcp = \"deny\"\ngit__git_status = \"allow\"\n";
        let agent = Config::from_toml(text, "test").unwrap().agent;
        assert_eq!(agent.policy_of("write_file"), Policy::Allow);
        assert_eq!(agent.policy_of("edit_file"), Policy::Ask);
        assert_eq!(agent.policy_of("read_file"), Policy::Allow);
        assert_eq!(agent.policy_of("run_command"), Policy::Ask);
        assert_eq!(agent.policy_of("git__git_status"), Policy::Allow);
        assert_eq!(agent.policy_of("git__git_commit"), Policy::Deny);
        let defaults = AgentConfig::default();
        assert_eq!(defaults.policy_of("fs__write_file"), Policy::Ask);
        assert!(!defaults.commands.enabled);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, words) in [
            (
                "[agent.policy]\nwrite_file = \"sometimes\"\n",
                "unknown variant",
            ),
            ("[agent]\nmax_steps = 0\n", "nonzero"),
            ("[agent]\nmax_steps = 5000\n", "out of range"),
            ("[agent.commands]\ntimeout_ms = 5\n", "out of range"),
            ("[agent]\nmax_step = 3\n", "unknown field"),
        ] {
            let error = Config::from_toml(text, "test").unwrap_err().to_string();
            assert!(error.contains(words), "{text}: {error}");
        }
    }
}
