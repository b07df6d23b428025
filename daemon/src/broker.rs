//! The broker's shared state: the table of mailboxes, who is connected, and whether the
//! daemon is stopping. It does no I/O; `dispatch` calls it and `peer` owns the sockets.
//!
//! Lock order: the mailbox table's lock may be held while taking a mailbox's lock, never
//! the reverse. Neither is ever held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ipc_proto::{CreateRequest, DaemonStatus, ErrorCode, ErrorReply, MailboxName, UidUsage};

use crate::config::{Config, Limits};
use crate::mailbox::{Mailbox, OpResult, Settings};
use crate::perm::{Caller, Ownership};
use crate::quota::{Accounts, Charge, Resource, snapshot};

/// The daemon's mailboxes and the per-uid accounts of what everyone holds.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    mailboxes: Mutex<HashMap<MailboxName, Arc<Mailbox>>>,
    accounts: Accounts,
    started: Instant,
    stopping: AtomicBool,
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
            accounts: Accounts::default(),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Charges `amount` of `resource` to the caller's uid, within its quota.
    pub fn charge(&self, caller: &Caller, resource: Resource, amount: u64) -> OpResult<Charge> {
        let limit = resource.limit(&self.config.quota_for(caller.uid()));
        caller.account.charge(resource, amount, limit)
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
    pub fn create(&self, caller: &Caller, request: CreateRequest) -> OpResult<bool> {
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
        let owned = self.charge(caller, Resource::Mailboxes, 1)?;
        let (uid, gid) = (caller.creds.uid, caller.creds.gid);
        let settings = Settings {
            ownership: Ownership {
                owner_uid: uid,
                owner_gid: gid,
                creator_uid: uid,
                creator_gid: gid,
                mode,
            },
            durable: false,
            limits,
        };
        let name = request.mailbox;
        tracing::debug!(mailbox = %name, uid, "mailbox created");
        mailboxes.insert(name.clone(), Arc::new(Mailbox::new(name, settings, owned)));
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
    pub fn status(&self, caller: &Caller) -> DaemonStatus {
        let limit = |n: u64| (n != u64::MAX).then_some(n);
        let mut connections = 0;
        let mut users = Vec::new();
        for account in self.accounts.all() {
            let [conns, owned, queued] = snapshot(&account);
            connections += conns;
            if caller.uid() != 0 && account.uid() != caller.uid() {
                continue;
            }
            let quota = self.config.quota_for(account.uid());
            users.push(UidUsage {
                uid: account.uid(),
                connections: conns,
                mailboxes: owned,
                queued_bytes: queued,
                max_connections: limit(quota.connections),
                max_mailboxes: limit(quota.mailboxes),
                max_queued_bytes: limit(quota.queued_bytes),
                max_in_flight: limit(quota.in_flight),
            });
        }
        let (mut messages, mut bytes) = (0, 0);
        let all = self.all();
        for mailbox in &all {
            let (m, b) = mailbox.usage();
            messages += m;
            bytes += b;
        }
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections,
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
