//! The broker's shared state: the table of mailboxes, who is connected, and whether the
//! daemon is stopping. It does no I/O; `dispatch` calls it and `peer` owns the sockets.
//!
//! Lock order: the mailbox table's lock may be held while taking a mailbox's lock, never
//! the reverse. Neither is ever held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ipc_proto::{
    CreateRequest, Credentials, DaemonStatus, ErrorCode, ErrorReply, MailboxName, UidUsage,
};

use crate::config::{Config, Limits};
use crate::mailbox::{Mailbox, OpResult, Settings};
use crate::perm::Ownership;

/// The daemon's mailboxes and connections.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    mailboxes: Mutex<HashMap<MailboxName, Arc<Mailbox>>>,
    /// Open connections per uid, kept by [`ConnectionGuard`]s.
    connections: Mutex<HashMap<u32, u64>>,
    started: Instant,
    stopping: AtomicBool,
}

/// Counts one connection for its uid while it lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    broker: Arc<Broker>,
    uid: u32,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut connections = lock(&self.broker.connections);
        if let Some(n) = connections.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                connections.remove(&self.uid);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn no_such_mailbox(name: &MailboxName) -> ErrorReply {
    ErrorReply::new(ErrorCode::NoSuchMailbox, format!("no mailbox named {name}"))
}

fn shutting_down() -> ErrorReply {
    ErrorReply::new(ErrorCode::ShuttingDown, "ipcd is shutting down")
}

impl Broker {
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            mailboxes: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Registers a connection of `uid`; it is counted until the guard drops.
    pub fn connect(self: &Arc<Self>, uid: u32) -> ConnectionGuard {
        *lock(&self.connections).entry(uid).or_default() += 1;
        ConnectionGuard {
            broker: self.clone(),
            uid,
        }
    }

    pub fn get(&self, name: &MailboxName) -> OpResult<Arc<Mailbox>> {
        lock(&self.mailboxes)
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_mailbox(name))
    }

    /// Every mailbox, in name order.
    pub fn all(&self) -> Vec<Arc<Mailbox>> {
        let mut all: Vec<_> = lock(&self.mailboxes).values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Checks requested limits against the ceilings and fills in defaults.
    pub fn limits(&self, base: Limits, changes: &ipc_proto::LimitChanges) -> OpResult<Limits> {
        let ceilings = self.config.ceilings;
        let pick = |what: &str, asked: Option<u64>, current: u64, ceiling: u64| {
            let value = asked.unwrap_or(current);
            if value == 0 {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidArgument,
                    format!("{what} must be at least 1"),
                ));
            }
            if value > ceiling {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidArgument,
                    format!("{what} of {value} is above the daemon's ceiling of {ceiling}"),
                ));
            }
            Ok(value)
        };
        Ok(Limits {
            max_msgs: pick(
                "max_msgs",
                changes.max_msgs,
                base.max_msgs,
                ceilings.max_msgs,
            )?,
            max_bytes: pick(
                "max_bytes",
                changes.max_bytes,
                base.max_bytes,
                ceilings.max_bytes,
            )?,
            max_msg_size: pick(
                "max_msg_size",
                changes.max_msg_size,
                base.max_msg_size,
                ceilings.max_msg_size,
            )?,
        })
    }

    /// Creates a mailbox owned by `caller`. Returns whether it was created (false: it
    /// existed and `exist_ok` was set).
    pub fn create(&self, caller: &Credentials, request: CreateRequest) -> OpResult<bool> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(shutting_down());
        }
        if request.durable {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                "durable mailboxes are not available in this version of ipcd",
            ));
        }
        let mode = check_mode(request.mode.unwrap_or(self.config.default_mode))?;
        let limits = self.limits(self.config.default_limits, &request.limits)?;
        let mut mailboxes = lock(&self.mailboxes);
        if mailboxes.contains_key(&request.mailbox) {
            return if request.exist_ok {
                Ok(false)
            } else {
                Err(ErrorReply::new(
                    ErrorCode::Exists,
                    format!("mailbox {} already exists", request.mailbox),
                ))
            };
        }
        let settings = Settings {
            ownership: Ownership {
                owner_uid: caller.uid,
                owner_gid: caller.gid,
                creator_uid: caller.uid,
                creator_gid: caller.gid,
                mode,
            },
            durable: false,
            limits,
        };
        let name = request.mailbox;
        tracing::debug!(mailbox = %name, uid = caller.uid, "mailbox created");
        mailboxes.insert(name.clone(), Arc::new(Mailbox::new(name, settings)));
        Ok(true)
    }

    /// Takes `mailbox` out of the table (if it is still the one the caller checked) and
    /// wakes its waiters with `Removed`.
    pub fn remove(&self, mailbox: &Arc<Mailbox>) {
        {
            let mut mailboxes = lock(&self.mailboxes);
            match mailboxes.get(mailbox.name()) {
                Some(current) if Arc::ptr_eq(current, mailbox) => {
                    mailboxes.remove(mailbox.name());
                }
                _ => return,
            }
        }
        mailbox.close(
            ErrorReply::new(
                ErrorCode::Removed,
                format!("mailbox {} was removed", mailbox.name()),
            ),
            true,
        );
    }

    /// Stops taking new work: every mailbox's waiters are told the daemon is stopping.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        for mailbox in self.all() {
            mailbox.close(shutting_down(), false);
        }
    }

    /// The daemon's figures; `users` holds only the caller's own uid unless it is root.
    pub fn status(&self, caller: &Credentials) -> DaemonStatus {
        let mut users: HashMap<u32, UidUsage> = HashMap::new();
        let usage = |users: &mut HashMap<u32, UidUsage>, uid| {
            users.entry(uid).or_insert(UidUsage {
                uid,
                connections: 0,
                mailboxes: 0,
            });
        };
        let connections = lock(&self.connections).clone();
        for (&uid, &n) in &connections {
            usage(&mut users, uid);
            users.get_mut(&uid).expect("just inserted").connections = n;
        }
        let (mut messages, mut bytes) = (0, 0);
        let all = self.all();
        for mailbox in &all {
            let (m, b) = mailbox.usage();
            messages += m;
            bytes += b;
            let owner = mailbox.settings().ownership.owner_uid;
            usage(&mut users, owner);
            users.get_mut(&owner).expect("just inserted").mailboxes += 1;
        }
        let mut users: Vec<UidUsage> = users
            .into_values()
            .filter(|u| caller.uid == 0 || u.uid == caller.uid)
            .collect();
        users.sort_by_key(|u| u.uid);
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections: connections.values().sum(),
            mailboxes: all.len() as u64,
            messages,
            bytes,
            users,
        }
    }
}

/// A mode is permission bits only: no file type, setuid or sticky bits.
pub fn check_mode(mode: u32) -> OpResult<u32> {
    if mode > 0o777 {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("mode {mode:o} is not a permission mode (at most 777)"),
        ));
    }
    Ok(mode)
}
