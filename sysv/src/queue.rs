//! One process's way to the daemon, and what it knows of its queues.
//!
//! Each thread has its own connection, so a thread blocked in `msgrcv` never holds up
//! another's `msgsnd`, as with the kernel. A connection belongs to the process and the
//! identity that made it: after a `fork` the child makes its own (sharing the parent's
//! socket would mix their requests, and the daemon must see the child's pid for
//! `msg_lspid`/`msg_lrpid`), and after a `seteuid`/`setegid` a new one is made, since the
//! daemon checks permissions against the identity a connection had when it was made.
//!
//! Queue ids are the mailboxes' serial numbers, the same for every process; the map from
//! an id to its mailbox is kept for the process (a child inherits it) and filled from
//! the daemon's list for an id learnt some other way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use ipc_client::{BlockingClient, Error, MailboxInfo, MailboxName};
use libc::{c_int, key_t};

/// A queue this process has an id for.
#[derive(Debug, Clone)]
pub struct Queue {
    pub name: MailboxName,
    /// Its key; 0 for a private queue.
    pub key: key_t,
}

/// The mailbox of the queue with `key`; `None` for `IPC_PRIVATE`.
pub fn name_of(key: key_t) -> Option<MailboxName> {
    (key != libc::IPC_PRIVATE)
        .then(|| MailboxName::new(format!("sysv/{key}")).expect("a well-formed name"))
}

/// The key in a queue's mailbox name (0 for a private queue), or `None` if it is not a
/// queue of this shim.
pub fn key_of(name: &MailboxName) -> Option<key_t> {
    let rest = name.as_str().strip_prefix("sysv/")?;
    if rest.starts_with("private/") {
        return Some(libc::IPC_PRIVATE);
    }
    rest.parse().ok()
}

/// The id of the queue that is mailbox `info`.
pub fn id_of(info: &MailboxInfo) -> Result<c_int, c_int> {
    // Serials past what an int holds would take the daemon two billion mailboxes.
    c_int::try_from(info.serial).map_err(|_| libc::ENOSPC)
}

fn ids() -> MutexGuard<'static, HashMap<c_int, Queue>> {
    static IDS: LazyLock<Mutex<HashMap<c_int, Queue>>> = LazyLock::new(Mutex::default);
    // A poisoned map is still a map: nothing in it is left half-written.
    IDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// An id for a queue whose serial this process may not learn (it may not read the
/// queue, so the daemon will not say): the kernel still gives such a caller an id, and
/// refuses what it then does with it. Above any serial a daemon gives out in practice.
pub fn local_id(queue: Queue) -> c_int {
    let mut ids = ids();
    if let Some((&id, _)) = ids.iter().find(|(_, q)| q.name == queue.name) {
        return id;
    }
    let id = (0x4000_0000..c_int::MAX)
        .find(|id| !ids.contains_key(id))
        .expect("a free id");
    ids.insert(id, queue);
    id
}

/// Remembers that `id` is `queue`.
pub fn remember(id: c_int, queue: Queue) {
    ids().insert(id, queue);
}

/// Forgets `id` (its queue was removed).
pub fn forget(id: c_int) {
    ids().remove(&id);
}

/// The queue with `id`: known to this process, or found in the daemon's list; `EINVAL`
/// for an id that is no queue's (as the kernel says).
pub fn queue(client: &mut BlockingClient, id: c_int) -> Result<Queue, c_int> {
    if let Some(queue) = ids().get(&id) {
        return Ok(queue.clone());
    }
    let list = client.list().map_err(|e| failed(&e))?;
    let info = list
        .iter()
        .find(|m| m.serial == id as u64 && key_of(&m.name).is_some())
        .ok_or(libc::EINVAL)?;
    let queue = Queue {
        name: info.name.clone(),
        key: key_of(&info.name).unwrap_or(0),
    };
    remember(id, queue.clone());
    Ok(queue)
}

/// A connection, and whose it is.
struct Connection {
    pid: u32,
    euid: u32,
    egid: u32,
    client: BlockingClient,
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Runs `call` with this thread's connection to the daemon, made (again) if there is
/// none, or it belongs to another process or identity.
pub fn with_client<T>(
    call: impl FnOnce(&mut BlockingClient) -> Result<T, c_int>,
) -> Result<T, c_int> {
    CONNECTION.with(|cell| {
        let mut slot = cell.borrow_mut();
        // SAFETY: getpid, geteuid and getegid have no preconditions.
        let (pid, euid, egid) =
            unsafe { (libc::getpid() as u32, libc::geteuid(), libc::getegid()) };
        let current = slot
            .as_ref()
            .is_some_and(|c| (c.pid, c.euid, c.egid) == (pid, euid, egid));
        if !current {
            if let Some(old) = slot.take() {
                if old.pid != pid {
                    // The parent's socket: closing the child's copy leaves the parent's
                    // connection as it was, and nothing is written on it.
                    drop(old);
                }
            }
            let path = ipc_client::default_socket_path();
            let mut client =
                BlockingClient::connect_named(&path, "libipcd-sysv").map_err(|e| failed(&e))?;
            // A blocked msgsnd/msgrcv ends with EINTR on a signal, as in the kernel.
            client.set_interruptible(true);
            *slot = Some(Connection {
                pid,
                euid,
                egid,
                client,
            });
        }
        let connection = slot.as_mut().expect("connected");
        let outcome = call(&mut connection.client);
        if matches!(outcome, Err(libc::EIO)) {
            // The connection is broken: the next call makes a new one.
            *slot = None;
        }
        outcome
    })
}

/// The errno for an error no call-specific rule covers: the daemon could not be reached
/// or the connection broke, said once on stderr since no errno says it.
pub fn failed(e: &Error) -> c_int {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("libipcd-sysv: {e}");
    }
    libc::EIO
}
