//! The files of the durable log, behind the [`Disk`] trait: [`OsDisk`] is the state
//! directory, and the tests put a simulated disk in its place that can crash at any
//! chosen operation, drop what was not synced, tear the last write or flip bits.
//!
//! Segments are named by number (`00000000000000000001.log`); appends go to the end of
//! a segment, and a segment is created, synced, truncated or deleted whole.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the log's segments live.
pub trait Disk: Send + 'static {
    /// Segment numbers present, ascending.
    fn list(&mut self) -> io::Result<Vec<u64>>;
    /// The whole of segment `seg`.
    fn read(&mut self, seg: u64) -> io::Result<Vec<u8>>;
    /// `len` bytes of segment `seg` from `offset`.
    fn read_at(&mut self, seg: u64, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates segment `seg`, empty (failing if it exists).
    fn create(&mut self, seg: u64) -> io::Result<()>;
    /// Appends `data` to segment `seg`.
    fn append(&mut self, seg: u64, data: &[u8]) -> io::Result<()>;
    /// Makes what was appended to `seg` durable (`fdatasync`).
    fn sync(&mut self, seg: u64) -> io::Result<()>;
    /// Cuts segment `seg` to `len` bytes.
    fn truncate(&mut self, seg: u64, len: u64) -> io::Result<()>;
    /// Deletes segment `seg`.
    fn remove(&mut self, seg: u64) -> io::Result<()>;
    /// Makes creations and deletions durable (`fsync` of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;
}

/// Segments as files in a directory.
#[derive(Debug)]
pub struct OsDisk {
    dir: PathBuf,
    open: HashMap<u64, File>,
}

impl OsDisk {
    /// The log in `dir`, which is created (mode 0700) if missing.
    pub fn new(dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        })
    }

    fn path(&self, seg: u64) -> PathBuf {
        self.dir.join(format!("{seg:020}.log"))
    }

    fn file(&mut self, seg: u64) -> io::Result<&mut File> {
        if !self.open.contains_key(&seg) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(seg))?;
            self.open.insert(seg, file);
        }
        Ok(self.open.get_mut(&seg).expect("just opened"))
    }
}

impl Disk for OsDisk {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        let mut segs = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        Ok(segs)
    }

    fn read(&mut self, seg: u64) -> io::Result<Vec<u8>> {
        let file = self.file(seg)?;
        file.seek(SeekFrom::Start(0))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(data)
    }

    fn read_at(&mut self, seg: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut data = vec![0; len];
        self.file(seg)?.read_exact_at(&mut data, offset)?;
        Ok(data)
    }

    fn create(&mut self, seg: u64) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(seg))?;
        self.open.insert(seg, file);
        Ok(())
    }

    fn append(&mut self, seg: u64, data: &[u8]) -> io::Result<()> {
        let file = self.file(seg)?;
        file.seek(SeekFrom::End(0))?;
        file.write_all(data)
    }

    fn sync(&mut self, seg: u64) -> io::Result<()> {
        self.file(seg)?.sync_data()
    }

    fn truncate(&mut self, seg: u64, len: u64) -> io::Result<()> {
        self.file(seg)?.set_len(len)
    }

    fn remove(&mut self, seg: u64) -> io::Result<()> {
        self.open.remove(&seg);
        fs::remove_file(self.path(seg))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod sim {
    //! A disk in memory that remembers what is durable, for crash tests: a crash keeps
    //! what was synced, and of each segment's unsynced tail keeps nothing, a torn prefix,
    //! or all of it with bits flipped — as the test chooses. Besides crashing, it can fail
    //! a chosen operation and carry on, as a disk does on a transient I/O error.

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone, Default)]
    struct SimFile {
        data: Vec<u8>,
        /// What a crash now would certainly keep.
        durable: Vec<u8>,
    }

    /// What happens to unsynced data at the crash.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Crash {
        /// Unsynced appends are lost.
        DropUnsynced,
        /// The unsynced tail survives only up to a point (a torn write).
        Tear { keep_per_mille: u32 },
        /// The unsynced tail survives, with one bit flipped in it.
        FlipBit { at_per_mille: u32 },
    }

    #[derive(Debug, Default)]
    struct State {
        files: BTreeMap<u64, SimFile>,
        /// Names a crash would keep: as of the last directory sync.
        durable_names: BTreeSet<u64>,
        /// Operations so far; at `crash_at` the disk dies.
        ops: u64,
        crash_at: Option<u64>,
        dead: bool,
        full_at_bytes: Option<usize>,
        /// Operations that fail with EIO while the disk lives on.
        fail_ops: BTreeSet<u64>,
        /// The next `sync` fails so.
        fail_next_sync: bool,
        /// Operations that were a `sync` or `sync_dir`.
        sync_ops: Vec<u64>,
    }

    /// A shared handle: the test keeps one to crash and inspect the disk the log uses.
    #[derive(Debug, Clone, Default)]
    pub struct SimDisk(Arc<Mutex<State>>);

    impl SimDisk {
        /// The disk dies at operation `n` (counting from 1): that operation and every
        /// later one fails.
        pub fn crash_at(&self, n: u64) {
            self.0.lock().unwrap().crash_at = Some(n);
        }

        /// Operation `n` fails with EIO, and the disk carries on. A failed `sync` is taken
        /// at its worst for the log: the data reached the disk all the same, so anything
        /// not cut back comes back after a crash. A failed `sync_dir` made nothing durable.
        pub fn fail_at(&self, n: u64) {
            self.0.lock().unwrap().fail_ops.insert(n);
        }

        /// The next `sync` fails as [`fail_at`](Self::fail_at) describes.
        pub fn fail_next_sync(&self) {
            self.0.lock().unwrap().fail_next_sync = true;
        }

        /// The operations so far that were a `sync` or `sync_dir`.
        pub fn sync_ops(&self) -> Vec<u64> {
            self.0.lock().unwrap().sync_ops.clone()
        }

        /// A healthy disk holding `segments`, all of it durable.
        pub fn with_segments(segments: impl IntoIterator<Item = (u64, Vec<u8>)>) -> SimDisk {
            let files: BTreeMap<u64, SimFile> = segments
                .into_iter()
                .map(|(seg, data)| {
                    (
                        seg,
                        SimFile {
                            durable: data.clone(),
                            data,
                        },
                    )
                })
                .collect();
            SimDisk(Arc::new(Mutex::new(State {
                durable_names: files.keys().copied().collect(),
                files,
                ..State::default()
            })))
        }

        /// The bytes of segment `seg` as they are now (durable or not).
        pub fn bytes(&self, seg: u64) -> Option<Vec<u8>> {
            let state = self.0.lock().unwrap();
            state.files.get(&seg).map(|f| f.data.clone())
        }

        /// Appends past `bytes` in total fail with ENOSPC.
        pub fn fill_at(&self, bytes: usize) {
            self.0.lock().unwrap().full_at_bytes = Some(bytes);
        }

        pub fn ops(&self) -> u64 {
            self.0.lock().unwrap().ops
        }

        pub fn is_dead(&self) -> bool {
            self.0.lock().unwrap().dead
        }

        /// The disk as a restart after a crash finds it: a new, healthy disk.
        pub fn after_crash(&self, crash: Crash) -> SimDisk {
            let state = self.0.lock().unwrap();
            let mut files = BTreeMap::new();
            for (&seg, file) in &state.files {
                if !state.durable_names.contains(&seg) {
                    continue;
                }
                let mut data = file.durable.clone();
                let synced = data.len().min(file.data.len());
                let tail = if file.data.len() > synced && file.data[..synced] == data[..synced] {
                    &file.data[synced..]
                } else {
                    &[][..]
                };
                match crash {
                    Crash::DropUnsynced => {}
                    Crash::Tear { keep_per_mille } => {
                        let keep = tail.len() * keep_per_mille as usize / 1000;
                        data.extend_from_slice(&tail[..keep]);
                    }
                    Crash::FlipBit { at_per_mille } => {
                        let start = data.len();
                        data.extend_from_slice(tail);
                        if !tail.is_empty() {
                            let at = start + (tail.len() - 1) * at_per_mille as usize / 1000;
                            data[at] ^= 0x10;
                        }
                    }
                }
                files.insert(
                    seg,
                    SimFile {
                        durable: data.clone(),
                        data,
                    },
                );
            }
            SimDisk(Arc::new(Mutex::new(State {
                durable_names: files.keys().copied().collect(),
                files,
                ..State::default()
            })))
        }

        /// Flips one bit of what a segment durably holds (disk corruption).
        pub fn corrupt(&self, seg: u64, at: usize) {
            let mut state = self.0.lock().unwrap();
            let file = state.files.get_mut(&seg).expect("segment exists");
            file.data[at] ^= 0x01;
            file.durable[at] ^= 0x01;
        }

        pub fn segments(&self) -> Vec<(u64, usize)> {
            let state = self.0.lock().unwrap();
            state
                .files
                .iter()
                .map(|(&s, f)| (s, f.data.len()))
                .collect()
        }

        fn op(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
            let mut state = self.0.lock().unwrap();
            state.ops += 1;
            if state.dead || state.crash_at.is_some_and(|n| state.ops >= n) {
                state.dead = true;
                return Err(io::Error::other("simulated crash"));
            }
            if state.fail_ops.contains(&state.ops) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(state)
        }

        /// As [`op`](Self::op), for a `sync` or `sync_dir`: noted, and failed when asked.
        fn sync_op(&self) -> (io::Result<()>, std::sync::MutexGuard<'_, State>) {
            let mut state = self.0.lock().unwrap();
            state.ops += 1;
            let n = state.ops;
            state.sync_ops.push(n);
            if state.dead || state.crash_at.is_some_and(|c| n >= c) {
                state.dead = true;
                return (Err(io::Error::other("simulated crash")), state);
            }
            if state.fail_ops.contains(&n) || std::mem::take(&mut state.fail_next_sync) {
                return (Err(io::Error::from_raw_os_error(libc::EIO)), state);
            }
            (Ok(()), state)
        }
    }

    fn missing() -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, "no such segment")
    }

    impl Disk for SimDisk {
        fn list(&mut self) -> io::Result<Vec<u64>> {
            Ok(self.op()?.files.keys().copied().collect())
        }

        fn read(&mut self, seg: u64) -> io::Result<Vec<u8>> {
            let state = self.op()?;
            Ok(state.files.get(&seg).ok_or_else(missing)?.data.clone())
        }

        fn read_at(&mut self, seg: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let state = self.op()?;
            let data = &state.files.get(&seg).ok_or_else(missing)?.data;
            let start = offset as usize;
            data.get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short read"))
        }

        fn create(&mut self, seg: u64) -> io::Result<()> {
            let mut state = self.op()?;
            if state.files.contains_key(&seg) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
            }
            state.files.insert(seg, SimFile::default());
            Ok(())
        }

        fn append(&mut self, seg: u64, data: &[u8]) -> io::Result<()> {
            let mut state = self.op()?;
            let total: usize = state.files.values().map(|f| f.data.len()).sum();
            if state
                .full_at_bytes
                .is_some_and(|full| total + data.len() > full)
            {
                // A real full disk may take part of the write; so do we.
                let room = state.full_at_bytes.unwrap().saturating_sub(total);
                let file = state.files.get_mut(&seg).ok_or_else(missing)?;
                file.data.extend_from_slice(&data[..room.min(data.len())]);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let file = state.files.get_mut(&seg).ok_or_else(missing)?;
            file.data.extend_from_slice(data);
            Ok(())
        }

        fn sync(&mut self, seg: u64) -> io::Result<()> {
            let (result, mut state) = self.sync_op();
            if result.as_ref().is_err_and(|_| state.dead) {
                return result;
            }
            // Failed or not, the data reached the disk (see `fail_at`).
            let file = state.files.get_mut(&seg).ok_or_else(missing)?;
            file.durable = file.data.clone();
            result
        }

        fn truncate(&mut self, seg: u64, len: u64) -> io::Result<()> {
            let mut state = self.op()?;
            let file = state.files.get_mut(&seg).ok_or_else(missing)?;
            file.data.truncate(len as usize);
            // Truncation is treated as durable at once (metadata journaling); what
            // matters to the log is that it never finds bytes past a cut it made.
            file.durable.truncate(len as usize);
            Ok(())
        }

        fn remove(&mut self, seg: u64) -> io::Result<()> {
            let mut state = self.op()?;
            state.files.remove(&seg).ok_or_else(missing)?;
            Ok(())
        }

        fn sync_dir(&mut self) -> io::Result<()> {
            let (result, mut state) = self.sync_op();
            result?;
            state.durable_names = state.files.keys().copied().collect();
            Ok(())
        }
    }
}
