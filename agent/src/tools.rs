//! The tools a task offers its model: what each takes, and what calling it does.
//!
//! A call goes through two stages. [`Toolbox::prepare`] checks it — its arguments, every path
//! resolved inside the working directory, the file it would change read and the change worked
//! out — without touching anything: a refused path or a bad argument is an answer for the
//! model, not a failure of the task, and an approval shows the exact change (a diff). Then the
//! task runs it ([`Toolbox::read`], [`apply`], [`crate::command::run`], or an MCP server's
//! tool). A change is applied only if the file is still what it was when the change was
//! worked out (the user may have edited it while the approval was pending), through the
//! journal and an atomic write, and is read back to verify it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reaper_providers::{ToolCall, ToolSpec};
use serde_json::{json, Value};

use crate::atomic;
use crate::command::{self, CommandError, CommandRules};
use crate::edit::{self, EditError};
use crate::journal::{digest, Journal};
use crate::search::{self, Source};
use crate::workspace::{PathError, Workspace};

/// Most text `read_file` gives back at once; the model asks for the rest by line.
pub const MAX_READ_BYTES: usize = 100 * 1024;
/// Largest file `write_file` or `edit_file` changes (edits read it whole).
pub const MAX_CHANGED_FILE: u64 = 16 * 1024 * 1024;
/// Most entries `list_dir` shows.
pub const MAX_ENTRIES: usize = 500;
/// Longest preview of a change shown for approval.
pub const MAX_PREVIEW: usize = 16 * 1024;

/// Why a call was not run (told to the model, which may try another way).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The model called a tool that does not exist.
    #[error("there is no tool {name:?}: the tools are {}", .known.join(", "))]
    Unknown {
        /// The name called.
        name: String,
        /// The tools offered.
        known: Vec<String>,
    },
    /// An argument is missing or of the wrong kind.
    #[error("{tool}: {problem}")]
    Arguments {
        /// The tool.
        tool: String,
        /// What is wrong.
        problem: String,
    },
    /// A path the task may not use.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A file that may hold credentials (never shown to a model).
    #[error("{0} may hold credentials (a .env file, a key, or a path [providers.offline] deny names): it is never read for a model")]
    Private(String),
    /// A file the agent never touches, whatever its name says.
    #[error("{path} is {why}: the agent neither reads nor writes it")]
    Protected {
        /// The file.
        path: String,
        /// What it is.
        why: &'static str,
    },
    /// An edit that cannot be applied.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// A command that may not run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file too large to change.
    #[error(
        "{path} is {size} bytes: files over {MAX_CHANGED_FILE} bytes are not changed by the agent"
    )]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file changed between the call and its approval.
    #[error(
        "{0} changed while the change waited for approval: nothing was written; read it again"
    )]
    ChangedMeanwhile(String),
    /// The task's budget of bytes written is spent.
    #[error("writing {wanted} more bytes would pass the task's limit of {limit} bytes written ([agent] max_bytes_written)")]
    Budget {
        /// Bytes this change writes.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
}

/// A call, checked and ready to run.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Reads a file, from line `start` (1-based).
    Read {
        /// The file.
        path: PathBuf,
        /// First line.
        start: usize,
    },
    /// Lists a directory.
    List {
        /// The directory.
        path: PathBuf,
    },
    /// Finds a text.
    Search {
        /// The text.
        pattern: String,
    },
    /// Changes one file.
    Change(Change),
    /// Runs a program.
    Command {
        /// Program and arguments.
        words: Vec<String>,
    },
    /// Calls an MCP server's tool.
    Mcp {
        /// The server.
        server: String,
        /// Its tool.
        tool: String,
        /// The arguments.
        arguments: Value,
    },
}

impl Prepared {
    /// Whether running it changes files or runs programs (shown to the user as such).
    pub fn acts(&self) -> bool {
        matches!(
            self,
            Prepared::Change(_) | Prepared::Command { .. } | Prepared::Mcp { .. }
        )
    }
}

/// A change to one file, worked out.
#[derive(Debug, Clone)]
pub struct Change {
    /// The file.
    pub path: PathBuf,
    /// The file as shown (relative to the working directory): resolved again when the change
    /// is applied, in case a directory on the way became a symlink meanwhile.
    pub shown: String,
    /// SHA-256 of what it held when the change was worked out; `None` if it did not exist.
    pub before: Option<String>,
    /// What it will hold.
    pub contents: Vec<u8>,
    /// The change as a diff (cut at [`MAX_PREVIEW`]), for approval.
    pub preview: String,
}

/// The tools of one task.
pub struct Toolbox {
    workspace: Workspace,
    /// Whether a file must never be read for a model.
    excluded: Arc<dyn Fn(&Path) -> bool + Send + Sync>,
    commands: CommandRules,
    /// `(offered name, server, tool, description, schema)` of every MCP tool.
    mcp: Vec<McpTool>,
}

/// An MCP server's tool, as offered to the model.
#[derive(Debug, Clone)]
pub struct McpTool {
    /// The server.
    pub server: String,
    /// The tool's own name.
    pub tool: String,
    /// What it does.
    pub description: String,
    /// Its arguments' schema.
    pub schema: Value,
}

impl McpTool {
    /// The name the model calls it by: `SERVER__TOOL`.
    pub fn offered_name(&self) -> String {
        format!("{}__{}", self.server, self.tool)
    }
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toolbox")
            .field("root", &self.workspace.root())
            .field("commands", &self.commands.enabled)
            .field("mcp", &self.mcp.len())
            .finish_non_exhaustive()
    }
}

/// Whether `name` is one the model APIs take for a tool (`^[a-zA-Z0-9_-]{1,64}$`).
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Toolbox {
    /// The tools of a task in `workspace`.
    pub fn new(
        workspace: Workspace,
        excluded: Arc<dyn Fn(&Path) -> bool + Send + Sync>,
        commands: CommandRules,
        mcp: Vec<McpTool>,
    ) -> Toolbox {
        Toolbox {
            workspace,
            excluded,
            commands,
            mcp,
        }
    }

    /// The working directory.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// What the model is offered.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let path =
            json!({"type": "string", "description": "A path relative to the working directory."});
        let mut specs = vec![
            spec(
                "read_file",
                "Reads a text file of the working directory. Long files come in parts: ask again with start_line for the rest.",
                json!({"type": "object", "properties": {"path": path, "start_line": {"type": "integer", "minimum": 1, "description": "First line to read (from 1)."}}, "required": ["path"]}),
            ),
            spec(
                "list_dir",
                "Lists a directory of the working directory (directories end with /).",
                json!({"type": "object", "properties": {"path": {"type": "string", "description": "A directory relative to the working directory; default \".\"."}}}),
            ),
            spec(
                "search",
                "Finds where a text occurs in the working directory's files: path, line and the line's text of each place.",
                json!({"type": "object", "properties": {"pattern": {"type": "string", "description": "The exact text to find."}}, "required": ["pattern"]}),
            ),
            spec(
                "write_file",
                "Writes a whole file (created if missing, replaced if present).",
                json!({"type": "object", "properties": {"path": path, "content": {"type": "string", "description": "The file's entire new contents."}}, "required": ["path", "content"]}),
            ),
            spec(
                "edit_file",
                "Changes part of a file: replaces the one occurrence of old_text with new_text, or applies a unified diff.",
                json!({"type": "object", "properties": {"path": path, "old_text": {"type": "string", "description": "The exact passage to replace; it must occur once."}, "new_text": {"type": "string", "description": "What replaces it."}, "diff": {"type": "string", "description": "A unified diff of the file, instead of old_text and new_text."}}, "required": ["path"]}),
            ),
        ];
        if self.commands.enabled {
            specs.push(spec(
                "run_command",
                &format!(
                    "Runs a program in the working directory (no shell; allowed programs: {}) and gives its exit code and output.",
                    self.commands.allow.join(", ")
                ),
                json!({"type": "object", "properties": {"command": {"type": "string", "description": "The command line, e.g. \"cargo test\"."}}, "required": ["command"]}),
            ));
        }
        for tool in &self.mcp {
            specs.push(ToolSpec {
                name: tool.offered_name(),
                description: tool.description.clone(),
                parameters: tool.schema.clone(),
            });
        }
        specs
    }

    /// Checks `call` and works out what it would do, touching nothing.
    pub fn prepare(&self, call: &ToolCall) -> Result<Prepared, ToolError> {
        let args = Args { call };
        match call.name.as_str() {
            "read_file" => {
                let path = self.readable(args.string("path")?)?;
                let start = args.optional_number("start_line")?.unwrap_or(1).max(1);
                Ok(Prepared::Read { path, start })
            }
            "list_dir" => {
                let path = self
                    .workspace
                    .resolve(args.optional_string("path")?.unwrap_or("."))?;
                Ok(Prepared::List { path })
            }
            "search" => Ok(Prepared::Search {
                pattern: args.string("pattern")?.to_owned(),
            }),
            "write_file" => {
                let path = self.writable(args.string("path")?)?;
                let contents = args.string("content")?.as_bytes().to_vec();
                let (before, old) = self.current(&path)?;
                let old_text = String::from_utf8_lossy(old.as_deref().unwrap_or_default());
                let shown = self.workspace.relative(&path);
                let preview = preview(&shown, &old_text, &String::from_utf8_lossy(&contents));
                Ok(Prepared::Change(Change {
                    path,
                    shown,
                    before,
                    contents,
                    preview,
                }))
            }
            "edit_file" => {
                let path = self.writable(args.string("path")?)?;
                let shown = self.workspace.relative(&path);
                let (before, old) = self.current(&path)?;
                let Some(old) = old else {
                    return Err(ToolError::Io {
                        path: shown,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no such file (write_file creates one)",
                        ),
                    });
                };
                let text = String::from_utf8(old).map_err(|_| EditError::NotText(shown.clone()))?;
                let new = match args.optional_string("diff")? {
                    Some(diff) => edit::patch(&shown, &text, diff)?,
                    None => edit::replace(
                        &shown,
                        &text,
                        args.string("old_text")?,
                        args.optional_string("new_text")?.unwrap_or(""),
                    )?,
                };
                let preview = preview(&shown, &text, &new);
                Ok(Prepared::Change(Change {
                    path,
                    shown,
                    before,
                    contents: new.into_bytes(),
                    preview,
                }))
            }
            "run_command" if self.commands.enabled => {
                let words = command::parse(args.string("command")?, &self.commands)?;
                for word in &words[1..] {
                    self.confine_argument(word)?;
                }
                Ok(Prepared::Command { words })
            }
            name => match self.mcp.iter().find(|t| t.offered_name() == name) {
                Some(tool) => Ok(Prepared::Mcp {
                    server: tool.server.clone(),
                    tool: tool.tool.clone(),
                    arguments: match &call.arguments {
                        Value::Object(_) => call.arguments.clone(),
                        _ => json!({}),
                    },
                }),
                None => Err(ToolError::Unknown {
                    name: name.to_owned(),
                    known: self.specs().into_iter().map(|s| s.name).collect(),
                }),
            },
        }
    }

    /// A path to read: inside, not private, not protected.
    fn readable(&self, path: &str) -> Result<PathBuf, ToolError> {
        let resolved = self.workspace.resolve(path)?;
        self.allowed(&resolved)?;
        Ok(resolved)
    }

    /// Whether a resolved path may be touched at all.
    fn allowed(&self, resolved: &Path) -> Result<(), ToolError> {
        let shown = || self.workspace.relative(resolved);
        if (self.excluded)(resolved) {
            return Err(ToolError::Private(shown()));
        }
        if let Some(why) = protected(resolved) {
            return Err(ToolError::Protected { path: shown(), why });
        }
        Ok(())
    }

    /// An argument of a command that names a path must name one the task may use: none
    /// outside the working directory, none private (`cat .env` is not a way round
    /// `read_file`). `--flag=value` is checked by its value.
    fn confine_argument(&self, word: &str) -> Result<(), ToolError> {
        let value = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => value,
            _ => word,
        };
        let looks_like_path =
            value.starts_with('/') || value.starts_with('~') || value.split('/').any(|c| c == "..");
        if looks_like_path {
            if value.starts_with('~') {
                return Err(ToolError::Path(PathError::Outside {
                    path: value.to_owned(),
                    root: self.workspace.root().display().to_string(),
                }));
            }
            let resolved = self.workspace.resolve(value)?;
            return self.allowed(&resolved);
        }
        // A plain name: private if it names a private file here.
        if !value.is_empty() && !value.starts_with('-') {
            if let Ok(resolved) = self.workspace.resolve(value) {
                self.allowed(&resolved)?;
            }
        }
        Ok(())
    }

    /// A path to write: the same rules (a model has no business writing a `.env` either).
    fn writable(&self, path: &str) -> Result<PathBuf, ToolError> {
        self.readable(path)
    }

    /// What `path` holds now (its digest and contents), `None` if it does not exist.
    fn current(&self, path: &Path) -> Result<(Option<String>, Option<Vec<u8>>), ToolError> {
        let shown = self.workspace.relative(path);
        match atomic::read_at_most(path, MAX_CHANGED_FILE + 1) {
            Ok((_, size)) if size > MAX_CHANGED_FILE => {
                Err(ToolError::TooLarge { path: shown, size })
            }
            Ok((bytes, _)) => Ok((Some(digest(&bytes)), Some(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, None)),
            Err(source) => Err(ToolError::Io {
                path: shown,
                source,
            }),
        }
    }

    /// Runs a call that only reads: its text for the model.
    pub fn read(
        &self,
        prepared: &Prepared,
        index: Option<&reaper_offline::Corpus>,
    ) -> Result<String, ToolError> {
        match prepared {
            Prepared::Read { path, start } => self.read_file(path, *start),
            Prepared::List { path } => self.list(path),
            Prepared::Search { pattern } => {
                let excluded = self.excluded.clone();
                let (hits, source) =
                    search::search(self.workspace.root(), pattern, index, &move |p| excluded(p));
                if hits.is_empty() {
                    return Ok(format!(
                        "{pattern:?} occurs nowhere in the working directory"
                    ));
                }
                let mut text = String::new();
                for hit in &hits {
                    text.push_str(&format!(
                        "{}:{}: {}\n",
                        self.workspace.relative(&hit.path),
                        hit.line,
                        hit.text
                    ));
                }
                if hits.len() == search::MAX_HITS {
                    text.push_str(&format!(
                        "(the first {} places; search for something longer to narrow it)\n",
                        search::MAX_HITS
                    ));
                }
                if source == Source::Scan {
                    tracing::debug!("search answered by a scan (no index of this directory yet)");
                }
                Ok(text)
            }
            _ => Ok(String::new()),
        }
    }

    fn read_file(&self, path: &Path, start: usize) -> Result<String, ToolError> {
        let shown = self.workspace.relative(path);
        let io = |source| ToolError::Io {
            path: shown.clone(),
            source,
        };
        if path.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "a directory: use list_dir",
            )));
        }
        let (bytes, size) = atomic::read_at_most(path, MAX_CHANGED_FILE).map_err(io)?;
        if bytes[..bytes.len().min(8192)].contains(&0) {
            return Ok(format!("{shown} is a binary file of {size} bytes"));
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut out = String::new();
        let mut last = start.saturating_sub(1);
        let total = text.lines().count();
        for (i, line) in text.lines().enumerate().skip(start - 1) {
            // A line longer than a whole read (minified code) is cut, or it could never be read.
            let line = if line.len() > MAX_READ_BYTES / 2 {
                format!(
                    "{} [line cut at {} bytes of {}]",
                    reaper_core::text::head(line, MAX_READ_BYTES / 2),
                    MAX_READ_BYTES / 2,
                    line.len()
                )
            } else {
                line.to_owned()
            };
            if out.len() + line.len() + 1 > MAX_READ_BYTES {
                break;
            }
            out.push_str(&line);
            out.push('\n');
            last = i + 1;
        }
        if start > 1 || last < total || (size as usize) > bytes.len() {
            out.push_str(&format!(
                "[lines {start} to {last} of {total}{}; read_file with start_line = {} for more]\n",
                if (size as usize) > bytes.len() {
                    format!(" in the first {} bytes", bytes.len())
                } else {
                    String::new()
                },
                last + 1
            ));
        }
        Ok(out)
    }

    fn list(&self, path: &Path) -> Result<String, ToolError> {
        let shown = self.workspace.relative(path);
        let entries = std::fs::read_dir(path).map_err(|source| ToolError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut names: Vec<String> = Vec::new();
        let mut more = 0usize;
        for entry in entries.flatten() {
            if names.len() == MAX_ENTRIES {
                more += 1;
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().ok();
            names.push(match kind {
                Some(k) if k.is_dir() => format!("{name}/"),
                Some(k) if k.is_symlink() => format!("{name}@"),
                _ => name,
            });
        }
        names.sort();
        let mut text = names.join("\n");
        if more > 0 {
            text.push_str(&format!("\n[{more} more entries]"));
        }
        if text.is_empty() {
            text = format!("{shown} is empty");
        }
        Ok(text)
    }
}

/// Applies `change` through `journal`: only if the path still resolves to the same place
/// inside the working directory and the file is still what it was when the change was worked
/// out; then read back and checked. What the model is told.
pub fn apply(
    change: &Change,
    journal: &mut Journal,
    workspace: &Workspace,
) -> Result<String, ToolError> {
    let shown = change.shown.as_str();
    let io = |source| ToolError::Io {
        path: shown.to_owned(),
        source,
    };
    if workspace.resolve(shown)? != change.path {
        return Err(ToolError::ChangedMeanwhile(shown.to_owned()));
    }
    let now = match atomic::read(&change.path) {
        Ok(bytes) => Some(digest(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if now != change.before {
        return Err(ToolError::ChangedMeanwhile(shown.to_owned()));
    }
    journal
        .before_change(&change.path, Some(&change.contents))
        .map_err(io)?;
    if let Err(error) = atomic::write(&change.path, &change.contents) {
        // Nothing changed: the journal says so (undo has nothing to do for it).
        let now = atomic::read(&change.path).ok();
        let _ = journal.after_change(&change.path, now.as_deref());
        return Err(io(error));
    }
    journal
        .after_change(&change.path, Some(&change.contents))
        .map_err(io)?;
    let back = atomic::read(&change.path).map_err(io)?;
    if digest(&back) != digest(&change.contents) {
        return Err(io(std::io::Error::other(
            "the file read back differs from what was written",
        )));
    }
    let verb = if change.before.is_some() {
        "changed"
    } else {
        "created"
    };
    Ok(format!(
        "{verb} {shown} ({} bytes; read back and verified)",
        change.contents.len()
    ))
}

fn spec(name: &str, description: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    }
}

/// Most lines, old and new together, that a preview diffs: the diff's cost grows with the
/// lines times the differences, and a whole generated file must not hold a worker for
/// seconds.
const MAX_DIFFED_LINES: usize = 8_000;

/// Why a file is never touched, if it is one of those: git's own files (hooks and config run
/// code on the next git command, and may hold tokens) and reaper's configuration (it starts
/// programs and holds MCP servers' tokens).
fn protected(path: &Path) -> Option<&'static str> {
    if path.components().any(|c| c.as_os_str() == ".git") {
        return Some("git's own (its hooks and config run code and may hold tokens)");
    }
    if path.file_name().is_some_and(|n| n == "reaper.toml") {
        return Some("reaper's configuration (it starts programs and may hold tokens)");
    }
    None
}

/// A diff of a change, cut at [`MAX_PREVIEW`].
fn preview(shown: &str, old: &str, new: &str) -> String {
    if old.lines().count() + new.lines().count() > MAX_DIFFED_LINES {
        return format!(
            "--- a/{shown}\n+++ b/{shown}\n[the whole file: {} lines, {} bytes before; {} lines, {} bytes after; too large to diff here]\n{}",
            old.lines().count(),
            old.len(),
            new.lines().count(),
            new.len(),
            reaper_core::text::head(new, MAX_PREVIEW / 2)
        );
    }
    let patch = diffy::create_patch(old, new).to_string();
    let patch = patch
        .replacen("--- original", &format!("--- a/{shown}"), 1)
        .replacen("+++ modified", &format!("+++ b/{shown}"), 1);
    if patch.len() > MAX_PREVIEW {
        format!(
            "{}\n[diff cut at {MAX_PREVIEW} bytes]",
            reaper_core::text::head(&patch, MAX_PREVIEW)
        )
    } else {
        patch
    }
}

/// A call's arguments, read with errors that name the tool.
struct Args<'a> {
    call: &'a ToolCall,
}

impl<'a> Args<'a> {
    fn problem(&self, problem: String) -> ToolError {
        ToolError::Arguments {
            tool: self.call.name.clone(),
            problem,
        }
    }

    fn object(&self) -> Result<&'a serde_json::Map<String, Value>, ToolError> {
        match &self.call.arguments {
            Value::Object(map) => Ok(map),
            Value::String(raw) => Err(self.problem(format!(
                "the arguments are not JSON: {}",
                reaper_core::text::head(raw, 200)
            ))),
            other => Err(self.problem(format!("the arguments must be an object, not {other}"))),
        }
    }

    fn string(&self, name: &str) -> Result<&'a str, ToolError> {
        self.optional_string(name)?
            .ok_or_else(|| self.problem(format!("missing argument {name:?}")))
    }

    fn optional_string(&self, name: &str) -> Result<Option<&'a str>, ToolError> {
        match self.object()?.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.problem(format!("{name:?} must be a string, not {other}"))),
        }
    }

    fn optional_number(&self, name: &str) -> Result<Option<usize>, ToolError> {
        match self.object()?.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().map(|n| n as usize)),
            // Small models often quote numbers.
            Some(Value::String(s)) if s.trim().parse::<usize>().is_ok() => {
                Ok(s.trim().parse().ok())
            }
            Some(other) => {
                Err(self.problem(format!("{name:?} must be a whole number, not {other}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolbox(root: &Path) -> Toolbox {
        let workspace = Workspace::new(root).unwrap();
        let excluded: Arc<dyn Fn(&Path) -> bool + Send + Sync> =
            Arc::new(|p: &Path| p.file_name().is_some_and(|n| n == ".env"));
        let commands = CommandRules {
            enabled: false,
            allow: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            max_output: 1024,
        };
        Toolbox::new(workspace, excluded, commands, Vec::new())
    }

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn an_edit_is_worked_out_before_and_applied_only_to_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a.txt"), "one\ntwo\n").unwrap();
        let tools = toolbox(&root);
        let Prepared::Change(change) = tools
            .prepare(&call(
                "edit_file",
                json!({"path": "a.txt", "old_text": "two", "new_text": "2"}),
            ))
            .unwrap()
        else {
            panic!("an edit is a change")
        };
        assert!(change.preview.contains("-two\n+2"), "{}", change.preview);
        assert_eq!(
            std::fs::read_to_string(root.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "nothing written yet"
        );
        let state = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(&state.path().join("t"), "t", &root).unwrap();
        // The user edits the file while the change waits for approval: it is not applied.
        std::fs::write(root.join("a.txt"), "one\ntwo\nthree\n").unwrap();
        assert!(matches!(
            apply(&change, &mut journal, tools.workspace()),
            Err(ToolError::ChangedMeanwhile(_))
        ));
        assert_eq!(
            std::fs::read_to_string(root.join("a.txt")).unwrap(),
            "one\ntwo\nthree\n"
        );
        let Prepared::Change(change) = tools
            .prepare(&call(
                "edit_file",
                json!({"path": "a.txt", "old_text": "two", "new_text": "2"}),
            ))
            .unwrap()
        else {
            panic!()
        };
        assert!(apply(&change, &mut journal, tools.workspace())
            .unwrap()
            .contains("verified"));
        assert_eq!(
            std::fs::read_to_string(root.join("a.txt")).unwrap(),
            "one\n2\nthree\n"
        );
    }

    #[test]
    fn bad_calls_are_answers_for_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join(".env"), "KEY=sk-1").unwrap();
        let tools = toolbox(&root);
        let refused =
            |name: &str, args: Value| tools.prepare(&call(name, args)).unwrap_err().to_string();
        assert!(refused("read_file", json!({"path": "../x"})).contains(".."));
        assert!(refused("read_file", json!({"path": "/etc/passwd"})).contains("outside"));
        assert!(refused("read_file", json!({"path": ".env"})).contains("credentials"));
        assert!(refused("read_file", json!({})).contains("missing argument \"path\""));
        assert!(refused("read_file", json!("not json")).contains("not JSON"));
        assert!(refused("run_command", json!({"command": "ls"})).contains("no tool"));
        assert!(refused("delete_all", json!({})).contains("read_file"));
        std::fs::create_dir(root.join(".git")).unwrap();
        std::fs::write(
            root.join(".git/config"),
            "[http]\nextraheader = AUTHORIZATION: bearer x\n",
        )
        .unwrap();
        assert!(refused("read_file", json!({"path": ".git/config"})).contains("git's own"));
        assert!(refused(
            "write_file",
            json!({"path": ".git/hooks/pre-commit", "content": "x"})
        )
        .contains("git's own"));
        assert!(
            refused("write_file", json!({"path": "reaper.toml", "content": "x"}))
                .contains("configuration")
        );
    }

    #[test]
    fn command_arguments_stay_inside_and_off_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join(".env"), "KEY=sk-1").unwrap();
        let mut tools = toolbox(&root);
        tools.commands = CommandRules {
            enabled: true,
            allow: vec!["cat".into(), "cargo".into()],
            ..tools.commands
        };
        let prepare = |line: &str| tools.prepare(&call("run_command", json!({"command": line})));
        assert!(prepare("cargo test --all").is_ok());
        assert!(prepare("cat src/../Cargo.toml").is_err());
        assert!(prepare("cat .env")
            .unwrap_err()
            .to_string()
            .contains("credentials"));
        assert!(prepare("cat /etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(prepare("cat ~/.ssh/id_rsa").is_err());
        assert!(prepare("cargo test --manifest-path=/tmp/x/Cargo.toml").is_err());
    }

    #[test]
    fn long_files_are_read_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let line = "x".repeat(99);
        let text: String = (0..3000).map(|i| format!("{i:04}{line}\n")).collect();
        std::fs::write(root.join("big.txt"), &text).unwrap();
        let tools = toolbox(&root);
        let first = tools
            .prepare(&call("read_file", json!({"path": "big.txt"})))
            .unwrap();
        let first = tools.read(&first, None).unwrap();
        assert!(first.len() <= MAX_READ_BYTES + 200);
        assert!(
            first.contains("start_line = "),
            "{}",
            &first[first.len() - 120..]
        );
        let next = tools
            .prepare(&call(
                "read_file",
                json!({"path": "big.txt", "start_line": "2000"}),
            ))
            .unwrap();
        assert!(tools.read(&next, None).unwrap().starts_with("1999x"));
    }
}
