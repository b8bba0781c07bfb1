//! reaper's agent: a task's loop of plan, act and verify over a model's tool calls
//! ([`task`]), the tools it offers ([`tools`]: files, search, commands, MCP servers' tools),
//! and its hands — the working directory a task may not leave ([`Workspace`]), writes that
//! are never half done ([`atomic`]), the journal that undoes a task ([`journal`]), and the
//! edits a model asks for ([`edit`]).

pub mod atomic;
pub mod command;
pub mod edit;
pub mod journal;
pub mod search;
pub mod task;
pub mod tools;
mod workspace;

pub use journal::{Journal, UndoError, Undone};
pub use task::{new_task_id, run, Control, Limits, TaskError, TaskSpec};
pub use tools::{McpTool, Toolbox};
pub use workspace::{PathError, Workspace};
