//! The status codes every function returns, their `ipc_strerror` texts, and the one
//! place where an [`client::Error`] (or a refused argument) becomes a code and the
//! one-line message behind `ipc_last_error`.
//!
//! The numbers are ABI: once released, a code keeps its number and meaning, and new codes
//! are only added below the last one.

use std::ffi::{CStr, c_char, c_int};

use client::{Error, ErrorCode};

/// Success.
pub const IPC_OK: c_int = 0;
/// `ipc_create` with `exist_ok` set found the mailbox already there (and left it as it
/// was). Positive: not a failure, and nothing is recorded for `ipc_last_error`.
pub const IPC_EXISTED: c_int = 1;
/// No daemon answers at the socket: none running, a wrong path, or no permission on the
/// socket. `ipc_last_error(NULL)` names the path.
pub const IPC_ERR_NOT_REACHABLE: c_int = -1;
/// The connection broke after it was made; every later call on the client fails so too.
/// Close the client and connect again.
pub const IPC_ERR_DISCONNECTED: c_int = -2;
/// The daemon is stopping.
pub const IPC_ERR_SHUTTING_DOWN: c_int = -3;
/// The daemon broke the protocol or speaks another version of it.
pub const IPC_ERR_PROTOCOL: c_int = -4;
/// The daemon (or the library, before sending) refused the request's data: an invalid
/// mailbox name or topic, a payload too large, an argument out of range.
pub const IPC_ERR_BAD_DATA: c_int = -5;
/// No mailbox of that name (SysV `ENOENT`).
pub const IPC_ERR_NO_SUCH_MAILBOX: c_int = -6;
/// The mailbox was removed while the call waited on it (SysV `EIDRM`).
pub const IPC_ERR_REMOVED: c_int = -7;
/// `ipc_create` without `exist_ok` of a mailbox that exists (SysV `EEXIST`).
pub const IPC_ERR_EXISTS: c_int = -8;
/// A call that was told not to wait (`timeout_ms` 0) would have had to (SysV `EAGAIN`
/// for a send, `ENOMSG` for a receive); `ipc_peek_at` found no message at that index.
pub const IPC_ERR_WOULD_BLOCK: c_int = -9;
/// The call's timeout passed.
pub const IPC_ERR_TIMED_OUT: c_int = -10;
/// The mailbox's mode bits or owner forbid the operation (SysV `EACCES`/`EPERM`).
pub const IPC_ERR_PERMISSION: c_int = -11;
/// A quota of the caller's uid is used up; the message of `ipc_last_error` names it.
pub const IPC_ERR_QUOTA: c_int = -12;
/// The daemon cancelled the request before it completed.
pub const IPC_ERR_CANCELLED: c_int = -13;
/// A signal arrived while a call made with `IPC_INTERRUPTIBLE` waited: the request was
/// withdrawn at the daemon and did nothing (SysV `EINTR`).
pub const IPC_ERR_INTERRUPTED: c_int = -14;
/// `ipc_ack`/`ipc_nack` of a message that is not leased: settled already, or its lease
/// ended.
pub const IPC_ERR_NOT_LEASED: c_int = -15;
/// A durable mailbox's storage failed (disk full, I/O error); nothing stored before was
/// harmed.
pub const IPC_ERR_STORAGE: c_int = -16;
/// `ipc_recv_into`: the message is larger than the buffer (SysV `E2BIG`). Without
/// `IPC_TRUNCATE` it stays in the mailbox, and `*len_out` is its length.
pub const IPC_ERR_TRUNCATED: c_int = -17;
/// A pointer argument that must not be NULL was NULL.
pub const IPC_ERR_NULL: c_int = -18;
/// Another argument is invalid: a string that is not UTF-8, an unknown flag, a negative
/// timeout other than -1, a `data` pointer that is NULL with a length.
pub const IPC_ERR_INVALID: c_int = -19;
/// Another thread is in a call on the same client. The message, in the calling thread's
/// `ipc_last_error(NULL)`, says so; the other thread's call goes on undisturbed.
pub const IPC_ERR_BUSY: c_int = -20;
/// A bug in the library, caught before it could cross into C. The client it happened on
/// refuses every later call with this code: close it.
pub const IPC_ERR_INTERNAL: c_int = -21;
/// Any other failure the daemon reported (an internal error of the daemon, or a code
/// this library does not know).
pub const IPC_ERR_OTHER: c_int = -22;

/// Every code with its text, for `ipc_strerror`.
const TEXTS: [(c_int, &CStr); 24] = [
    (IPC_OK, c"success"),
    (IPC_EXISTED, c"the mailbox existed already"),
    (IPC_ERR_NOT_REACHABLE, c"ipcd is not reachable"),
    (IPC_ERR_DISCONNECTED, c"the connection to ipcd was lost"),
    (IPC_ERR_SHUTTING_DOWN, c"ipcd is shutting down"),
    (IPC_ERR_PROTOCOL, c"protocol error"),
    (IPC_ERR_BAD_DATA, c"invalid data"),
    (IPC_ERR_NO_SUCH_MAILBOX, c"no such mailbox"),
    (IPC_ERR_REMOVED, c"the mailbox was removed"),
    (IPC_ERR_EXISTS, c"the mailbox exists"),
    (IPC_ERR_WOULD_BLOCK, c"the operation would block"),
    (IPC_ERR_TIMED_OUT, c"timed out"),
    (IPC_ERR_PERMISSION, c"permission denied"),
    (IPC_ERR_QUOTA, c"quota exceeded"),
    (IPC_ERR_CANCELLED, c"the request was cancelled"),
    (IPC_ERR_INTERRUPTED, c"interrupted by a signal"),
    (IPC_ERR_NOT_LEASED, c"the message is not leased"),
    (IPC_ERR_STORAGE, c"durable storage failed"),
    (IPC_ERR_TRUNCATED, c"the message is larger than the buffer"),
    (IPC_ERR_NULL, c"a required pointer argument is NULL"),
    (IPC_ERR_INVALID, c"invalid argument"),
    (IPC_ERR_BUSY, c"the client is in use by another thread"),
    (IPC_ERR_INTERNAL, c"internal error in libipc_client"),
    (IPC_ERR_OTHER, c"ipcd reported an error"),
];

/// A static, NUL-terminated description of a status code; never NULL (an unknown code
/// gets a text saying so). Do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ipc_strerror(code: c_int) -> *const c_char {
    // Nothing here can panic: a lookup in a constant table.
    TEXTS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(c"unknown libipc_client status code", |(_, text)| text)
        .as_ptr()
}

/// Why a call failed: its status code and the one-line message for `ipc_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: c_int,
    pub message: String,
}

impl Failure {
    pub fn new(code: c_int, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A required pointer argument, `what`, was NULL.
    pub fn null(what: &str) -> Self {
        Self::new(IPC_ERR_NULL, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(IPC_ERR_INVALID, message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::new(code_of(&error), error.to_string())
    }
}

/// The status code of a library error: one per variant family, and for the daemon's
/// codes that have no variant of their own, by that code.
fn code_of(error: &Error) -> c_int {
    match error {
        Error::NotReachable { .. } => IPC_ERR_NOT_REACHABLE,
        Error::Disconnected(_) => IPC_ERR_DISCONNECTED,
        Error::ShuttingDown(_) => IPC_ERR_SHUTTING_DOWN,
        Error::VersionMismatch(_) | Error::Protocol(_) => IPC_ERR_PROTOCOL,
        Error::InvalidName(_)
        | Error::InvalidTopic(_)
        | Error::BadData(_)
        | Error::TypeMismatch { .. }
        | Error::Payload(_) => IPC_ERR_BAD_DATA,
        Error::NoSuchMailbox(_) => IPC_ERR_NO_SUCH_MAILBOX,
        Error::Removed(_) => IPC_ERR_REMOVED,
        Error::Exists(_) => IPC_ERR_EXISTS,
        Error::WouldBlock(_) => IPC_ERR_WOULD_BLOCK,
        Error::TimedOut(_) => IPC_ERR_TIMED_OUT,
        Error::PermissionDenied(_) => IPC_ERR_PERMISSION,
        Error::QuotaExceeded(_) => IPC_ERR_QUOTA,
        Error::Cancelled(_) => IPC_ERR_CANCELLED,
        Error::Interrupted => IPC_ERR_INTERRUPTED,
        Error::Server { code, .. } => code_of_server(*code),
        // `Error` is non-exhaustive: a variant added later is reported, not lost.
        _ => IPC_ERR_OTHER,
    }
}

/// The status code of a daemon's error code. The library maps most codes to variants of
/// their own; the rest arrive as `Error::Server`, but every code is mapped here so that
/// the C code never depends on which ones the library gave a variant.
fn code_of_server(code: ErrorCode) -> c_int {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::InvalidName
        | ErrorCode::TooLarge
        | ErrorCode::InvalidArgument => IPC_ERR_BAD_DATA,
        ErrorCode::NoSuchMailbox => IPC_ERR_NO_SUCH_MAILBOX,
        ErrorCode::Removed => IPC_ERR_REMOVED,
        ErrorCode::Exists => IPC_ERR_EXISTS,
        ErrorCode::WouldBlock => IPC_ERR_WOULD_BLOCK,
        ErrorCode::TimedOut => IPC_ERR_TIMED_OUT,
        ErrorCode::PermissionDenied => IPC_ERR_PERMISSION,
        ErrorCode::QuotaExceeded => IPC_ERR_QUOTA,
        ErrorCode::ShuttingDown => IPC_ERR_SHUTTING_DOWN,
        ErrorCode::VersionMismatch => IPC_ERR_PROTOCOL,
        ErrorCode::Cancelled => IPC_ERR_CANCELLED,
        ErrorCode::StorageFailed => IPC_ERR_STORAGE,
        ErrorCode::NotLeased => IPC_ERR_NOT_LEASED,
        // A receive's `max_size` (ipc_recv_into's buffer) is smaller than the message.
        ErrorCode::TooBig => IPC_ERR_TRUNCATED,
        _ => IPC_ERR_OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_text() {
        for (i, (code, text)) in TEXTS.iter().enumerate() {
            assert_eq!(ipc_strerror(*code), text.as_ptr());
            assert!(TEXTS[..i].iter().all(|(c, t)| c != code && t != text));
        }
        // The codes are dense from IPC_ERR_OTHER to IPC_EXISTED, so a C loop over that
        // range meets every one.
        let mut codes: Vec<c_int> = TEXTS.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        assert_eq!(codes, (IPC_ERR_OTHER..=IPC_EXISTED).collect::<Vec<_>>());
        // SAFETY: ipc_strerror returns a static NUL-terminated string.
        let unknown = unsafe { CStr::from_ptr(ipc_strerror(-1000)) };
        assert_eq!(unknown, c"unknown libipc_client status code");
    }

    #[test]
    fn daemon_codes_map_by_meaning() {
        let server = |code| Error::Server {
            code,
            message: String::new(),
        };
        assert_eq!(code_of(&server(ErrorCode::NotLeased)), IPC_ERR_NOT_LEASED);
        assert_eq!(code_of(&server(ErrorCode::StorageFailed)), IPC_ERR_STORAGE);
        assert_eq!(code_of(&server(ErrorCode::Internal)), IPC_ERR_OTHER);
        assert_eq!(code_of(&server(ErrorCode::Unknown(999))), IPC_ERR_OTHER);
        assert_eq!(code_of(&server(ErrorCode::TooLarge)), IPC_ERR_BAD_DATA);
        assert_eq!(code_of(&Error::Interrupted), IPC_ERR_INTERRUPTED);
        let reply = client::Error::from(ipc_proto::ErrorReply {
            code: ErrorCode::NotLeased,
            message: "not leased".into(),
        });
        assert_eq!(Failure::from(reply).code, IPC_ERR_NOT_LEASED);
    }
}
