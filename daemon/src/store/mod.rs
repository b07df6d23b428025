//! Durable mailboxes' storage (SPEC §6): one append-only [`log`] of checksummed records
//! shared by every durable mailbox, written by one writer thread that does **group
//! commit** — every job waiting when it starts a write goes out in that one write and,
//! if any of them needs it, one `fdatasync`.
//!
//! A job's completion runs on the writer thread once its records are stored as its
//! fsync policy asks (`Always`: synced; `IntervalMs`: written, synced within the
//! interval; `Never`: written). Only then is a durable send answered, so an answered
//! send is on disk. Completions must be quick and must not wait on the store.
//!
//! The job channel is unbounded on purpose: jobs are submitted under mailbox locks, and
//! the writer takes mailbox locks in completions, so a bounded channel could deadlock.
//! What is queued is bounded upstream: a message counts against its mailbox's limits and
//! its sender's quota from the moment it is submitted.

pub mod disk;
pub mod log;
pub mod record;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc_proto::{ErrorCode, ErrorReply, Fsync};

use self::disk::{Disk, OsDisk};
use self::log::{Log, LogOptions, Recovered};
pub use self::record::{MailboxDef, Record, StoredMessage};

/// Most jobs gathered into one write.
const MAX_BATCH_JOBS: usize = 4096;

/// What a completion hears: stored, or why not.
pub type Stored = Result<(), ErrorReply>;

type Completion = Box<dyn FnOnce(Stored) + Send>;

struct Job {
    records: Vec<Record>,
    fsync: Fsync,
    done: Option<Completion>,
    /// The last job: sync and stop.
    stop: bool,
}

/// A handle on the store; clones share the writer.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    next_key: Arc<AtomicU64>,
    dir: Arc<PathBuf>,
    /// Held while any handle lives, so a second daemon cannot share the directory.
    _lock: Option<Arc<std::fs::File>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

/// The writer thread's end; joining it waits for the final sync.
#[derive(Debug)]
pub struct Writer(Option<std::thread::JoinHandle<()>>);

impl Writer {
    /// Waits until every submitted job has been written and synced. The writer stops
    /// once every [`Store`] handle is dropped.
    pub fn join(mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the log under `state_dir/log`, recovers it, and starts
    /// the writer thread.
    pub fn open(
        state_dir: &Path,
        options: LogOptions,
    ) -> anyhow::Result<(Store, Writer, Recovered)> {
        let dir = state_dir.join("log");
        let disk = OsDisk::new(&dir).map_err(|e| {
            anyhow::anyhow!("cannot open the state directory {}: {e}", dir.display())
        })?;
        let lock = lock_dir(&dir)?;
        let (mut store, writer, recovered) = Self::open_on(disk, dir, options)?;
        store._lock = Some(Arc::new(lock));
        Ok((store, writer, recovered))
    }

    pub(crate) fn open_on<D: Disk>(
        disk: D,
        dir: PathBuf,
        options: LogOptions,
    ) -> anyhow::Result<(Store, Writer, Recovered)> {
        let (log, recovered) = Log::open(disk, options)
            .map_err(|e| anyhow::anyhow!("cannot recover the log in {}: {e}", dir.display()))?;
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ipcd-store".into())
            .spawn(move || write_loop(log, queue))
            .map_err(|e| anyhow::anyhow!("cannot start the store's writer thread: {e}"))?;
        let store = Store {
            jobs,
            next_key: Arc::new(AtomicU64::new(recovered.next_key)),
            dir: Arc::new(dir),
            _lock: None,
        };
        Ok((store, Writer(Some(thread)), recovered))
    }

    /// A key for a new durable mailbox, never used before in this state directory.
    pub fn new_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores `records` per `fsync`, then calls `done` (on the writer thread).
    pub fn submit(
        &self,
        records: Vec<Record>,
        fsync: Fsync,
        done: impl FnOnce(Stored) + Send + 'static,
    ) {
        let job = Job {
            records,
            fsync,
            done: Some(Box::new(done)),
            stop: false,
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            if let Some(done) = job.done {
                // Not inline: the caller may hold the lock its completion takes.
                std::thread::spawn(move || done(Err(stopped())));
            }
        }
    }

    /// Stores `records` per `fsync` without anyone waiting: for removals, whose loss in
    /// a crash can only mean a redelivery.
    pub fn record(&self, records: Vec<Record>, fsync: Fsync) {
        let _ = self.jobs.send(Job {
            records,
            fsync,
            done: None,
            stop: false,
        });
    }

    /// Asks the writer to store everything submitted so far, sync, and stop; later
    /// submissions fail. [`Writer::join`] waits for it.
    pub fn stop(&self) {
        let _ = self.jobs.send(Job {
            records: Vec::new(),
            fsync: Fsync::Always,
            done: None,
            stop: true,
        });
    }
}

/// Takes an exclusive `flock` on `dir/LOCK`: two daemons writing one log would corrupt
/// it.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!(
            "cannot lock {}: {e} (is another ipcd using this state directory?)",
            path.display()
        );
    }
    Ok(file)
}

fn stopped() -> ErrorReply {
    ErrorReply::new(ErrorCode::ShuttingDown, "the store has stopped")
}

fn failed(e: &std::io::Error) -> ErrorReply {
    let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
        "; free space in the state directory and retry — messages stored before are unharmed"
    } else {
        "; messages stored before are unharmed"
    };
    ErrorReply::new(
        ErrorCode::StorageFailed,
        format!("could not store the message durably: {e}{hint}"),
    )
}

/// The writer thread: gather, write, sync, complete, reclaim; until every handle is gone.
fn write_loop<D: Disk>(mut log: Log<D>, queue: mpsc::Receiver<Job>) {
    // When the oldest written-but-unsynced `IntervalMs` data must be synced by.
    let mut sync_by: Option<Instant> = None;
    loop {
        let first = match sync_by {
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(deadline) => {
                match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = log.sync() {
                            tracing::error!("periodic sync of the durable log failed: {e}");
                        }
                        sync_by = None;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_JOBS {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let stop = batch.iter().any(|j| j.stop);
        let records: Vec<Record> = batch.iter_mut().flat_map(|j| j.records.drain(..)).collect();
        let mut result = log.write(&records);
        let sync_now = batch.iter().any(|j| j.fsync == Fsync::Always);
        if result.is_ok() && sync_now {
            result = log.sync();
            sync_by = None;
        }
        if result.is_ok() && log.is_dirty() {
            let interval = batch
                .iter()
                .filter_map(|j| match j.fsync {
                    Fsync::IntervalMs(ms) => Some(Duration::from_millis(u64::from(ms))),
                    _ => None,
                })
                .min();
            if let Some(interval) = interval {
                let due = Instant::now() + interval;
                sync_by = Some(sync_by.map_or(due, |d| d.min(due)));
            }
        }
        let outcome = result.as_ref().map(|_| ()).map_err(failed);
        if let Err(e) = &result {
            tracing::error!(
                "durable log write failed for {} records: {e}",
                records.len()
            );
        }
        for job in batch {
            if let Some(done) = job.done {
                // A completion that panics must not take the writer, and with it every
                // durable mailbox, down with it.
                let outcome = outcome.clone();
                let completed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(outcome)));
                if completed.is_err() {
                    tracing::error!("a durable store completion panicked; the writer carries on");
                }
            }
        }
        if stop {
            break;
        }
        if let Err(e) = log.compact_step() {
            tracing::warn!("reclaiming durable log space failed (will retry): {e}");
        }
    }
    if let Err(e) = log.sync() {
        tracing::error!("final sync of the durable log failed: {e}");
    }
}
