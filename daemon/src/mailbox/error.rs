//! What a mailbox answers when it cannot do what was asked: one error type per kind of
//! operation, with the facts a caller needs. They say nothing of the wire: `dispatch`
//! gives each its error code, and their `Display` is the one-line message a user reads.

use ipc_proto::{MailboxName, Selector};
use thiserror::Error;

use crate::store::StoreError;

/// Why a mailbox takes no more requests, and ends every wait on it.
#[derive(Debug, Clone, Error)]
pub enum Closed {
    #[error("mailbox {0} was removed")]
    Removed(MailboxName),
    #[error("ipcd is shutting down")]
    ShuttingDown,
}

/// A wait cancelled by its client: the id of the request it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("request {request} was cancelled")]
pub struct Cancelled {
    pub request: u64,
}

/// How a wait ended without its mailbox completing it or its time running out.
#[derive(Debug, Clone, Error)]
pub enum Interrupted {
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// The mailbox dropped the waiter's channel without an answer (a bug if it happens).
    #[error("waiter abandoned")]
    Abandoned,
}

/// The bound a message is too large for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeBound {
    /// The payload alone, against `max_msg_size`.
    MaxMsgSize,
    /// Payload and headers, against the mailbox's `max_bytes`.
    MaxBytes,
}

/// A mailbox with no room for a message: how full it is.
#[derive(Debug, Clone, Error)]
#[error(
    "mailbox {mailbox} is full ({messages} of {max_msgs} messages, {bytes} of {max_bytes} bytes)"
)]
pub struct Full {
    pub mailbox: MailboxName,
    pub messages: u64,
    pub max_msgs: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// A mailbox with nothing a selector matches.
#[derive(Debug, Clone, Error)]
#[error("{}", describe_empty(.mailbox, *.selector))]
pub struct Empty {
    pub mailbox: MailboxName,
    pub selector: Selector,
}

fn describe_empty(mailbox: &MailboxName, selector: Selector) -> String {
    match selector {
        Selector::Any => format!("mailbox {mailbox} is empty"),
        Selector::Type(t) => format!("no message of type {t} in mailbox {mailbox}"),
        Selector::Except(t) => {
            format!("no message of a type other than {t} in mailbox {mailbox}")
        }
        Selector::AtMost(t) => format!("no message of a type up to {t} in mailbox {mailbox}"),
    }
}

/// Why a send failed.
#[derive(Debug, Clone, Error)]
pub enum SendError {
    #[error(transparent)]
    Closed(#[from] Closed),
    #[error("{}", describe_too_large(*.bound, *.size, *.max, .mailbox))]
    TooLarge {
        size: u64,
        max: u64,
        bound: SizeBound,
        mailbox: MailboxName,
    },
    /// No room, and the sender would not wait.
    #[error(transparent)]
    Full(Full),
    /// No room for as long as the sender would wait; how full it was when it began.
    #[error("timed out after {after_ms} ms: {full}")]
    TimedOut { after_ms: u128, full: Full },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// A durable mailbox's store could not keep the message.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

fn describe_too_large(bound: SizeBound, size: u64, max: u64, mailbox: &MailboxName) -> String {
    match bound {
        SizeBound::MaxMsgSize => format!(
            "payload of {size} bytes exceeds max_msg_size of {max} bytes of mailbox {mailbox}"
        ),
        SizeBound::MaxBytes => format!(
            "message of {size} bytes (payload and headers) exceeds max_bytes of {max} bytes \
             of mailbox {mailbox}"
        ),
    }
}

/// Why a receive (or peek) failed.
#[derive(Debug, Clone, Error)]
pub enum RecvError {
    #[error(transparent)]
    Closed(#[from] Closed),
    /// Nothing matches, and the receiver would not wait.
    #[error(transparent)]
    Empty(Empty),
    /// Nothing matched for as long as the receiver would wait.
    #[error("timed out after {after_ms} ms: {empty}")]
    TimedOut { after_ms: u128, empty: Empty },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The selected message is larger than the receive takes; it stays in the mailbox.
    #[error(
        "message {id} has {size} bytes, more than the {max} this receive takes; it stays \
         in the mailbox"
    )]
    TooBig { id: u64, size: u64, max: u64 },
    /// A copy by position asked for one past the queue's end.
    #[error("mailbox {mailbox} holds {messages} messages: none at position {index}")]
    NoSuchPosition {
        mailbox: MailboxName,
        index: u64,
        messages: u64,
    },
}

/// Why an ack or nack failed.
#[derive(Debug, Clone, Error)]
pub enum LeaseError {
    #[error(
        "message {id} of mailbox {mailbox} is not leased: it was settled already, or its \
         lease ended and it is back in the mailbox"
    )]
    NotLeased { mailbox: MailboxName, id: u64 },
    #[error(
        "permission denied: message {id} of mailbox {mailbox} is leased to uid {holder}, not {uid}"
    )]
    NotYours {
        mailbox: MailboxName,
        id: u64,
        holder: u32,
        uid: u32,
    },
}
