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
//!
//! The checks take only the ids they need — a uid and group membership — so that this
//! module knows nothing of connections or mailboxes: who is asking is `caller.rs`.

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

    /// Whether the owner of a route (a dead-letter mailbox's source) may write here: the
    /// route acts as the source mailbox's owner uid and group. Its supplementary groups
    /// are not known to the daemon unless that user is connected, so they do not count.
    pub fn allows_route(&self, route: RouteOwner) -> bool {
        self.allows(route.uid, |gid| gid == route.gid, Access::Write)
    }

    /// Whether `uid`, a member of the groups for which `in_group` holds, may perform an
    /// operation needing `access`. Like the kernel's `ipcperms`: the owner or creator
    /// uses the owner bits, a member (by primary or supplementary group) of the owning or
    /// creating group the group bits, everyone else the other bits; root passes every
    /// check.
    pub fn allows(&self, uid: u32, in_group: impl Fn(u32) -> bool, access: Access) -> bool {
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

    /// A uid whose groups are its primary `gid` and `groups`.
    struct Who {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
    }

    fn who(uid: u32, gid: u32) -> Who {
        with_groups(uid, gid, &[])
    }

    fn with_groups(uid: u32, gid: u32, groups: &[u32]) -> Who {
        Who {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    impl Ownership {
        fn lets(&self, who: &Who, access: Access) -> bool {
            self.allows(who.uid, |g| g == who.gid || who.groups.contains(&g), access)
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
        assert!(own.lets(&who(1000, 1), Access::Read));
        assert!(own.lets(&who(1000, 1), Access::Write));
        assert!(own.lets(&who(1000, 1), Access::Manage));
        assert!(own.lets(&who(2000, 100), Access::Read));
        assert!(!own.lets(&who(2000, 100), Access::Write));
        assert!(!own.lets(&who(2000, 100), Access::Manage));
        assert!(!own.lets(&who(3000, 300), Access::Read));
        assert!(own.lets(&who(0, 0), Access::Manage));
        // Owner bits apply to the owner even when they deny and other bits allow.
        let odd = Ownership { mode: 0o066, ..own };
        assert!(!odd.lets(&who(1000, 1), Access::Read));
        assert!(odd.lets(&who(3000, 300), Access::Write));
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
        assert!(!own.lets(&with_groups(2000, 200, &[300]), Access::Read));
        assert!(own.lets(&with_groups(2000, 200, &[300, 100]), Access::Read));
        assert!(!own.lets(&with_groups(2000, 200, &[100]), Access::Write));
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
        assert!(own.lets(&who(1000, 100), Access::Manage));
        assert!(own.lets(&who(1000, 100), Access::Read));
    }
}
