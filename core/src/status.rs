//! Status codes carried in every call's trailer.
//!
//! The names and numbers are gRPC's, so that people and tools that already know gRPC read them
//! without a table.

use std::fmt;

/// The outcome of a call, as sent in its trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The call succeeded.
    Ok = 0,
    /// The call was cancelled, usually by the client (stream reset) or by a newer call.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The request is malformed: bad encoding, a missing field, a value out of range.
    InvalidArgument = 3,
    /// The call's deadline passed before it could finish.
    DeadlineExceeded = 4,
    /// A named thing (file, provider) does not exist.
    NotFound = 5,
    /// A limit was hit: message size, connections, rate.
    ResourceExhausted = 8,
    /// The daemon is not in a state to run this call.
    FailedPrecondition = 9,
    /// The method exists in the protocol but is not built yet, or does not exist at all.
    Unimplemented = 12,
    /// A bug or an unexpected failure inside the daemon.
    Internal = 13,
    /// The daemon or a provider it needs is not reachable right now; retrying may help.
    Unavailable = 14,
    /// The call did not prove the daemon's token.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 12] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::Unauthenticated,
    ];

    /// The code's number on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Reads a code from its number; numbers this version does not know become `Unknown`.
    pub fn from_u8(value: u8) -> Code {
        Code::ALL
            .into_iter()
            .find(|code| code.as_u8() == value)
            .unwrap_or(Code::Unknown)
    }

    /// The gRPC name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A status code with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What happened, as a code a program can branch on.
    pub code: Code,
    /// What happened, for the person reading it.
    pub message: String,
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// Success, with no message.
    pub fn ok() -> Status {
        Status::new(Code::Ok, "")
    }

    /// Whether this status is `OK`.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_numbers() {
        for code in Code::ALL {
            assert_eq!(Code::from_u8(code.as_u8()), code);
        }
        assert_eq!(Code::from_u8(200), Code::Unknown);
        assert_eq!(Code::Unauthenticated.as_u8(), 16);
        assert_eq!(Code::Unimplemented.name(), "UNIMPLEMENTED");
    }
}
