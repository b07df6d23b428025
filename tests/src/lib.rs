//! The harness of the end-to-end tests: a real daemon on a socket in a fresh temporary
//! directory — in this process ([`TestDaemon`], through `ipcd::run`) or as the real
//! binary ([`DaemonProcess`]) — and the real `ipcctl` binary pointed at it ([`ipcctl`]).
//! Tests talk to the daemon only through `ipc-client` and `ipcctl`, as users do.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipc_client::{BlockingClient, MailboxInfo};

/// A daemon served by `ipcd::run` on its own runtime thread; stopped on drop.
#[derive(Debug)]
pub struct TestDaemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with(ipcd::Config::default())
    }

    pub fn start_with(config: ipcd::Config) -> Self {
        let dir = tempdir();
        let socket = dir.path().join("ipcd.sock");
        // Bound before this returns, so clients may connect at once.
        let (listener, socket_file) = ipcd::bind(&socket).expect("bind the test socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime");
            runtime
                .block_on(ipcd::run(listener, config, async {
                    let _ = stopped.await;
                }))
                .expect("daemon ran");
            drop(socket_file);
        });
        Self {
            dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A scratch directory beside the socket, removed with the daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new blocking client.
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect_to(&self.socket).expect("connect to the test daemon")
    }

    /// Waits, without sleeping blindly, until `mailbox` has `n` waiting receivers: each
    /// check is a round trip to the daemon.
    pub fn wait_for_receivers(&self, mailbox: &str, n: u64) -> MailboxInfo {
        self.wait_for(mailbox, |i| i.waiting_receivers == n)
    }

    pub fn wait_for_senders(&self, mailbox: &str, n: u64) -> MailboxInfo {
        self.wait_for(mailbox, |i| i.waiting_senders == n)
    }

    fn wait_for(&self, mailbox: &str, done: impl Fn(&MailboxInfo) -> bool) -> MailboxInfo {
        let mut client = self.client();
        for _ in 0..100_000 {
            let info = client.stat(mailbox).expect("stat");
            if done(&info) {
                return info;
            }
            std::thread::yield_now();
        }
        panic!("mailbox {mailbox} never reached the awaited state");
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A temporary directory that other users may enter (for the multi-user tests).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ipcd-test-")
        .tempdir()
        .expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temporary directory");
    dir
}

/// Where cargo put this workspace's binaries: beside the `deps` folder of this test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo test --workspace` \
         or `cargo build --workspace` does)",
        path.display()
    );
    path
}

/// The `ipcctl` binary, pointed at `socket` through `IPCD_SOCKET`, with no stdin.
pub fn ipcctl(socket: &Path) -> Command {
    let mut command = Command::new(binary("ipcctl"));
    command
        .env("IPCD_SOCKET", socket)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    command
}

/// The real `ipcd` binary running on a socket in its own temporary directory.
#[derive(Debug)]
pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
    reaped: bool,
    _dir: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts `ipcd --socket …` and returns once it logs that it is listening.
    pub fn spawn() -> Self {
        let dir = tempdir();
        let socket = dir.path().join("ipcd.sock");
        let mut child = Command::new(binary("ipcd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("IPCD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ipcd");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => panic!("ipcd exited before listening"),
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            socket,
            reaped: false,
            _dir: dir,
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the daemon to exit, at most `limit`; `None` if it did not (it is then
    /// killed when this value drops).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid out-pointer.
            let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            let _ = tx.send((rc, status));
        });
        let (rc, status) = rx.recv_timeout(limit).ok()?;
        assert_eq!(rc, pid as i32, "waitpid");
        self.reaped = true;
        use std::os::unix::process::ExitStatusExt;
        Some(std::process::ExitStatus::from_raw(status))
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether this process runs as root (needed to create and become other users).
pub fn is_root() -> bool {
    uid() == 0
}

/// The effective uid of this process: the one the daemon sees through `SO_PEERCRED`.
pub fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
