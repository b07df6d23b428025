//! The kernel's side of System V queues as programs see it: its limits, read from
//! `/proc/sys/kernel` so that a queue made here is bounded as the kernel would bound it;
//! the flags and commands glibc's headers name; filling `struct msqid_ds` and `struct
//! msginfo`; and the `errno` each failure gives.

use std::sync::OnceLock;

use ipc_capi::{
    IPC_ERR_BAD_DATA, IPC_ERR_CANCELLED, IPC_ERR_EXISTS, IPC_ERR_INTERRUPTED, IPC_ERR_INVALID,
    IPC_ERR_NO_SUCH_MAILBOX, IPC_ERR_PERMISSION, IPC_ERR_QUOTA, IPC_ERR_REMOVED, IPC_ERR_TIMED_OUT,
    IPC_ERR_TRUNCATED, IPC_ERR_WOULD_BLOCK, ipc_mailbox_info,
};
use libc::{c_int, msqid_ds};

/// `msgrcv`: copy the message at index `msgtyp` (Linux 3.8; not in every libc's headers).
pub const MSG_COPY: c_int = 0o40000;
/// `msgctl` commands beyond `IPC_STAT`/`IPC_SET`/`IPC_RMID`.
pub const IPC_INFO: c_int = 3;
pub const MSG_STAT: c_int = 11;
pub const MSG_INFO: c_int = 12;
pub const MSG_STAT_ANY: c_int = 13;

/// The kernel's message-queue limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message text (`msgmax`); a larger `msgsnd` is `EINVAL`.
    pub msgmax: u64,
    /// A new queue's `msg_qbytes` (`msgmnb`): the bytes, and the messages, it holds.
    pub msgmnb: u64,
    /// Most queues (`msgmni`).
    pub msgmni: u64,
}

/// The limits as `/proc/sys/kernel` gives them, read once; the kernel's defaults where a
/// file cannot be read.
pub fn limits() -> Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    *LIMITS.get_or_init(|| {
        let read = |name: &str, default: u64| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(default)
        };
        Limits {
            msgmax: read("msgmax", 8192),
            msgmnb: read("msgmnb", 16384),
            msgmni: read("msgmni", 32000),
        }
    })
}

/// Which call failed: the same daemon error is a different `errno` for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Send,
    Recv,
    /// `IPC_STAT`, `MSG_STAT`: reading needs `r`.
    Stat,
    /// `IPC_SET`, `IPC_RMID`: only the owner, the creator or root (`EPERM` otherwise).
    Change,
}

/// The `errno` for a failure of `call` that the C ABI reported as `code` (`IPC_ERR_*`).
pub fn errno(call: Call, code: c_int) -> c_int {
    match code {
        IPC_ERR_WOULD_BLOCK if call == Call::Send => libc::EAGAIN,
        IPC_ERR_WOULD_BLOCK | IPC_ERR_TIMED_OUT => libc::ENOMSG,
        IPC_ERR_REMOVED => libc::EIDRM,
        IPC_ERR_NO_SUCH_MAILBOX if call == Call::Get => libc::ENOENT,
        // An id whose queue is gone is no id at all.
        IPC_ERR_NO_SUCH_MAILBOX => libc::EINVAL,
        IPC_ERR_EXISTS => libc::EEXIST,
        IPC_ERR_PERMISSION if call == Call::Change => libc::EPERM,
        IPC_ERR_PERMISSION => libc::EACCES,
        // The owner's mailboxes quota is the kernel's msgmni; a sender's queued bytes
        // are the memory the kernel would not find.
        IPC_ERR_QUOTA if call == Call::Get => libc::ENOSPC,
        IPC_ERR_QUOTA => libc::ENOMEM,
        IPC_ERR_INTERRUPTED | IPC_ERR_CANCELLED => libc::EINTR,
        IPC_ERR_TRUNCATED => libc::E2BIG,
        IPC_ERR_BAD_DATA | IPC_ERR_INVALID => libc::EINVAL,
        // The daemon is gone or not there: what the kernel never says, so the program
        // at least fails instead of waiting; `queue.rs` says why on stderr once.
        _ => libc::EIO,
    }
}

/// Fills `ds` from a mailbox's `info` as `IPC_STAT` would. `key` is the queue's key (0
/// for a private one). Times are wall-clock seconds, as the kernel's.
///
/// # Safety
/// `ds` must point to a writable `struct msqid_ds`.
pub unsafe fn fill_msqid_ds(ds: *mut msqid_ds, key: libc::key_t, info: &ipc_mailbox_info) {
    let secs = |ns: u64| (ns / 1_000_000_000) as libc::time_t;
    // SAFETY: the caller promises `ds` is a writable msqid_ds; only fields are written,
    // so its padding stays as the caller left it.
    unsafe {
        let ds = &mut *ds;
        ds.msg_perm.__key = key;
        ds.msg_perm.uid = info.owner_uid;
        ds.msg_perm.gid = info.owner_gid;
        ds.msg_perm.cuid = info.creator_uid;
        ds.msg_perm.cgid = info.creator_gid;
        ds.msg_perm.mode = (info.mode & 0o777) as libc::c_ushort;
        ds.msg_perm.__seq = (info.serial >> 15) as libc::c_ushort;
        ds.msg_stime = secs(info.last_send_ns);
        ds.msg_rtime = secs(info.last_recv_ns);
        ds.msg_ctime = secs(info.changed_at_ns);
        ds.__msg_cbytes = info.bytes as libc::c_ulong;
        ds.msg_qnum = info.messages as libc::msgqnum_t;
        ds.msg_qbytes = info.max_bytes as libc::msglen_t;
        ds.msg_lspid = info.last_send_pid as libc::pid_t;
        ds.msg_lrpid = info.last_recv_pid as libc::pid_t;
    }
}

/// What `IPC_INFO` and `MSG_INFO` fill: the limits, and for `MSG_INFO` the use (queues,
/// messages and bytes in all) in the fields the kernel puts them in.
pub fn msginfo(usage: Option<(u64, u64, u64)>) -> libc::msginfo {
    let l = limits();
    let int = |n: u64| c_int::try_from(n).unwrap_or(c_int::MAX);
    // The kernel's MSGPOOL, MSGSSZ, MSGTQL and MSGSEG, for IPC_INFO.
    let (pool, map, tql) = match usage {
        Some((queues, messages, bytes)) => (int(queues), int(messages), int(bytes)),
        None => (
            int(l.msgmni * l.msgmnb / 1024),
            int(l.msgmnb),
            int(l.msgmnb),
        ),
    };
    libc::msginfo {
        msgpool: pool,
        msgmap: map,
        msgmax: int(l.msgmax),
        msgmnb: int(l.msgmnb),
        msgmni: int(l.msgmni),
        msgssz: 16,
        msgtql: tql,
        msgseg: 0xffff,
    }
}
