//! The Completion service: the cache and typing through on the loop, misses to the provider
//! pool; and the editors' feedback on what they showed.

pub mod cache;
pub mod feedback;
pub mod service;

pub use feedback::Feedback;
pub use service::{CompletionService, JobDone, Outcome};
