//! Stable numeric error codes carried in error replies. Clients map them to their own
//! error types and the CLI maps them to exit codes (SPEC §9), so a code's number and
//! meaning never change once released; new codes are only appended.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong with a request, as a number that is stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A bug or an unexpected condition inside the daemon.
    Internal,
    /// The request could not be decoded or makes no sense (exit 65).
    BadRequest,
    /// The mailbox name is not valid (exit 65).
    InvalidName,
    /// The payload is larger than the mailbox can ever hold (exit 65).
    TooLarge,
    /// The mailbox does not exist (exit 66).
    NoSuchMailbox,
    /// `create` without `exist_ok` on a mailbox that exists (exit 1).
    Exists,
    /// `nowait` and the operation would have had to wait (exit 75).
    WouldBlock,
    /// The operation's timeout passed (exit 75).
    TimedOut,
    /// Mode bits or ownership forbid the operation (exit 77).
    PermissionDenied,
    /// A per-uid or per-connection quota is exhausted (exit 77).
    QuotaExceeded,
    /// The mailbox was removed while the request waited on it, SysV `EIDRM` (exit 66).
    Removed,
    /// The daemon is stopping (exit 69).
    ShuttingDown,
    /// The handshake found no protocol version both sides speak (exit 69).
    VersionMismatch,
    /// An argument is out of range, e.g. a limit above the daemon's ceiling (exit 65).
    InvalidArgument,
    /// The request was cancelled by the client before it completed.
    Cancelled,
    /// A durable mailbox's storage failed (disk full, I/O error); nothing stored before
    /// was harmed (exit 1).
    StorageFailed,
    /// `Ack`/`Nack` of a message that is not leased: already settled, or its lease
    /// ended (exit 1).
    NotLeased,
    /// The message a receive selected is larger than its `max_size`; it stays in the
    /// mailbox (SysV `E2BIG`, exit 65).
    TooBig,
    /// A code this build does not know; kept so newer daemons stay readable.
    Unknown(u16),
}

impl ErrorCode {
    const TABLE: [(u16, ErrorCode); 18] = [
        (1, ErrorCode::Internal),
        (2, ErrorCode::BadRequest),
        (3, ErrorCode::InvalidName),
        (4, ErrorCode::TooLarge),
        (5, ErrorCode::NoSuchMailbox),
        (6, ErrorCode::Exists),
        (7, ErrorCode::WouldBlock),
        (8, ErrorCode::TimedOut),
        (9, ErrorCode::PermissionDenied),
        (10, ErrorCode::QuotaExceeded),
        (11, ErrorCode::Removed),
        (12, ErrorCode::ShuttingDown),
        (13, ErrorCode::VersionMismatch),
        (14, ErrorCode::InvalidArgument),
        (15, ErrorCode::Cancelled),
        (16, ErrorCode::StorageFailed),
        (17, ErrorCode::NotLeased),
        (18, ErrorCode::TooBig),
    ];

    /// The number sent on the wire.
    pub fn as_u16(self) -> u16 {
        if let ErrorCode::Unknown(n) = self {
            return n;
        }
        Self::TABLE
            .iter()
            .find(|(_, code)| *code == self)
            .map(|(n, _)| *n)
            .unwrap_or(0)
    }

    /// The `ipcctl` exit code for this error (SPEC §9).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidName
            | ErrorCode::TooLarge
            | ErrorCode::TooBig
            | ErrorCode::InvalidArgument => 65,
            ErrorCode::NoSuchMailbox | ErrorCode::Removed => 66,
            ErrorCode::ShuttingDown | ErrorCode::VersionMismatch => 69,
            ErrorCode::WouldBlock | ErrorCode::TimedOut => 75,
            ErrorCode::PermissionDenied | ErrorCode::QuotaExceeded => 77,
            ErrorCode::Internal
            | ErrorCode::Exists
            | ErrorCode::Cancelled
            | ErrorCode::StorageFailed
            | ErrorCode::NotLeased
            | ErrorCode::Unknown(_) => 1,
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> Self {
        Self::TABLE
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, code)| *code)
            .unwrap_or(ErrorCode::Unknown(n))
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.as_u16()
    }
}

/// The body of an error reply: a code for programs and a one-line message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_numbers() {
        for (n, code) in ErrorCode::TABLE {
            assert_eq!(code.as_u16(), n);
            assert_eq!(ErrorCode::from(n), code);
        }
        assert_eq!(ErrorCode::from(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::Unknown(999).as_u16(), 999);
    }
}
