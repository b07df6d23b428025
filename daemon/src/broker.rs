//! The broker's shared state: the table of mailboxes, who is connected, and whether the
//! daemon is stopping. It does no I/O; `dispatch` calls it and `peer` owns the sockets.
//!
//! Lock order: the mailbox table's lock may be held while taking a mailbox's lock, never
//! the reverse. Neither is ever held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use ipc_proto::{
    CreateRequest, DaemonStatus, Fsync, MailboxInfo, MailboxName, PRIVATE_PREFIX, Topic,
    TopicPattern, UidUsage,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::caller::Caller;
use crate::calls::Calls;
use crate::config::{Config, Limits};
use crate::logging::Throttle;
use crate::mailbox::{
    Closed, DeadLetter, DeadLetters, History, Link, Mailbox, Origin, Pending, Settings,
    headers_size,
};
use crate::perm::Ownership;
use crate::quota::{Accounts, Charge, Gauge, QuotaError, Resource, snapshot};
use crate::store::{MailboxDef, Store, Stored, StoredMessage};
use crate::topics::Bindings;

/// The daemon's mailboxes and the per-uid accounts of what everyone holds.
#[derive(Debug)]
pub struct Broker {
    /// Swapped whole on reload; readers take a snapshot.
    /// Read on every request: a load takes no lock and touches no shared count.
    config: ArcSwap<Config>,
    /// How many times `config` was swapped: what is read from it for every reply is
    /// kept by its connection until this moves.
    config_generation: AtomicU64,
    mailboxes: Mutex<HashMap<MailboxName, Arc<Mailbox>>>,
    accounts: Accounts,
    /// Connections of every uid not yet past their hello (`max_handshakes`).
    handshaking: Gauge,
    /// Payloads kept as the memfds they came in (`max_memfds`).
    memfds: Gauge,
    /// Where durable mailboxes live, or why there is no such place.
    store: Result<Store, String>,
    /// Every mailbox sends its dead letters here; [`Broker::deliver_dead_letters`]
    /// takes them to their mailboxes.
    dead_letters: DeadLetters,
    dead_letter_queue: Mutex<Option<mpsc::Receiver<DeadLetter>>>,
    started: Instant,
    stopping: AtomicBool,
    /// Which mailboxes are bound to which topic patterns, and what each binding costs
    /// its mailbox's owner. Lock order: taken after the mailbox table (binding and
    /// removal hold both), never with a mailbox's lock.
    bindings: Mutex<Bound>,
    /// Calls waiting for their replies.
    calls: Calls,
    /// Numbers connections, mailboxes (their `serial`) and the private mailboxes'
    /// names: a number is never given twice while the daemon runs.
    serial: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// No mailbox has the name asked for.
#[derive(Debug, Clone, Error)]
#[error("no mailbox named {0}")]
pub struct NoSuchMailbox(pub MailboxName);

/// A value a request asked for that is outside what the daemon allows.
#[derive(Debug, Clone, Error)]
pub enum InvalidArgument {
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("{what} of {value} is above the daemon's ceiling of {ceiling}")]
    AboveCeiling {
        what: &'static str,
        value: u64,
        ceiling: u64,
    },
    /// A TTL, delay or lease outside 1 ms to its `max_<what>`.
    #[error("a {what} of {ms} ms is out of range: 1 ms to max_{what} of {max_ms} ms")]
    OutOfRange {
        what: &'static str,
        ms: u64,
        max_ms: u128,
    },
    #[error("mode {0:o} is not a permission mode (at most 777)")]
    NotAMode(u32),
}

/// Why a create failed.
#[derive(Debug, Clone, Error)]
pub enum CreateError {
    #[error("ipcd is shutting down")]
    ShuttingDown,
    /// A durable mailbox was asked for, but the store could not be opened (why).
    #[error("durable mailboxes are unavailable: {0}")]
    DurableUnavailable(String),
    #[error("mailbox {0} already exists")]
    Exists(MailboxName),
    /// `exist_ok` was set, but the mailbox that exists differs from the request.
    #[error("mailbox {mailbox} already exists and is not what was asked: {}", differs.join("; "))]
    NotAsAsked {
        mailbox: MailboxName,
        differs: Vec<String>,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error(
        "mailbox names under {PRIVATE_PREFIX} are the daemon's own (subscriptions and reply \
         mailboxes); choose another name than {0}"
    )]
    Reserved(MailboxName),
    /// The owner's `mailboxes` quota.
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

/// The topic bindings and what each costs its mailbox's owner: a charge per binding,
/// given back when it is undone or its mailbox removed.
#[derive(Debug, Default)]
struct Bound {
    trie: Bindings,
    charges: HashMap<(MailboxName, TopicPattern), Charge>,
}

impl Bound {
    fn unbind_mailbox(&mut self, mailbox: &MailboxName) {
        for pattern in self.trie.patterns(mailbox) {
            self.charges.remove(&(mailbox.clone(), pattern));
        }
        self.trie.unbind_mailbox(mailbox);
    }
}

/// Why a bind was refused.
#[derive(Debug, Clone, Error)]
pub enum BindError {
    /// The owner's `queued_bytes` quota, which bindings count against.
    #[error(transparent)]
    Quota(QuotaError),
    #[error("mailbox {mailbox} is bound to {max} patterns already, its max_bindings")]
    TooMany { mailbox: MailboxName, max: u64 },
    #[error("mailbox {0} was removed")]
    Removed(MailboxName),
}

/// The answer to a create: at once, or once the store has the new mailbox.
#[derive(Debug)]
pub enum Created {
    /// Whether it was created (false: it existed and `exist_ok` was set).
    Now(bool),
    Storing(oneshot::Receiver<Stored>),
}

impl Broker {
    /// A broker with no mailboxes; durable ones go to `store` (or, if it could not be
    /// opened, are refused with its error).
    pub fn new(config: Config, store: Result<Store, String>) -> Self {
        let (dead_letters, queue) = mpsc::channel(config.dead_letter_backlog.max(1));
        Self {
            config: ArcSwap::from_pointee(config),
            config_generation: AtomicU64::new(0),
            mailboxes: Mutex::new(HashMap::new()),
            accounts: Accounts::default(),
            handshaking: Gauge::default(),
            memfds: Gauge::default(),
            store,
            dead_letters,
            dead_letter_queue: Mutex::new(Some(queue)),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            bindings: Mutex::new(Bound::default()),
            calls: Calls::default(),
            serial: AtomicU64::new(1),
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration in force now, to hold across waits: a [`Self::config`] guard
    /// is for a moment.
    pub fn config_held(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts `config` in force (SIGHUP): new defaults, ceilings, quotas and bounds apply to
    /// what comes next, and the declared mailboxes are created or brought in line.
    /// Connections stay; one already open keeps the `in_flight` quota it started with.
    pub fn reconfigure(&self, config: Config) {
        let old = self.config();
        if config.state_dir != old.state_dir {
            tracing::warn!(
                "state_dir changed to {}; that takes a restart, so {} stays in use",
                config.state_dir.display(),
                old.state_dir.display()
            );
        }
        self.config.store(Arc::new(config));
        self.config_generation.fetch_add(1, Ordering::Release);
        self.declare();
    }

    /// Moves each time the configuration is swapped (see [`Self::reconfigure`]).
    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Creates each mailbox the configuration declares that does not exist, and gives
    /// each that does the declared settings. Problems are logged; they stop nothing.
    pub fn declare(&self) {
        let config = self.config();
        // SAFETY: geteuid/getegid have no preconditions.
        let (me, my_group) = unsafe { (libc::geteuid(), libc::getegid()) };
        for d in &config.declared {
            let owner = d.owner.unwrap_or(me);
            let group = d.group.unwrap_or(my_group);
            let apply = |s: &mut Settings| {
                s.ownership.mode = d.mode;
                s.ownership.owner_uid = owner;
                s.ownership.owner_gid = group;
                s.limits = d.limits;
                s.max_deliveries = d.max_deliveries;
                s.dead_letter = d.dead_letter.clone();
                s.default_ttl = d.default_ttl;
            };
            if let Ok(mailbox) = self.get(&d.name) {
                let settings = mailbox.settings();
                if settings.fsync.is_some() != d.fsync.is_some() {
                    tracing::warn!(
                        "mailbox {} is declared {} but exists as a {} mailbox; remove it to change that",
                        d.name,
                        if d.fsync.is_some() {
                            "durable"
                        } else {
                            "memory"
                        },
                        if settings.fsync.is_some() {
                            "durable"
                        } else {
                            "memory"
                        },
                    );
                }
                let moved = (settings.ownership.owner_uid != owner)
                    .then(|| self.accounts.account(owner).force(Resource::Mailboxes, 1));
                // The store's answer is not awaited: nobody is waiting for this change.
                drop(mailbox.update(apply));
                if let Some(charge) = moved {
                    mailbox.move_owner_charge(charge);
                }
                self.bind_declared(&mailbox, &d.bindings);
                continue;
            }
            if let (Err(why), Some(_)) = (&self.store, d.fsync) {
                tracing::error!(
                    "declared durable mailbox {} not created: durable mailboxes are unavailable: {why}",
                    d.name
                );
                continue;
            }
            let mut settings = Settings {
                ownership: Ownership {
                    owner_uid: owner,
                    owner_gid: group,
                    creator_uid: me,
                    creator_gid: my_group,
                    mode: d.mode,
                },
                fsync: d.fsync,
                limits: d.limits,
                max_deliveries: 0,
                dead_letter: None,
                default_ttl: None,
                drop_oldest: false,
            };
            apply(&mut settings);
            let mut mailboxes = lock(&self.mailboxes);
            if mailboxes.contains_key(&d.name) {
                continue;
            }
            let owned = self.accounts.account(owner).force(Resource::Mailboxes, 1);
            // Nobody waits for the definition to be stored.
            drop(self.insert_new(&mut mailboxes, d.name.clone(), settings, owned));
            let mailbox = mailboxes.get(&d.name).cloned().expect("just inserted");
            drop(mailboxes);
            tracing::info!(mailbox = %d.name, "declared mailbox created");
            self.bind_declared(&mailbox, &d.bindings);
        }
    }

    /// Binds a declared mailbox to its declared patterns (those it has already stay).
    fn bind_declared(&self, mailbox: &Arc<Mailbox>, patterns: &[TopicPattern]) {
        for pattern in patterns {
            if let Err(e) = self.bind(mailbox, pattern) {
                tracing::error!(
                    "declared binding of {} to {pattern} not made: {e}",
                    mailbox.name()
                );
            }
        }
    }

    /// Puts back the durable mailboxes and messages the store recovered, each charged to
    /// its owner and sender (over quota or not: they were accepted once).
    pub fn restore(&self, recovered: Vec<(MailboxDef, Vec<StoredMessage>)>) {
        let Ok(store) = &self.store else { return };
        let mut mailboxes = lock(&self.mailboxes);
        let mut origins = std::collections::HashMap::new();
        for (def, messages) in recovered {
            let settings = Settings {
                ownership: def.ownership.into(),
                fsync: Some(def.fsync),
                limits: def.limits,
                max_deliveries: def.max_deliveries,
                dead_letter: def.dead_letter.clone(),
                default_ttl: def.default_ttl,
                drop_oldest: false,
            };
            let owned = self
                .accounts
                .account(def.ownership.owner_uid)
                .force(Resource::Mailboxes, 1);
            let link = Link {
                store: store.clone(),
                key: def.key,
            };
            let mailbox = Mailbox::restore(
                def.name.clone(),
                self.serial.fetch_add(1, Ordering::Relaxed),
                settings,
                owned,
                Some(link),
                self.dead_letters.clone(),
                History {
                    created_at: def.created_at,
                    next_id: def.next_id,
                },
            );
            let overhead = self.config().message_overhead;
            for message in messages {
                let size = message.payload.len() as u64 + headers_size(&message.headers);
                let account = self.accounts.account(message.sender.uid);
                let charge = account.force(Resource::QueuedBytes, size + overhead);
                // One origin per sender, shared by its messages as when they were sent.
                let origin = origins
                    .entry(message.sender)
                    .or_insert_with(|| {
                        Arc::new(Origin::new(message.sender, Some(account), overhead))
                    })
                    .clone();
                mailbox.restore_message(message, origin, charge);
            }
            mailboxes.insert(def.name, mailbox);
        }
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub fn handshaking(&self) -> &Gauge {
        &self.handshaking
    }

    pub fn memfds(&self) -> &Gauge {
        &self.memfds
    }

    /// Charges `amount` of `resource` to the caller's uid, within its quota.
    pub fn charge(
        &self,
        caller: &Caller,
        resource: Resource,
        amount: u64,
    ) -> Result<Charge, QuotaError> {
        let limit = resource.limit(&self.config().quota_for(caller.uid()));
        caller.account.charge(resource, amount, limit)
    }

    pub fn get(&self, name: &MailboxName) -> Result<Arc<Mailbox>, NoSuchMailbox> {
        lock(&self.mailboxes)
            .get(name)
            .cloned()
            .ok_or_else(|| NoSuchMailbox(name.clone()))
    }

    /// Every mailbox, in name order.
    pub fn all(&self) -> Vec<Arc<Mailbox>> {
        let mut all: Vec<_> = lock(&self.mailboxes).values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Checks requested limits against the ceilings and fills in defaults.
    pub fn limits(
        &self,
        base: Limits,
        changes: &ipc_proto::LimitChanges,
    ) -> Result<Limits, InvalidArgument> {
        let ceilings = self.config().ceilings;
        let pick = |what: &'static str, asked: Option<u64>, current: u64, ceiling: u64| {
            let value = asked.unwrap_or(current);
            if value == 0 {
                return Err(InvalidArgument::Zero { what });
            }
            if value > ceiling {
                return Err(InvalidArgument::AboveCeiling {
                    what,
                    value,
                    ceiling,
                });
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

    /// A default TTL as asked: `None` not asked, `Some(None)` none (0), else checked
    /// against `max_ttl`.
    pub fn ttl(&self, ms: Option<u64>) -> Result<Option<Option<Duration>>, InvalidArgument> {
        let Some(ms) = ms else { return Ok(None) };
        if ms == 0 {
            return Ok(Some(None));
        }
        Ok(Some(Some(bounded("ttl", ms, self.config().max_ttl)?)))
    }

    /// Creates a mailbox owned by `caller`; a durable one is answered once stored.
    pub fn create(&self, caller: &Caller, request: CreateRequest) -> Result<Created, CreateError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(CreateError::ShuttingDown);
        }
        let store = match (&self.store, request.durable) {
            (_, false) => None,
            (Ok(store), true) => Some(store),
            (Err(why), true) => return Err(CreateError::DurableUnavailable(why.clone())),
        };
        if request.mailbox.as_str().starts_with(PRIVATE_PREFIX) {
            return Err(CreateError::Reserved(request.mailbox));
        }
        let config = self.config();
        let mode = check_mode(request.mode.unwrap_or(config.default_mode))?;
        let limits = self.limits(config.default_limits, &request.limits)?;
        let mut mailboxes = lock(&self.mailboxes);
        if let Some(existing) = mailboxes.get(&request.mailbox) {
            if !request.exist_ok {
                return Err(CreateError::Exists(request.mailbox));
            }
            return existing_fits(caller, existing, &request, mode).map(|()| Created::Now(false));
        }
        let owned = self
            .charge(caller, Resource::Mailboxes, 1)
            .map_err(CreateError::Quota)?;
        let settings = Settings {
            ownership: made_by(caller, mode),
            fsync: store.map(|_| request.fsync.unwrap_or(config.default_fsync)),
            limits,
            max_deliveries: request.delivery.max_deliveries.unwrap_or(0),
            dead_letter: request.delivery.dead_letter.clone(),
            default_ttl: self.ttl(request.delivery.default_ttl_ms)?.flatten(),
            drop_oldest: false,
        };
        let name = request.mailbox;
        let created = match self.insert_new(&mut mailboxes, name.clone(), settings, owned) {
            None => Created::Now(true),
            Some(stored) => Created::Storing(stored),
        };
        tracing::debug!(mailbox = %name, uid = caller.uid(), durable = request.durable, "mailbox created");
        Ok(created)
    }

    /// Makes and lists a new mailbox — durable if `settings.fsync` is set; callers have
    /// checked that the store is open — its definition submitted to the store before the
    /// mailbox is visible, so that it precedes every message of it in the log. Returns
    /// what completes once that definition is stored.
    fn insert_new(
        &self,
        mailboxes: &mut HashMap<MailboxName, Arc<Mailbox>>,
        name: MailboxName,
        settings: Settings,
        owned: Charge,
    ) -> Option<oneshot::Receiver<Stored>> {
        let link = match (&self.store, settings.fsync) {
            (Ok(store), Some(_)) => Some(Link {
                store: store.clone(),
                key: store.new_key(),
            }),
            _ => None,
        };
        let mailbox = Mailbox::new(
            name.clone(),
            self.serial.fetch_add(1, Ordering::Relaxed),
            settings,
            owned,
            link,
            self.dead_letters.clone(),
        );
        let stored = mailbox
            .definition()
            .map(|(store, define)| store.submit_waiting(vec![define], Fsync::Always));
        mailboxes.insert(name, mailbox);
        stored
    }

    /// Takes `mailbox` out of the table (if it is still the one the caller checked) and
    /// wakes its waiters with `Removed`. A durable one's removal completes once stored.
    pub fn remove(&self, mailbox: &Arc<Mailbox>) -> Option<oneshot::Receiver<Stored>> {
        {
            let mut mailboxes = lock(&self.mailboxes);
            match mailboxes.get(mailbox.name()) {
                Some(current) if Arc::ptr_eq(current, mailbox) => {
                    mailboxes.remove(mailbox.name());
                }
                _ => return None,
            }
            // Under the table's lock, so that no bind slips in between: a mailbox made
            // later under the same name starts with no bindings.
            lock(&self.bindings).unbind_mailbox(mailbox.name());
            // (The bindings' charges went with them.)
        }
        mailbox.close(Closed::Removed(mailbox.name().clone()), true)
    }

    /// A mailbox's settings and counters, with the patterns it is bound to.
    pub fn info(&self, mailbox: &Mailbox) -> MailboxInfo {
        let mut info = mailbox.info();
        info.bindings = lock(&self.bindings).trie.patterns(mailbox.name());
        info
    }

    /// Binds `mailbox` to `pattern`; `Ok(false)` if it was bound to it already. The
    /// binding is charged to the mailbox's owner (`queued_bytes`: the pattern, and
    /// `binding_overhead` per segment for the trie nodes it may add). Refused past
    /// `max_bindings`, over that quota, or if the mailbox was removed meanwhile.
    pub fn bind(&self, mailbox: &Arc<Mailbox>, pattern: &TopicPattern) -> Result<bool, BindError> {
        let config = self.config();
        let mailboxes = lock(&self.mailboxes);
        if !mailboxes
            .get(mailbox.name())
            .is_some_and(|current| Arc::ptr_eq(current, mailbox))
        {
            return Err(BindError::Removed(mailbox.name().clone()));
        }
        let name = mailbox.name();
        let mut bound = lock(&self.bindings);
        if bound.charges.contains_key(&(name.clone(), pattern.clone())) {
            return Ok(false);
        }
        let max = config.max_bindings;
        if bound.trie.count(name) as u64 >= max {
            return Err(BindError::TooMany {
                mailbox: name.clone(),
                max,
            });
        }
        let owner = mailbox.ownership().owner_uid;
        let cost = pattern.as_str().len() as u64
            + pattern.segments().count() as u64 * config.binding_overhead;
        let limit = Resource::QueuedBytes.limit(&config.quota_for(owner));
        let account = self.accounts.account(owner);
        let charge = account
            .charge(Resource::QueuedBytes, cost, limit)
            .map_err(BindError::Quota)?;
        bound.trie.bind(pattern, name);
        bound
            .charges
            .insert((name.clone(), pattern.clone()), charge);
        Ok(true)
    }

    /// Undoes a bind (giving back its charge); `false` if `mailbox` was not bound to
    /// `pattern`.
    pub fn unbind(&self, mailbox: &MailboxName, pattern: &TopicPattern) -> bool {
        let mut bound = lock(&self.bindings);
        bound.charges.remove(&(mailbox.clone(), pattern.clone()));
        bound.trie.unbind(pattern, mailbox)
    }

    /// The mailboxes bound to a pattern that matches `topic`, each once.
    pub fn bound_to(&self, topic: &Topic) -> Vec<MailboxName> {
        lock(&self.bindings).trie.matching(topic)
    }

    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// A number for a new connection, never given twice while the daemon runs.
    pub fn new_connection_number(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes `caller`'s connection to `pattern`: a private memory mailbox owned by
    /// the caller (charged to its `mailboxes` quota), bound to the pattern, which drops
    /// its oldest message when full and is removed when the connection closes.
    pub fn subscribe(
        &self,
        caller: &Caller,
        pattern: &TopicPattern,
    ) -> Result<MailboxName, CreateError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(CreateError::ShuttingDown);
        }
        let config = self.config();
        let owned = self
            .charge(caller, Resource::Mailboxes, 1)
            .map_err(CreateError::Quota)?;
        let settings = Settings {
            ownership: made_by(caller, 0o600),
            fsync: None,
            limits: config.subscription_limits,
            max_deliveries: 0,
            dead_letter: None,
            default_ttl: None,
            drop_oldest: true,
        };
        let mut mailboxes = lock(&self.mailboxes);
        // A random part, so that a name is not made again after a restart: a client
        // that reconnects then must not find its old subscription's name taken by
        // someone else's.
        let name = loop {
            let name = MailboxName::new(format!(
                "{PRIVATE_PREFIX}watch/{}-{:016x}",
                caller.connection,
                crate::calls::random_id()
            ))
            .expect("a well-formed name");
            if !mailboxes.contains_key(&name) {
                break name;
            }
        };
        // A memory mailbox: nothing to wait for in the store.
        drop(self.insert_new(&mut mailboxes, name.clone(), settings, owned));
        let mailbox = mailboxes.get(&name).cloned().expect("just inserted");
        drop(mailboxes);
        if let Err(e) = self.bind(&mailbox, pattern) {
            drop(self.remove(&mailbox));
            return Err(match e {
                BindError::Quota(quota) => CreateError::Quota(quota),
                BindError::TooMany { .. } | BindError::Removed(_) => CreateError::ShuttingDown,
            });
        }
        let mut private = lock(&caller.private);
        // Those removed meanwhile (by their owner) need not wait for the connection.
        private.retain(|name| self.get(name).is_ok());
        private.push(name.clone());
        Ok(name)
    }

    /// What a closing connection leaves: its private mailboxes go, with their bindings,
    /// messages and charges.
    pub fn end_connection(&self, caller: &Caller) {
        let private = std::mem::take(&mut *lock(&caller.private));
        for name in private {
            if let Ok(mailbox) = self.get(&name) {
                // A memory mailbox: nothing to wait for in the store.
                drop(self.remove(&mailbox));
            }
        }
    }

    /// Delivers dead letters until the broker is dropped: each to its dead-letter
    /// mailbox if that exists, its route's owner may write to it now, and it has room;
    /// else the letter is dropped, counted on its source mailbox, and logged (at most one
    /// line per [`Throttle::EVERY`], with a count of the rest). The source's removal is
    /// recorded after the dead-letter mailbox has the message, so a crash in between can
    /// duplicate it but never lose it.
    pub async fn deliver_dead_letters(self: Arc<Self>) {
        let Some(mut queue) = lock(&self.dead_letter_queue).take() else {
            return;
        };
        let broker = Arc::downgrade(&self);
        drop(self);
        let mut log = Throttle::default();
        while let Some(DeadLetter {
            from,
            source,
            route_owner,
            to,
            mut envelope,
        }) = queue.recv().await
        {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let removal = envelope.take_removal();
            let id = envelope.id();
            let refused = match broker.get(&to) {
                Err(_) => Some(format!("mailbox {to} does not exist")),
                Ok(target) if !target.ownership().allows_route(route_owner) => Some(format!(
                    "uid {} (owner of {from}) may not send to {to}",
                    route_owner.uid
                )),
                Ok(target) => {
                    match target.send(envelope.into_incoming(), ipc_proto::Wait::NoWait) {
                        Pending::Ready(Err(e)) => Some(e.to_string()),
                        // Accepted (a durable target finishes storing it on its own).
                        Pending::Ready(Ok(_)) | Pending::Wait(_) => None,
                    }
                }
            };
            if let Some(why) = refused {
                if let Some(source) = source.upgrade() {
                    source.dead_letter_dropped();
                }
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(
                        "dead letter {id} of mailbox {from} dropped: {why} \
                         ({suppressed} more dropped since the last such line)"
                    );
                }
            }
            if let Some(removal) = removal {
                removal.commit();
            }
        }
    }

    /// Tells the store's writer to finish what it was given and stop.
    pub fn stop_store(&self) {
        if let Ok(store) = &self.store {
            store.stop();
        }
    }

    /// Stops taking new work: every mailbox's waiters are told the daemon is stopping.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        for mailbox in self.all() {
            // Nothing is stored when messages stay.
            let _ = mailbox.close(Closed::ShuttingDown, false);
        }
    }

    /// One line of figures, for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let t = self.totals();
        format!(
            "{} connections, {} mailboxes, {} messages ({} bytes)",
            t.connections, t.mailboxes, t.messages, t.bytes
        )
    }

    /// What the daemon holds, summed over every uid and mailbox.
    fn totals(&self) -> Totals {
        let connections = self
            .accounts
            .all()
            .iter()
            .map(|a| a.used(Resource::Connections))
            .sum();
        let all = self.all();
        let (messages, bytes) = all.iter().fold((0, 0), |(m, b), mailbox| {
            let (mm, bb) = mailbox.usage();
            (m + mm, b + bb)
        });
        Totals {
            connections,
            mailboxes: all.len() as u64,
            messages,
            bytes,
        }
    }

    /// Logs the daemon's state (SIGUSR1): the totals, then one line per uid.
    pub fn log_summary(&self) {
        tracing::info!("state: {}", self.summary());
        for account in self.accounts.all() {
            let [connections, mailboxes, queued] = snapshot(&account);
            tracing::info!(
                "state: uid {}: {connections} connections, {mailboxes} mailboxes, {queued} bytes queued",
                account.uid()
            );
        }
    }

    /// The daemon's figures; `users` holds only the caller's own uid unless it is root.
    pub fn status(&self, caller: &Caller) -> DaemonStatus {
        let limit = |n: u64| (n != u64::MAX).then_some(n);
        let config = self.config();
        let users = self
            .accounts
            .all()
            .into_iter()
            .filter(|account| caller.uid() == 0 || account.uid() == caller.uid())
            .map(|account| {
                let [connections, mailboxes, queued_bytes] = snapshot(&account);
                let quota = config.quota_for(account.uid());
                UidUsage {
                    uid: account.uid(),
                    connections,
                    mailboxes,
                    queued_bytes,
                    max_connections: limit(quota.connections),
                    max_mailboxes: limit(quota.mailboxes),
                    max_queued_bytes: limit(quota.queued_bytes),
                    max_in_flight: limit(quota.in_flight),
                }
            })
            .collect();
        let totals = self.totals();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections: totals.connections,
            mailboxes: totals.mailboxes,
            messages: totals.messages,
            bytes: totals.bytes,
            users,
        }
    }
}

/// The daemon's figures: for `status`, systemd's STATUS= and SIGUSR1.
#[derive(Debug, Clone, Copy)]
struct Totals {
    connections: u64,
    mailboxes: u64,
    messages: u64,
    bytes: u64,
}

/// The ownership of a mailbox `caller` makes: owner and creator, with `mode`.
fn made_by(caller: &Caller, mode: u32) -> Ownership {
    let (uid, gid) = (caller.creds.uid, caller.creds.gid);
    Ownership {
        owner_uid: uid,
        owner_gid: gid,
        creator_uid: uid,
        creator_gid: gid,
        mode,
    }
}

/// Whether `existing` is what a `create --exist-ok` asked for: owned by the caller (or
/// the caller is root), of the asked durability, and with every setting the request
/// names explicitly. Otherwise the create fails, naming the owner and what differs, so
/// that nobody goes on to use a mailbox that is not the one they meant.
fn existing_fits(
    caller: &Caller,
    existing: &Mailbox,
    request: &CreateRequest,
    mode: u32,
) -> Result<(), CreateError> {
    let s = existing.settings();
    let own = s.ownership;
    let mut differs = Vec::new();
    if caller.uid() != 0 && caller.uid() != own.owner_uid {
        differs.push(format!(
            "it is owned by uid {}, not {}",
            own.owner_uid,
            caller.uid()
        ));
    }
    let kind = |durable: bool| if durable { "durable" } else { "memory" };
    if s.fsync.is_some() != request.durable {
        differs.push(format!(
            "it is a {} mailbox, not {}",
            kind(s.fsync.is_some()),
            kind(request.durable)
        ));
    } else if let (Some(asked), Some(has)) = (request.fsync, s.fsync)
        && asked != has
    {
        differs.push(format!("its fsync policy is {has}, not {asked}"));
    }
    if request.mode.is_some() && mode != own.mode {
        differs.push(format!("its mode is {:04o}, not {mode:04o}", own.mode));
    }
    let l = &request.limits;
    for (what, asked, has) in [
        ("max_msgs", l.max_msgs, s.limits.max_msgs),
        ("max_bytes", l.max_bytes, s.limits.max_bytes),
        ("max_msg_size", l.max_msg_size, s.limits.max_msg_size),
    ] {
        if let Some(asked) = asked.filter(|&asked| asked != has) {
            differs.push(format!("its {what} is {has}, not {asked}"));
        }
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(CreateError::NotAsAsked {
        mailbox: existing.name().clone(),
        differs,
    })
}

/// `ms` as a duration of 1 ms to `max` (a TTL, delay or lease), or an error naming `what`
/// and the bound (`max_<what>` in the configuration).
pub fn bounded(what: &'static str, ms: u64, max: Duration) -> Result<Duration, InvalidArgument> {
    let d = Duration::from_millis(ms);
    if d.is_zero() || d > max {
        return Err(InvalidArgument::OutOfRange {
            what,
            ms,
            max_ms: max.as_millis(),
        });
    }
    Ok(d)
}

/// A mode is permission bits only: no file type, setuid or sticky bits.
pub fn check_mode(mode: u32) -> Result<u32, InvalidArgument> {
    if mode > 0o777 {
        return Err(InvalidArgument::NotAMode(mode));
    }
    Ok(mode)
}
