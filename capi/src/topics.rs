//! Topics and request/reply: binding a mailbox to a topic pattern, publishing, and a
//! call answered by a reply — the blocking client's operations of those names.

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use client::{BlockingClient, Credentials, Headers, MailboxName, Message, SendOptions, Timestamp};

use crate::args::{self, optional, put_optional, required};
use crate::handle::{ipc_client, with_client};
use crate::messages::{IPC_INTERRUPTIBLE, interruptibly};
use crate::status::{Failure, IPC_OK};
use crate::types::{ipc_message, ipc_publish_report};

/// Binds mailbox `name` (which the caller must own) to topic pattern `pattern`:
/// `.`-separated segments, `*` for any one segment, a final `>` for one or more. What is
/// published on a matching topic gets a copy in the mailbox.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_bind(
    c: *mut ipc_client,
    name: *const c_char,
    pattern: *const c_char,
) -> c_int {
    // SAFETY: NULL or strings, as the caller promises.
    unsafe { with_binding(c, name, pattern, BlockingClient::bind) }
}

/// Undoes an `ipc_bind`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_unbind(
    c: *mut ipc_client,
    name: *const c_char,
    pattern: *const c_char,
) -> c_int {
    // SAFETY: NULL or strings, as the caller promises.
    unsafe { with_binding(c, name, pattern, BlockingClient::unbind) }
}

/// `ipc_bind` and `ipc_unbind`: `change` made with the checked mailbox name and pattern.
///
/// # Safety
/// `name` and `pattern` must be NULL or NUL-terminated strings.
unsafe fn with_binding(
    c: *mut ipc_client,
    name: *const c_char,
    pattern: *const c_char,
    change: fn(&mut BlockingClient, &str, &str) -> client::Result<()>,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or strings (this function's contract).
        let (name, pattern) =
            unsafe { (args::text(name, "name")?, args::text(pattern, "pattern")?) };
        change(client, name, pattern)?;
        Ok(IPC_OK)
    })
}

/// Publishes `len` bytes at `data` (NULL only when `len` is 0) on `topic` as a message
/// of type `mtype`: a copy goes into every mailbox bound to a matching pattern, and
/// `*report` (if not NULL) says how many took it and how many refused. A full mailbox
/// refuses its copy at once (a publish never waits) without failing the rest.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_publish(
    c: *mut ipc_client,
    topic: *const c_char,
    mtype: i64,
    data: *const c_void,
    len: usize,
    report: *mut ipc_publish_report,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string; `data` readable for `len` bytes.
        let (topic, payload) =
            unsafe { (args::text(topic, "topic")?, args::bytes(data, len, "data")?) };
        let published = client.publish(topic, payload.to_vec(), &SendOptions::mtype(mtype))?;
        // SAFETY: NULL or writable.
        unsafe { put_optional(optional(report).as_ref(), published.into()) };
        Ok(IPC_OK)
    })
}

/// Sends `len` bytes at `data` to mailbox `name` as a request and waits up to
/// `timeout_ms` (more than 0) for its reply, into `*out` (free it with
/// `ipc_message_free`; zeroed on failure). `IPC_ERR_TIMED_OUT` when none comes in time;
/// the request then expires undelivered. `flags`: 0 or `IPC_INTERRUPTIBLE`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // a send's arguments, a timeout and the reply.
pub unsafe extern "C" fn ipc_call(
    c: *mut ipc_client,
    name: *const c_char,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
    flags: c_int,
    out: *mut ipc_message,
) -> c_int {
    with_client(c, |client| {
        let out = required(out, "out")?;
        // SAFETY: writable; zeroed first so a failure leaves nothing to free.
        unsafe { out.put(ipc_message::EMPTY) };
        args::flags(flags, IPC_INTERRUPTIBLE, "ipc_call")?;
        // SAFETY: NULL or a string; `data` readable for `len` bytes.
        let (name, payload) =
            unsafe { (args::text(name, "name")?, args::bytes(data, len, "data")?) };
        let timeout = u64::try_from(timeout_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "ipc_call: timeout_ms {timeout_ms} is not more than 0"
                ))
            })?;
        let timeout = Duration::from_millis(timeout);
        let reply = interruptibly(client, flags, |client| {
            client.call(name, payload.to_vec(), timeout)
        })?;
        // SAFETY: as above.
        unsafe { out.put(ipc_message::from(&reply)) };
        Ok(IPC_OK)
    })
}

/// Answers `request` — a message received from a mailbox that `ipc_call` sent to — with
/// `len` bytes at `data`: sent to its `reply_to` with its `correlation_id`. Refused
/// (`IPC_ERR_BAD_DATA`) for a message that is no request, and by the daemon when the
/// call no longer waits (it timed out, or was answered).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_reply(
    c: *mut ipc_client,
    request: *const ipc_message,
    data: *const c_void,
    len: usize,
) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a message the library filled in (the header's rule).
        let request = unsafe { request.as_ref() }.ok_or_else(|| Failure::null("request"))?;
        // SAFETY: `data` readable for `len` bytes.
        let payload = unsafe { args::bytes(data, len, "data") }?;
        let reply_to = match request.reply_to.is_null() {
            true => None,
            // SAFETY: the library's NUL-terminated string (the header's rule).
            false => Some(unsafe { args::text(request.reply_to, "request->reply_to") }?),
        };
        let request = Message {
            id: request.id,
            mtype: request.mtype,
            sender: Credentials {
                pid: request.sender_pid,
                uid: request.sender_uid,
                gid: request.sender_gid,
            },
            sent_at: Timestamp(request.sent_at_ns),
            headers: Headers {
                reply_to: reply_to
                    .map(MailboxName::new)
                    .transpose()
                    .map_err(client::Error::from)?,
                correlation_id: (request.has_correlation_id != 0).then_some(request.correlation_id),
                ..Headers::default()
            }
            .into(),
            redelivered: request.redelivered != 0,
            deliveries: request.deliveries,
            payload: Default::default(),
        };
        client.reply(&request, payload.to_vec())?;
        Ok(IPC_OK)
    })
}
