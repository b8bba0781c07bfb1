//! What can go wrong for a caller, as one type.

use std::net::SocketAddr;
use std::path::PathBuf;

use reaper_core::{Code, Status};

/// Why a call or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with a status other than OK.
    #[error("{0}")]
    Status(Status),
    /// A file the client needs from the state directory is missing or unreadable.
    #[error("cannot read {path}: {reason} (is reaperd running, and is this its state directory?)")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The config file (the daemon's `reaper.toml`, which the client reads too) is invalid.
    #[error("{0}")]
    Config(String),
    /// No connection could be made.
    #[error("cannot connect to reaperd at {addr} after {attempts} attempt(s): {reason}")]
    Connect {
        /// The daemon's address.
        addr: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The connection failed during a call.
    #[error("connection to reaperd lost: {0}")]
    Transport(String),
    /// The call's deadline passed; the call was cancelled.
    #[error("deadline of {0} ms exceeded; the call was cancelled")]
    DeadlineExceeded(u64),
    /// The daemon sent something this client cannot read.
    #[error("malformed response from reaperd: {0}")]
    Protocol(String),
    /// A call sent as 0-RTT data on a resumed connection was not taken: the daemon did not
    /// accept the session (it restarted, or had let the session go), or the handshake did not
    /// complete. [`crate::Client`] sends such a call again itself, once the connection is
    /// past its handshake, so its methods return this only if that happened three times.
    #[error("the daemon did not take a call sent as 0-RTT data; send it again")]
    EarlyDataRejected,
}

impl Error {
    /// The error as a status, for callers that report everything as one (the CLI does).
    pub fn status(&self) -> Status {
        match self {
            Error::Status(status) => status.clone(),
            Error::Config(_) => Status::new(Code::FailedPrecondition, self.to_string()),
            Error::StateFile { .. }
            | Error::Connect { .. }
            | Error::Transport(_)
            | Error::EarlyDataRejected => Status::new(Code::Unavailable, self.to_string()),
            Error::DeadlineExceeded(_) => Status::new(Code::DeadlineExceeded, self.to_string()),
            Error::Protocol(_) => Status::new(Code::Internal, self.to_string()),
        }
    }
}
