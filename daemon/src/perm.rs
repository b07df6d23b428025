//! Who may do what to a mailbox (SPEC §2): the owner/group/other classes of `chmod`, with
//! `w` to send and `r` to receive, peek and stat; the owner (or creator) and root manage.
//! Identity comes only from `SO_PEERCRED`, never from anything a client says.

use ipc_proto::Credentials;

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
    /// Whether `caller` may perform an operation needing `access`. Like the kernel's
    /// `ipcperms`: the owner or creator uses the owner bits, a member of the owning group
    /// the group bits, everyone else the other bits; root passes every check.
    pub fn allows(&self, caller: &Credentials, access: Access) -> bool {
        if caller.uid == 0 {
            return true;
        }
        let is_owner = caller.uid == self.owner_uid || caller.uid == self.creator_uid;
        if access == Access::Manage {
            return is_owner;
        }
        let bits = if is_owner {
            self.mode >> 6
        } else if caller.gid == self.owner_gid {
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

    fn who(uid: u32, gid: u32) -> Credentials {
        Credentials { pid: 1, uid, gid }
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
