//! Every bound the daemon enforces, in one place, with its default. Nothing else in the
//! daemon hard-codes a limit; it reads it from [`Config`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ipc_proto::HEADER_LEN;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Limits of one mailbox (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages queued at once.
    pub max_msgs: u64,
    /// Most payload bytes queued at once (SysV `msg_qbytes`).
    pub max_bytes: u64,
    /// Largest single payload.
    pub max_msg_size: u64,
}

/// What one uid may hold at once (SPEC §7). `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Connections open at once.
    pub connections: u64,
    /// Mailboxes owned.
    pub mailboxes: u64,
    /// Bytes the daemon holds for this uid: its sends across all mailboxes (payload,
    /// headers and `message_overhead` each), and the encoded replies waiting to be
    /// written to its connections.
    pub queued_bytes: u64,
    /// Requests one connection may have waiting (blocked) at once.
    pub in_flight: u64,
    /// Connections not yet past their hello at once.
    pub handshakes: u64,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        connections: u64::MAX,
        mailboxes: u64::MAX,
        queued_bytes: u64::MAX,
        in_flight: u64::MAX,
        handshakes: u64::MAX,
    };
}

/// A mailbox the configuration declares: created at start (and on reload) if missing,
/// and held to these settings if present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredMailbox {
    pub name: ipc_proto::MailboxName,
    pub mode: u32,
    /// Owner and group; the daemon's own when absent.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// `Some` for a durable mailbox.
    pub fsync: Option<ipc_proto::Fsync>,
    pub limits: Limits,
    pub max_deliveries: u32,
    pub dead_letter: Option<ipc_proto::MailboxName>,
    pub default_ttl: Option<Duration>,
    /// Topic patterns it is bound to whenever the daemon runs (bindings made by clients
    /// last only as long as the daemon).
    pub bindings: Vec<ipc_proto::TopicPattern>,
}

/// The daemon's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The socket to listen on, when the configuration names one (the command line and
    /// the per-user default otherwise).
    pub socket: Option<PathBuf>,
    /// Where durable state lives (used by durable mailboxes).
    pub state_dir: PathBuf,
    /// The fsync policy of a durable mailbox whose creator names none.
    pub default_fsync: ipc_proto::Fsync,
    /// Mailboxes that exist whenever the daemon runs.
    pub declared: Vec<DeclaredMailbox>,
    /// Limits a new mailbox gets when its creator names none.
    pub default_limits: Limits,
    /// The highest limits any mailbox may be given.
    pub ceilings: Limits,
    /// Mode of a new mailbox when its creator names none.
    pub default_mode: u32,
    /// The quota of every non-root uid without an override.
    pub quota: Quota,
    /// Quotas of particular uids, root's included (root is unlimited unless listed).
    pub quota_overrides: HashMap<u32, Quota>,
    /// Bytes of encoded replies a connection may have waiting to be written beyond the
    /// first; a client that lets more pile up is not reading and is cut off.
    pub max_pending_output: u64,
    /// Bytes of replies a connection may have waiting while its uid is over its
    /// `queued_bytes` quota (they are charged all the same); past it the client is not
    /// reading and is cut off. A client that reads keeps far less waiting.
    pub reply_allowance: u64,
    /// Bytes of messages (payload and headers) one batched receive takes beyond its
    /// first: a batch is for many small messages, and a reply this size is already far
    /// past where the fixed cost of a request matters.
    pub max_batch_bytes: u64,
    /// Replies queued for a connection before the daemon stops reading its requests
    /// until the client has read some.
    pub max_queued_replies: usize,
    /// A connection that has not sent its hello by then is closed.
    pub handshake_timeout: Duration,
    /// Connections not yet past their hello, of all uids together; past it a new
    /// connection is closed at once.
    pub max_handshakes: u64,
    /// Largest frame body accepted before the hello: a hello is small, and a connection
    /// nobody knows yet must not make the daemon buffer much.
    pub max_hello_frame: u32,
    /// How long shutdown waits for connections to flush their last replies.
    pub shutdown_timeout: Duration,
    /// Longest lease an acknowledged receive may ask for.
    pub max_lease: Duration,
    /// Longest TTL and delay a message may be sent with.
    pub max_ttl: Duration,
    pub max_delay: Duration,
    /// Size at which the durable log starts a new segment; space is reclaimed a
    /// segment at a time.
    pub segment_bytes: u64,
    /// What every queued message costs its sender's `queued_bytes` quota beyond its
    /// payload and headers: near what the daemon spends to keep one (its envelope, index
    /// entries and allocations), so that a uid cannot hold unbounded memory with empty
    /// messages. Measured on a release build, in resident memory per queued 64-byte
    /// message beyond its payload: 57 bytes for a plain one, 190 with a content type,
    /// 169 with a TTL, 64 in a durable mailbox; 384 covers a message with every header
    /// and a TTL, and stays the default so that quotas set against it keep their meaning.
    pub message_overhead: u64,
    /// Dead letters waiting to be delivered to their dead-letter mailboxes; past this a
    /// dead letter is dropped and counted on its source mailbox.
    pub dead_letter_backlog: usize,
    /// Once what the daemon holds for its clients (every uid's `queued_bytes`) has
    /// fallen this far below its high-water mark, free memory is given back to the
    /// system; 0 never does.
    pub trim_after: u64,
    /// Payloads passed as memfds that the daemon keeps as they came, all uids together:
    /// each holds a descriptor and a mapping, both limited for a process. Past it (and
    /// for payloads under 64 KiB), a payload passed so is copied and its memfd closed.
    pub max_memfds: u64,
    /// Topic patterns one mailbox may be bound to.
    pub max_bindings: u64,
    /// What a binding costs its mailbox's owner's `queued_bytes` per segment of its
    /// pattern, beyond the pattern itself: about what the trie nodes a segment may add
    /// take (measured at 400–550 bytes each on a release build).
    pub binding_overhead: u64,
    /// The limits of a subscription's private mailbox (`max_msgs`, `max_bytes`): past
    /// them its oldest message is dropped for the newest, so a slow subscriber holds at
    /// most this much and never blocks a publisher.
    pub subscription_limits: Limits,
}

impl Config {
    /// The quota that applies to `uid`.
    pub fn quota_for(&self, uid: u32) -> Quota {
        match self.quota_overrides.get(&uid) {
            Some(quota) => *quota,
            None if uid == 0 => Quota::UNLIMITED,
            None => self.quota,
        }
    }

    /// Largest frame body accepted: a maximal payload plus room for its headers.
    pub fn max_frame(&self) -> u32 {
        let headers_room = 64 * KIB + HEADER_LEN as u64;
        u32::try_from(self.ceilings.max_msg_size + headers_room).unwrap_or(u32::MAX)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: None,
            state_dir: PathBuf::from("/var/lib/ipcd"),
            default_fsync: ipc_proto::Fsync::Always,
            declared: Vec::new(),
            default_limits: Limits {
                max_msgs: 100_000,
                max_bytes: 64 * MIB,
                max_msg_size: MIB,
            },
            ceilings: Limits {
                max_msgs: 10_000_000,
                max_bytes: 4096 * MIB,
                max_msg_size: 64 * MIB,
            },
            default_mode: 0o600,
            quota: Quota {
                connections: 256,
                mailboxes: 1000,
                queued_bytes: 64 * MIB,
                in_flight: 1024,
                handshakes: 64,
            },
            quota_overrides: HashMap::new(),
            max_pending_output: 64 * MIB,
            reply_allowance: MIB,
            max_batch_bytes: MIB,
            max_queued_replies: 1024,
            handshake_timeout: Duration::from_secs(2),
            max_handshakes: 1024,
            max_hello_frame: 4096,
            shutdown_timeout: Duration::from_secs(5),
            segment_bytes: 64 * MIB,
            message_overhead: 384,
            dead_letter_backlog: 4096,
            trim_after: 32 * MIB,
            max_memfds: 1024,
            max_bindings: 256,
            binding_overhead: 512,
            subscription_limits: Limits {
                max_msgs: 1024,
                max_bytes: 8 * MIB,
                max_msg_size: MIB,
            },
            max_lease: Duration::from_secs(24 * 60 * 60),
            max_ttl: Duration::from_secs(366 * 24 * 60 * 60),
            max_delay: Duration::from_secs(31 * 24 * 60 * 60),
        }
    }
}
