//! Sending and receiving, with `msgsnd(2)`/`msgrcv(2)`'s semantics: the send, the
//! receives (into a library-owned `ipc_message`, or into the caller's buffer with SysV's
//! `E2BIG` rule), the copy at a position, and settling leased messages; and the flags
//! they take.

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use client::{BlockingClient, Message, RecvOptions, Selector, SendOptions};

use crate::args::{self, optional, put_optional, required};
use crate::handle::{ipc_client, with_client};
use crate::status::{Failure, IPC_ERR_TRUNCATED, IPC_OK};
use crate::types::ipc_message;

/// Receive: copy the message and leave it in place (a peek).
pub const IPC_PEEK: c_int = 1;
/// Receive with `msgtyp` > 0: the oldest message of any type but `msgtyp` (SysV
/// `MSG_EXCEPT`).
pub const IPC_EXCEPT: c_int = 2;
/// Receive on a lease of `IPC_DEFAULT_LEASE_MS` (acknowledged receive): the message
/// stays hidden until `ipc_ack` removes it or `ipc_nack` gives it back; if neither comes
/// before the lease ends, or the client closes first, it is redelivered.
pub const IPC_LEASE: c_int = 4;
/// `ipc_recv_into`: a message larger than the buffer is cut to fit and taken (SysV
/// `MSG_NOERROR`), rather than left in the mailbox with `IPC_ERR_TRUNCATED`.
pub const IPC_TRUNCATE: c_int = 8;
/// A signal arriving while the call waits ends it: the request is withdrawn at the
/// daemon, did nothing, and the call returns `IPC_ERR_INTERRUPTED` (SysV `EINTR`, with or
/// without `SA_RESTART`). If the request completed first, its outcome is returned.
/// Without this flag, a waiting call goes on through signals.
pub const IPC_INTERRUPTIBLE: c_int = 16;

/// The lease of `IPC_LEASE`, in milliseconds.
pub const IPC_DEFAULT_LEASE_MS: u64 = 30_000;

/// The flags a receive into an `ipc_message` takes.
const RECV_FLAGS: c_int = IPC_PEEK | IPC_EXCEPT | IPC_LEASE | IPC_INTERRUPTIBLE;

/// Sends `len` bytes at `data` (NULL only when `len` is 0) to mailbox `name` as a
/// message of type `mtype` (at least 1). `timeout_ms` is how long to wait for room in a
/// full mailbox: -1 for ever, 0 not at all (`IPC_ERR_WOULD_BLOCK`, SysV `IPC_NOWAIT`),
/// more for that long (`IPC_ERR_TIMED_OUT`). `flags`: 0 or `IPC_INTERRUPTIBLE`. On
/// success `*id_out` (if not NULL) is the message's id. The data is copied: the caller
/// keeps its buffer.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // msgsnd(2)'s arguments, a timeout and an id.
pub unsafe extern "C" fn ipc_send(
    c: *mut ipc_client,
    name: *const c_char,
    mtype: i64,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
    flags: c_int,
    id_out: *mut u64,
) -> c_int {
    with_client(c, |client| {
        args::flags(flags, IPC_INTERRUPTIBLE, "ipc_send")?;
        // SAFETY: NULL or a string; `data` readable for `len` bytes (the header's rule).
        let (name, payload) =
            unsafe { (args::text(name, "name")?, args::bytes(data, len, "data")?) };
        let options = SendOptions::mtype(mtype).wait(args::wait(timeout_ms)?);
        let id = interruptibly(client, flags, |client| {
            client.send(name, payload.to_vec(), &options)
        })?;
        // SAFETY: NULL or writable.
        unsafe { put_optional(optional(id_out).as_ref(), id) };
        Ok(IPC_OK)
    })
}

/// Receives a message from mailbox `name` into `*out`, chosen as `msgrcv(2)` chooses:
/// `msgtyp` 0 the oldest; > 0 the oldest of that type (with `IPC_EXCEPT`, of any other
/// type); < 0 the oldest of the lowest type at most |`msgtyp`| (a priority queue).
/// `flags`: `IPC_EXCEPT`, `IPC_PEEK`, `IPC_LEASE`, `IPC_INTERRUPTIBLE`. `timeout_ms` is
/// how long to wait for a message: -1 for ever, 0 not at all (`IPC_ERR_WOULD_BLOCK`,
/// SysV `IPC_NOWAIT`), more for that long (`IPC_ERR_TIMED_OUT`). Free `*out` with
/// `ipc_message_free`; on failure it is zeroed. Without `IPC_LEASE` or `IPC_PEEK` the
/// message leaves the mailbox as it is handed over: at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_recv(
    c: *mut ipc_client,
    name: *const c_char,
    msgtyp: i64,
    flags: c_int,
    timeout_ms: i64,
    out: *mut ipc_message,
) -> c_int {
    let lease = Duration::from_millis(IPC_DEFAULT_LEASE_MS);
    // SAFETY: the caller's promises are this function's.
    unsafe { recv_message(c, name, msgtyp, flags, timeout_ms, lease, out, "ipc_recv") }
}

/// `ipc_recv` on a lease of `lease_ms` (more than 0) milliseconds, whether or not
/// `flags` has `IPC_LEASE`: settle the message with `ipc_ack` or `ipc_nack` and its
/// `id`. At least once: if neither comes in time, or the client closes first, the
/// message is redelivered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_recv_leased(
    c: *mut ipc_client,
    name: *const c_char,
    msgtyp: i64,
    flags: c_int,
    timeout_ms: i64,
    lease_ms: u64,
    out: *mut ipc_message,
) -> c_int {
    if lease_ms == 0 {
        // Refused through the usual path, so that the message lands where it belongs.
        return with_client(c, |_| {
            Err(Failure::invalid("ipc_recv_leased: lease_ms is 0"))
        });
    }
    let lease = Duration::from_millis(lease_ms);
    let flags = flags | IPC_LEASE;
    // SAFETY: the caller's promises are this function's.
    unsafe {
        recv_message(
            c,
            name,
            msgtyp,
            flags,
            timeout_ms,
            lease,
            out,
            "ipc_recv_leased",
        )
    }
}

/// The body of `ipc_recv` and `ipc_recv_leased`; `lease` is used when `flags` asks for
/// one.
///
/// # Safety
/// The exported functions' rules.
#[allow(clippy::too_many_arguments)]
unsafe fn recv_message(
    c: *mut ipc_client,
    name: *const c_char,
    msgtyp: i64,
    flags: c_int,
    timeout_ms: i64,
    lease: Duration,
    out: *mut ipc_message,
    function: &str,
) -> c_int {
    with_client(c, |client| {
        let out = required(out, "out")?;
        // SAFETY: writable (the header's rule); zeroed first so a failure leaves nothing
        // to free.
        unsafe { out.put(ipc_message::EMPTY) };
        args::flags(flags, RECV_FLAGS, function)?;
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        let lease = (flags & IPC_LEASE != 0).then_some(lease);
        let message = receive(client, name, msgtyp, flags, timeout_ms, lease, None)?;
        // SAFETY: as above.
        unsafe { out.put(ipc_message::from(&message)) };
        Ok(IPC_OK)
    })
}

/// Receives as `ipc_recv` does, but copies the payload into the caller's `buf` of `cap`
/// bytes (NULL only when `cap` is 0): `*len_out` is the number of bytes copied and
/// `*mtype_out` (if not NULL) the message's type. `flags`: `IPC_EXCEPT`, `IPC_PEEK`,
/// `IPC_TRUNCATE`, `IPC_INTERRUPTIBLE`.
///
/// A message larger than `cap` follows SysV's `E2BIG` rule: without `IPC_TRUNCATE` it
/// stays in the mailbox, in its place, nothing is copied, `*len_out` is its length and
/// the call returns `IPC_ERR_TRUNCATED`; with `IPC_TRUNCATE` its first `cap` bytes are
/// copied, it is taken, and `*len_out` is `cap`.
///
/// How: without `IPC_TRUNCATE`, the receive tells the daemon the most it takes (its
/// `max_size`), and the daemon leaves a larger message where it is — one request, and
/// the message is not marked as delivered. `*len_out` is then the length of that
/// message as a peek finds it just after (0 if it was taken meanwhile).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // msgrcv(2)'s arguments and two results.
pub unsafe extern "C" fn ipc_recv_into(
    c: *mut ipc_client,
    name: *const c_char,
    msgtyp: i64,
    flags: c_int,
    timeout_ms: i64,
    buf: *mut c_void,
    cap: usize,
    len_out: *mut usize,
    mtype_out: *mut i64,
) -> c_int {
    with_client(c, |client| {
        let allowed = IPC_PEEK | IPC_EXCEPT | IPC_TRUNCATE | IPC_INTERRUPTIBLE;
        args::flags(flags, allowed, "ipc_recv_into")?;
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        if buf.is_null() && cap > 0 {
            return Err(Failure::invalid(format!(
                "buf is NULL with a capacity of {cap}"
            )));
        }
        let len_out = required(len_out, "len_out")?;
        let mtype_out = optional(mtype_out);
        let truncate = flags & IPC_TRUNCATE != 0;
        // SysV keeps a message that does not fit: the daemon leaves it in place.
        let max_size = (!truncate).then_some(cap as u64);
        let message = match receive(client, name, msgtyp, flags, timeout_ms, None, max_size) {
            Err(f) if f.code == IPC_ERR_TRUNCATED => {
                // Its length, for the caller who would make room for it.
                let peek = receive(
                    client,
                    name,
                    msgtyp,
                    IPC_PEEK | (flags & IPC_EXCEPT),
                    0,
                    None,
                    None,
                );
                let (len, mtype) = peek.map_or((0, 0), |m| (m.payload.len(), m.mtype));
                // SAFETY: writable, or NULL for `mtype_out`.
                unsafe {
                    len_out.put(len);
                    put_optional(mtype_out.as_ref(), mtype);
                }
                return Err(f);
            }
            outcome => outcome?,
        };
        let len = message.payload.len();
        // SAFETY: writable, or NULL for `mtype_out`.
        unsafe { put_optional(mtype_out.as_ref(), message.mtype) };
        let copied = len.min(cap);
        if copied > 0 {
            // SAFETY: `buf` is not NULL (cap > 0) and writable for `cap` bytes (the
            // header's rule), `copied` <= `cap`; the payload is ours, so they cannot
            // overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(message.payload.as_ptr(), buf.cast::<u8>(), copied);
            }
        }
        // SAFETY: writable.
        unsafe { len_out.put(copied) };
        Ok(IPC_OK)
    })
}

/// A copy of the message at position `index` of mailbox `name`'s queue (0: the oldest),
/// left in place (SysV's `MSG_COPY`), into `*out`; `IPC_ERR_WOULD_BLOCK` when there is
/// no message there. Free `*out` with `ipc_message_free`; on failure it is zeroed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_peek_at(
    c: *mut ipc_client,
    name: *const c_char,
    index: u64,
    out: *mut ipc_message,
) -> c_int {
    with_client(c, |client| {
        let out = required(out, "out")?;
        // SAFETY: writable; zeroed first so a failure leaves nothing to free.
        unsafe { out.put(ipc_message::EMPTY) };
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        let message = client.peek_at(name, index)?;
        // SAFETY: as above.
        unsafe { out.put(ipc_message::from(&message)) };
        Ok(IPC_OK)
    })
}

/// Acknowledges leased message `id` of mailbox `name`: it leaves the mailbox for good.
/// `IPC_ERR_NOT_LEASED` when it is not leased (settled already, or its lease ended).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_ack(c: *mut ipc_client, name: *const c_char, id: u64) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        client.ack(name, id)?;
        Ok(IPC_OK)
    })
}

/// Gives leased message `id` of mailbox `name` back at once, to its place, to be
/// redelivered. `IPC_ERR_NOT_LEASED` when it is not leased.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipc_nack(c: *mut ipc_client, name: *const c_char, id: u64) -> c_int {
    with_client(c, |client| {
        // SAFETY: NULL or a string.
        let name = unsafe { args::text(name, "name") }?;
        client.nack(name, id)?;
        Ok(IPC_OK)
    })
}

/// One receive as the receiving functions' arguments ask for it: on `lease` if given,
/// and taking no message larger than `max_size` if given (`IPC_ERR_TRUNCATED`, the
/// message left in place).
fn receive(
    client: &mut BlockingClient,
    name: &str,
    msgtyp: i64,
    flags: c_int,
    timeout_ms: i64,
    lease: Option<Duration>,
    max_size: Option<u64>,
) -> Result<Message, Failure> {
    let mut options = RecvOptions::selector(Selector::from_msgrcv(msgtyp, flags & IPC_EXCEPT != 0))
        .wait(args::wait(timeout_ms)?);
    options.peek = flags & IPC_PEEK != 0;
    options.max_size = max_size;
    if let Some(lease) = lease {
        options = options.lease(lease, false);
    }
    Ok(interruptibly(client, flags, |client| {
        client.recv(name, &options)
    })?)
}

/// Runs `call` with the client interruptible if `flags` has `IPC_INTERRUPTIBLE`: for
/// that call only.
pub(crate) fn interruptibly<T>(
    client: &mut BlockingClient,
    flags: c_int,
    call: impl FnOnce(&mut BlockingClient) -> T,
) -> T {
    client.set_interruptible(flags & IPC_INTERRUPTIBLE != 0);
    let outcome = call(client);
    client.set_interruptible(false);
    outcome
}
