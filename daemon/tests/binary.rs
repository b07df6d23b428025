//! The `ipcd` binary's start-up: arguments and the socket-path safety rules. (Having an
//! integration test here also makes `cargo test` build the binary that the workspace's
//! end-to-end tests run.)

use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::process::{Command, Output};

fn ipcd(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipcd"))
        .args(args)
        .env("IPCD_LOG", "info")
        .output()
        .expect("run ipcd")
}

#[test]
fn version_and_help() {
    let out = ipcd(&["--version".as_ref()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = ipcd(&["--bogus".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn refuses_a_symlinked_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.sock");
    let link = dir.path().join("ipcd.sock");
    symlink(&target, &link).unwrap();
    let out = ipcd(&["--socket".as_ref(), link.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("symbolic link"), "{log}");
    assert!(!target.exists());
}

#[test]
fn refuses_a_path_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ipcd.sock");
    std::fs::write(&file, b"precious").unwrap();
    let out = ipcd(&["--socket".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn refuses_to_steal_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipcd.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let out = ipcd(&["--socket".as_ref(), path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    assert!(path.exists(), "the live socket is left alone");
}

#[test]
fn refuses_a_socket_directory_others_may_write_to() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = open.join("ipcd.sock");
    let out = ipcd(&["--socket".as_ref(), path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("others may write to it"), "{log}");
    assert!(!path.exists());
    // With the sticky bit, as /tmp has, others cannot replace our socket: accepted.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipcd"))
        .args(["--socket".as_ref(), path.as_os_str()])
        .env("IPCD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut log, &mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn refuses_a_stale_socket_of_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to give a socket file to another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipcd.sock");
    drop(UnixListener::bind(&path).unwrap());
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let out = ipcd(&["--socket".as_ref(), path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("belongs to uid 65534"), "{log}");
    assert!(path.exists(), "another user's file is left alone");
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamps() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipcd"))
        .arg("--socket")
        .arg(dir.path().join("ipcd.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("IPCD_LOG", "info")
        .env("JOURNAL_STREAM", "8:1234")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.starts_with("<6>ipcd "), "{first:?}");
    assert!(!first.contains("Z "), "no timestamp: {first:?}");
    assert!(!first.contains('\u{1b}'), "no colour: {first:?}");
}
