//! One process's way to the daemon, and what it knows of its queues.
//!
//! Each thread has its own connection (a `libipc_client` handle), so a thread blocked in
//! `msgrcv` never holds up another's `msgsnd`, as with the kernel. A connection belongs
//! to the process and the identity that made it: after a `fork` the child makes its own
//! (sharing the parent's socket would mix their requests, and the daemon must see the
//! child's pid for `msg_lspid`/`msg_lrpid`), and after a `seteuid`/`setegid` a new one
//! is made, since the daemon checks permissions against the identity a connection had
//! when it was made.
//!
//! Queue ids are the mailboxes' serial numbers, the same for every process; the map from
//! an id to its mailbox is kept for the process (a child inherits it) and filled from
//! the daemon's list for an id learnt some other way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use ipc_capi::ipc_mailbox_info;
use libc::{c_int, key_t};

use crate::abi::{self, Connection, Failure};

/// A queue this process has an id for.
#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    /// Its key; 0 for a private queue.
    pub key: key_t,
}

/// The mailbox of the queue with `key`; `None` for `IPC_PRIVATE`.
pub fn name_of(key: key_t) -> Option<String> {
    (key != libc::IPC_PRIVATE).then(|| format!("sysv/{key}"))
}

/// The key in a queue's mailbox name (0 for a private queue), or `None` if it is not a
/// queue of this shim.
pub fn key_of(name: &str) -> Option<key_t> {
    let rest = name.strip_prefix("sysv/")?;
    if rest.starts_with("private/") {
        return Some(libc::IPC_PRIVATE);
    }
    rest.parse().ok()
}

/// The id of the queue that is mailbox `info`.
pub fn id_of(info: &ipc_mailbox_info) -> Result<c_int, c_int> {
    // Serials past what an int holds would take the daemon two billion mailboxes.
    c_int::try_from(info.serial).map_err(|_| libc::ENOSPC)
}

fn ids() -> MutexGuard<'static, HashMap<c_int, Queue>> {
    static IDS: LazyLock<Mutex<HashMap<c_int, Queue>>> = LazyLock::new(|| {
        // Held across every fork, so that a child never starts with the map locked by
        // a thread that does not exist in it.
        // SAFETY: the handlers are plain functions that live as long as the process.
        unsafe { libc::pthread_atfork(Some(hold_ids), Some(release_ids), Some(release_ids)) };
        Mutex::default()
    });
    // A poisoned map is still a map: nothing in it is left half-written.
    IDS.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The map, locked by the forking thread from just before a fork until just after,
    /// in the parent and in the child alike.
    static HELD: RefCell<Option<MutexGuard<'static, HashMap<c_int, Queue>>>> =
        const { RefCell::new(None) };
}

// Neither may panic: a panic out of a fork handler aborts the program. Without the
// thread's storage (a fork from an `atexit` handler) the map is left alone.
extern "C" fn hold_ids() {
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            *held = Some(ids());
        }
    });
}

extern "C" fn release_ids() {
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            drop(held.take());
        }
    });
}

/// Where the ids this process makes up for itself start (see [`local_id`]).
pub const FIRST_LOCAL_ID: c_int = 0x4000_0000;

/// An id for a queue whose serial this process may not learn (it may not read the
/// queue, so the daemon will not say): the kernel still gives such a caller an id, and
/// refuses what it then does with it. Above any serial a daemon gives out in practice.
pub fn local_id(queue: Queue) -> c_int {
    let mut ids = ids();
    if let Some((&id, _)) = ids.iter().find(|(_, q)| q.name == queue.name) {
        return id;
    }
    let id = (FIRST_LOCAL_ID..c_int::MAX)
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
pub fn queue(connection: &mut Connection, id: c_int) -> Result<Queue, c_int> {
    if let Some(queue) = ids().get(&id) {
        return Ok(queue.clone());
    }
    let list = connection.list().map_err(|f| failed(&f))?;
    let info = list
        .iter()
        .find(|m| m.serial == id as u64 && key_of(&abi::name_of(m)).is_some())
        .ok_or(libc::EINVAL)?;
    let name = abi::name_of(info);
    let queue = Queue {
        key: key_of(&name).unwrap_or(0),
        name,
    };
    remember(id, queue.clone());
    Ok(queue)
}

/// A connection, and whose it is.
struct Owned {
    pid: u32,
    euid: u32,
    egid: u32,
    connection: Connection,
}

thread_local! {
    static CONNECTION: RefCell<Option<Owned>> = const { RefCell::new(None) };
}

/// Runs `call` with this thread's connection to the daemon, made (again) if there is
/// none, or it belongs to another process or identity. Where the thread's connection
/// cannot be had — its thread-local storage is gone (an `atexit` handler, a thread's
/// key destructor) or a signal handler came in during a call that holds it — a
/// connection made for this one call serves instead.
pub fn with_connection<T>(
    call: impl FnOnce(&mut Connection) -> Result<T, c_int>,
) -> Result<T, c_int> {
    let mut call = Some(call);
    let through_own = CONNECTION.try_with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return None;
        };
        let call = call.take().expect("called once");
        Some(with_own(&mut slot, call))
    });
    match through_own {
        Ok(Some(outcome)) => outcome,
        _ => {
            let call = call.take().expect("not called yet");
            let mut connection = Connection::open().map_err(|f| failed(&f))?;
            call(&mut connection)
        }
    }
}

fn with_own<T>(
    slot: &mut Option<Owned>,
    call: impl FnOnce(&mut Connection) -> Result<T, c_int>,
) -> Result<T, c_int> {
    // SAFETY: getpid, geteuid and getegid have no preconditions.
    let (pid, euid, egid) = unsafe { (libc::getpid() as u32, libc::geteuid(), libc::getegid()) };
    let current = slot
        .as_ref()
        .is_some_and(|c| (c.pid, c.euid, c.egid) == (pid, euid, egid));
    if !current {
        // Closing the parent's socket in a child leaves the parent's connection as it
        // was: nothing is written on it.
        *slot = None;
        let connection = Connection::open().map_err(|f| failed(&f))?;
        *slot = Some(Owned {
            pid,
            euid,
            egid,
            connection,
        });
    }
    let owned = slot.as_mut().expect("connected");
    let outcome = call(&mut owned.connection);
    if matches!(outcome, Err(libc::EIO)) {
        // The connection is broken: the next call makes a new one.
        *slot = None;
    }
    outcome
}

/// The errno for a failure no call-specific rule covers: the daemon could not be reached
/// or the connection broke, said once on stderr since no errno says it.
pub fn failed(f: &Failure) -> c_int {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("libipcd-sysv: {}", f.message);
    }
    libc::EIO
}
