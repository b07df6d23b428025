//! The `ipcctl` binary without a daemon: version, usage errors, an unreachable socket,
//! completion scripts and man pages.
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

#[test]
fn completions_and_man_pages_need_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = dir.path().join("nobody-here.sock");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = ipcctl()
            .env("IPCD_SOCKET", &nobody)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
        out.stdout
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions".as_ref(), shell.as_ref()]);
        let script = String::from_utf8(script).unwrap();
        assert!(
            script.contains("ipcctl") && script.contains("recv"),
            "{shell}"
        );
    }
    let page = run(&["man".as_ref()]);
    let text = String::from_utf8_lossy(&page);
    assert!(text.contains("\n.TH \"IPCCTL\" \"1\" "), "{text}");

    let man1 = dir.path().join("share/man/man1");
    assert!(run(&["man".as_ref(), man1.as_os_str()]).is_empty());
    assert_eq!(std::fs::read(man1.join("ipcctl.1")).unwrap(), page);
    for name in ["send", "recv", "ls", "stat", "status", "completions", "man"] {
        let page = std::fs::read_to_string(man1.join(format!("ipcctl-{name}.1"))).unwrap();
        assert!(
            page.contains(&format!("\\fBipcctl {name}\\fR")),
            "{name}: {page}"
        );
    }
}
