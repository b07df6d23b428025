//! Permissions across real users: processes of other uids, started with `setpriv`, drive
//! the real `ipcctl` against one daemon. Needs root to create and become the users;
//! without it the test says so and passes without checking.

use std::process::Output;

use ipcd_tests::{Principal, TestDaemon, ipcctl, ipcctl_as, is_root};

const OWNER: &str = "ipcd-test-owner";
const OTHER: &str = "ipcd-test-other";

/// The uid and gid of `user`, creating it (a system user without a home) if needed.
fn ensure_user(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        std::process::Command::new("id")
            .args([flag, user])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8(o.stdout)
                    .unwrap()
                    .trim()
                    .parse::<u32>()
                    .unwrap()
            })
    };
    if id("-u").is_none() {
        let status = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell"])
            .args(["/usr/sbin/nologin", user])
            .status()
            .expect("run useradd");
        // Another test process may have created it meanwhile; look again either way.
        let _ = status;
    }
    (
        id("-u").expect("user exists"),
        id("-g").expect("user has a group"),
    )
}

/// `ipcctl ARGS…` as `user`.
fn as_user(daemon: &TestDaemon, (uid, gid): (u32, u32), args: &[&str]) -> Output {
    ipcctl_as(daemon, Principal::new(uid, gid), args)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

#[test]
fn mode_bits_decide_across_users() {
    if !is_root() {
        eprintln!("skipped: needs root to create users and run commands as them");
        return;
    }
    let daemon = TestDaemon::start();
    let owner = ensure_user(OWNER);
    let other = ensure_user(OTHER);

    let out = as_user(&daemon, owner, &["create", "private"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let out = as_user(&daemon, owner, &["send", "private", "secret"]);
    assert_eq!(code(&out), 0, "{out:?}");

    // 0600: the other user may neither send, receive, peek nor stat, nor manage.
    for args in [
        &["send", "private", "x", "--nowait"][..],
        &["recv", "private", "--nowait"],
        &["recv", "private", "--nowait", "--peek"],
        &["stat", "private"],
        &["purge", "private"],
        &["rm", "private"],
        &["set", "private", "--mode", "666"],
    ] {
        let out = as_user(&daemon, other, args);
        assert_eq!(code(&out), 77, "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("permission denied"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    // And `ls` does not list it for them.
    let out = as_user(&daemon, other, &["ls", "--json"]);
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("private"));

    // 0622: others may send but still not receive.
    let out = as_user(&daemon, owner, &["set", "private", "--mode", "622"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let out = as_user(&daemon, other, &["send", "private", "from other"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let out = as_user(&daemon, other, &["recv", "private", "--nowait"]);
    assert_eq!(code(&out), 77, "{out:?}");

    // The owner reads both, each stamped with its real sender uid.
    let out = as_user(
        &daemon,
        owner,
        &["recv", "private", "--count", "2", "--json"],
    );
    assert_eq!(code(&out), 0, "{out:?}");
    let senders: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["sender"]["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(senders, [u64::from(owner.0), u64::from(other.0)]);

    // Root passes every check; the owner may remove.
    let out = ipcctl(daemon.socket())
        .args(["stat", "private"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let out = as_user(&daemon, owner, &["rm", "private"]);
    assert_eq!(code(&out), 0, "{out:?}");
}
