//! Why a provider did not answer, in words that say what to do about it.
//!
//! Every variant names the URL that answered (or did not) and, where the user can fix
//! something, what: which environment variable, which command, which config key. The daemon
//! maps these to call statuses in one place (`reaper-server`'s completion service) and shows
//! them in `Provider.list`; nothing here is ever a bare string from a lower layer.

use std::sync::Arc;
use std::time::Duration;

/// A provider's failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// Nothing answered at the address (refused, unresolvable, reset while connecting).
    #[error("cannot reach {url}: {reason} (is the server running? check base_url)")]
    Unreachable {
        /// What was asked.
        url: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        reason: String,
        /// The HTTP client's error.
        #[source]
        source: Option<Arc<reqwest::Error>>,
    },
    /// The server took longer than the time it was given.
    #[error("{url} did not answer within {} ms (timeout_ms, or the call's deadline)", .after.as_millis())]
    TimedOut {
        /// What was asked.
        url: String,
        /// How long it was given.
        after: Duration,
    },
    /// No credentials, or the server refused them (HTTP 401/403).
    #[error("{url} refused the credentials (HTTP {status}{}): {hint}", message_suffix(.message))]
    Unauthorized {
        /// What was asked.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The server's own words, if it sent any.
        message: String,
        /// What the user can do: which variable to set, how to sign in.
        hint: String,
    },
    /// The key the config names is not in the daemon's environment.
    #[error("the environment variable {var} (api_key_env) is not set in reaperd's environment: export it before starting reaperd")]
    MissingKey {
        /// The variable's name (never its value).
        var: String,
    },
    /// No GitHub Copilot sign-in was found, or it was refused.
    #[error("not signed in to GitHub Copilot: {detail}")]
    NotSignedIn {
        /// Where it looked and how to sign in.
        detail: String,
    },
    /// The server asks us to slow down (HTTP 429, or Anthropic's 529 "overloaded").
    #[error("{url} is rate limiting (HTTP {status}{}); asking again in {} s", message_suffix(.message), .retry_after.as_secs())]
    RateLimited {
        /// What was asked.
        url: String,
        /// 429 or 529.
        status: u16,
        /// How long to wait: the server's `Retry-After`, or a default.
        retry_after: Duration,
        /// The server's own words.
        message: String,
    },
    /// The configured model is not served there.
    #[error("model {model:?} is not available at {url}: {detail}")]
    ModelNotFound {
        /// What was asked.
        url: String,
        /// The configured model.
        model: String,
        /// What the server offers instead, or how to get the model.
        detail: String,
    },
    /// Any other error status, with the server's message.
    #[error("{url} answered HTTP {status}{}", message_suffix(.message))]
    Http {
        /// What was asked.
        url: String,
        /// The status code.
        status: u16,
        /// The server's own words (from its JSON error body when it sent one).
        message: String,
    },
    /// The server reported an error in the middle of a streamed answer.
    #[error("{url} reported an error mid-answer: {message}")]
    Stream {
        /// What was asked.
        url: String,
        /// The server's own words.
        message: String,
    },
    /// The answer was not in the API's format.
    #[error("{url} sent a malformed answer: {detail}")]
    Malformed {
        /// What was asked.
        url: String,
        /// What was wrong, with the offending bytes cut short.
        detail: String,
    },
    /// The stream ended before the answer was complete.
    #[error("{url} closed the stream before the answer was complete ({detail})")]
    Dropped {
        /// What was asked.
        url: String,
        /// What was seen last.
        detail: String,
    },
    /// The provider panicked inside reaperd: a bug, contained to this one call.
    #[error("the provider failed inside reaperd (a bug; the daemon log has the panic): {what}")]
    Panicked {
        /// What it was doing.
        what: &'static str,
    },
    /// The provider has no such capability (e.g. chat on a completion-only API).
    #[error("{what} is not supported by this provider")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl ProviderError {
    /// A failure of the HTTP client (connect, send, read), as the kind of error it is.
    pub(crate) fn from_reqwest(url: &str, error: reqwest::Error) -> ProviderError {
        let reason = innermost(&error);
        // Body and decode errors come after the status line: the server was there and went
        // away mid-answer. Everything else (refused, reset while sending, connect timeout)
        // means nothing usable answered.
        if error.is_body() || error.is_decode() {
            ProviderError::Dropped {
                url: url.to_owned(),
                detail: reason,
            }
        } else {
            ProviderError::Unreachable {
                url: url.to_owned(),
                reason,
                source: Some(Arc::new(error)),
            }
        }
    }

    /// Whether this says the credentials are missing or wrong.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ProviderError::Unauthorized { .. }
                | ProviderError::MissingKey { .. }
                | ProviderError::NotSignedIn { .. }
        )
    }
}

/// The last error in a source chain: "Connection refused (os error 111)" rather than
/// "error sending request for url (...)".
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let missing = ProviderError::MissingKey {
            var: "ANTHROPIC_API_KEY".into(),
        };
        assert!(missing.to_string().contains("ANTHROPIC_API_KEY"));
        assert!(missing.to_string().contains("export"));
        let limited = ProviderError::RateLimited {
            url: "http://x/v1/messages".into(),
            status: 429,
            retry_after: Duration::from_secs(7),
            message: "slow down".into(),
        };
        assert_eq!(
            limited.to_string(),
            "http://x/v1/messages is rate limiting (HTTP 429: slow down); asking again in 7 s"
        );
        let http = ProviderError::Http {
            url: "http://x".into(),
            status: 500,
            message: String::new(),
        };
        assert_eq!(http.to_string(), "http://x answered HTTP 500");
    }
}
