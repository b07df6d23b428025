//! `ipc-proto` owns everything that crosses the socket between ipcd and its clients:
//! the frame header ([`frame`]), the serialization format ([`codec`], the only module that
//! names it), validated mailbox names ([`name`]), topics and topic patterns ([`topic`])
//! and the request/response vocabulary ([`message`], [`error`]). It does no I/O and knows
//! nothing of tokio, so the daemon, the async and blocking clients and the fuzzers all
//! share one definition of the bytes.
//!
//! The protocol is described for implementers in `docs/protocol.md`.

pub mod codec;
pub mod error;
pub mod frame;
pub mod memfd;
pub mod message;
pub mod name;
pub mod paths;
pub mod topic;
pub mod units;

pub use error::{ErrorCode, ErrorReply};
pub use frame::{FLAG_FD, FLAG_TAKES_FD, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN};
pub use message::*;
pub use name::{MailboxName, NameError};
pub use topic::{MAX_TOPIC_LEN, Topic, TopicError, TopicPattern};

/// The protocol version this crate speaks. A peer with another major version is refused
/// during the handshake with [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest frame body either side accepts before the handshake has told it otherwise.
/// It must hold a maximal `max_msg_size` payload plus its headers.
pub const DEFAULT_MAX_FRAME: u32 = 65 * 1024 * 1024;
