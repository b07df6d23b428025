//! The permission matrix (SPEC §2, §7): principals {owner, member of the mailbox's group
//! by primary group, member by supplementary group, other user, root} × modes {600, 640,
//! 660, 666} × operations {send, recv, peek, stat, set, purge, rm, ls-visibility}, every
//! cell a real `ipcctl` process of a real uid against one daemon. Needs root (setpriv);
//! without it the test says so and passes without checking.

use std::process::Output;

use ipc_client::{CreateOptions, MailboxChanges, SendOptions};
use ipcd_tests::{Principal, TestDaemon, ipcctl_as, is_root};

const OWNER_UID: u32 = 61001;
const GROUP: u32 = 61100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Owner,
    Group,
    Other,
    Root,
}

const PRINCIPALS: [(&str, Principal<'static>, Class); 5] = [
    ("owner", Principal::new(OWNER_UID, 61001), Class::Owner),
    ("primary-group", Principal::new(61002, GROUP), Class::Group),
    (
        "supplementary-group",
        Principal {
            uid: 61003,
            gid: 61003,
            groups: &[61050, GROUP],
        },
        Class::Group,
    ),
    ("other", Principal::new(61004, 61004), Class::Other),
    ("root", Principal::new(0, 0), Class::Root),
];

const MODES: [u32; 4] = [0o600, 0o640, 0o660, 0o666];

const OPS: [&str; 8] = ["send", "recv", "peek", "stat", "set", "purge", "rm", "ls"];

/// What SPEC §2 says: `r` receives, peeks and stats; `w` sends; the owner and root
/// manage; `ls` shows what the caller may read or manage.
fn allowed(class: Class, mode: u32, op: &str) -> bool {
    let bits = match class {
        Class::Root => return true,
        Class::Owner => mode >> 6,
        Class::Group => mode >> 3,
        Class::Other => mode,
    } & 0o7;
    match op {
        "send" => bits & 0o2 != 0,
        "recv" | "peek" | "stat" => bits & 0o4 != 0,
        "set" | "purge" | "rm" => class == Class::Owner,
        "ls" => bits & 0o4 != 0 || class == Class::Owner,
        _ => unreachable!("{op}"),
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

#[test]
fn every_cell_of_the_permission_matrix() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as other uids");
        return;
    }
    let daemon = TestDaemon::start();
    let mut admin = daemon.client();
    let mut cells = 0;
    let mut failures = Vec::new();
    for mode in MODES {
        for (who, principal, class) in PRINCIPALS {
            for op in OPS {
                // A fresh mailbox per cell, so destructive cells do not disturb others:
                // owned by OWNER_UID, group GROUP, holding one message.
                let name = format!("m{mode:o}.{who}.{op}");
                admin.create(&name, &CreateOptions::default()).unwrap();
                admin
                    .set(
                        &name,
                        MailboxChanges {
                            mode: Some(mode),
                            owner_uid: Some(OWNER_UID),
                            owner_gid: Some(GROUP),
                            ..MailboxChanges::default()
                        },
                    )
                    .unwrap();
                admin
                    .send(&name, &b"hello"[..], &SendOptions::default())
                    .unwrap();

                let expected = allowed(class, mode, op);
                let ok = check(&daemon, principal, &name, op, expected);
                cells += 1;
                if let Err(why) = ok {
                    failures.push(format!("mode {mode:o}, {who}, {op}: {why}"));
                }
            }
        }
    }
    assert_eq!(cells, 5 * 4 * 8);
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `op` on `name` as `who`; checks it succeeded and did its work if `expected`,
/// else that it failed with 77 and one line saying "permission denied".
fn check(
    daemon: &TestDaemon,
    who: Principal<'_>,
    name: &str,
    op: &str,
    expected: bool,
) -> Result<(), String> {
    let args: Vec<&str> = match op {
        "send" => vec!["send", name, "x", "--nowait"],
        "recv" => vec!["recv", name, "--nowait"],
        "peek" => vec!["recv", name, "--nowait", "--peek"],
        "stat" => vec!["stat", name, "--json"],
        "set" => vec!["set", name, "--mode", "644"],
        "purge" => vec!["purge", name],
        "rm" => vec!["rm", name],
        "ls" => vec!["ls", "--json"],
        _ => unreachable!(),
    };
    let out = ipcctl_as(daemon, who, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if op == "ls" {
        if code(&out) != 0 {
            return Err(format!("ls failed: {out:?}"));
        }
        let listed = stdout
            .lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"] == name);
        return if listed == expected {
            Ok(())
        } else {
            Err(format!("listed: {listed}, expected {expected}"))
        };
    }
    if !expected {
        return if code(&out) == 77
            && stderr.contains("permission denied")
            && stderr.trim_end().lines().count() == 1
        {
            Ok(())
        } else {
            Err(format!("expected a denial (77): {out:?}"))
        };
    }
    if code(&out) != 0 {
        return Err(format!("expected success: {out:?}"));
    }
    // It did what it says.
    let mut admin = daemon.client();
    let after = admin.stat(name);
    let verified = match op {
        "send" => after.is_ok_and(|i| i.messages == 2),
        "recv" => stdout == "hello\n" && after.is_ok_and(|i| i.messages == 0),
        "peek" => stdout == "hello\n" && after.is_ok_and(|i| i.messages == 1),
        "stat" => stdout.contains("\"messages\":1"),
        "set" => after.is_ok_and(|i| i.mode == 0o644),
        "purge" => after.is_ok_and(|i| i.messages == 0),
        "rm" => after.is_err(),
        _ => unreachable!(),
    };
    if verified {
        Ok(())
    } else {
        Err(format!("succeeded but did not take effect: {out:?}"))
    }
}
