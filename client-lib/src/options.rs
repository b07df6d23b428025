//! Option structs for the operations that take more than a name, shared by both clients
//! so that they build exactly the same requests.

use bytes::Bytes;
use ipc_proto::{
    BatchMessage, CallRequest, CreateRequest, DeliveryChanges, Fsync, HeaderBox, Lease,
    LimitChanges, MailboxName, PublishRequest, RecvBatchRequest, RecvRequest, Selector,
    SendBatchRequest, SendRequest, Topic, Wait,
};

use crate::{Error, Result};

/// How to create a mailbox.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Permission bits; `None` gives the daemon's default (0600).
    pub mode: Option<u32>,
    /// Keep its messages across daemon restarts and crashes (SPEC §6).
    pub durable: bool,
    /// For a durable mailbox, when messages reach the disk; `None` is `Always`.
    pub fsync: Option<Fsync>,
    pub limits: LimitChanges,
    /// Redelivery limit and dead-letter mailbox.
    pub delivery: DeliveryChanges,
    /// Succeed if it exists already.
    pub exist_ok: bool,
}

impl CreateOptions {
    pub(crate) fn request(&self, mailbox: MailboxName) -> CreateRequest {
        CreateRequest {
            mailbox,
            mode: self.mode,
            durable: self.durable,
            fsync: self.fsync,
            limits: self.limits,
            delivery: self.delivery.clone(),
            exist_ok: self.exist_ok,
        }
    }
}

/// How to send a message.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// SysV `mtype`, at least 1.
    pub mtype: i64,
    pub wait: Wait,
    pub headers: HeaderBox,
    /// Expire the message if undelivered after this long (else the mailbox's default).
    pub ttl: Option<std::time::Duration>,
    /// Keep it invisible to receivers for this long.
    pub delay: Option<std::time::Duration>,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            mtype: 1,
            wait: Wait::Forever,
            headers: HeaderBox::default(),
            ttl: None,
            delay: None,
        }
    }
}

impl SendOptions {
    pub fn mtype(mtype: i64) -> Self {
        Self {
            mtype,
            ..Self::default()
        }
    }

    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    pub(crate) fn request(&self, mailbox: MailboxName, payload: Bytes) -> SendRequest {
        SendRequest {
            mailbox,
            mtype: self.mtype,
            headers: self.headers.clone(),
            wait: self.wait,
            ttl_ms: self.ttl.map(millis),
            delay_ms: self.delay.map(millis),
            payload,
        }
    }

    /// A publish of `payload` on `topic` with these options; a copy is never delayed,
    /// nor does it wait for room.
    pub(crate) fn publish(&self, topic: Topic, payload: Bytes) -> Result<PublishRequest> {
        if self.delay.is_some() {
            return Err(Error::BadData(
                "a published message cannot be delayed".to_owned(),
            ));
        }
        Ok(PublishRequest {
            topic,
            mtype: self.mtype,
            headers: self.headers.clone(),
            ttl_ms: self.ttl.map(millis),
            payload,
        })
    }

    /// A call of `mailbox` with `payload`, waiting `timeout` for the reply.
    pub(crate) fn call(
        &self,
        mailbox: MailboxName,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> CallRequest {
        CallRequest {
            mailbox,
            mtype: self.mtype,
            headers: self.headers.clone(),
            timeout_ms: millis(timeout).max(1),
            payload,
        }
    }

    /// A batched send of `payloads`, each sent with these options.
    pub(crate) fn batch(
        &self,
        mailbox: MailboxName,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> SendBatchRequest {
        let messages = payloads
            .into_iter()
            .map(|payload| BatchMessage {
                mtype: self.mtype,
                headers: self.headers.clone(),
                ttl_ms: self.ttl.map(millis),
                delay_ms: self.delay.map(millis),
                payload,
            })
            .collect();
        SendBatchRequest {
            mailbox,
            wait: self.wait,
            messages,
        }
    }
}

/// How to receive a message.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecvOptions {
    pub selector: Selector,
    pub wait: Wait,
    /// Copy the message and leave it in place.
    pub peek: bool,
    /// Lease it instead (acknowledged receive); set by the `recv_leased` calls.
    pub lease: Option<Lease>,
    /// Take no message larger than this: one selected that is larger stays in place,
    /// and the receive fails (`ErrorCode::TooBig`, SysV's `E2BIG`). Not for batches.
    pub max_size: Option<u64>,
}

impl RecvOptions {
    pub fn selector(selector: Selector) -> Self {
        Self {
            selector,
            ..Self::default()
        }
    }

    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    pub fn peek(mut self) -> Self {
        self.peek = true;
        self
    }

    /// Takes no message larger than `bytes` (see [`Self::max_size`]).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Lease the message for `timeout`; `detached` leases outlive the connection.
    pub fn lease(mut self, timeout: std::time::Duration, detached: bool) -> Self {
        self.lease = Some(Lease {
            timeout_ms: millis(timeout),
            detached,
        });
        self
    }

    pub(crate) fn request(&self, mailbox: MailboxName) -> RecvRequest {
        RecvRequest {
            mailbox,
            selector: self.selector,
            wait: self.wait,
            peek: self.peek,
            lease: self.lease,
            max_size: self.max_size,
        }
    }

    /// A batched receive of up to `max` messages; a peek cannot be batched.
    pub(crate) fn batch(&self, mailbox: MailboxName, max: u32) -> Result<RecvBatchRequest> {
        if self.peek {
            return Err(Error::BadData(
                "a batched receive takes its messages; it cannot peek".to_owned(),
            ));
        }
        if self.max_size.is_some() {
            return Err(Error::BadData(
                "a batched receive takes messages of any size; it has no max_size".to_owned(),
            ));
        }
        Ok(RecvBatchRequest {
            mailbox,
            selector: self.selector,
            max,
            wait: self.wait,
            lease: self.lease,
        })
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
