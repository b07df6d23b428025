//! The request/response vocabulary. These are the only serializable types of the
//! protocol; the daemon converts them to and from its own internal types at the edge.
//!
//! Compatibility rule: enum variants and struct fields are only ever appended, because
//! the format encodes variants by position and fields in order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ErrorReply, MailboxName, Topic, TopicPattern};

/// First frame of a connection, client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// A free-form name for logs, e.g. `ipcctl` or the program's name; at most
    /// [`MAX_CLIENT_NAME`] bytes.
    pub client_name: String,
}

/// Longest `client_name` a hello may carry, in bytes.
pub const MAX_CLIENT_NAME: usize = 64;

/// The server's answer to [`Hello`]: what it is and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u16,
    /// The daemon's package version, for people.
    pub server: String,
    /// Largest frame body the server accepts; larger frames close the connection.
    pub max_frame: u32,
    /// Largest `max_msg_size` a mailbox may be given.
    pub max_msg_size: u64,
    /// Requests a connection may have in flight at once.
    pub max_in_flight: u32,
    /// Optional features, by name, that this server supports.
    pub features: Vec<String>,
    /// The identity the server saw for this connection (from `SO_PEERCRED`).
    pub peer: Credentials,
}

/// A process identity as the kernel reported it to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credentials {
    /// 0 when the kernel did not report one.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A point in wall-clock time, in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let nanos = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Timestamp(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// How long an operation may wait for a message or for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Wait {
    /// Wait until the operation can complete (SysV default).
    #[default]
    Forever,
    /// Fail at once with `WouldBlock` (SysV `IPC_NOWAIT`).
    NoWait,
    /// Wait at most this many milliseconds, then fail with `TimedOut`.
    TimeoutMs(u64),
}

impl Wait {
    pub fn timeout(d: Duration) -> Self {
        Wait::TimeoutMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Which message a receive takes: the rules of `msgrcv(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Selector {
    /// `msgtyp == 0`: the oldest message.
    #[default]
    Any,
    /// `msgtyp > 0`: the oldest message of exactly this type.
    Type(i64),
    /// `msgtyp > 0` with `MSG_EXCEPT`: the oldest message of any other type.
    Except(i64),
    /// `msgtyp < 0`, given here as `|msgtyp|`: the oldest message of the lowest type that
    /// is at most this value (a priority queue).
    AtMost(i64),
}

impl Selector {
    /// Builds a selector from `msgrcv` arguments: a signed type and the `MSG_EXCEPT` flag.
    /// `except` only has a meaning for a positive type; with any other the daemon refuses
    /// the receive.
    pub fn from_msgrcv(msgtyp: i64, except: bool) -> Self {
        match msgtyp {
            // Kept as asked, for the daemon to refuse: `MSG_EXCEPT` of a type that is not
            // positive would otherwise be read as another selector.
            t if except => Selector::Except(t),
            0 => Selector::Any,
            t if t > 0 => Selector::Type(t),
            t => Selector::AtMost(t.checked_neg().unwrap_or(i64::MAX)),
        }
    }

    /// Whether a message of type `mtype` can be selected at all.
    pub fn matches(self, mtype: i64) -> bool {
        match self {
            Selector::Any => true,
            Selector::Type(t) => mtype == t,
            Selector::Except(t) => mtype != t,
            Selector::AtMost(t) => mtype <= t,
        }
    }
}

/// Longest `content_type` header, in bytes of UTF-8; the daemon refuses a longer one.
pub const MAX_CONTENT_TYPE: usize = 255;

/// Optional message headers (SPEC §3). They count with the payload against a mailbox's
/// `max_bytes` and the sender's quota.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Headers {
    /// Where the receiver should send its answer.
    pub reply_to: Option<MailboxName>,
    /// Ties a reply to its request.
    pub correlation_id: Option<u64>,
    /// What the payload is; the typed client puts the Rust type's tag here. At most
    /// [`MAX_CONTENT_TYPE`] bytes.
    pub content_type: Option<String>,
    /// The topic a message was published on; set by the daemon on each copy of a
    /// [`Request::Publish`], refused on anything else.
    pub topic: Option<Topic>,
}

impl Headers {
    /// No headers at all, as most messages have.
    pub const NONE: Self = Self {
        reply_to: None,
        correlation_id: None,
        content_type: None,
        topic: None,
    };
}

/// A message's [`Headers`] where requests and messages carry them: behind one pointer,
/// and no allocation at all for a message without any (most messages). Every request
/// and reply is moved from decoder to dispatch to the reply queue; inline, the headers
/// were 88 of a send's 200 bytes, and each move of it a call to `memcpy`.
///
/// It reads as the [`Headers`] it holds (`message.headers.reply_to`); writing a field
/// makes room for them. Its encoding is that of [`Headers`].
#[derive(Clone, Default)]
pub struct HeaderBox(Option<Box<Headers>>);

impl HeaderBox {
    /// The headers, out of their box.
    pub fn into_inner(self) -> Headers {
        self.0.map_or(Headers::NONE, |h| *h)
    }

    /// The headers, leaving none behind.
    pub fn take(&mut self) -> Headers {
        std::mem::take(self).into_inner()
    }
}

impl From<Headers> for HeaderBox {
    fn from(headers: Headers) -> Self {
        Self((headers != Headers::NONE).then(|| Box::new(headers)))
    }
}

impl std::ops::Deref for HeaderBox {
    type Target = Headers;

    fn deref(&self) -> &Headers {
        self.0.as_deref().unwrap_or(&Headers::NONE)
    }
}

impl std::ops::DerefMut for HeaderBox {
    fn deref_mut(&mut self) -> &mut Headers {
        self.0.get_or_insert_with(Box::default)
    }
}

// Equal when the headers are: a box emptied by writes equals none.
impl PartialEq for HeaderBox {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for HeaderBox {}

impl std::fmt::Debug for HeaderBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for HeaderBox {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HeaderBox {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Headers::deserialize(deserializer).map(Self::from)
    }
}

/// Per-mailbox limits; in a request, `None` means "leave as is" or "use the default".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LimitChanges {
    pub max_msgs: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_msg_size: Option<u64>,
}

/// Create a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub mailbox: MailboxName,
    /// Permission bits (`0o600` when absent).
    pub mode: Option<u32>,
    pub durable: bool,
    /// For a durable mailbox: when its messages reach the disk (`Always` when absent).
    pub fsync: Option<Fsync>,
    pub limits: LimitChanges,
    pub delivery: DeliveryChanges,
    /// Succeed without change if the mailbox already exists.
    pub exist_ok: bool,
}

/// When a durable mailbox's accepted messages reach the disk (SPEC §6). A send is
/// answered once its message is stored per this policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fsync {
    /// Synced before the send is answered; concurrent sends share one sync.
    Always,
    /// Written before the send is answered and synced within this many milliseconds: a
    /// crash of the daemon loses nothing, a crash of the machine the last interval.
    IntervalMs(u32),
    /// Written before the send is answered; synced when the system gets to it.
    Never,
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::IntervalMs(ms) => write!(f, "interval={ms}"),
            Fsync::Never => f.write_str("never"),
        }
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;

    /// `always`, `never`, or `interval=MS`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            _ => s
                .strip_prefix("interval=")
                .and_then(|ms| ms.trim_end_matches("ms").parse::<u32>().ok())
                .filter(|&ms| ms > 0)
                .map(Fsync::IntervalMs)
                .ok_or_else(|| {
                    format!("fsync policy {s:?} is not always, never or interval=MS (MS ≥ 1)")
                }),
        }
    }
}

/// Put one message into a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub mailbox: MailboxName,
    /// SysV `mtype`, at least 1.
    pub mtype: i64,
    pub headers: HeaderBox,
    pub wait: Wait,
    /// Undelivered after this long, the message expires: it is dead-lettered, or dropped
    /// and counted. `None`: the mailbox's default TTL.
    pub ttl_ms: Option<u64>,
    /// Invisible to receivers for this long (delayed delivery).
    pub delay_ms: Option<u64>,
    #[serde(deserialize_with = "crate::codec::payload")]
    pub payload: Bytes,
}

/// Most messages one batched request may carry ([`SendBatchRequest`]) or ask for
/// ([`RecvBatchRequest`]). A batch is a way to pay the fixed costs of a request — a
/// frame, a wake-up, a system call — once for many messages, and a thousand is where
/// those costs have long stopped mattering; the daemon refuses a larger one.
pub const MAX_BATCH: u32 = 1024;

/// The name in [`Welcome::features`] of a daemon that takes [`Request::SendBatch`] and
/// [`Request::RecvBatch`].
pub const FEATURE_BATCH: &str = "batch";

/// The name in [`Welcome::features`] of a daemon that takes a `Send`'s payload as a
/// sealed memfd passed with the frame ([`crate::FLAG_FD`]), and hands such a payload to
/// a receiver that asks for it ([`crate::FLAG_TAKES_FD`]) the same way.
pub const FEATURE_MEMFD: &str = "memfd";

/// One message of a [`SendBatchRequest`]: a [`SendRequest`] without the mailbox and the
/// wait, which the batch gives once for all its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    pub mtype: i64,
    pub headers: HeaderBox,
    pub ttl_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    #[serde(deserialize_with = "crate::codec::payload")]
    pub payload: Bytes,
}

/// Put many messages into one mailbox, in order, each checked and charged as a send of
/// its own. The batch stops at the first message refused at once (too large, over
/// quota, mailbox full with [`Wait::NoWait`]); a message that must wait for room waits
/// as a send would, and every later one queues behind it, so order is kept. Answered
/// with [`Response::SentBatch`] once every message tried has its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBatchRequest {
    pub mailbox: MailboxName,
    pub wait: Wait,
    /// At most [`MAX_BATCH`].
    pub messages: Vec<BatchMessage>,
}

/// Take up to `max` messages: those `selector` selects that are there, oldest first,
/// within the daemon's `max_batch_bytes` beyond the first. With none there it waits, as
/// [`RecvRequest`] does, for the first, and answers with that one alone (so that the
/// receives of one connection keep their order). Answered with [`Response::Messages`],
/// never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvBatchRequest {
    pub mailbox: MailboxName,
    pub selector: Selector,
    /// 1 to [`MAX_BATCH`].
    pub max: u32,
    pub wait: Wait,
    /// Lease every message taken, on these terms, instead of taking it.
    pub lease: Option<Lease>,
}

/// Publish one message on a topic: a copy goes into every mailbox bound to a pattern
/// that matches it, each checked, charged and limited as a send of its own (never
/// waiting: a full mailbox refuses its copy). Answered with [`Response::Published`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub topic: Topic,
    /// SysV `mtype` of every copy, at least 1.
    pub mtype: i64,
    /// `reply_to`, `correlation_id` and `content_type` go with every copy; `topic` must be
    /// unset (the daemon sets it).
    pub headers: HeaderBox,
    pub ttl_ms: Option<u64>,
    #[serde(deserialize_with = "crate::codec::payload")]
    pub payload: Bytes,
}

/// What became of a publish: how many bound mailboxes took their copy, and how many
/// refused it and why. A publish never fails as a whole for one mailbox's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub delivered: u32,
    /// Refused for want of room (the mailbox is at `max_msgs` or `max_bytes`).
    pub full: u32,
    /// Refused because the publisher may not send to the mailbox (no `w`).
    pub denied: u32,
    /// Refused for any other reason: too large for it, over the publisher's quota, the
    /// mailbox being removed, storage failing.
    pub failed: u32,
}

/// Send a request and wait for its reply (SPEC §4): the daemon sends the message with
/// `reply_to` set to this connection's reply mailbox and a fresh `correlation_id`, and
/// answers with the first message sent there with that id ([`Response::Message`]), or
/// `TimedOut`. The request expires from its mailbox undelivered once the timeout has
/// passed, so no responder takes up a call nobody waits for any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    pub mailbox: MailboxName,
    pub mtype: i64,
    /// Only `content_type` may be set; the daemon sets `reply_to` and `correlation_id`.
    pub headers: HeaderBox,
    /// How long to wait for the reply, at least 1 ms.
    pub timeout_ms: u64,
    #[serde(deserialize_with = "crate::codec::payload")]
    pub payload: Bytes,
}

/// The prefix of the names the daemon gives its private mailboxes (a subscription's, a
/// connection's reply mailbox). No client may create a mailbox under it.
pub const PRIVATE_PREFIX: &str = "_ipcd/";

/// The prefix of a connection's reply mailbox, where the replies to its calls go
/// ([`Request::Call`]).
pub const REPLY_PREFIX: &str = "_ipcd/reply/";

/// Take (or look at) one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvRequest {
    pub mailbox: MailboxName,
    pub selector: Selector,
    pub wait: Wait,
    /// Return a copy and leave the message in place.
    pub peek: bool,
    /// Acknowledged receive: lease the message instead of taking it (SPEC §3).
    pub lease: Option<Lease>,
    /// The largest payload this receive takes: a larger selected message is not taken
    /// (it stays in place) and the receive fails with `TooBig`, as `msgrcv(2)` fails
    /// with `E2BIG`. `None`: any size.
    pub max_size: Option<u64>,
}

/// How long, and how, a receiver holds a message it must `Ack` or `Nack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unacknowledged after this long, the message is redelivered.
    pub timeout_ms: u64,
    /// Outlive the connection: end only by `Ack`/`Nack` (from any connection of the
    /// same uid, or root) or the timeout. Otherwise closing the connection ends it.
    pub detached: bool,
}

/// What happens to a message that is not acknowledged (SPEC §3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryChanges {
    /// After this many deliveries without an ack, the message is dead-lettered; 0 is no
    /// limit.
    pub max_deliveries: Option<u32>,
    /// Where such messages go; without one they are dropped and counted. `Some("")` is
    /// not a name, so clearing is `clear_dead_letter`.
    pub dead_letter: Option<MailboxName>,
    pub clear_dead_letter: bool,
    /// The TTL of messages sent without one; 0 is none.
    pub default_ttl_ms: Option<u64>,
}

/// Change a mailbox's settings; absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MailboxChanges {
    pub mode: Option<u32>,
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    pub limits: LimitChanges,
    pub delivery: DeliveryChanges,
}

/// Everything a client can ask. One variant per operation; the daemon has one `match`
/// over it.
///
/// A request is moved from the decoder through dispatch, so it is as small as a send: the
/// larger and rarer requests are boxed (their encoding is the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Create(Box<CreateRequest>),
    Send(SendRequest),
    Recv(RecvRequest),
    Stat {
        mailbox: MailboxName,
    },
    /// The mailboxes the caller may read, or owns.
    List,
    Set {
        mailbox: MailboxName,
        changes: Box<MailboxChanges>,
    },
    /// Drop every queued message.
    Purge {
        mailbox: MailboxName,
    },
    /// Remove the mailbox, waking its waiters with `Removed`.
    Remove {
        mailbox: MailboxName,
    },
    Status,
    /// Abandon the pending request with this id (a blocked `Recv` or `Send`); it is
    /// answered with `Cancelled` unless it completed first. The cancel itself gets `Ok`.
    Cancel {
        request_id: u64,
    },
    /// Settle a leased message for good: it leaves the mailbox.
    Ack {
        mailbox: MailboxName,
        id: u64,
    },
    /// Give a leased message back: it returns to its place, to be redelivered.
    Nack {
        mailbox: MailboxName,
        id: u64,
    },
    /// Many sends to one mailbox in one request.
    SendBatch(SendBatchRequest),
    /// Many receives from one mailbox in one request.
    RecvBatch(RecvBatchRequest),
    /// Bind a mailbox to a topic pattern: what is published on a matching topic gets a
    /// copy in it. Needs the owner's rights on the mailbox.
    Bind {
        mailbox: MailboxName,
        pattern: TopicPattern,
    },
    /// Undo a [`Request::Bind`].
    Unbind {
        mailbox: MailboxName,
        pattern: TopicPattern,
    },
    Publish(PublishRequest),
    /// Subscribe this connection to a pattern: the daemon makes a private memory mailbox
    /// bound to it, answers with its name ([`Response::Subscribed`]) for the client to
    /// receive from, and removes it when the connection closes. When it is full, the
    /// oldest message is dropped to make room (and counted in `dropped`): a slow
    /// subscriber loses the oldest, never blocks a publisher.
    Subscribe {
        pattern: TopicPattern,
    },
    Call(CallRequest),
    /// A copy of the message at position `index` of the mailbox's queue, oldest first,
    /// left in place (SysV's `msgrcv` with `MSG_COPY`); answered with
    /// [`Response::Message`], or `WouldBlock` when there is no message there. Needs `r`.
    PeekAt {
        mailbox: MailboxName,
        index: u64,
    },
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sequence number within the mailbox, increasing with every accepted send.
    pub id: u64,
    pub mtype: i64,
    /// Who sent it, as the kernel reported the sender's connection.
    pub sender: Credentials,
    /// When the daemon accepted it.
    pub sent_at: Timestamp,
    pub headers: HeaderBox,
    pub redelivered: bool,
    /// How many times it has been handed out, this time included.
    pub deliveries: u32,
    pub payload: Bytes,
}

/// A delivered message borrowed from where its writer keeps it: encoded, the same bytes
/// as the [`Message`] it would make, without making one (the daemon writes its replies
/// straight from the messages it queued).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageRef<'a> {
    pub id: u64,
    pub mtype: i64,
    pub sender: Credentials,
    pub sent_at: Timestamp,
    pub headers: &'a Headers,
    pub redelivered: bool,
    pub deliveries: u32,
    #[serde(serialize_with = "crate::codec::byte_string")]
    pub payload: &'a [u8],
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            id: m.id,
            mtype: m.mtype,
            sender: m.sender,
            sent_at: m.sent_at,
            headers: &m.headers,
            redelivered: m.redelivered,
            deliveries: m.deliveries,
            payload: &m.payload,
        }
    }
}

/// A [`Response::Message`] or [`Response::Messages`] of borrowed messages: encoded, the
/// same bytes as that response.
#[derive(Debug, Clone)]
pub enum Delivered<'a> {
    One(MessageRef<'a>),
    Many(Vec<MessageRef<'a>>),
}

/// The places of [`Response::Message`] and [`Response::Messages`] among the response's
/// variants, as the format numbers them (a test checks them against the enum).
const RESPONSE_MESSAGE: u32 = 3;
const RESPONSE_MESSAGES: u32 = 10;

impl Serialize for Delivered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Delivered::One(m) => {
                s.serialize_newtype_variant("Response", RESPONSE_MESSAGE, "Message", m)
            }
            Delivered::Many(ms) => {
                s.serialize_newtype_variant("Response", RESPONSE_MESSAGES, "Messages", ms)
            }
        }
    }
}

/// An operation time and the pid that did it (SysV `msg_stime`/`msg_lspid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOp {
    pub at: Timestamp,
    pub pid: u32,
}

/// A mailbox's settings and counters, like `msqid_ds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxInfo {
    pub name: MailboxName,
    pub messages: u64,
    pub bytes: u64,
    pub max_msgs: u64,
    pub max_bytes: u64,
    pub max_msg_size: u64,
    pub mode: u32,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub creator_uid: u32,
    pub creator_gid: u32,
    pub durable: bool,
    /// The fsync policy of a durable mailbox; `None` for a memory one.
    pub fsync: Option<Fsync>,
    pub created_at: Timestamp,
    pub changed_at: Timestamp,
    pub last_send: Option<LastOp>,
    pub last_recv: Option<LastOp>,
    pub total_sent: u64,
    pub total_received: u64,
    pub waiting_receivers: u64,
    pub waiting_senders: u64,
    /// Messages leased to receivers and not yet acknowledged.
    pub unacked: u64,
    /// Deliveries after which an unacknowledged message is dead-lettered; 0 is no limit.
    pub max_deliveries: u32,
    pub dead_letter: Option<MailboxName>,
    /// Messages moved to the dead-letter mailbox, and dropped for want of one.
    pub dead_lettered: u64,
    pub dropped: u64,
    /// The TTL of messages sent without one; 0 is none.
    pub default_ttl_ms: u64,
    /// Messages that expired undelivered (whether dead-lettered or dropped).
    pub expired: u64,
    /// Messages sent with a delay that are not visible yet (not in `messages`).
    pub delayed: u64,
    /// Deadlines the mailbox keeps: lease ends, delayed messages to show, TTLs. Each
    /// lives only as long as what it times.
    pub timers: u64,
    /// The topic patterns the mailbox is bound to.
    pub bindings: Vec<TopicPattern>,
    /// A number no other mailbox has while the daemon runs (a durable mailbox gets a new
    /// one when the daemon restarts): what a SysV-compatible client uses as its id.
    pub serial: u64,
}

/// What one uid is using, beside its quotas (SPEC §7). A quota of `None` is unlimited
/// (root, unless configured otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidUsage {
    pub uid: u32,
    pub connections: u64,
    pub mailboxes: u64,
    /// Bytes the daemon holds for this uid: its messages queued or waiting to be
    /// (payload, headers and the per-message overhead each), and encoded replies waiting
    /// to be read by its connections.
    pub queued_bytes: u64,
    pub max_connections: Option<u64>,
    pub max_mailboxes: Option<u64>,
    pub max_queued_bytes: Option<u64>,
    /// Requests one connection of this uid may have waiting at once.
    pub max_in_flight: Option<u64>,
}

/// The daemon as a whole; `users` lists what the caller may see (root: everyone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub connections: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    pub users: Vec<UidUsage>,
}

/// Everything the server can answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Created {
        created: bool,
    },
    Sent {
        id: u64,
    },
    Message(Message),
    // Boxed, as the other large and rare answers: a reply is moved several times on its
    // way out, and the enum is as large as its largest variant.
    Mailbox(Box<MailboxInfo>),
    Mailboxes(Vec<MailboxInfo>),
    Status(Box<DaemonStatus>),
    Purged {
        messages: u64,
    },
    Error(ErrorReply),
    /// The outcome of each message of a [`SendBatchRequest`] tried, in order: its id, or
    /// why it was not sent. Fewer outcomes than messages: the batch stopped at the last
    /// one, a refusal, and the rest were not tried.
    SentBatch(Vec<Result<u64, ErrorReply>>),
    /// The messages a [`RecvBatchRequest`] took, oldest first.
    Messages(Vec<Message>),
    Published(PublishReport),
    /// The private mailbox of a [`Request::Subscribe`].
    Subscribed {
        mailbox: MailboxName,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_value, encode_value};

    /// A `HeaderBox` reads, compares and encodes as the headers it holds, whether it holds
    /// them boxed or holds none.
    #[test]
    fn header_box_is_its_headers() {
        let none = HeaderBox::default();
        assert_eq!(*none, Headers::NONE);
        let mut written = HeaderBox::from(Headers::NONE);
        written.correlation_id = Some(7);
        assert_eq!(written.correlation_id, Some(7));
        assert_ne!(written, none);
        written.correlation_id = None;
        assert_eq!(written, none, "a box emptied by writes is no headers");

        let full = Headers {
            correlation_id: Some(9),
            content_type: Some("text/plain".into()),
            ..Headers::NONE
        };
        let boxed = HeaderBox::from(full.clone());
        let bytes = encode_value(&full).unwrap();
        assert_eq!(encode_value(&boxed).unwrap(), bytes);
        assert_eq!(decode_value::<HeaderBox>(&bytes).unwrap(), boxed);
        assert_eq!(
            encode_value(&none).unwrap(),
            encode_value(&Headers::NONE).unwrap()
        );
        let mut taken = boxed.clone();
        assert_eq!(taken.take(), full);
        assert_eq!(taken, none);
        assert_eq!(boxed.into_inner(), full);
    }

    /// Every request and reply is moved by value several times on its way; past 128
    /// bytes a move is a call to `memcpy` (measured: 32 calls and 9% of all instructions
    /// per streamed message when a send was 200 bytes).
    #[test]
    fn requests_and_replies_stay_small() {
        assert!(std::mem::size_of::<Request>() <= 128);
        assert!(std::mem::size_of::<Response>() <= 96);
        assert_eq!(std::mem::size_of::<HeaderBox>(), 8);
    }

    #[test]
    fn selector_follows_msgrcv() {
        assert_eq!(Selector::from_msgrcv(0, false), Selector::Any);
        // Kept for the daemon to refuse, not read as another selector.
        assert_eq!(Selector::from_msgrcv(0, true), Selector::Except(0));
        assert_eq!(Selector::from_msgrcv(-2, true), Selector::Except(-2));
        assert_eq!(Selector::from_msgrcv(5, false), Selector::Type(5));
        assert_eq!(Selector::from_msgrcv(5, true), Selector::Except(5));
        assert_eq!(Selector::from_msgrcv(-3, false), Selector::AtMost(3));
        assert_eq!(
            Selector::from_msgrcv(i64::MIN, false),
            Selector::AtMost(i64::MAX)
        );
        assert!(Selector::AtMost(3).matches(1) && Selector::AtMost(3).matches(3));
        assert!(!Selector::AtMost(3).matches(4));
        assert!(Selector::Except(2).matches(1) && !Selector::Except(2).matches(2));
    }
}
