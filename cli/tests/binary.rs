//! The `ipcctl` binary without a daemon: version, usage errors and an unreachable socket.
//! (Having an integration test here also makes `cargo test` build the binary that the
//! workspace's end-to-end tests run.)

use std::process::Command;

fn ipcctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ipcctl"));
    command.env_remove("XDG_RUNTIME_DIR");
    command
}

#[test]
fn version_and_usage() {
    let out = ipcctl().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = ipcctl().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_daemon_exits_69_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = ipcctl()
        .env("IPCD_SOCKET", dir.path().join("nobody-here.sock"))
        .args(["stat", "jobs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ipcctl: "), "{stderr}");
}
