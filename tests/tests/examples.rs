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
