//! The harness of the end-to-end tests: a real daemon on a socket in a fresh temporary
//! directory — in this process ([`TestDaemon`], through `ipcd::run`) or as the real
//! binary ([`DaemonProcess`]) — and the real `ipcctl` binary pointed at it ([`ipcctl`]).
//! Tests talk to the daemon only through `ipc-client` and `ipcctl`, as users do.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ipc_client::{BlockingClient, MailboxInfo};

/// A daemon served by `ipcd::run` on its own runtime thread; stopped on drop. Its
/// durable state lives in its temporary directory unless the config names another.
#[derive(Debug)]
pub struct TestDaemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: ipcd::Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with(ipcd::Config::default())
    }

    pub fn start_with(mut config: ipcd::Config) -> Self {
        let dir = tempdir();
        if config.state_dir == ipcd::Config::default().state_dir {
            config.state_dir = dir.path().join("state");
        }
        let socket = dir.path().join("ipcd.sock");
        let mut daemon = Self {
            dir,
            socket,
            config,
            stop: None,
            thread: None,
        };
        daemon.serve();
        daemon
    }

    /// Stops the daemon gracefully and starts a new one on the same socket and state.
    pub fn restart(&mut self) {
        self.shut_down();
        self.serve();
    }

    fn serve(&mut self) {
        // Bound before this returns, so clients may connect at once.
        let (listener, socket_file) = ipcd::bind(&self.socket).expect("bind the test socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
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
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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
        self.shut_down();
    }
}

/// A client that sends and receives one message on `mailbox`, as proof the daemon still
/// serves it.
pub fn round_trip(client: &mut BlockingClient, mailbox: &str, n: u64) {
    let body = format!("still here {n}");
    client
        .send(mailbox, body.clone(), &ipc_client::SendOptions::default())
        .expect("the well-behaved client can send");
    let got = client
        .recv(
            mailbox,
            &ipc_client::RecvOptions::default().wait(ipc_client::Wait::NoWait),
        )
        .expect("the well-behaved client can receive");
    assert_eq!(&got.payload[..], body.as_bytes());
}

/// An encoded hello from a client called `name`, for tests that speak raw frames.
pub fn hello_frame(name: &str) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    let hello = ipc_proto::Hello {
        version: ipc_proto::PROTOCOL_VERSION,
        client_name: name.into(),
    };
    ipc_proto::codec::encode_frame(ipc_proto::FrameKind::Hello, 0, &hello, u32::MAX, &mut out)
        .expect("encode a hello");
    out
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

/// Where cargo put this workspace's binaries and libraries (`target/<profile>`): the
/// folder that holds the `deps` folder of this test.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .to_owned()
}

/// A binary of this workspace, in [`target_dir`]; it must have been built.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
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

/// The real `ipcd` binary running on a socket in its own temporary directory, its log
/// kept for the test to read.
#[derive(Debug)]
pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
    reaped: bool,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// The directory of socket and state, when the process owns it.
    _dir: Option<tempfile::TempDir>,
}

impl DaemonProcess {
    /// Starts `ipcd --socket …` and returns once it logs that it is listening.
    pub fn spawn() -> Self {
        Self::spawn_wrapped(&[])
    }

    /// As [`spawn`](Self::spawn), run through `wrapper` (e.g. `["prlimit", "--nofile=64"]`).
    pub fn spawn_wrapped(wrapper: &[&str]) -> Self {
        let dir = tempdir();
        let mut process = Self::spawn_in(dir.path(), wrapper);
        process._dir = Some(dir);
        process
    }

    /// Starts `ipcd` with its socket and state in `dir`, which the caller keeps: a
    /// daemon started again in the same directory finds the state of the last one.
    pub fn spawn_in(dir: &Path, wrapper: &[&str]) -> Self {
        Self::spawn_custom(dir, wrapper, &[], &[])
    }

    /// As [`spawn_in`](Self::spawn_in), with more arguments for `ipcd` and more
    /// environment.
    pub fn spawn_custom(dir: &Path, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_program(&binary("ipcd"), dir, wrapper, args, env)
    }

    /// The real daemon in `dir`, with `config` (TOML) as its configuration file.
    pub fn spawn_with_config(dir: &Path, config: &str) -> Self {
        let file = dir.join("ipcd.toml");
        std::fs::write(&file, config).expect("write the configuration");
        let file = file.to_str().expect("a UTF-8 path");
        Self::spawn_custom(dir, &[], &["--config", file], &[])
    }

    /// As [`spawn_custom`](Self::spawn_custom), running the `ipcd` at `ipcd` (another
    /// build, to compare with).
    pub fn spawn_program(
        ipcd: &Path,
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let socket = dir.join("ipcd.sock");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(ipcd);
                c
            }
            None => Command::new(ipcd),
        };
        let mut child = command
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(args)
            .envs(env.iter().copied())
            .env("IPCD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ipcd");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let kept = log.clone();
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, changed) = &*kept;
                lines.lock().unwrap().push(line);
                changed.notify_all();
            }
        });
        let process = Self {
            child,
            socket,
            reaped: false,
            log,
            _dir: None,
        };
        process
            .wait_for_log("listening on", Duration::from_secs(60))
            .expect("ipcd exited before listening");
        process
    }

    /// Waits until a log line contains `needle` and returns it; `None` after `limit`.
    /// Woken by each new line, not by polling.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Option<String> {
        let (lines, changed) = &*self.log;
        let deadline = std::time::Instant::now() + limit;
        let mut lines = lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            lines = changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Every log line so far that contains `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let lines = self.log.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The daemon's peak resident set so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// The daemon's resident set now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// A new blocking client.
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect_to(&self.socket).expect("connect to ipcd")
    }

    /// Kills the daemon with SIGKILL and reaps it: a crash, as far as the daemon can tell.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill ipcd");
        self.child.wait().expect("reap ipcd");
        self.reaped = true;
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

/// A process identity to run `ipcctl` as (through `setpriv`, so root only). The ids need
/// no passwd entry: the daemon sees only what the kernel reports.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: &'a [u32],
}

impl Principal<'_> {
    pub const fn new(uid: u32, gid: u32) -> Principal<'static> {
        Principal {
            uid,
            gid,
            groups: &[],
        }
    }
}

/// Runs `connect` on a new thread of this process that has first taken `who`'s ids. The
/// daemon learns a connection's identity from the credentials of the thread that called
/// connect(2) (`SO_PEERCRED`), so this makes a connection of another uid without another
/// program. The raw system calls change that thread only (the C library's wrappers would
/// change every thread of the process), and the thread ends as soon as it has connected.
/// Needs root.
pub fn connect_as<T: Send + 'static>(
    who: Principal<'static>,
    connect: impl FnOnce() -> T + Send + 'static,
) -> T {
    assert!(is_root(), "connecting as another uid needs root");
    std::thread::spawn(move || {
        let keep = libc::uid_t::MAX;
        // SAFETY: these system calls take plain integers (and a null list of zero groups)
        // and change only the calling thread's credentials.
        unsafe {
            let no_groups: *const libc::gid_t = std::ptr::null();
            assert_eq!(libc::syscall(libc::SYS_setgroups, 0usize, no_groups), 0);
            assert_eq!(libc::syscall(libc::SYS_setresgid, keep, who.gid, keep), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, keep, who.uid, keep), 0);
        }
        connect()
    })
    .join()
    .expect("the connecting thread")
}

/// A daemon that other users' commands can reach: its socket, and an open directory
/// beside it where a copy of `ipcctl` can be put for them.
pub trait Reachable {
    fn socket(&self) -> &Path;
    fn dir(&self) -> &Path;
}

impl Reachable for TestDaemon {
    fn socket(&self) -> &Path {
        &self.socket
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Reachable for DaemonProcess {
    fn socket(&self) -> &Path {
        &self.socket
    }
    fn dir(&self) -> &Path {
        self.socket.parent().expect("the socket is in a directory")
    }
}

/// `ipcctl ARGS…` as `who`, against `daemon`, to completion.
pub fn ipcctl_as(
    daemon: &impl Reachable,
    who: Principal<'_>,
    args: &[&str],
) -> std::process::Output {
    spawn_ipcctl_as(daemon, who, args)
        .wait_with_output()
        .expect("wait for ipcctl")
}

/// `ipcctl ARGS…` as `who`, started in the background with its output captured.
pub fn spawn_ipcctl_as(daemon: &impl Reachable, who: Principal<'_>, args: &[&str]) -> Child {
    assert!(is_root(), "running commands as other users needs root");
    // The build tree may sit in a directory other users cannot enter (a fresh clone in
    // a private temporary directory): run a copy from the daemon's open directory.
    let program = daemon.dir().join("ipcctl");
    if !program.exists() {
        let staged = daemon
            .dir()
            .join(format!("ipcctl.{:?}", std::thread::current().id()));
        // Copied by a child process, not here: a file this process held open for writing
        // could be inherited by a fork in another test thread, and exec would then fail
        // with ETXTBSY.
        let copied = Command::new("cp")
            .arg(binary("ipcctl"))
            .arg(&staged)
            .status()
            .expect("run cp");
        assert!(copied.success(), "copy ipcctl");
        // Renamed into place whole, so a concurrent caller never runs a partial copy.
        std::fs::rename(&staged, &program).expect("move ipcctl into place");
    }
    let groups = if who.groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = who.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    Command::new("setpriv")
        .arg(format!("--reuid={}", who.uid))
        .arg(format!("--regid={}", who.gid))
        .arg(groups)
        .arg("--")
        .arg(program)
        .args(args)
        .env("IPCD_SOCKET", daemon.socket())
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ipcctl through setpriv")
}
