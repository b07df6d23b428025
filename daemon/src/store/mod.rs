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
//!
//! Failures stay with the jobs they concern: a job whose records do not fit the format
//! (a string longer than its length prefix) is refused alone, before the write, and the
//! rest of its batch goes on. A failed `fdatasync` fails the whole batch it was to make
//! durable, and the log takes that batch back off the disk first, so nothing answered
//! "failed" comes back after a restart; if the log cannot do that, it refuses every
//! further durable write until the daemon restarts, and says so in each answer.

pub mod disk;
pub mod log;
pub mod record;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc_proto::Fsync;
use thiserror::Error;
use tokio::sync::oneshot;

use self::disk::{Disk, OsDisk};
use self::log::{Log, LogOptions, Recovered};
pub use self::record::{MailboxDef, Ownership as StoredOwnership, Record, StoredMessage};

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

/// Most jobs gathered into one write.
const MAX_BATCH_JOBS: usize = 4096;

/// What a completion hears: stored, or why not.
pub type Stored = Result<(), StoreError>;

/// Why the store did not keep what a job asked it to. Its `Display` is the message the
/// user reads; `dispatch` gives each its error code.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// The write or its sync failed (the I/O error's text); `hint` says what became of
    /// the job's records.
    #[error("could not store the message durably: {error}{hint}")]
    Failed { error: String, hint: FailureHint },
    /// The writer has stopped, so nothing more is stored.
    #[error("the store has stopped")]
    Stopped,
    /// The job's records do not fit the store's format; nothing of them was written.
    #[error("cannot store the message durably: {0}")]
    Refused(record::EncodeError),
}

/// What a failed write left behind, as the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureHint {
    /// The log could not take the records back: they may be there after a restart.
    MayRemain,
    /// Taken back, and the disk is full: freeing space is what helps.
    NoSpace,
    /// Taken back; nothing stored before is affected.
    Unharmed,
}

impl fmt::Display for FailureHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureHint::MayRemain => "; it may still be there after ipcd restarts",
            FailureHint::NoSpace => {
                "; free space in the state directory and retry — messages stored before are \
                 unharmed"
            }
            FailureHint::Unharmed => "; messages stored before are unharmed",
        })
    }
}

type Completion = Box<dyn FnOnce(Stored) + Send>;

/// A receiver for a store completion, and the completion that feeds it.
fn completion() -> (
    impl FnOnce(Stored) + Send + 'static,
    oneshot::Receiver<Stored>,
) {
    let (tx, rx) = oneshot::channel();
    (
        move |stored| {
            let _ = tx.send(stored);
        },
        rx,
    )
}

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
                std::thread::spawn(move || done(Err(StoreError::Stopped)));
            }
        }
    }

    /// Stores `records` per `fsync`; the receiver hears once they are stored (or why
    /// not). This is how the mailbox and broker wait for the store: the answer to the
    /// request that caused the write is due then.
    pub fn submit_waiting(&self, records: Vec<Record>, fsync: Fsync) -> oneshot::Receiver<Stored> {
        let (done, stored) = completion();
        self.submit(records, fsync, done);
        stored
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

/// The answer to a job whose write or sync failed; `undone` says whether the log took
/// its records back (else they may still be there after a restart).
fn failed(e: &std::io::Error, undone: bool) -> StoreError {
    let hint = if !undone {
        FailureHint::MayRemain
    } else if e.raw_os_error() == Some(libc::ENOSPC) {
        FailureHint::NoSpace
    } else {
        FailureHint::Unharmed
    };
    StoreError::Failed {
        error: e.to_string(),
        hint,
    }
}

/// The writer thread: gather, write, sync, complete, reclaim; until every handle is gone.
fn write_loop<D: Disk>(mut log: Log<D>, queue: mpsc::Receiver<Job>) {
    // When the oldest written-but-unsynced `IntervalMs` data must be synced by.
    let mut sync_by: Option<Instant> = None;
    // A reclaim that fails is tried again after every batch: its line is rate-limited.
    let mut reclaim_failures = crate::logging::Throttle::default();
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
        // A job the log cannot hold is refused alone; the rest of the batch goes on.
        let mut refusals = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for job in &mut batch {
            match job.records.iter().try_for_each(|r| log.admit(r)) {
                Ok(()) => {
                    records.append(&mut job.records);
                    refusals.push(None);
                }
                Err(e) => {
                    tracing::warn!("a durable write was refused: {e}");
                    refusals.push(Some(StoreError::Refused(e)));
                }
            }
        }
        let was_failed = log.failure().is_some();
        let sync_now = batch.iter().any(|j| j.fsync == Fsync::Always);
        let mut result = log.write(&records);
        if result.is_ok() {
            if sync_now {
                result = log.sync();
                sync_by = None;
            } else {
                log.commit();
            }
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
        // Only the batch whose failure put the log out of service may have left records
        // behind; later batches are refused before anything is written.
        let left_behind = !was_failed && log.failure().is_some();
        let outcome = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| failed(e, !left_behind));
        match &result {
            Err(e) if !was_failed => {
                tracing::error!(
                    "durable log write failed for {} records: {e}",
                    records.len()
                );
            }
            _ => {}
        }
        if left_behind {
            tracing::error!(
                "durable log out of service, durable writes fail until ipcd restarts: {}",
                log.failure().unwrap_or_default()
            );
        }
        for (job, refusal) in batch.into_iter().zip(refusals) {
            if let Some(done) = job.done {
                // A completion that panics must not take the writer, and with it every
                // durable mailbox, down with it.
                let outcome = refusal.map_or_else(|| outcome.clone(), Err);
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
        if let Err(e) = log.compact_step()
            && let Some(held_back) = reclaim_failures.allow()
        {
            tracing::warn!(
                "reclaiming durable log space failed (will retry): {e} \
                 ({held_back} more such failures since the last such line)"
            );
        }
    }
    if let Err(e) = log.sync() {
        tracing::error!("final sync of the durable log failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use super::disk::sim::{Crash, SimDisk};
    use super::record::tests::{def, put};
    use super::*;

    const OPTIONS: LogOptions = LogOptions {
        segment_bytes: 1 << 16,
        max_record: 1 << 20,
    };

    /// Submits `records`; the receiver hears how it went.
    fn submit(store: &Store, records: Vec<Record>) -> Receiver<Stored> {
        let (tx, rx) = mpsc::channel();
        store.submit(records, Fsync::Always, move |stored| {
            let _ = tx.send(stored);
        });
        rx
    }

    /// Ids of the messages a restart would find on `disk`.
    fn ids_after_restart(disk: &SimDisk) -> Vec<u64> {
        let disk = disk.after_crash(Crash::DropUnsynced);
        let (store, writer, recovered) =
            Store::open_on(disk, PathBuf::from("sim"), OPTIONS).unwrap();
        store.stop();
        drop(store);
        writer.join();
        recovered
            .mailboxes
            .iter()
            .flat_map(|(_, m)| m.iter().map(|m| m.id))
            .collect()
    }

    #[test]
    fn a_record_too_long_for_the_format_fails_its_own_job_and_no_other() {
        let disk = SimDisk::default();
        let (store, writer, _) =
            Store::open_on(disk.clone(), PathBuf::from("sim"), OPTIONS).unwrap();
        submit(&store, vec![Record::Define(def(1, "jobs"))])
            .recv()
            .unwrap()
            .unwrap();
        // The first job's completion holds the writer until the others are queued, so
        // they go out together in one batch.
        let (release, hold) = mpsc::channel::<()>();
        let (first_tx, first) = mpsc::channel();
        store.submit(
            vec![Record::Put(put(1, 1, b"before"))],
            Fsync::Always,
            move |stored| {
                let _ = hold.recv();
                let _ = first_tx.send(stored);
            },
        );
        let mut evil = put(1, 2, b"evil");
        evil.headers.content_type = Some("a".repeat(70_000));
        let evil = submit(&store, vec![Record::Put(evil)]);
        let after: Vec<_> = (3..=5)
            .map(|id| submit(&store, vec![Record::Put(put(1, id, b"after"))]))
            .collect();
        release.send(()).unwrap();
        first.recv().unwrap().unwrap();
        let refused = evil.recv().unwrap().unwrap_err();
        assert!(matches!(refused, StoreError::Refused(_)), "{refused:?}");
        let message = refused.to_string();
        assert!(
            message.starts_with("cannot store the message durably: ")
                && message.contains("content_type is 70000 bytes")
                && message.contains("65535"),
            "{message}"
        );
        for done in after {
            done.recv().unwrap().unwrap();
        }
        store.stop();
        drop(store);
        writer.join();
        assert_eq!(ids_after_restart(&disk), [1, 3, 4, 5]);
    }

    #[test]
    fn a_failed_fdatasync_fails_its_batch_and_leaves_nothing_of_it_behind() {
        let disk = SimDisk::default();
        let (store, writer, _) =
            Store::open_on(disk.clone(), PathBuf::from("sim"), OPTIONS).unwrap();
        submit(
            &store,
            vec![
                Record::Define(def(1, "jobs")),
                Record::Put(put(1, 1, b"kept")),
            ],
        )
        .recv()
        .unwrap()
        .unwrap();
        disk.fail_next_sync();
        let failed = submit(&store, vec![Record::Put(put(1, 2, b"failed"))])
            .recv()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                failed,
                StoreError::Failed {
                    hint: FailureHint::Unharmed,
                    ..
                }
            ),
            "{failed:?}"
        );
        let message = failed.to_string();
        assert!(
            message.starts_with("could not store the message durably: ")
                && message.contains("fdatasync failed")
                && message.ends_with("; messages stored before are unharmed"),
            "{message}"
        );
        // The log goes on.
        submit(&store, vec![Record::Put(put(1, 3, b"later"))])
            .recv()
            .unwrap()
            .unwrap();
        assert_eq!(ids_after_restart(&disk), [1, 3]);
        store.stop();
        drop(store);
        writer.join();
    }

    #[test]
    fn a_log_that_cannot_undo_a_failed_sync_refuses_every_later_write() {
        let disk = SimDisk::default();
        let (store, writer, _) =
            Store::open_on(disk.clone(), PathBuf::from("sim"), OPTIONS).unwrap();
        submit(&store, vec![Record::Define(def(1, "jobs"))])
            .recv()
            .unwrap()
            .unwrap();
        // The append, then its sync and the truncate that would undo it, fail.
        let n = disk.ops();
        disk.fail_at(n + 2);
        disk.fail_at(n + 3);
        let failed = submit(&store, vec![Record::Put(put(1, 1, b"unknown"))])
            .recv()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                failed,
                StoreError::Failed {
                    hint: FailureHint::MayRemain,
                    ..
                }
            ),
            "{failed:?}"
        );
        assert!(
            failed
                .to_string()
                .ends_with("; it may still be there after ipcd restarts"),
            "{failed}"
        );
        let refused = submit(&store, vec![Record::Put(put(1, 2, b"refused"))])
            .recv()
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, StoreError::Failed { .. }), "{refused:?}");
        let message = refused.to_string();
        assert!(
            message.contains("durable writes are refused until ipcd restarts")
                && !message.contains("may still be there"),
            "{message}"
        );
        store.stop();
        drop(store);
        writer.join();
    }
}
