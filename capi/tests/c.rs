//! The C library from C: `tests/c/capi_example.c` and `tests/c/capi_test.c` compiled
//! with the system's `cc` against `libipc_client` — linked dynamically (`-lipc_client`
//! with an rpath) and statically (the `.a` and its system libraries) — and run against
//! a daemon of their own. Skipped, saying so, where there is no `cc`.
//!
//! Where the library comes from: the package `ipc-client-c` (`lib/`) makes the C
//! library files of this crate, and cargo builds a cdylib and staticlib only for a
//! command that asks for them — `cargo test -p ipc-capi` alone would run these tests
//! against whatever `libipc_client.so` an earlier build left, or none. So the tests ask
//! cargo: `cargo build -p ipc-client-c --lib` in the profile
//! and target directory they were built in, and take the libraries' paths from its JSON
//! messages. Cargo does not hold its build lock while tests run, so this is an ordinary
//! incremental build, and it builds the library as a C program gets it: without the
//! `tokio` feature that this package's dev-dependencies turn on for the tests
//! themselves.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ipcd_tests::TestDaemon;

/// What `cc` needs besides `libipc_client.a` (`rustc --print native-static-libs`).
const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Longest a C program may run before it is taken for hung and killed: far beyond what
/// any of them needs, only so that a hang fails the test instead of stalling it.
const WATCHDOG: Duration = Duration::from_secs(300);

/// The libraries cargo built, and the header.
#[derive(Debug)]
struct Library {
    shared: PathBuf,
    archive: PathBuf,
    include: PathBuf,
}

/// Builds the library once per test run (see the module's comment) and says where it is.
fn library() -> &'static Library {
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        // This test runs from <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>/deps");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory above {}", exe.display()),
        };
        let target_dir = profile_dir.parent().expect("<target>");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "--locked",
                "-p",
                "ipc-client-c",
                "--lib",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .arg("--message-format=json-render-diagnostics")
            .current_dir(crate_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo");
        assert!(
            output.status.success(),
            "cargo build -p ipc-client-c failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let manifest = crate_dir.join("lib/Cargo.toml");
        let files: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(&manifest))
            .flat_map(|m| {
                let names = m["filenames"].as_array().cloned().unwrap_or_default();
                names
                    .into_iter()
                    .filter_map(|f| f.as_str().map(PathBuf::from))
            })
            .collect();
        let with = |ext: &str| {
            files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == ext))
                .cloned()
                .unwrap_or_else(|| panic!("cargo named no .{ext} among {files:?}"))
        };
        Library {
            shared: with("so"),
            archive: with("a"),
            include: crate_dir.join("include"),
        }
    })
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Dynamic,
    Static,
}

/// Compiles `tests/c/<name>.c` into `dir`, linked as `link` says; `None` (after saying
/// why) when there is no C compiler.
fn compile(name: &str, link: Link, dir: &Path) -> Option<PathBuf> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler (`cc`) on PATH; the C library was not tested from C");
        return None;
    }
    let library = library();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/c/{name}.c"));
    let exe = dir.join(format!("{name}-{link:?}").to_lowercase());
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
    ])
    .arg("-I")
    .arg(&library.include)
    .arg(&source)
    .arg("-o")
    .arg(&exe);
    match link {
        Link::Dynamic => {
            let lib_dir = library.shared.parent().expect("the library's directory");
            cc.arg("-L")
                .arg(lib_dir)
                .arg("-lipc_client")
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
                .arg("-lpthread");
        }
        Link::Static => {
            cc.arg(&library.archive).args(STATIC_LIBS);
        }
    }
    let output = cc.output().expect("run cc");
    assert!(
        output.status.success(),
        "cc {name}.c ({link:?}) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(exe)
}

/// Runs a C program to its end (killing it if it hangs), its output kept.
fn run(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C program");
    let pid = child.id() as libc::pid_t;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(WATCHDOG).is_err() {
            // SAFETY: kill has no memory preconditions; the child is not reaped yet, so
            // the pid is still its own.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let output = child.wait_with_output().expect("wait for the C program");
    let _ = done.send(());
    watchdog.join().expect("watchdog");
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_runs_as_documented() {
    let daemon = TestDaemon::start();
    let Some(exe) = compile("capi_example", Link::Dynamic, daemon.dir()) else {
        return;
    };
    // No argument: the library finds the socket through IPCD_SOCKET, as by default.
    let mut command = Command::new(exe);
    command.env("IPCD_SOCKET", daemon.socket());
    let output = run(command);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "received type 1: urgent",
            "received type 2: normal",
            "left in place: type 3: low",
        ]
    );
    assert!(
        lines[3].ends_with(": 1 message(s) queued, 3 sent, 2 received")
            && lines[3].starts_with("capi-example-"),
        "{stdout}"
    );
    assert!(
        daemon.client().list().unwrap().is_empty(),
        "the example removes its mailbox"
    );
}

fn contract_holds(link: Link) {
    let daemon = TestDaemon::start();
    let Some(exe) = compile("capi_test", link, daemon.dir()) else {
        return;
    };
    let mut command = Command::new(exe);
    command.arg(daemon.socket());
    let output = run(command);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "capi_test ({link:?}) failed:\n{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}

#[test]
fn the_contract_holds_linked_dynamically() {
    contract_holds(Link::Dynamic);
}

#[test]
fn the_contract_holds_linked_statically() {
    contract_holds(Link::Static);
}

/// A daemon that goes away is `IPC_ERR_DISCONNECTED` for a C program, never the
/// `SIGPIPE` that a write to a closed socket raises, which kills a C program (Rust
/// programs ignore it). The client's writes go through `send(2)` with `MSG_NOSIGNAL`:
/// the standard library's `UnixStream` and `memfd::send_with_fd` both use it.
#[test]
fn a_vanished_daemon_is_an_error_not_a_signal() {
    let daemon = TestDaemon::start();
    let Some(exe) = compile("capi_test", Link::Dynamic, daemon.dir()) else {
        return;
    };
    let mut child = Command::new(exe)
        .arg(daemon.socket())
        .arg("disconnect")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start capi_test");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "connected\n");
    // Moved: the directory with the program in it goes with the daemon, which the
    // program, already running, does not mind.
    drop(daemon);
    let mut stdin = child.stdin.take().expect("piped");
    writeln!(stdin, "go").expect("tell it to go on");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), None, "killed by a signal: {rest}");
    assert!(status.success(), "{status:?}: {rest}");
    assert_eq!(rest, "disconnected\n");
}
