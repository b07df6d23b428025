//! Who is asking: the process at the other end of a connection as the kernel reported
//! it at accept (`SO_PEERCRED`, `SO_PEERGROUPS`), the account its charges go to, and the
//! leases it holds that end with its connection.
//!
//! It sits above the mailbox (it holds a [`LeaseBook`]) and below the broker and
//! dispatch, which take it; `perm` stays below both, checking bare ids.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use ipc_proto::{Credentials, MailboxName, PRIVATE_PREFIX};

use crate::mailbox::{Completions, LeaseBook, Mailbox, Origin};
use crate::perm::{Access, Ownership};
use crate::quota::UidAccount;

/// Who is asking: the process at the other end of a connection, as the kernel reported
/// it, with the account its charges go to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub creds: Credentials,
    /// Supplementary groups (the primary one is `creds.gid`).
    pub groups: Vec<u32>,
    pub account: Arc<UidAccount>,
    /// The leases this connection holds that end when it closes.
    pub leases: Arc<LeaseBook>,
    /// The connection's number, unique while the daemon runs: it names the connection's
    /// private mailboxes.
    pub connection: u64,
    /// The private mailboxes made for this connection (its subscriptions), removed when
    /// it closes.
    pub private: Arc<Mutex<Vec<MailboxName>>>,
    /// The origins of the messages this connection sends, by who pays for them and at
    /// what overhead: almost always one (its own uid), a few for a publisher whose
    /// copies go to mailboxes of other owners. Shared by its messages, so that each
    /// holds a pointer rather than the credentials and a charge.
    pub origins: Arc<Mutex<Vec<Arc<Origin>>>>,
    /// The mailboxes this connection used last, with their ownership as it was read: a
    /// request to one of them finds it without the table's lock, and checks its access
    /// without the mailbox's.
    pub recent: RefCell<Recent>,
    /// Where this connection's parked receives are handed their results (see
    /// `mailbox::parked`); its own task takes them from there.
    pub parked: Arc<Completions>,
}

/// Mailboxes a connection keeps at hand: a producer and a consumer use one, a client
/// that asks and waits for answers two.
const RECENT_KEPT: usize = 4;

/// A connection's recently used mailboxes, each with its ownership and the mailbox's
/// [`version`](Mailbox::version) it was read at; one whose version has moved since (its
/// settings changed, or it was removed) is looked up again.
#[derive(Debug, Default, Clone)]
pub struct Recent {
    kept: Vec<(Arc<Mailbox>, Ownership, u64)>,
    /// The entry the next one replaces once all are taken.
    next: usize,
}

impl Recent {
    /// The mailbox named `name`, if kept and unchanged since, with its ownership.
    pub fn get(&self, name: &MailboxName) -> Option<(&Arc<Mailbox>, Ownership)> {
        self.kept
            .iter()
            .find(|(m, _, version)| m.name() == name && m.version() == *version)
            .map(|(m, ownership, _)| (m, *ownership))
    }

    /// Keeps `mailbox`, with its ownership as of `version`, in place of what was kept
    /// under its name or of the entry used least lately.
    pub fn keep(&mut self, mailbox: &Arc<Mailbox>, ownership: Ownership, version: u64) {
        let entry = (mailbox.clone(), ownership, version);
        if let Some(i) = self
            .kept
            .iter()
            .position(|(m, ..)| m.name() == mailbox.name())
        {
            self.kept[i] = entry;
        } else if self.kept.len() < RECENT_KEPT {
            self.kept.push(entry);
        } else {
            self.kept[self.next] = entry;
            self.next = (self.next + 1) % RECENT_KEPT;
        }
    }
}

/// Origins a connection keeps at most; a publisher to more owners than this makes a
/// new one now and then, which costs only an allocation.
const ORIGINS_KEPT: usize = 8;

impl Caller {
    pub fn uid(&self) -> u32 {
        self.creds.uid
    }

    /// Whether the caller is in group `gid`, as its primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.creds.gid == gid || self.groups.contains(&gid)
    }

    /// The name of this connection's reply mailbox: where the replies to its calls are
    /// sent (`_ipcd/reply/N`). It is no mailbox in the table: a reply sent there goes
    /// straight to the call that waits for it, or is refused.
    pub fn reply_mailbox(&self) -> MailboxName {
        MailboxName::new(format!("{PRIVATE_PREFIX}reply/{}", self.connection))
            .expect("a well-formed name")
    }

    /// The origin of a message this caller sends, charged to `payer` with `overhead`.
    pub fn origin(&self, payer: &Arc<UidAccount>, overhead: u64) -> Arc<Origin> {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = origins
            .iter()
            .position(|o| o.is(self.creds, payer, overhead))
        {
            return origins[i].clone();
        }
        if origins.len() == ORIGINS_KEPT {
            origins.remove(0);
        }
        let origin = Arc::new(Origin::new(self.creds, Some(payer.clone()), overhead));
        origins.push(origin.clone());
        origin
    }

    /// Whether the caller may perform an operation needing `access` on a mailbox with
    /// `ownership` (see [`Ownership::allows`]).
    pub fn may(&self, ownership: &Ownership, access: Access) -> bool {
        ownership.allows(self.uid(), |gid| self.in_group(gid), access)
    }
}

/// The supplementary groups of the process at the other end of `socket`
/// (`SO_PEERGROUPS`, Linux 4.13+), as they were when it connected.
pub fn peer_groups(socket: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    loop {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| io::Error::other("group list too long"))?;
        // SAFETY: the buffer is `len` bytes of writable gid_t slots; the kernel writes at
        // most `len` bytes and reports how many it wrote (or needs) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says what is needed.
        if error.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_groups_are_this_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut expected: Vec<u32> = {
            // SAFETY: a null buffer with size 0 only asks for the count.
            let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
            let mut buf = vec![0; usize::try_from(n).unwrap()];
            // SAFETY: `buf` has room for `n` gids.
            let n = unsafe { libc::getgroups(n, buf.as_mut_ptr()) };
            buf.truncate(usize::try_from(n).unwrap());
            buf
        };
        let mut got = peer_groups(&a).unwrap();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
    }
}
