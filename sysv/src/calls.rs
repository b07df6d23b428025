//! The four calls, each checked as the kernel checks it and made through the C ABI
//! (`libipc_client`'s functions, `abi.rs`). They return the value for the program, or
//! the `errno` to fail with.
//!
//! Where ipcd and the kernel differ underneath, the difference is made invisible here:
//! - `msgrcv` receives straight into the program's buffer (`ipc_recv_into`), which
//!   without `MSG_NOERROR` tells the daemon the most it takes: a larger message stays
//!   where it is and the call fails with `E2BIG` — and a waiting receive too small for a
//!   message that comes is woken so, as the kernel wakes it.
//! - A new queue holds `msgmnb` bytes and `msgmnb` messages, with messages of at most
//!   `msgmax` bytes, as the kernel's do.

use std::sync::atomic::{AtomicU64, Ordering};

use ipc_capi::{ipc_changes, ipc_create_options, ipc_mailbox_info};
use libc::{c_int, c_long, key_t, msqid_ds};

use crate::abi::{self, Connection, Failure};
use crate::kernel::{self, Call, IPC_INFO, MSG_COPY, MSG_INFO, MSG_STAT, MSG_STAT_ANY};
use crate::queue::{self, Queue, with_connection};

/// The errno for failure `f` in `call`; a failure to reach the daemon is also said on
/// stderr.
fn errno(call: Call, f: &Failure) -> c_int {
    match kernel::errno(call, f.code) {
        libc::EIO => queue::failed(f),
        errno => errno,
    }
}

pub fn msgget(key: key_t, msgflg: c_int) -> Result<c_int, c_int> {
    let requested = (msgflg & 0o777) as u32;
    let create = msgflg & libc::IPC_CREAT != 0;
    let exclusive = msgflg & libc::IPC_EXCL != 0;
    with_connection(|c| {
        let Some(name) = queue::name_of(key) else {
            return create_private(c, requested);
        };
        if !(create && exclusive) {
            match c.stat(&name) {
                Ok(info) => return opened(&info, key, requested),
                Err(f) if f.code == ipc_capi::IPC_ERR_NO_SUCH_MAILBOX && create => {}
                // Not readable for this caller: the kernel still hands out the id (for
                // the access asked, if granted), and refuses what is done with it.
                Err(f) if f.code == ipc_capi::IPC_ERR_PERMISSION && requested == 0 => {
                    return Ok(queue::local_id(Queue { name, key }));
                }
                Err(f) => return Err(errno(Call::Get, &f)),
            }
        }
        let mut options = new_queue(requested);
        options.exist_ok = i32::from(!exclusive);
        match c.create(&name, &options) {
            Ok(true) => {}
            // Made by someone else since it was looked up (with other settings, or
            // not): it is opened as it is.
            Ok(false) => return opened_now(c, &name, key, requested),
            Err(f) if f.code == ipc_capi::IPC_ERR_EXISTS && !exclusive => {
                return opened_now(c, &name, key, requested);
            }
            Err(f) => return Err(errno(Call::Get, &f)),
        }
        made(c, &name, key, requested)
    })
}

/// [`opened`], looked up now.
fn opened_now(c: &mut Connection, name: &str, key: key_t, requested: u32) -> Result<c_int, c_int> {
    let info = c.stat(name).map_err(|f| errno(Call::Get, &f))?;
    opened(&info, key, requested)
}

/// A private queue (`IPC_PRIVATE`): a mailbox of a name nobody else will make.
fn create_private(c: &mut Connection, mode: u32) -> Result<c_int, c_int> {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "sysv/private/{}.{}.{nanos}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    c.create(&name, &new_queue(mode))
        .map_err(|f| errno(Call::Get, &f))?;
    made(c, &name, libc::IPC_PRIVATE, mode)
}

/// The id of a queue this call just made, which `new_queue` made readable by its owner
/// so that its serial can be read; then it gets the mode asked for, whatever that
/// leaves its owner (the kernel gives its creator the id whatever the mode).
fn made(c: &mut Connection, name: &str, key: key_t, mode: u32) -> Result<c_int, c_int> {
    let info = c.stat(name).map_err(|f| errno(Call::Get, &f))?;
    if mode != info.mode & 0o777 {
        let changes = ipc_changes {
            set_mode: 1,
            mode,
            ..ipc_changes::default()
        };
        c.set(name, &changes).map_err(|f| errno(Call::Get, &f))?;
    }
    let id = queue::id_of(&info)?;
    queue::remember(
        id,
        Queue {
            name: abi::name_of(&info),
            key,
        },
    );
    Ok(id)
}

/// A new queue as the kernel makes one: `mode`, `msgmnb` bytes and messages, `msgmax`
/// per message; durable when `IPCD_SYSV_DURABLE=1`.
fn new_queue(mode: u32) -> ipc_create_options {
    let limits = kernel::limits();
    ipc_create_options {
        // Readable by its owner until its serial is read (`made`), which needs `r`.
        mode: mode | 0o400,
        durable: i32::from(std::env::var_os("IPCD_SYSV_DURABLE").is_some_and(|v| v == "1")),
        max_msgs: limits.msgmnb,
        max_bytes: limits.msgmnb,
        max_msg_size: limits.msgmax,
        exist_ok: 0,
    }
}

/// The id of an existing queue, once the access asked for (`requested`, permission bits)
/// is granted as `ipcperms` grants it.
fn opened(info: &ipc_mailbox_info, key: key_t, requested: u32) -> Result<c_int, c_int> {
    if !granted(info, requested) {
        return Err(libc::EACCES);
    }
    let id = queue::id_of(info)?;
    queue::remember(
        id,
        Queue {
            name: abi::name_of(info),
            key,
        },
    );
    Ok(id)
}

/// The kernel's `ipcperms`: the owner's or creator's bits, else the group's, else the
/// others', must hold every access `requested` asks of any class; root passes.
fn granted(info: &ipc_mailbox_info, requested: u32) -> bool {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        return true;
    }
    let wanted = (requested >> 6 | requested >> 3 | requested) & 0o7;
    let mode = info.mode & 0o777;
    let bits = if euid == info.owner_uid || euid == info.creator_uid {
        mode >> 6
    } else if in_group(egid, info.owner_gid) || in_group(egid, info.creator_gid) {
        mode >> 3
    } else {
        mode
    };
    wanted & !bits & 0o7 == 0
}

/// Whether the caller is in group `gid` (its effective or a supplementary group).
fn in_group(egid: u32, gid: u32) -> bool {
    if egid == gid {
        return true;
    }
    let mut groups = [0 as libc::gid_t; 256];
    // SAFETY: the buffer holds 256 gids, and getgroups writes at most that many.
    let n = unsafe { libc::getgroups(groups.len() as c_int, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

pub fn msgsnd(id: c_int, mtype: c_long, text: &[u8], msgflg: c_int) -> Result<(), c_int> {
    if mtype < 1 || text.len() as u64 > kernel::limits().msgmax {
        return Err(libc::EINVAL);
    }
    let nowait = msgflg & libc::IPC_NOWAIT != 0;
    with_connection(|c| {
        let queue = queue::queue(c, id)?;
        c.send(&queue.name, mtype, text, nowait)
            .map_err(|f| match f.code {
                // Larger than the queue can ever hold (msgsz > msg_qbytes): the kernel
                // says the queue is full, for ever.
                ipc_capi::IPC_ERR_BAD_DATA if nowait => libc::EAGAIN,
                _ => errno(Call::Send, &f),
            })
    })
}

/// Receives into `text`, the `msgsz` bytes after the program's `long`: the message's
/// type and the bytes written there.
///
/// # Safety
/// `text` must be writable for `msgsz` bytes.
pub unsafe fn msgrcv(
    id: c_int,
    text: *mut u8,
    msgsz: usize,
    msgtyp: c_long,
    msgflg: c_int,
) -> Result<(c_long, usize), c_int> {
    let truncate = msgflg & libc::MSG_NOERROR != 0;
    let nowait = msgflg & libc::IPC_NOWAIT != 0;
    if msgflg & MSG_COPY != 0 {
        if msgflg & libc::MSG_EXCEPT != 0 || !nowait {
            return Err(libc::EINVAL);
        }
        let index = u64::try_from(msgtyp).map_err(|_| libc::ENOMSG)?;
        return with_connection(|c| {
            let queue = queue::queue(c, id)?;
            let (mtype, payload) = c
                .peek_at(&queue.name, index)
                .map_err(|f| errno(Call::Recv, &f))?;
            if payload.len() > msgsz && !truncate {
                return Err(libc::E2BIG);
            }
            let len = payload.len().min(msgsz);
            // SAFETY: `text` is writable for `msgsz` bytes (the caller's promise), and
            // `len` is at most that.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), text, len) };
            Ok((mtype, len))
        });
    }
    // The kernel's reading of msgtyp: MSG_EXCEPT means something only for a positive type.
    let except = msgtyp > 0 && msgflg & libc::MSG_EXCEPT != 0;
    with_connection(|c| {
        let queue = queue::queue(c, id)?;
        // SAFETY: `text` is writable for `msgsz` bytes (the caller's promise).
        let (len, mtype) =
            unsafe { c.recv_into(&queue.name, msgtyp, except, truncate, nowait, text, msgsz) }
                .map_err(|f| errno(Call::Recv, &f))?;
        Ok((mtype, len))
    })
}

pub fn msgctl(id: c_int, cmd: c_int, buf: *mut msqid_ds) -> Result<c_int, c_int> {
    let needs_buf = matches!(
        cmd,
        libc::IPC_STAT | libc::IPC_SET | IPC_INFO | MSG_INFO | MSG_STAT | MSG_STAT_ANY
    );
    if needs_buf && buf.is_null() {
        return Err(libc::EFAULT);
    }
    with_connection(|c| match cmd {
        libc::IPC_STAT => {
            let queue = queue::queue(c, id)?;
            let info = c.stat(&queue.name).map_err(|f| errno(Call::Stat, &f))?;
            if stale(id, &info) {
                queue::forget(id);
                return Err(libc::EINVAL);
            }
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            unsafe { kernel::fill_msqid_ds(buf, queue.key, &info) };
            Ok(0)
        }
        libc::IPC_SET => {
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            let wanted = unsafe { &*buf };
            set(c, id, wanted).map(|()| 0)
        }
        libc::IPC_RMID => {
            let queue = current(c, id)?;
            c.remove(&queue.name).map_err(|f| errno(Call::Change, &f))?;
            queue::forget(id);
            Ok(0)
        }
        IPC_INFO | MSG_INFO => {
            let queues = queues(c)?;
            let usage = (cmd == MSG_INFO).then(|| {
                let messages = queues.iter().map(|q| q.messages).sum();
                let bytes = queues.iter().map(|q| q.bytes).sum();
                (queues.len() as u64, messages, bytes)
            });
            // SAFETY: checked non-NULL; for these commands the caller passes a msginfo.
            unsafe { buf.cast::<libc::msginfo>().write(kernel::msginfo(usage)) };
            Ok(c_int::try_from(queues.len().saturating_sub(1)).unwrap_or(c_int::MAX))
        }
        MSG_STAT | MSG_STAT_ANY => {
            // `id` is an index into the queues, as into the kernel's table.
            let queues = queues(c)?;
            let info = usize::try_from(id)
                .ok()
                .and_then(|i| queues.get(i))
                .ok_or(libc::EINVAL)?;
            let key = queue::key_of(&abi::name_of(info)).unwrap_or(0);
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            unsafe { kernel::fill_msqid_ds(buf, key, info) };
            queue::id_of(info)
        }
        _ => Err(libc::EINVAL),
    })
}

/// Whether `id` is not the queue that `info` now describes: its key's queue was removed
/// and made again (or the daemon restarted), and the kernel refuses an old id. Ids this
/// process made up for queues it may not read have nothing to compare.
fn stale(id: c_int, info: &ipc_mailbox_info) -> bool {
    id < queue::FIRST_LOCAL_ID && info.serial != id as u64
}

/// The queue with `id`, checked to be still that queue before it is changed or
/// removed: acting on a newer queue of the same key through an old id would change
/// someone else's queue. (A queue the caller may not read cannot be checked; the
/// daemon's own permission check then decides.)
fn current(c: &mut Connection, id: c_int) -> Result<Queue, c_int> {
    let queue = queue::queue(c, id)?;
    match c.stat(&queue.name) {
        Ok(info) if stale(id, &info) => {
            queue::forget(id);
            Err(libc::EINVAL)
        }
        Err(f) if f.code == ipc_capi::IPC_ERR_NO_SUCH_MAILBOX => {
            queue::forget(id);
            Err(libc::EINVAL)
        }
        _ => Ok(queue),
    }
}

/// The queues the caller may see, in the order of their ids: what `MSG_STAT` indexes.
fn queues(c: &mut Connection) -> Result<Vec<ipc_mailbox_info>, c_int> {
    let mut queues: Vec<ipc_mailbox_info> = c
        .list()
        .map_err(|f| errno(Call::Stat, &f))?
        .into_iter()
        .filter(|m| queue::key_of(&abi::name_of(m)).is_some())
        .collect();
    queues.sort_by_key(|m| m.serial);
    Ok(queues)
}

/// `IPC_SET`: owner, group, mode and `msg_qbytes`, as the kernel allows — only root may
/// raise `msg_qbytes` past `msgmnb`.
fn set(c: &mut Connection, id: c_int, wanted: &msqid_ds) -> Result<(), c_int> {
    let queue = current(c, id)?;
    let qbytes: u64 = wanted.msg_qbytes;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The kernel's rule: past msgmnb only with CAP_SYS_RESOURCE (here: root).
    if qbytes > kernel::limits().msgmnb && !root {
        return Err(libc::EPERM);
    }
    let changes = ipc_changes {
        set_mode: 1,
        mode: u32::from(wanted.msg_perm.mode) & 0o777,
        // Always given: the daemon changes only what differs, so the owner of a queue
        // it may not read can still set it.
        set_owner: 1,
        owner_uid: wanted.msg_perm.uid,
        set_group: 1,
        owner_gid: wanted.msg_perm.gid,
        max_msgs: qbytes,
        max_bytes: qbytes,
        max_msg_size: 0,
    };
    c.set(&queue.name, &changes)
        .map_err(|f| errno(Call::Change, &f))
}
