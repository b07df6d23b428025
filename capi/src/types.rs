//! The C structures: what a caller fills in (`ipc_create_options`, `ipc_changes`), what
//! the library fills in (`ipc_message`, `ipc_mailbox_info`, `ipc_publish_report`), their
//! conversions from and to the library's types, and the functions that free what the
//! library allocated. Memory the library hands out is allocated by Rust and must come
//! back through `ipc_message_free`/`ipc_list_free`, never `free(3)`.

use std::ffi::{CString, c_char, c_int};
use std::ptr;

use client::{CreateOptions, LimitChanges, MailboxChanges, MailboxInfo, Message, PublishReport};

use crate::handle::boundary;
use crate::status::IPC_OK;

/// Bytes in `ipc_mailbox_info.name`: the longest mailbox name (255 bytes) and its NUL.
pub const IPC_NAME_SIZE: usize = 256;

const _: () = assert!(ipc_proto::name::MAX_NAME_LEN < IPC_NAME_SIZE);

/// How `ipc_create` makes a mailbox. Zero-initialise it and set what you need: every
/// zero field means the daemon's default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ipc_create_options {
    /// Permission bits, as for a file (e.g. 0660); 0: the daemon's default (0600).
    pub mode: u32,
    /// Non-zero: the mailbox and its messages survive daemon restarts and crashes.
    pub durable: c_int,
    /// Most messages it holds; 0: the daemon's default.
    pub max_msgs: u64,
    /// Most bytes (payloads and headers) it holds; 0: the daemon's default.
    pub max_bytes: u64,
    /// Largest payload it takes; 0: the daemon's default.
    pub max_msg_size: u64,
    /// Non-zero: a mailbox of that name that exists (and is the caller's, of the kind
    /// asked) is success, `IPC_EXISTED`, rather than `IPC_ERR_EXISTS`.
    pub exist_ok: c_int,
}

impl ipc_create_options {
    pub(crate) fn to_options(self) -> CreateOptions {
        CreateOptions {
            mode: nonzero(self.mode),
            durable: self.durable != 0,
            limits: limits(self.max_msgs, self.max_bytes, self.max_msg_size),
            exist_ok: self.exist_ok != 0,
            ..CreateOptions::default()
        }
    }
}

/// What `ipc_set` changes. Zero-initialise it and set what you need: a field is changed
/// only when its `set_` flag is non-zero, or, for the limits, when it is not 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ipc_changes {
    pub set_mode: c_int,
    pub mode: u32,
    /// Giving a mailbox to another uid needs root.
    pub set_owner: c_int,
    pub owner_uid: u32,
    /// The owner may give the group only to a group it is in.
    pub set_group: c_int,
    pub owner_gid: u32,
    /// 0: unchanged.
    pub max_msgs: u64,
    /// 0: unchanged.
    pub max_bytes: u64,
    /// 0: unchanged.
    pub max_msg_size: u64,
}

impl ipc_changes {
    pub(crate) fn to_changes(self) -> MailboxChanges {
        MailboxChanges {
            mode: (self.set_mode != 0).then_some(self.mode),
            owner_uid: (self.set_owner != 0).then_some(self.owner_uid),
            owner_gid: (self.set_group != 0).then_some(self.owner_gid),
            limits: limits(self.max_msgs, self.max_bytes, self.max_msg_size),
            ..MailboxChanges::default()
        }
    }
}

fn nonzero<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

fn limits(max_msgs: u64, max_bytes: u64, max_msg_size: u64) -> LimitChanges {
    LimitChanges {
        max_msgs: nonzero(max_msgs),
        max_bytes: nonzero(max_bytes),
        max_msg_size: nonzero(max_msg_size),
    }
}

/// A mailbox's settings and counters, as SysV's `msqid_ds`. Times are nanoseconds since
/// the Unix epoch. A plain value: nothing in it needs freeing.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ipc_mailbox_info {
    /// Messages queued and visible (SysV `msg_qnum`).
    pub messages: u64,
    /// Bytes queued, payloads and headers (SysV `msg_cbytes`).
    pub bytes: u64,
    pub max_msgs: u64,
    /// SysV `msg_qbytes`.
    pub max_bytes: u64,
    pub max_msg_size: u64,
    pub mode: u32,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub creator_uid: u32,
    pub creator_gid: u32,
    /// Non-zero for a durable mailbox.
    pub durable: c_int,
    pub created_at_ns: u64,
    /// Its settings' last change (SysV `msg_ctime`).
    pub changed_at_ns: u64,
    /// The last send (SysV `msg_stime`), 0 if none yet.
    pub last_send_ns: u64,
    /// Who sent last (SysV `msg_lspid`), 0 if none yet.
    pub last_send_pid: u32,
    /// Who received last (SysV `msg_lrpid`), 0 if none yet.
    pub last_recv_pid: u32,
    /// The last receive (SysV `msg_rtime`), 0 if none yet.
    pub last_recv_ns: u64,
    pub total_sent: u64,
    pub total_received: u64,
    pub waiting_receivers: u64,
    pub waiting_senders: u64,
    /// Messages leased to receivers and not yet acknowledged.
    pub unacked: u64,
    /// Deliveries after which an unacknowledged message is dead-lettered; 0: no limit.
    pub max_deliveries: u32,
    /// Messages moved to the dead-letter mailbox.
    pub dead_lettered: u64,
    /// Messages dropped for want of a dead-letter mailbox.
    pub dropped: u64,
    /// The TTL of messages sent without one; 0: none.
    pub default_ttl_ms: u64,
    /// Messages that expired undelivered.
    pub expired: u64,
    /// Messages sent with a delay, not visible yet (not in `messages`).
    pub delayed: u64,
    /// Deadlines the mailbox keeps (leases, delays, TTLs).
    pub timers: u64,
    /// A number no other mailbox has while the daemon runs: what a SysV shim uses as
    /// the queue's id.
    pub serial: u64,
    /// The mailbox's name, NUL-terminated.
    pub name: [c_char; IPC_NAME_SIZE],
}

impl From<&MailboxInfo> for ipc_mailbox_info {
    fn from(info: &MailboxInfo) -> Self {
        let mut name = [0; IPC_NAME_SIZE];
        // A name is at most MAX_NAME_LEN bytes (asserted above), so the last byte stays
        // the NUL; `zip` would stop short rather than overrun in any case.
        for (to, from) in name.iter_mut().zip(info.name.as_str().bytes()) {
            *to = from as c_char;
        }
        Self {
            messages: info.messages,
            bytes: info.bytes,
            max_msgs: info.max_msgs,
            max_bytes: info.max_bytes,
            max_msg_size: info.max_msg_size,
            mode: info.mode,
            owner_uid: info.owner_uid,
            owner_gid: info.owner_gid,
            creator_uid: info.creator_uid,
            creator_gid: info.creator_gid,
            durable: c_int::from(info.durable),
            created_at_ns: info.created_at.0,
            changed_at_ns: info.changed_at.0,
            last_send_ns: info.last_send.map_or(0, |op| op.at.0),
            last_send_pid: info.last_send.map_or(0, |op| op.pid),
            last_recv_pid: info.last_recv.map_or(0, |op| op.pid),
            last_recv_ns: info.last_recv.map_or(0, |op| op.at.0),
            total_sent: info.total_sent,
            total_received: info.total_received,
            waiting_receivers: info.waiting_receivers,
            waiting_senders: info.waiting_senders,
            unacked: info.unacked,
            max_deliveries: info.max_deliveries,
            dead_lettered: info.dead_lettered,
            dropped: info.dropped,
            default_ttl_ms: info.default_ttl_ms,
            expired: info.expired,
            delayed: info.delayed,
            timers: info.timers,
            serial: info.serial,
            name,
        }
    }
}

/// A message received, owned by the library: release its buffers with
/// `ipc_message_free`. A function that fills one in overwrites it without reading it
/// (free a message before reusing its structure) and, when it fails, leaves it zeroed,
/// so `ipc_message_free` is always safe on it.
#[repr(C)]
#[derive(Debug)]
pub struct ipc_message {
    /// Its id in the mailbox (for `ipc_ack`/`ipc_nack`).
    pub id: u64,
    /// SysV `mtype`.
    pub mtype: i64,
    /// The payload, `len` bytes; NULL when `len` is 0. Not NUL-terminated.
    pub data: *mut u8,
    pub len: usize,
    /// Who sent it, as the kernel reported the sender's connection to the daemon.
    pub sender_pid: u32,
    pub sender_uid: u32,
    pub sender_gid: u32,
    /// When the daemon accepted it, in nanoseconds since the Unix epoch.
    pub sent_at_ns: u64,
    /// Meaningful only when `has_correlation_id` is non-zero.
    pub correlation_id: u64,
    pub has_correlation_id: c_int,
    /// Where to answer (a request made with `ipc_call`): NULL or NUL-terminated.
    pub reply_to: *mut c_char,
    /// What the payload is, as its sender said: NULL or NUL-terminated.
    pub content_type: *mut c_char,
    /// The topic it was published on: NULL or NUL-terminated.
    pub topic: *mut c_char,
    /// Non-zero when it was handed out before (a lease ended without an ack).
    pub redelivered: c_int,
    /// How many times it has been handed out, this time included.
    pub deliveries: u32,
}

impl ipc_message {
    /// A message with nothing in it: what a failed call leaves, and what a free leaves.
    pub(crate) const EMPTY: Self = Self {
        id: 0,
        mtype: 0,
        data: ptr::null_mut(),
        len: 0,
        sender_pid: 0,
        sender_uid: 0,
        sender_gid: 0,
        sent_at_ns: 0,
        correlation_id: 0,
        has_correlation_id: 0,
        reply_to: ptr::null_mut(),
        content_type: ptr::null_mut(),
        topic: ptr::null_mut(),
        redelivered: 0,
        deliveries: 0,
    };
}

impl From<&Message> for ipc_message {
    fn from(message: &Message) -> Self {
        let (data, len) = match message.payload.len() {
            0 => (ptr::null_mut(), 0),
            len => (
                Box::into_raw(Box::<[u8]>::from(&message.payload[..])).cast(),
                len,
            ),
        };
        let headers = &message.headers;
        Self {
            id: message.id,
            mtype: message.mtype,
            data,
            len,
            sender_pid: message.sender.pid,
            sender_uid: message.sender.uid,
            sender_gid: message.sender.gid,
            sent_at_ns: message.sent_at.0,
            correlation_id: headers.correlation_id.unwrap_or(0),
            has_correlation_id: c_int::from(headers.correlation_id.is_some()),
            reply_to: header(headers.reply_to.as_ref().map(|n| n.as_str())),
            content_type: header(headers.content_type.as_deref()),
            topic: header(headers.topic.as_ref().map(|t| t.as_str())),
            redelivered: c_int::from(message.redelivered),
            deliveries: message.deliveries,
        }
    }
}

/// A header as an allocated C string, or NULL. C cannot carry a NUL inside a string:
/// a header with one (only `content_type` can have one) is cut there.
fn header(value: Option<&str>) -> *mut c_char {
    let Some(value) = value else {
        return ptr::null_mut();
    };
    let end = value.find('\0').unwrap_or(value.len());
    CString::new(&value[..end])
        .expect("cut before any NUL")
        .into_raw()
}

/// # Safety
/// `ptr` is NULL or came from [`header`] and was not freed since.
unsafe fn free_header(ptr: &mut *mut c_char) {
    if !ptr.is_null() {
        // SAFETY: it came from `CString::into_raw` (the caller's promise).
        drop(unsafe { CString::from_raw(*ptr) });
        *ptr = ptr::null_mut();
    }
}

/// Frees the buffers of a message the library filled in, and zeroes their pointers and
/// lengths, so freeing it twice, or freeing a zeroed message, is safe. The structure
/// itself is the caller's. NULL does nothing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_message_free(m: *mut ipc_message) {
    let _ = boundary(|| {
        // SAFETY: NULL, or a message this library filled in or that is zeroed (the
        // header's rule), so its pointers are NULL or its own allocations.
        let Some(m) = (unsafe { m.as_mut() }) else {
            return Ok(IPC_OK);
        };
        if !m.data.is_null() {
            let slice = ptr::slice_from_raw_parts_mut(m.data, m.len);
            // SAFETY: `data` and `len` came from `Box::into_raw` of a `[u8]` of `len`.
            drop(unsafe { Box::from_raw(slice) });
        }
        m.data = ptr::null_mut();
        m.len = 0;
        // SAFETY: each is NULL or came from `header`, by the same rule.
        unsafe {
            free_header(&mut m.reply_to);
            free_header(&mut m.content_type);
            free_header(&mut m.topic);
        }
        Ok(IPC_OK)
    });
}

/// Frees a list made by `ipc_list`: give the `count` it gave. NULL does nothing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_list_free(list: *mut ipc_mailbox_info, count: usize) {
    let _ = boundary(|| {
        if !list.is_null() {
            let slice = ptr::slice_from_raw_parts_mut(list, count);
            // SAFETY: `list` and `count` came from `ipc_list`'s `Box<[_]>` (the caller's
            // promise), which was not freed since.
            drop(unsafe { Box::from_raw(slice) });
        }
        Ok(IPC_OK)
    });
}

/// A list of mailboxes as the allocation `ipc_list` hands out: NULL when empty.
pub(crate) fn info_list(infos: &[MailboxInfo]) -> (*mut ipc_mailbox_info, usize) {
    if infos.is_empty() {
        return (ptr::null_mut(), 0);
    }
    let list: Box<[ipc_mailbox_info]> = infos.iter().map(ipc_mailbox_info::from).collect();
    let count = list.len();
    (Box::into_raw(list).cast(), count)
}

/// What became of an `ipc_publish`: how many mailboxes bound to a matching pattern took
/// their copy, and how many refused it and why. One refusal never fails the rest.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ipc_publish_report {
    pub delivered: u32,
    /// Refused for want of room.
    pub full: u32,
    /// Refused because the publisher may not send to the mailbox.
    pub denied: u32,
    /// Refused for any other reason (too large for it, over quota, removed, storage).
    pub failed: u32,
}

impl From<PublishReport> for ipc_publish_report {
    fn from(report: PublishReport) -> Self {
        Self {
            delivered: report.delivered,
            full: report.full,
            denied: report.denied,
            failed: report.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::{Credentials, Headers, Timestamp};

    fn message(payload: &'static [u8], content_type: Option<&str>) -> Message {
        Message {
            id: 7,
            mtype: 3,
            sender: Credentials {
                pid: 1,
                uid: 2,
                gid: 3,
            },
            sent_at: Timestamp(4),
            headers: Headers {
                content_type: content_type.map(str::to_owned),
                correlation_id: Some(9),
                ..Headers::default()
            }
            .into(),
            redelivered: true,
            deliveries: 2,
            payload: payload.into(),
        }
    }

    #[test]
    fn a_message_frees_once_however_often_it_is_freed() {
        let mut m = ipc_message::from(&message(b"hello", Some("text/plain")));
        assert_eq!(m.len, 5);
        assert_eq!(m.has_correlation_id, 1);
        assert!(!m.content_type.is_null() && m.reply_to.is_null());
        // SAFETY: a message this library filled in, then the zeroed remains.
        unsafe {
            ipc_message_free(&mut m);
            ipc_message_free(&mut m);
            ipc_message_free(ptr::null_mut());
        }
        assert!(m.data.is_null() && m.content_type.is_null() && m.len == 0);
        let mut empty = ipc_message::EMPTY;
        // SAFETY: zeroed.
        unsafe { ipc_message_free(&mut empty) };
    }

    #[test]
    fn an_empty_payload_is_null_and_a_nul_cuts_a_header() {
        let mut m = ipc_message::from(&message(b"", Some("a\0b")));
        assert!(m.data.is_null() && m.len == 0);
        // SAFETY: a C string the library made.
        let content_type = unsafe { std::ffi::CStr::from_ptr(m.content_type) };
        assert_eq!(content_type, c"a");
        // SAFETY: filled in by the library.
        unsafe { ipc_message_free(&mut m) };
    }
}
