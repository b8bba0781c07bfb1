//! Provider failures as call statuses: the one place where a [`ProviderError`] becomes what a
//! client sees. The message is the provider's own (which says what to do); the code is the one
//! a client can act on.

use reaper_core::{Code, Status};
use reaper_providers::{ChatError, PoolError, ProviderError};

/// The status a client gets when no provider answered. The code is that of the first
/// provider asked (the one the user ranked first), else of the first one set aside by a
/// failure (a missing key, say); the message lists every provider's reason.
pub fn pool_status(error: &PoolError) -> Status {
    let status = pool_code(error);
    Status::new(status, error.to_string())
}

/// The code of [`pool_status`].
fn pool_code(error: &PoolError) -> Code {
    let decisive = error
        .failures
        .first()
        .map(|(_, e)| e)
        .or_else(|| error.skipped.iter().find_map(|s| s.error.as_ref()));
    decisive.map_or(Code::Unavailable, code_for)
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

/// The status a chat ends with when it cannot be answered, or stops: a wrong name is the
/// caller's to fix (INVALID_ARGUMENT, naming what exists); no chat provider is a setup to fix
/// (FAILED_PRECONDITION); a provider's failure keeps its code, and its own words.
pub fn chat_status(error: &ChatError) -> Status {
    let code = match error {
        ChatError::UnknownProvider { .. }
        | ChatError::CannotChat { .. }
        | ChatError::UnknownModel { .. } => Code::InvalidArgument,
        ChatError::Disabled { .. } | ChatError::NoChatProvider | ChatError::NoToolProvider => {
            Code::FailedPrecondition
        }
        ChatError::CannotCallTools { .. } => Code::FailedPrecondition,
        // The first provider's failure decides, as for completions; but a conversation the
        // model server refuses (longer than its context: HTTP 400) is the caller's to fix.
        ChatError::Failed(error) => match error.failures.first() {
            Some((_, refused)) if refuses_the_request(refused) => Code::InvalidArgument,
            _ => pool_code(error),
        },
        ChatError::Interrupted { error, .. } if refuses_the_request(error) => Code::InvalidArgument,
        ChatError::Interrupted { error, .. } => code_for(error),
        _ => Code::Internal,
    };
    Status::new(code, error.to_string())
}

/// Whether a provider refused the request itself (not its credentials, the model or its
/// load): for a chat, the conversation.
fn refuses_the_request(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Http {
            status: 400 | 413 | 422,
            ..
        }
    )
}

/// The status an agent task ends with when it does not complete: its provider's failure as a
/// chat's; a cancel is CANCELLED; a limit is RESOURCE_EXHAUSTED; a journal that cannot be
/// written is INTERNAL (the disk, not the request).
pub fn agent_status(error: &reaper_agent::TaskError) -> Status {
    use reaper_agent::TaskError;
    match error {
        TaskError::Provider(chat) => chat_status(chat),
        TaskError::Cancelled => Status::new(Code::Cancelled, error.to_string()),
        TaskError::Steps(_) | TaskError::Tokens { .. } => {
            Status::new(Code::ResourceExhausted, error.to_string())
        }
        _ => Status::new(Code::Internal, error.to_string()),
    }
}
