//! `ipc-client`: the library programs link to talk to ipcd.
//!
//! - [`BlockingClient`] speaks over a plain `std` Unix socket with no async runtime
//!   inside, so it is safe to use after `fork` and from C or a SysV-compatibility shim.
//! - [`Client`] (feature `tokio`, on by default) is the async client: cheap to clone,
//!   many requests in flight at once from many tasks.
//! - [`Mailbox`] and [`BlockingMailbox`] are typed handles: `send(&T)` / `recv() -> T`
//!   through serde, tagged with `T`'s name so that a message of another type is a
//!   [`Error::TypeMismatch`], never garbage. A [`MessageType`] names itself
//!   ([`message_type!`]`(Job, "myapp.Job")`), the same in every program that exchanges
//!   it, and is sent as postcard or, for other programs to read, as JSON ([`Codec`]);
//!   a client's `typed::<T>(mailbox)` gives its handle. `mailbox::<T>(mailbox)` takes any
//!   serde type under the compiler's name for it ([`type_tag`]), which is good only
//!   within one program built once.
//!
//! Both clients offer every protocol operation with the raw bytes API; all errors are one
//! [`Error`] enum whose variants follow the `ipcctl` exit-code table.
//!
//! Either client survives a daemon restart when given a [`ReconnectPolicy`]: it
//! reconnects with backoff and makes again the requests that are safe to make again — a
//! pending receive resumes waiting on the new daemon, a send is never sent twice. It is
//! opt-in; [`reconnect`] says what is retried and why it is not the default.

mod blocking;
#[cfg(feature = "tokio")]
mod client;
mod error;
mod options;
pub mod reconnect;
mod session;
mod socket;
mod subscription;
mod typed;

pub use blocking::{
    BlockingClient, BlockingDelivery, BlockingMailbox, BlockingSubscription,
    DEFAULT_PIPELINE_WINDOW,
};
#[cfg(feature = "tokio")]
pub use client::{Client, Delivery, Mailbox, Subscription};
pub use error::{Error, Result};
pub use options::{CreateOptions, RecvOptions, SendOptions};
pub use reconnect::ReconnectPolicy;
pub use socket::default_socket_path;
pub use subscription::Subscribed;
pub use typed::{Codec, Leased, MessageType, TypedMailbox, reply, type_tag};

pub use bytes::Bytes;
/// The protocol types, re-exported so users need no direct dependency on `ipc-proto`.
pub use ipc_proto::{
    Credentials, DaemonStatus, DeliveryChanges, ErrorCode, Fsync, HeaderBox, Headers, Lease,
    LimitChanges, MailboxChanges, MailboxInfo, MailboxName, Message, PublishReport, Selector,
    Timestamp, Topic, TopicPattern, UidUsage, Wait, Welcome,
};
