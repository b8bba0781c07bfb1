//! The embedded `offline` provider: completions from a statistical model of the user's own
//! workspace, with no weights and no network.

pub mod corpus;
pub mod model;
pub mod symbols;
pub mod workspace;

pub use corpus::{Corpus, CorpusBuilder};
pub use model::{predict, Prediction};
pub use workspace::{IndexLimits, Workspace, Workspaces};
