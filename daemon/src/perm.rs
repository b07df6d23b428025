//! Who may do what to a mailbox (SPEC §2): the owner/group/other classes of `chmod`, with
//! `w` to send and `r` to receive, peek and stat; the owner (or creator) and root manage.
//! Identity comes only from the kernel — `SO_PEERCRED` and `SO_PEERGROUPS` read at
//! accept — never from anything a client says.
//!
//! A denied operation answers "permission denied" (exit 77), as `msgget(2)` answers
//! `EACCES`, rather than pretending the mailbox does not exist: names are one namespace,
//! so `create` would reveal it anyway, and a truthful error is what lets an admin fix a
//! mode. What is hidden is what can be hidden: `ls` lists only the mailboxes the caller
//! may read or manage, and `stat` (owner, sizes, counters) needs `r`.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use ipc_proto::Credentials;

use crate::mailbox::LeaseBook;
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
}

impl Caller {
    pub fn uid(&self) -> u32 {
        self.creds.uid
    }

    /// Whether the caller is in group `gid`, as its primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.creds.gid == gid || self.groups.contains(&gid)
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

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive, peek, stat.
    Read,
    /// Send.
    Write,
    /// Change settings, purge, remove: the owner, the creator or root.
    Manage,
}

/// Whose authority a route (a dead letter on its way) carries: its source mailbox's
/// owner at the moment the message was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOwner {
    pub uid: u32,
    pub gid: u32,
}

/// Ownership and mode of one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub creator_uid: u32,
    pub creator_gid: u32,
    pub mode: u32,
}

impl Ownership {
    /// The authority of routes out of a mailbox with this ownership.
    pub fn route_owner(&self) -> RouteOwner {
        RouteOwner {
            uid: self.owner_uid,
            gid: self.owner_gid,
        }
    }

    /// Whether `caller` may perform an operation needing `access`. Like the kernel's
    /// `ipcperms`: the owner or creator uses the owner bits, a member (by primary or
    /// supplementary group) of the owning or creating group the group bits, everyone else
    /// the other bits; root passes every check.
    pub fn allows(&self, caller: &Caller, access: Access) -> bool {
        self.allows_ids(caller.uid(), |gid| caller.in_group(gid), access)
    }

    /// Whether the owner of a route (a dead-letter mailbox's source) may write here: the
    /// route acts as the source mailbox's owner uid and group. Its supplementary groups
    /// are not known to the daemon unless that user is connected, so they do not count.
    pub fn allows_route(&self, route: RouteOwner) -> bool {
        self.allows_ids(route.uid, |gid| gid == route.gid, Access::Write)
    }

    fn allows_ids(&self, uid: u32, in_group: impl Fn(u32) -> bool, access: Access) -> bool {
        if uid == 0 {
            return true;
        }
        let is_owner = uid == self.owner_uid || uid == self.creator_uid;
        if access == Access::Manage {
            return is_owner;
        }
        let bits = if is_owner {
            self.mode >> 6
        } else if in_group(self.owner_gid) || in_group(self.creator_gid) {
            self.mode >> 3
        } else {
            self.mode
        } & 0o7;
        let needed = match access {
            Access::Read => 0o4,
            Access::Write => 0o2,
            Access::Manage => unreachable!("handled above"),
        };
        bits & needed != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quota::Accounts;

    fn who(uid: u32, gid: u32) -> Caller {
        with_groups(uid, gid, &[])
    }

    fn with_groups(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            creds: Credentials { pid: 1, uid, gid },
            groups: groups.to_vec(),
            account: Accounts::default().account(uid),
            leases: Arc::default(),
        }
    }

    #[test]
    fn classes_and_bits() {
        let own = Ownership {
            owner_uid: 1000,
            owner_gid: 100,
            creator_uid: 1000,
            creator_gid: 100,
            mode: 0o640,
        };
        assert!(own.allows(&who(1000, 1), Access::Read));
        assert!(own.allows(&who(1000, 1), Access::Write));
        assert!(own.allows(&who(1000, 1), Access::Manage));
        assert!(own.allows(&who(2000, 100), Access::Read));
        assert!(!own.allows(&who(2000, 100), Access::Write));
        assert!(!own.allows(&who(2000, 100), Access::Manage));
        assert!(!own.allows(&who(3000, 300), Access::Read));
        assert!(own.allows(&who(0, 0), Access::Manage));
        // Owner bits apply to the owner even when they deny and other bits allow.
        let odd = Ownership { mode: 0o066, ..own };
        assert!(!odd.allows(&who(1000, 1), Access::Read));
        assert!(odd.allows(&who(3000, 300), Access::Write));
    }

    #[test]
    fn supplementary_groups_count_as_the_group() {
        let own = Ownership {
            owner_uid: 1000,
            owner_gid: 100,
            creator_uid: 1000,
            creator_gid: 100,
            mode: 0o640,
        };
        assert!(!own.allows(&with_groups(2000, 200, &[300]), Access::Read));
        assert!(own.allows(&with_groups(2000, 200, &[300, 100]), Access::Read));
        assert!(!own.allows(&with_groups(2000, 200, &[100]), Access::Write));
    }

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

    #[test]
    fn creator_keeps_owner_rights_after_chown() {
        let own = Ownership {
            owner_uid: 2000,
            owner_gid: 200,
            creator_uid: 1000,
            creator_gid: 100,
            mode: 0o600,
        };
        assert!(own.allows(&who(1000, 100), Access::Manage));
        assert!(own.allows(&who(1000, 100), Access::Read));
    }
}
