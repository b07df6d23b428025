//! Per-uid quotas (SPEC §7) across real uids: a uid over a quota gets 77 on the request
//! that would pass it, naming the quota, while other uids — and the same uid's other
//! connections — keep working; giving back what was charged restores the quota.
//! Needs root (setpriv); without it the tests say so and pass without checking.

use std::process::Output;

use ipcd::config::Quota;
use ipcd_tests::{Principal, TestDaemon, ipcctl_as, is_root, spawn_ipcctl_as};
use serde_json::Value;

const HEAVY: Principal<'static> = Principal::new(62001, 62001);
const LIGHT: Principal<'static> = Principal::new(62002, 62002);

fn daemon_with(quota: Quota) -> TestDaemon {
    TestDaemon::start_with(ipcd::Config {
        quota,
        // Exact payload arithmetic below; the per-message charge has its own test in
        // reliability.rs.
        message_overhead: 0,
        ..ipcd::Config::default()
    })
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn ok(out: Output) -> String {
    assert_eq!(code(&out), 0, "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn over_quota(out: &Output, quota: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out), 77, "{out:?}");
    assert!(stderr.contains("quota exceeded"), "{stderr}");
    assert!(stderr.contains(quota), "names the quota {quota}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

/// `who`'s usage, as root's `status` shows it, once its `key` reads `expected`. A
/// command's reply stays charged to its uid until the daemon has finished writing it, and
/// its connection until the daemon has closed it, which can be just after the command
/// read the reply and exited. Asking as root charges nothing to `who`; each try is a
/// round trip, and a value that never settles fails.
fn settled(daemon: &TestDaemon, who: Principal<'_>, key: &str, expected: u64) -> Value {
    let mut root = daemon.client();
    let mut last = Value::Null;
    for _ in 0..10_000 {
        let status = root.status().expect("status");
        let usage = status.users.iter().find(|u| u.uid == who.uid);
        last = serde_json::json!({
            "queued_bytes": usage.map_or(0, |u| u.queued_bytes),
            "connections": usage.map_or(0, |u| u.connections),
            "mailboxes": usage.map_or(0, |u| u.mailboxes),
            "max_queued_bytes": usage.and_then(|u| u.max_queued_bytes),
            "max_connections": usage.and_then(|u| u.max_connections),
        });
        if last[key] == expected {
            return last;
        }
    }
    panic!(
        "{key} of uid {} never settled at {expected}: {last}",
        who.uid
    );
}

/// `status --json` as `who`: its own usage row.
fn own_usage(daemon: &TestDaemon, who: Principal<'_>) -> Value {
    let status: Value = serde_json::from_str(&ok(ipcctl_as(daemon, who, &["status", "--json"])))
        .expect("status JSON");
    let users = status["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "a user sees only itself: {status}");
    assert_eq!(users[0]["uid"], who.uid);
    users[0].clone()
}

#[test]
fn queued_bytes_quota_fails_only_the_sender_over_it() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as other uids");
        return;
    }
    let daemon = daemon_with(Quota {
        queued_bytes: 10_000,
        ..ipcd::Config::default().quota
    });
    ok(ipcctl_as(
        &daemon,
        HEAVY,
        &["create", "shared", "--mode", "666"],
    ));
    let chunk = "x".repeat(4_000);
    ok(ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]));
    ok(ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]));
    // 8,000 held; 4,000 more would pass 10,000.
    let out = ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]);
    over_quota(&out, "queued_bytes quota of 10000");
    // A blocking send is refused too, at once, rather than waiting on other mailboxes.
    let out = ipcctl_as(
        &daemon,
        HEAVY,
        &["send", "shared", &chunk, "--timeout", "1m"],
    );
    over_quota(&out, "queued_bytes");
    // What fits still goes.
    ok(ipcctl_as(
        &daemon,
        HEAVY,
        &["send", "shared", &"y".repeat(2_000)],
    ));

    // Another uid is charged separately, into the same mailbox.
    ok(ipcctl_as(&daemon, LIGHT, &["send", "shared", &chunk]));
    ok(ipcctl_as(&daemon, LIGHT, &["send", "shared", &chunk]));

    // The same uid's other connections keep working: stat, status, receive.
    let usage = settled(&daemon, HEAVY, "queued_bytes", 10_000);
    assert_eq!(usage["max_queued_bytes"], 10_000);
    assert_eq!(usage["mailboxes"], 1);
    settled(&daemon, LIGHT, "queued_bytes", 8_000);
    // Receiving one of HEAVY's messages gives its bytes back to HEAVY.
    assert_eq!(
        ok(ipcctl_as(&daemon, HEAVY, &["recv", "shared", "--raw"])),
        chunk
    );
    settled(&daemon, HEAVY, "queued_bytes", 6_000);
    ok(ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]));
    over_quota(
        &ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]),
        "queued_bytes",
    );
    // Purging gives everything back.
    ok(ipcctl_as(&daemon, HEAVY, &["purge", "shared"]));
    settled(&daemon, HEAVY, "queued_bytes", 0);
    settled(&daemon, LIGHT, "queued_bytes", 0);
    ok(ipcctl_as(&daemon, HEAVY, &["send", "shared", &chunk]));

    // Root sees every uid, and is not limited by default.
    let status: Value = serde_json::from_slice(
        &ipcd_tests::ipcctl(daemon.socket())
            .args(["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let uids: Vec<u64> = status["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["uid"].as_u64().unwrap())
        .collect();
    assert!(uids.contains(&u64::from(HEAVY.uid)), "{status}");
}

#[test]
fn mailboxes_quota_counts_what_a_uid_owns() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as other uids");
        return;
    }
    let daemon = daemon_with(Quota {
        mailboxes: 2,
        ..ipcd::Config::default().quota
    });
    ok(ipcctl_as(&daemon, HEAVY, &["create", "a"]));
    ok(ipcctl_as(&daemon, HEAVY, &["create", "b"]));
    over_quota(
        &ipcctl_as(&daemon, HEAVY, &["create", "c"]),
        "mailboxes quota",
    );
    // --exist-ok on one it owns creates nothing, so costs nothing.
    ok(ipcctl_as(&daemon, HEAVY, &["create", "a", "--exist-ok"]));
    ok(ipcctl_as(&daemon, LIGHT, &["create", "c"]));
    // Removing one gives the slot back.
    ok(ipcctl_as(&daemon, HEAVY, &["rm", "a"]));
    ok(ipcctl_as(&daemon, HEAVY, &["create", "d"]));
    // Root giving a mailbox to HEAVY charges HEAVY, even past its quota.
    let root = ipcd_tests::ipcctl(daemon.socket())
        .args(["set", "c", "--owner", &HEAVY.uid.to_string()])
        .output()
        .unwrap();
    assert_eq!(code(&root), 0, "{root:?}");
    assert_eq!(own_usage(&daemon, HEAVY)["mailboxes"], 3);
    assert_eq!(own_usage(&daemon, LIGHT)["mailboxes"], 0);
    over_quota(&ipcctl_as(&daemon, HEAVY, &["create", "e"]), "mailboxes");
    ok(ipcctl_as(&daemon, LIGHT, &["create", "e"]));
}

#[test]
fn connections_quota_refuses_only_the_extra_connection() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as other uids");
        return;
    }
    let daemon = daemon_with(Quota {
        connections: 3,
        ..ipcd::Config::default().quota
    });
    ok(ipcctl_as(
        &daemon,
        HEAVY,
        &["create", "wait", "--mode", "666"],
    ));
    // Three receivers of HEAVY's hold its three connections.
    let mut waiting: Vec<_> = (0..3)
        .map(|_| spawn_ipcctl_as(&daemon, HEAVY, &["recv", "wait"]))
        .collect();
    daemon.wait_for_receivers("wait", 3);
    // A fourth connection of HEAVY is refused, with the reason.
    over_quota(
        &ipcctl_as(&daemon, HEAVY, &["stat", "wait"]),
        "connections quota",
    );
    // LIGHT is unaffected, and its messages reach HEAVY's waiting receivers, none of
    // which was disconnected.
    for i in 0..3 {
        ok(ipcctl_as(
            &daemon,
            LIGHT,
            &["send", "wait", &format!("m{i}")],
        ));
    }
    let mut got: Vec<String> = waiting
        .drain(..)
        .map(|child| ok(child.wait_with_output().unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, ["m0\n", "m1\n", "m2\n"]);
    // Their connections closed, HEAVY holds none, and may connect again.
    settled(&daemon, HEAVY, "connections", 0);
    let usage = own_usage(&daemon, HEAVY);
    assert_eq!(
        usage["connections"], 1,
        "only the status connection: {usage}"
    );
    assert_eq!(usage["max_connections"], 3);
}
