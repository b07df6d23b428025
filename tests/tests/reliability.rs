//! What one client makes the daemon hold is charged and bounded, and what the daemon
//! answers is what it keeps: header bounds and charges, timers that leave with their
//! messages, durable purge and removal answered once stored, and sends that are not
//! slowed by any number of receivers parked with selectors that never match.

use ipc_client::{CreateOptions, Error, Fsync, Message, RecvOptions, Selector, SendOptions, Wait};
use ipc_proto::{RecvRequest, Request, Response, SendRequest};
use ipcd_tests::{DaemonProcess, TestDaemon, ipcctl, tempdir};

fn now() -> RecvOptions {
    RecvOptions::default().wait(Wait::NoWait)
}

#[test]
fn a_content_type_over_its_bound_is_refused_with_exit_65_naming_it() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("ct", &CreateOptions::default()).unwrap();
    let long = "a".repeat(256);
    let out = ipcctl(daemon.socket())
        .args(["send", "ct", "x", "--content-type", &long])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("content_type of 256 bytes") && stderr.contains("255"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // At the bound it is accepted and comes back intact.
    let at_bound = "b".repeat(255);
    let out = ipcctl(daemon.socket())
        .args(["send", "ct", "y", "--content-type", &at_bound])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let m = c.recv("ct", &now()).unwrap();
    assert_eq!(m.headers.content_type.as_deref(), Some(at_bound.as_str()));
}

#[test]
fn empty_messages_with_large_headers_hit_the_queued_bytes_quota() {
    // Root is unlimited unless overridden: give it a small quota here.
    let mut config = ipcd::Config::default();
    let quota = 64 * 1024;
    config.quota_overrides.insert(
        ipcd_tests::uid(),
        ipcd::config::Quota {
            queued_bytes: quota,
            ..ipcd::config::Quota::UNLIMITED
        },
    );
    let overhead = config.message_overhead;
    let daemon = TestDaemon::start_with(config);
    let mut c = daemon.client();
    c.create("hdr", &CreateOptions::default()).unwrap();
    let mut options = SendOptions::default();
    options.headers.content_type = Some("t".repeat(255));
    options.headers.correlation_id = Some(7);
    let per_message = 255 + 8 + overhead;
    let mut sent = 0u64;
    let refused = loop {
        match c.send("hdr", Vec::<u8>::new(), &options) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= quota, "empty messages were never refused");
    };
    assert!(matches!(refused, Error::QuotaExceeded(_)), "{refused:?}");
    assert_eq!(sent, quota / per_message);
    // Headers count against the mailbox's bytes too.
    let info = c.stat("hdr").unwrap();
    assert_eq!(info.bytes, sent * (255 + 8));
    let status = c.status().unwrap();
    let mine = status
        .users
        .iter()
        .find(|u| u.uid == ipcd_tests::uid())
        .expect("my usage");
    assert_eq!(mine.queued_bytes, sent * per_message);
    // Taking one gives its whole charge back, so one more fits.
    c.recv("hdr", &now()).unwrap();
    c.send("hdr", Vec::<u8>::new(), &options).unwrap();
}

#[test]
fn a_hundred_thousand_ttl_messages_sent_and_received_leave_no_timers() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("ttl", &CreateOptions::default()).unwrap();
    let n = 100_000u64;
    let send = Request::Send(SendRequest {
        mailbox: "ttl".parse().unwrap(),
        mtype: 1,
        headers: Default::default(),
        wait: Wait::Forever,
        ttl_ms: Some(3_600_000),
        delay_ms: None,
        payload: bytes::Bytes::from_static(b"x"),
    });
    pipelined(&mut c, &send, n);
    let info = c.stat("ttl").unwrap();
    assert_eq!((info.messages, info.timers), (n, n));
    let recv = Request::Recv(RecvRequest {
        mailbox: "ttl".parse().unwrap(),
        selector: Selector::Any,
        wait: Wait::NoWait,
        peek: false,
        lease: None,
        max_size: None,
    });
    pipelined(&mut c, &recv, n);
    let info = c.stat("ttl").unwrap();
    assert_eq!((info.messages, info.timers), (0, 0));
    // And as `stat --json` shows it.
    let out = ipcctl(daemon.socket())
        .args(["--json", "stat", "ttl"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["timers"], 0);
}

/// Submits `request` `n` times with up to 256 in flight; every reply must succeed.
fn pipelined(c: &mut ipc_client::BlockingClient, request: &Request, n: u64) -> Vec<Response> {
    let mut replies = Vec::with_capacity(n as usize);
    let mut submitted = 0;
    while (replies.len() as u64) < n {
        while submitted < n && submitted - (replies.len() as u64) < 256 {
            c.submit(request).unwrap();
            submitted += 1;
        }
        let (_, reply) = c.next_reply().unwrap();
        assert!(!matches!(reply, Response::Error(_)), "{reply:?}");
        replies.push(reply);
    }
    replies
}

#[test]
fn durable_purge_and_removal_are_stored_before_they_are_answered() {
    let dir = tempdir();
    let mut daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    let mut c = daemon.client();
    let durable = CreateOptions {
        durable: true,
        fsync: Some(Fsync::Always),
        ..CreateOptions::default()
    };
    c.create("purged", &durable).unwrap();
    c.create("removed", &durable).unwrap();
    for i in 0..10 {
        c.send("purged", format!("p{i}"), &SendOptions::default())
            .unwrap();
        c.send("removed", format!("r{i}"), &SendOptions::default())
            .unwrap();
    }
    assert_eq!(c.purge("purged").unwrap(), 10);
    c.remove("removed").unwrap();
    // Answered: a crash right now must not bring anything back.
    daemon.kill();
    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    let mut c = daemon.client();
    assert_eq!(c.stat("purged").unwrap().messages, 0);
    assert!(matches!(c.stat("removed"), Err(Error::NoSuchMailbox(_))));
}

#[test]
fn a_hundred_thousand_parked_receivers_that_never_match_miss_nothing() {
    // 10,000 receives wait on each connection: past the default `in_flight` quota of a
    // uid that is not root.
    let mut config = ipcd::Config::default();
    config.quota.in_flight = 10_000;
    let daemon = TestDaemon::start_with(config);
    let mut c = daemon.client();
    c.create("busy", &CreateOptions::default()).unwrap();
    // Parked: receives of types no message will have, on connections that stay open.
    let parked_n = 100_000u64;
    let per_connection = 10_000u64;
    let mut parked = Vec::new();
    for k in 0..parked_n / per_connection {
        let mut p = daemon.client();
        // Parked receives are never answered: submitting them must not wait for replies.
        p.set_pipeline_window(usize::MAX);
        for i in 0..per_connection {
            let selector = match i % 3 {
                0 => Selector::Type(1_000_000 + (k * per_connection + i) as i64),
                1 => Selector::Except(5),
                _ => Selector::AtMost(1 + (i % 4) as i64),
            };
            p.submit(&Request::Recv(RecvRequest {
                mailbox: "busy".parse().unwrap(),
                selector,
                wait: Wait::Forever,
                peek: false,
                lease: None,
                max_size: None,
            }))
            .unwrap();
        }
        p.flush().unwrap();
        parked.push(p);
    }
    daemon.wait_for_receivers("busy", parked_n);
    // Type 5 matches none of them (Except(5) excludes it, AtMost(1..=4) are below it).
    let n = 20_000u64;
    let send = Request::Send(SendRequest {
        mailbox: "busy".parse().unwrap(),
        mtype: 5,
        headers: Default::default(),
        wait: Wait::Forever,
        ttl_ms: None,
        delay_ms: None,
        payload: bytes::Bytes::from_static(b"m"),
    });
    let mut receiver = daemon.client();
    let recv = Request::Recv(RecvRequest {
        mailbox: "busy".parse().unwrap(),
        selector: Selector::Type(5),
        wait: Wait::TimeoutMs(60_000),
        peek: false,
        lease: None,
        max_size: None,
    });
    let consumer = std::thread::spawn(move || {
        let replies = pipelined(&mut receiver, &recv, n);
        replies
            .into_iter()
            .map(|r| match r {
                Response::Message(m) => m,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<Message>>()
    });
    pipelined(&mut c, &send, n);
    let got = consumer.join().unwrap();
    let mut ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, n, "every message arrived exactly once");
    let info = c.stat("busy").unwrap();
    assert_eq!((info.messages, info.waiting_receivers), (0, parked_n));
    drop(parked);
    let info = daemon.wait_for_receivers("busy", 0);
    assert_eq!(info.messages, 0, "no parked receiver took anything");
}

/// Receives that wait for as long as it takes are parked in their mailbox, not held by
/// their connection's task: a connection that parks some and goes away must take them
/// all out, so that no message sent afterwards is handed to a receiver that is gone.
#[test]
fn receives_parked_by_a_connection_that_closes_take_no_message_with_them() {
    const PARKED: u64 = 50;
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("handoff", &CreateOptions::default()).unwrap();
    let mut gone = daemon.client();
    gone.set_pipeline_window(usize::MAX);
    let recv = Request::Recv(RecvRequest {
        mailbox: "handoff".parse().unwrap(),
        selector: Selector::Any,
        wait: Wait::Forever,
        peek: false,
        lease: None,
        max_size: None,
    });
    for _ in 0..PARKED {
        gone.submit(&recv).unwrap();
    }
    gone.flush().unwrap();
    daemon.wait_for_receivers("handoff", PARKED);
    drop(gone);
    daemon.wait_for_receivers("handoff", 0);
    for n in 0..PARKED {
        let payload = bytes::Bytes::from(n.to_string());
        c.send(
            "handoff",
            payload,
            &SendOptions::default().wait(Wait::NoWait),
        )
        .unwrap();
    }
    let got: Vec<String> = c
        .recv_batch("handoff", PARKED as u32 * 2, &now())
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let sent: Vec<String> = (0..PARKED).map(|n| n.to_string()).collect();
    assert_eq!(
        got, sent,
        "every message, in order, for the receiver still here"
    );
}
