//! The Completion service: the cache and typing through on the loop, misses to the provider
//! pool.

pub mod cache;
pub mod service;

pub use service::{CompletionService, JobDone, Outcome};
