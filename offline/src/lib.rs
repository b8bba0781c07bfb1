//! The embedded `offline` model: completions from a statistical model of the user's own
//! workspace, with no weights and no network.
//!
//! [`Workspaces`] finds a file's workspace (its git root) and indexes it in the background
//! ([`workspace`]); [`Corpus`] is one index (a suffix array over the workspace's text,
//! [`corpus`]); [`predict`] continues the text before the cursor from it ([`model`]), and
//! [`symbols`] completes an identifier from the editor's LSP symbols when the text has no
//! evidence; [`related`] finds the snippets of other files a model is shown as repository
//! context. This crate knows nothing of the daemon or of other providers: `reaper-providers`
//! wraps it as the `offline` provider, and `reaper-bench` evaluates it directly.

pub mod corpus;
pub mod model;
pub mod reconcile;
pub mod related;
pub mod symbols;
pub mod workspace;

pub use corpus::{Corpus, CorpusBuilder, Hits, Policy};
pub use model::{predict, predict_explained, Evidence, Prediction};
pub use workspace::{Deny, IndexLimits, Workspace, Workspaces};
