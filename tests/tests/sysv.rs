//! The SysV message-queue programs of `tests/c/`, judged twice: on the kernel's own
//! queues, which shows that the programs are right, and under the `libipcd_sysv.so`
//! shim (`LD_PRELOAD`, speaking to a test daemon through `IPCD_SOCKET`), which must
//! give the same output and exit status to the byte.
//!
//! Without a C compiler (`cc`) every test here passes after saying so (`.ci/run`
//! installs one). The shim is a dev-dependency of this package, so `cargo test` builds
//! it (`target/<profile>/deps/libipcd_sysv.so`); a missing shim is a failure, never a
//! skip.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use ipc_client::Error;
use ipcd_tests::{TestDaemon, ipcctl, is_root, target_dir, tempdir};

/// How long a program may run before it is taken as hung and killed. Not a time limit
/// on working runs (they take well under a second): a hang becomes a failure that
/// names the program instead of a test run that never ends.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// The C compiler's flags: every warning is an error.
const CFLAGS: &[&str] = &["-O1", "-Wall", "-Werror", "-D_GNU_SOURCE"];

/// Where each run's keys start, within this test process's block of keys (see
/// [`key`]). `sysv_errno` uses 64 keys from its base; the other programs one.
const ERRNO_ON_KERNEL: i32 = 0x00;
const ERRNO_UNDER_SHIM: i32 = 0x40;
const COURSEWORK_ON_KERNEL: i32 = 0x80;
const COURSEWORK_UNDER_SHIM: i32 = 0x81;
const HOLD_ON_KERNEL: i32 = 0x82;
const HOLD_UNDER_SHIM: i32 = 0x83;
const HOLD_DURABLE_UNDER_SHIM: i32 = 0x84;
/// Keys `sysv_errno` may use from its base (its `KEYS`).
const ERRNO_KEYS: i32 = 64;

/// A SysV key of this test process: a block of 256 keys per pid, so that concurrent
/// runs of these tests never share a queue, and the kernel's and the shim's halves of
/// one test use different keys (a shim that fell through to the kernel would otherwise
/// find the kernel half's queues).
fn key(offset: i32) -> i32 {
    let pid = i32::try_from(std::process::id() & 0x3f_ffff).expect("masked to 22 bits");
    0x1000_0000 + pid * 0x100 + offset
}

/// The C programs one test needs, compiled into a directory of its own.
struct Programs {
    dir: tempfile::TempDir,
}

impl Programs {
    /// Compiles `tests/c/<name>.c` for each name; `None`, after saying why, when there
    /// is no C compiler.
    fn compile(names: &[&str]) -> Option<Self> {
        if let Err(e) = Command::new("cc").arg("--version").output() {
            eprintln!("skipping: no C compiler to build the SysV programs (cc: {e})");
            return None;
        }
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
        let dir = tempdir();
        for name in names {
            let out = Command::new("cc")
                .args(CFLAGS)
                .arg("-o")
                .arg(dir.path().join(name))
                .arg(sources.join(format!("{name}.c")))
                .output()
                .expect("run cc");
            assert!(
                out.status.success(),
                "cc {name}.c failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(Self { dir })
    }

    /// `name` with `args`, on the kernel's queues: no shim, whatever this process's
    /// environment holds.
    fn on_kernel(&self, name: &str, args: &[String]) -> Command {
        let mut command = Command::new(self.dir.path().join(name));
        command
            .args(args)
            .env_remove("LD_PRELOAD")
            .env_remove("IPCD_SOCKET")
            .env_remove("IPCD_SYSV_DURABLE");
        command
    }

    /// `name` with `args`, its SysV calls going through `shim` to `daemon`.
    fn under_shim(&self, name: &str, args: &[String], shim: &Path, daemon: &TestDaemon) -> Command {
        let mut command = self.on_kernel(name, args);
        command
            .env("LD_PRELOAD", shim)
            .env("IPCD_SOCKET", daemon.socket())
            .env_remove("XDG_RUNTIME_DIR");
        command
    }
}

/// The shim library, which `cargo test` built with these tests.
fn shim() -> Option<PathBuf> {
    // Built with these tests (a dev-dependency of this package, so `cargo test` makes
    // it), in `deps/`; `cargo build` also puts one beside the binaries.
    let path = [
        target_dir().join("deps/libipcd_sysv.so"),
        target_dir().join("libipcd_sysv.so"),
    ]
    .into_iter()
    .find(|p| p.exists());
    assert!(
        path.is_some(),
        "libipcd_sysv.so is not built in {}: `cargo test` builds it",
        target_dir().display()
    );
    path
}

/// Runs `command` to completion with its output captured, in a process group of its own
/// so that a hang (see [`HANG_LIMIT`]) kills its forked children too.
fn run(mut command: Command, what: &str) -> Output {
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let watchdog = Watchdog::start(Group::of(&child));
    let out = child.wait_with_output().expect("wait for the program");
    let hung = watchdog.stop();
    assert!(
        !hung,
        "{what} hung and was killed after {HANG_LIMIT:?}: {out:?}"
    );
    out
}

/// A program's process group, by its leader's pid.
#[derive(Debug, Clone, Copy)]
struct Group(libc::pid_t);

impl Group {
    fn of(child: &Child) -> Self {
        Self(libc::pid_t::try_from(child.id()).expect("a pid fits pid_t"))
    }

    fn kill(self) {
        // SAFETY: kill has no memory-safety preconditions; a negative pid names the
        // group this test made for its own child.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// Kills a process group that has not finished within [`HANG_LIMIT`].
struct Watchdog {
    finished: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(group: Group) -> Self {
        let (finished, watch) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let hung = matches!(
                watch.recv_timeout(HANG_LIMIT),
                Err(RecvTimeoutError::Timeout)
            );
            if hung {
                group.kill();
            }
            hung
        });
        Self { finished, thread }
    }

    /// Stands the watchdog down; whether it had to kill the group.
    fn stop(self) -> bool {
        drop(self.finished);
        self.thread.join().expect("the watchdog thread")
    }
}

/// Removes the kernel's queues at keys `from..from + count` when dropped, so that a
/// run that failed or hung leaves none behind — nor one under a shim that let a call
/// through to the kernel.
struct KernelKeys {
    from: i32,
    count: i32,
}

impl Drop for KernelKeys {
    fn drop(&mut self) {
        for key in self.from..self.from + self.count {
            if let Some(id) = kernel_queue(key) {
                // SAFETY: IPC_RMID takes no buffer.
                unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}

/// The id of the kernel's queue at `key`, if there is one.
fn kernel_queue(key: i32) -> Option<i32> {
    // SAFETY: msgget takes plain integers.
    let id = unsafe { libc::msgget(key, 0) };
    (id >= 0).then_some(id)
}

/// The permission bits of the kernel's queue `id`.
fn kernel_queue_mode(id: i32) -> u32 {
    // SAFETY: msqid_ds is plain data, and IPC_STAT fills the one we pass.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) };
    assert_eq!(rc, 0, "IPC_STAT of queue {id}");
    u32::from(ds.msg_perm.mode) & 0o777
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

/// Asserts that a run under the shim said and did exactly what the kernel run did.
fn assert_same_as_kernel(shim: &Output, kernel: &Output, what: &str) {
    let kernel_lines: Vec<&str> = text(&kernel.stdout).lines().collect();
    let differing: Vec<&str> = text(&shim.stdout)
        .lines()
        .filter(|l| !kernel_lines.contains(l))
        .collect();
    assert_eq!(
        text(&shim.stdout),
        text(&kernel.stdout),
        "{what} under the shim printed otherwise than on the kernel; its lines the kernel \
         run did not print: {differing:#?}\nstderr under the shim:\n{}",
        String::from_utf8_lossy(&shim.stderr)
    );
    assert_eq!(
        shim.status.code(),
        kernel.status.code(),
        "{what}: exit status under the shim {:?}, on the kernel {:?}; stderr under the \
         shim:\n{}",
        shim.status,
        kernel.status,
        String::from_utf8_lossy(&shim.stderr)
    );
}

/// The names of the daemon's mailboxes under `sysv/`.
fn sysv_mailboxes(daemon: &TestDaemon) -> Vec<String> {
    let list = daemon.client().list().expect("list the mailboxes");
    list.iter()
        .map(|m| m.name.as_str().to_owned())
        .filter(|n| n.starts_with("sysv/"))
        .collect()
}

/// What `coursework` prints, on any correct implementation: the client's lines, then
/// the server's.
fn coursework_output() -> String {
    let mut out = String::new();
    for t in (1..=10).rev() {
        out.push_str(&format!("client: sent type {t}\n"));
    }
    for t in (1..=10).rev() {
        out.push_str(&format!("server: received type {t}: message of type {t}\n"));
    }
    out.push_str("server: removed the queue\n");
    out
}

#[test]
fn coursework_runs_alike_on_the_kernel_and_under_the_shim() {
    let Some(programs) = Programs::compile(&["coursework"]) else {
        return;
    };
    let on_kernel = key(COURSEWORK_ON_KERNEL);
    let _cleanup = KernelKeys {
        from: on_kernel,
        count: 1,
    };
    let kernel = run(
        programs.on_kernel("coursework", &[on_kernel.to_string()]),
        "coursework on the kernel",
    );
    assert!(kernel.status.success(), "{kernel:?}");
    assert_eq!(text(&kernel.stdout), coursework_output());
    assert_eq!(
        kernel_queue(on_kernel),
        None,
        "the server removed its queue"
    );

    let Some(shim) = shim() else { return };
    let daemon = TestDaemon::start();
    let _cleanup = KernelKeys {
        from: key(COURSEWORK_UNDER_SHIM),
        count: 1,
    };
    let under_shim = run(
        programs.under_shim(
            "coursework",
            &[key(COURSEWORK_UNDER_SHIM).to_string()],
            &shim,
            &daemon,
        ),
        "coursework under the shim",
    );
    assert_same_as_kernel(&under_shim, &kernel, "coursework");
    assert_eq!(
        sysv_mailboxes(&daemon),
        Vec::<String>::new(),
        "the server removed its queue"
    );
}

#[test]
fn errno_cases_hold_on_the_kernel_and_alike_under_the_shim() {
    let Some(programs) = Programs::compile(&["sysv_errno"]) else {
        return;
    };
    let on_kernel = key(ERRNO_ON_KERNEL);
    let _cleanup = KernelKeys {
        from: on_kernel,
        count: ERRNO_KEYS,
    };
    let kernel = run(
        programs.on_kernel("sysv_errno", &[on_kernel.to_string()]),
        "sysv_errno on the kernel",
    );
    let said = text(&kernel.stdout);
    let wrong: Vec<&str> = said
        .lines()
        .filter(|l| !l.starts_with("ok ") && !l.starts_with("skip "))
        .collect();
    assert!(
        wrong.is_empty() && kernel.status.success(),
        "the kernel fails cases of sysv_errno ({:?}): {wrong:#?}\nstderr:\n{}",
        kernel.status,
        String::from_utf8_lossy(&kernel.stderr)
    );
    let cases = said.lines().count();
    assert!(cases >= 30, "only {cases} cases ran:\n{said}");
    if is_root() {
        assert!(!said.contains("skip "), "as root every case runs:\n{said}");
    }
    for k in on_kernel..on_kernel + ERRNO_KEYS {
        assert_eq!(
            kernel_queue(k),
            None,
            "sysv_errno removes every queue it made"
        );
    }

    let Some(shim) = shim() else { return };
    let daemon = TestDaemon::start();
    let _cleanup = KernelKeys {
        from: key(ERRNO_UNDER_SHIM),
        count: ERRNO_KEYS,
    };
    let under_shim = run(
        programs.under_shim(
            "sysv_errno",
            &[key(ERRNO_UNDER_SHIM).to_string()],
            &shim,
            &daemon,
        ),
        "sysv_errno under the shim",
    );
    assert_same_as_kernel(&under_shim, &kernel, "sysv_errno");
    assert_eq!(
        sysv_mailboxes(&daemon),
        Vec::<String>::new(),
        "sysv_errno removes every queue it made"
    );
}

/// `sysv_hold KEY`, started: it has created its queue once [`start`](Self::start)
/// returns, and removes it when [`finish`](Self::finish) closes its stdin. Killed, with
/// its process group, if dropped unfinished (a failed assertion) or hung.
struct Holding {
    child: Child,
    group: Group,
    lines: BufReader<ChildStdout>,
    watchdog: Option<Watchdog>,
    what: &'static str,
}

impl Holding {
    fn start(mut command: Command, what: &'static str) -> Self {
        let mut child = command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let group = Group::of(&child);
        let lines = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut holding = Self {
            child,
            group,
            lines,
            watchdog: Some(Watchdog::start(group)),
            what,
        };
        holding.expect_line("created");
        holding
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .expect("read sysv_hold's output");
        assert_eq!(line.trim_end(), want, "{}", self.what);
    }

    /// Closes its stdin; it must remove its queue and exit 0.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        self.expect_line("removed");
        let status = self.child.wait().expect("wait for sysv_hold");
        let hung = self.watchdog.take().is_some_and(Watchdog::stop);
        assert!(
            !hung,
            "{} hung and was killed after {HANG_LIMIT:?}",
            self.what
        );
        assert!(status.success(), "{}: {status:?}", self.what);
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.group.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ipcctl ARGS… --json` against `daemon`, its JSON objects (one a line).
fn ipcctl_json(daemon: &TestDaemon, args: &[&str]) -> Vec<serde_json::Value> {
    let out = ipcctl(daemon.socket())
        .args(args)
        .arg("--json")
        .output()
        .expect("run ipcctl");
    assert!(out.status.success(), "ipcctl {args:?}: {out:?}");
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object"))
        .collect()
}

#[test]
fn a_queue_is_the_mailbox_sysv_key_while_it_exists() {
    let Some(programs) = Programs::compile(&["sysv_hold"]) else {
        return;
    };
    // On the kernel first, which shows the program does what it says.
    let on_kernel = key(HOLD_ON_KERNEL);
    let _cleanup = KernelKeys {
        from: on_kernel,
        count: 1,
    };
    let holding = Holding::start(
        programs.on_kernel("sysv_hold", &[on_kernel.to_string()]),
        "sysv_hold on the kernel",
    );
    let id = kernel_queue(on_kernel).expect("the kernel has the queue while it is held");
    assert_eq!(kernel_queue_mode(id), 0o600);
    holding.finish();
    assert_eq!(kernel_queue(on_kernel), None, "removed");

    let Some(shim) = shim() else { return };
    let daemon = TestDaemon::start();
    let under_shim = key(HOLD_UNDER_SHIM);
    let _cleanup = KernelKeys {
        from: under_shim,
        count: 1,
    };
    let name = format!("sysv/{under_shim}");
    let holding = Holding::start(
        programs.under_shim("sysv_hold", &[under_shim.to_string()], &shim, &daemon),
        "sysv_hold under the shim",
    );
    let listed = ipcctl_json(&daemon, &["ls"]);
    let names: Vec<&str> = listed.iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(
        names.contains(&name.as_str()),
        "ipcctl ls shows {name}: {names:?}"
    );
    let stat = ipcctl_json(&daemon, &["stat", &name]);
    assert_eq!(stat[0]["mode"], "0600", "the queue's mode is the mailbox's");
    assert_eq!(kernel_queue(under_shim), None, "no queue on the kernel");
    holding.finish();
    let gone = daemon.client().stat(&name);
    assert!(
        matches!(gone, Err(Error::NoSuchMailbox(_))),
        "IPC_RMID removes {name}: {gone:?}"
    );
}

#[test]
fn with_ipcd_sysv_durable_the_mailbox_is_durable() {
    let Some(programs) = Programs::compile(&["sysv_hold"]) else {
        return;
    };
    let Some(shim) = shim() else { return };
    let daemon = TestDaemon::start();
    let under_shim = key(HOLD_DURABLE_UNDER_SHIM);
    let _cleanup = KernelKeys {
        from: under_shim,
        count: 1,
    };
    let name = format!("sysv/{under_shim}");
    let mut command = programs.under_shim("sysv_hold", &[under_shim.to_string()], &shim, &daemon);
    command.env("IPCD_SYSV_DURABLE", "1");
    let holding = Holding::start(command, "sysv_hold under the shim, durable");
    let stat = ipcctl_json(&daemon, &["stat", &name]);
    assert_eq!(stat[0]["durable"], true, "{name}: {stat:?}");
    holding.finish();
}
