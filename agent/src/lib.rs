//! reaper's agent, its hands: the working directory a task may not leave ([`Workspace`]),
//! writes that are never half done ([`atomic`]), the journal that undoes a task
//! ([`journal`]), and the edits a model asks for ([`edit`]).

pub mod atomic;
pub mod edit;
pub mod journal;
mod workspace;

pub use journal::{Journal, UndoError, Undone};
pub use workspace::{PathError, Workspace};
