//! Provider failures as call statuses: the one place where a [`ProviderError`] becomes what a
//! client sees. The message is the provider's own (which says what to do); the code is the one
//! a client can act on.

use reaper_core::{Code, Status};
use reaper_providers::{PoolError, ProviderError};

/// The status a client gets when no provider answered. The code is that of the first
/// provider asked (the one the user ranked first), else of the first one set aside by a
/// failure (a missing key, say); the message lists every provider's reason.
pub fn pool_status(error: &PoolError) -> Status {
    let decisive = error
        .failures
        .first()
        .map(|(_, e)| e)
        .or_else(|| error.skipped.iter().find_map(|s| s.error.as_ref()));
    let code = decisive.map_or(Code::Unavailable, code_for);
    Status::new(code, error.to_string())
}

/// The code for one provider failure.
pub fn code_for(error: &ProviderError) -> Code {
    match error {
        ProviderError::TimedOut { .. } => Code::DeadlineExceeded,
        ProviderError::RateLimited { .. } => Code::ResourceExhausted,
        // Not the daemon's own UNAUTHENTICATED (that is about the client's token): the daemon
        // lacks working provider credentials, a precondition the user can fix.
        ProviderError::Unauthorized { .. }
        | ProviderError::MissingKey { .. }
        | ProviderError::NotSignedIn { .. } => Code::FailedPrecondition,
        ProviderError::ModelNotFound { .. } => Code::NotFound,
        ProviderError::Unsupported { .. } => Code::Unimplemented,
        ProviderError::Http { status, .. } if (400..500).contains(status) => {
            Code::FailedPrecondition
        }
        // Unreachable, 5xx, errors mid-stream, malformed or dropped streams: retrying may help.
        _ => Code::Unavailable,
    }
}
