//! The four calls, each checked as the kernel checks it and made through the daemon.
//! They return the value for the program, or the `errno` to fail with.
//!
//! Where ipcd and the kernel differ underneath, the difference is made invisible here:
//! - `msgrcv` without `MSG_NOERROR` receives with a `max_size` of its buffer: the daemon
//!   leaves a larger message where it is and answers `TooBig`, which is `E2BIG` — and a
//!   waiting receive too small for a message that comes is woken so, as the kernel
//!   wakes it.
//! - A new queue holds `msgmnb` bytes and `msgmnb` messages, with messages of at most
//!   `msgmax` bytes, as the kernel's do.

use std::sync::atomic::{AtomicU64, Ordering};

use ipc_client::{
    BlockingClient, CreateOptions, Error, LimitChanges, MailboxChanges, MailboxInfo, RecvOptions,
    Selector, SendOptions, Wait,
};
use libc::{c_int, c_long, key_t, msqid_ds};

use crate::kernel::{self, Call, IPC_INFO, MSG_COPY, MSG_INFO, MSG_STAT, MSG_STAT_ANY};
use crate::queue::{self, Queue, with_client};

/// The errno for `e` in `call`; a failure to reach the daemon is also said on stderr.
fn errno(call: Call, e: &Error) -> c_int {
    match kernel::errno(call, e) {
        libc::EIO => queue::failed(e),
        errno => errno,
    }
}

pub fn msgget(key: key_t, msgflg: c_int) -> Result<c_int, c_int> {
    let requested = (msgflg & 0o777) as u32;
    let create = msgflg & libc::IPC_CREAT != 0;
    let exclusive = msgflg & libc::IPC_EXCL != 0;
    with_client(|client| {
        let Some(name) = queue::name_of(key) else {
            return create_private(client, requested);
        };
        if !(create && exclusive) {
            match client.stat(name.as_str()) {
                Ok(info) => return opened(&info, key, requested),
                Err(Error::NoSuchMailbox(_)) if create => {}
                // Not readable for this caller: the kernel still hands out the id (for
                // the access asked, if granted), and refuses what is done with it.
                Err(Error::PermissionDenied(_)) if requested == 0 => {
                    return Ok(queue::local_id(Queue { name, key }));
                }
                Err(e) => return Err(errno(Call::Get, &e)),
            }
        }
        match client.create(name.as_str(), &new_queue(requested)) {
            Ok(_) => {}
            Err(Error::Exists(_)) if !exclusive => {}
            Err(e) => return Err(errno(Call::Get, &e)),
        }
        let info = client
            .stat(name.as_str())
            .map_err(|e| errno(Call::Get, &e))?;
        opened(&info, key, requested)
    })
}

/// A private queue (`IPC_PRIVATE`): a mailbox of a name nobody else will make.
fn create_private(client: &mut BlockingClient, mode: u32) -> Result<c_int, c_int> {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "sysv/private/{}.{}.{nanos}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    client
        .create(&name, &new_queue(mode))
        .map_err(|e| errno(Call::Get, &e))?;
    let info = client.stat(&name).map_err(|e| errno(Call::Get, &e))?;
    opened(&info, libc::IPC_PRIVATE, mode)
}

/// A new queue as the kernel makes one: `mode`, `msgmnb` bytes and messages, `msgmax`
/// per message; durable when `IPCD_SYSV_DURABLE=1`.
fn new_queue(mode: u32) -> CreateOptions {
    let limits = kernel::limits();
    CreateOptions {
        mode: Some(mode),
        durable: std::env::var_os("IPCD_SYSV_DURABLE").is_some_and(|v| v == "1"),
        limits: LimitChanges {
            max_msgs: Some(limits.msgmnb),
            max_bytes: Some(limits.msgmnb),
            max_msg_size: Some(limits.msgmax),
        },
        ..CreateOptions::default()
    }
}

/// The id of an existing queue, once the access asked for (`requested`, permission bits)
/// is granted as `ipcperms` grants it.
fn opened(info: &MailboxInfo, key: key_t, requested: u32) -> Result<c_int, c_int> {
    if !granted(info, requested) {
        return Err(libc::EACCES);
    }
    let id = queue::id_of(info)?;
    queue::remember(
        id,
        Queue {
            name: info.name.clone(),
            key,
        },
    );
    Ok(id)
}

/// The kernel's `ipcperms`: the owner's or creator's bits, else the group's, else the
/// others', must hold every access `requested` asks of any class; root passes.
fn granted(info: &MailboxInfo, requested: u32) -> bool {
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
    let wait = if msgflg & libc::IPC_NOWAIT != 0 {
        Wait::NoWait
    } else {
        Wait::Forever
    };
    with_client(|client| {
        let queue = queue::queue(client, id)?;
        let options = SendOptions::mtype(mtype).wait(wait);
        client
            .send(queue.name.as_str(), text.to_vec(), &options)
            .map(drop)
            .map_err(|e| errno(Call::Send, &e))
    })
}

pub fn msgrcv(
    id: c_int,
    msgsz: usize,
    msgtyp: c_long,
    msgflg: c_int,
) -> Result<(c_long, Vec<u8>), c_int> {
    let truncate = msgflg & libc::MSG_NOERROR != 0;
    let fits = |len: usize| len <= msgsz || truncate;
    if msgflg & MSG_COPY != 0 {
        if msgflg & libc::MSG_EXCEPT != 0 || msgflg & libc::IPC_NOWAIT == 0 {
            return Err(libc::EINVAL);
        }
        let index = u64::try_from(msgtyp).map_err(|_| libc::ENOMSG)?;
        return with_client(|client| {
            let queue = queue::queue(client, id)?;
            let copy = client
                .peek_at(queue.name.as_str(), index)
                .map_err(|e| errno(Call::Recv, &e))?;
            if !fits(copy.payload.len()) {
                return Err(libc::E2BIG);
            }
            Ok((copy.mtype, cut(&copy.payload, msgsz)))
        });
    }
    // The kernel's reading of msgtyp: MSG_EXCEPT means something only for a positive type.
    let selector = match msgtyp {
        0 => Selector::Any,
        t if t < 0 => Selector::AtMost(t.checked_neg().unwrap_or(c_long::MAX)),
        t if msgflg & libc::MSG_EXCEPT != 0 => Selector::Except(t),
        t => Selector::Type(t),
    };
    let wait = if msgflg & libc::IPC_NOWAIT != 0 {
        Wait::NoWait
    } else {
        Wait::Forever
    };
    let mut options = RecvOptions::selector(selector).wait(wait);
    if !truncate {
        // A larger message stays queued, and this receive fails with E2BIG.
        options = options.max_size(msgsz as u64);
    }
    with_client(|client| {
        let queue = queue::queue(client, id)?;
        let message = client
            .recv(queue.name.as_str(), &options)
            .map_err(|e| errno(Call::Recv, &e))?;
        Ok((message.mtype, cut(&message.payload, msgsz)))
    })
}

/// At most `max` bytes of `payload` (`MSG_NOERROR` cuts the rest).
fn cut(payload: &[u8], max: usize) -> Vec<u8> {
    payload[..payload.len().min(max)].to_vec()
}

pub fn msgctl(id: c_int, cmd: c_int, buf: *mut msqid_ds) -> Result<c_int, c_int> {
    let needs_buf = matches!(
        cmd,
        libc::IPC_STAT | libc::IPC_SET | IPC_INFO | MSG_INFO | MSG_STAT | MSG_STAT_ANY
    );
    if needs_buf && buf.is_null() {
        return Err(libc::EFAULT);
    }
    with_client(|client| match cmd {
        libc::IPC_STAT => {
            let queue = queue::queue(client, id)?;
            let info = client
                .stat(queue.name.as_str())
                .map_err(|e| errno(Call::Stat, &e))?;
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            unsafe { kernel::fill_msqid_ds(buf, queue.key, &info) };
            Ok(0)
        }
        libc::IPC_SET => {
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            let wanted = unsafe { &*buf };
            set(client, id, wanted).map(|()| 0)
        }
        libc::IPC_RMID => {
            let queue = queue::queue(client, id)?;
            client
                .remove(queue.name.as_str())
                .map_err(|e| errno(Call::Change, &e))?;
            queue::forget(id);
            Ok(0)
        }
        IPC_INFO | MSG_INFO => {
            let queues = queues(client)?;
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
            let queues = queues(client)?;
            let info = usize::try_from(id)
                .ok()
                .and_then(|i| queues.get(i))
                .ok_or(libc::EINVAL)?;
            let key = queue::key_of(&info.name).unwrap_or(0);
            // SAFETY: checked non-NULL; the caller promises a msqid_ds.
            unsafe { kernel::fill_msqid_ds(buf, key, info) };
            queue::id_of(info)
        }
        _ => Err(libc::EINVAL),
    })
}

/// The queues the caller may see, in the order of their ids: what `MSG_STAT` indexes.
fn queues(client: &mut BlockingClient) -> Result<Vec<MailboxInfo>, c_int> {
    let mut queues: Vec<MailboxInfo> = client
        .list()
        .map_err(|e| errno(Call::Stat, &e))?
        .into_iter()
        .filter(|m| queue::key_of(&m.name).is_some())
        .collect();
    queues.sort_by_key(|m| m.serial);
    Ok(queues)
}

/// `IPC_SET`: owner, group, mode and `msg_qbytes`, as the kernel allows — only root may
/// raise `msg_qbytes` past `msgmnb`.
fn set(client: &mut BlockingClient, id: c_int, wanted: &msqid_ds) -> Result<(), c_int> {
    let queue = queue::queue(client, id)?;
    let name = queue.name.as_str();
    let info = client.stat(name).map_err(|e| errno(Call::Change, &e))?;
    let qbytes: u64 = wanted.msg_qbytes;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if qbytes > kernel::limits().msgmnb && qbytes > info.max_bytes && !root {
        return Err(libc::EPERM);
    }
    let changes = MailboxChanges {
        mode: Some(u32::from(wanted.msg_perm.mode) & 0o777),
        owner_uid: (wanted.msg_perm.uid != info.owner_uid).then_some(wanted.msg_perm.uid),
        owner_gid: (wanted.msg_perm.gid != info.owner_gid).then_some(wanted.msg_perm.gid),
        limits: LimitChanges {
            max_msgs: Some(qbytes),
            max_bytes: Some(qbytes),
            max_msg_size: None,
        },
        ..MailboxChanges::default()
    };
    client
        .set(name, changes)
        .map(drop)
        .map_err(|e| errno(Call::Change, &e))
}
