//! The Completion service: cache, typing through, the provider pool and the workers.

pub mod cache;
pub mod pool;
pub mod service;

pub use pool::{CompletionProvider, OfflineProvider, ProviderPool};
pub use service::{CompletionService, JobDone, Outcome};
