//! The one error type of the library. Its variants follow the `ipcctl` exit-code table
//! (SPEC §9), so a program can react to "would block" or "no such mailbox" without
//! looking at numbers, and [`Error::exit_code`] gives the CLI its status.

use std::io;
use std::path::PathBuf;

use ipc_proto::{ErrorCode, ErrorReply, NameError, TopicError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to ipcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting failed: no daemon, wrong path, or no permission on the socket.
    #[error("cannot reach ipcd at {}: {source}", path.display())]
    NotReachable { path: PathBuf, source: io::Error },
    /// The connection broke after it was made.
    #[error("connection to ipcd lost: {0}")]
    Disconnected(io::Error),
    /// The daemon is stopping.
    #[error("{0}")]
    ShuttingDown(String),
    /// Client and daemon share no protocol version.
    #[error("{0}")]
    VersionMismatch(String),
    /// The peer broke the protocol (a bug on one side, or not an ipcd socket).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A mailbox name was refused before anything was sent.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A topic or topic pattern was refused before anything was sent.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The daemon found the request's data unacceptable: payload too large, a bad name,
    /// an argument out of range.
    #[error("{0}")]
    BadData(String),
    #[error("{0}")]
    NoSuchMailbox(String),
    /// The mailbox was removed while the request waited on it (SysV `EIDRM`).
    #[error("{0}")]
    Removed(String),
    #[error("{0}")]
    Exists(String),
    /// `nowait` was given and the operation would have had to wait.
    #[error("{0}")]
    WouldBlock(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    QuotaExceeded(String),
    /// The request was cancelled before it completed.
    #[error("{0}")]
    Cancelled(String),
    /// A signal arrived while an interruptible wait was blocked
    /// ([`crate::BlockingClient::set_interruptible`]); the request was cancelled at the
    /// daemon and did nothing (SysV's `EINTR`).
    #[error("interrupted by a signal; the request was withdrawn and did nothing")]
    Interrupted,
    /// A typed receive found a message of another type.
    #[error("type mismatch: expected a {expected}, the message holds a {found}")]
    TypeMismatch { expected: String, found: String },
    /// A typed payload could not be encoded or decoded.
    #[error("{0}")]
    Payload(String),
    /// Any other error the daemon reported.
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
}

impl Error {
    /// The `ipcctl` exit code for this error (SPEC §9).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotReachable { .. }
            | Error::Disconnected(_)
            | Error::ShuttingDown(_)
            | Error::VersionMismatch(_) => 69,
            Error::InvalidName(_)
            | Error::InvalidTopic(_)
            | Error::BadData(_)
            | Error::TypeMismatch { .. }
            | Error::Payload(_) => 65,
            Error::NoSuchMailbox(_) | Error::Removed(_) => 66,
            Error::WouldBlock(_) | Error::TimedOut(_) => 75,
            Error::PermissionDenied(_) | Error::QuotaExceeded(_) => 77,
            Error::Protocol(_) | Error::Exists(_) | Error::Cancelled(_) | Error::Interrupted => 1,
            Error::Server { code, .. } => code.exit_code(),
        }
    }

    /// True for "would block" and "timed out": the operation may succeed later.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock(_) | Error::TimedOut(_))
    }

    /// True when the connection is gone or going: it broke, or the daemon answered that
    /// it is shutting down. A new connection may succeed (see [`crate::ReconnectPolicy`]).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Disconnected(_) | Error::ShuttingDown(_))
    }
}

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        let m = reply.message;
        match reply.code {
            ErrorCode::BadRequest
            | ErrorCode::InvalidName
            | ErrorCode::TooLarge
            | ErrorCode::InvalidArgument => Error::BadData(m),
            ErrorCode::NoSuchMailbox => Error::NoSuchMailbox(m),
            ErrorCode::Removed => Error::Removed(m),
            ErrorCode::Exists => Error::Exists(m),
            ErrorCode::WouldBlock => Error::WouldBlock(m),
            ErrorCode::TimedOut => Error::TimedOut(m),
            ErrorCode::PermissionDenied => Error::PermissionDenied(m),
            ErrorCode::QuotaExceeded => Error::QuotaExceeded(m),
            ErrorCode::ShuttingDown => Error::ShuttingDown(m),
            ErrorCode::VersionMismatch => Error::VersionMismatch(m),
            ErrorCode::Cancelled => Error::Cancelled(m),
            code => Error::Server { code, message: m },
        }
    }
}
