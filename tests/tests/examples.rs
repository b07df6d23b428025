//! The library's examples, run as programs against a real daemon.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ipc_client::Error;
use ipcd_tests::{TestDaemon, binary};

fn example(name: &str) -> Command {
    Command::new(binary(&format!("examples/{name}")))
}

#[test]
fn classic_server_receives_types_ten_down_to_one_and_removes_the_mailbox() {
    let daemon = TestDaemon::start();
    let mut server = example("classic")
        .arg("server")
        .env("IPCD_SOCKET", daemon.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("waiting on"), "{first}");

    let client = example("classic")
        .arg("client")
        .env("IPCD_SOCKET", daemon.socket())
        .output()
        .unwrap();
    assert!(client.status.success(), "{client:?}");

    let received: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(server.wait().unwrap().success());
    let types: Vec<i64> = received
        .iter()
        .filter_map(|l| l.strip_prefix("server: type "))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(types, (1..=10).rev().collect::<Vec<_>>());
    assert!(received.last().unwrap().contains("removed"));
    let gone = daemon.client().stat("examples/classic");
    assert!(matches!(gone, Err(Error::NoSuchMailbox(_))), "{gone:?}");
}

#[test]
fn async_typed_example_runs() {
    let daemon = TestDaemon::start();
    let out = example("async_typed")
        .env("IPCD_SOCKET", daemon.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("worker: job 3"), "{text}");
    assert!(text.contains("as expected: type mismatch"), "{text}");
}

/// The private subscription mailboxes the daemon holds now.
fn subscriptions(daemon: &TestDaemon) -> usize {
    let list = daemon.client().list().expect("list");
    list.iter()
        .filter(|m| m.name.as_str().starts_with("_ipcd/watch/"))
        .count()
}

/// Waits, a round trip to the daemon per check, until `n` subscriptions exist.
fn wait_for_subscriptions(daemon: &TestDaemon, n: usize) {
    for _ in 0..100_000 {
        if subscriptions(daemon) == n {
            return;
        }
        std::thread::yield_now();
    }
    panic!("the daemon never held {n} subscriptions");
}

#[test]
fn chat_broadcasts_each_line_to_the_others_and_leaves_nothing_behind() {
    let daemon = TestDaemon::start();
    let chat = |name: &str| {
        example("chat")
            .arg(name)
            .env("IPCD_SOCKET", daemon.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut bob = chat("bob");
    let mut bob_says = BufReader::new(bob.stdout.take().unwrap()).lines();
    wait_for_subscriptions(&daemon, 1);
    let mut alice = chat("alice");
    let mut next_of_bob = |expected: &str| {
        let line = bob_says.next().expect("bob's output").unwrap();
        assert_eq!(line, expected);
    };
    next_of_bob("alice: * alice joined");
    let mut alice_in = alice.stdin.take().unwrap();
    std::io::Write::write_all(&mut alice_in, b"hello, bob\n").unwrap();
    next_of_bob("alice: hello, bob");
    drop(alice_in);
    let alice_out = alice.wait_with_output().unwrap();
    assert!(alice_out.status.success(), "{alice_out:?}");
    // Alice heard nobody else, and never herself.
    assert_eq!(String::from_utf8_lossy(&alice_out.stdout), "");
    next_of_bob("alice: * alice left");
    drop(bob.stdin.take());
    assert!(bob.wait().unwrap().success());
    wait_for_subscriptions(&daemon, 0);
}
