//! Durable mailboxes and acknowledged receive end to end (SPEC §3, §6): what survives a
//! restart, what does not, leases and their endings, dead letters. The crash loop is in
//! `crash.rs`.

use std::time::Duration;

use ipc_client::{
    CreateOptions, DeliveryChanges, Error, Fsync, MailboxChanges, MailboxName, RecvOptions,
    SendOptions, Wait,
};
use ipcd_tests::{TestDaemon, ipcctl};

fn durable(fsync: Fsync) -> CreateOptions {
    CreateOptions {
        durable: true,
        fsync: Some(fsync),
        ..CreateOptions::default()
    }
}

fn now() -> RecvOptions {
    RecvOptions::default().wait(Wait::NoWait)
}

#[test]
fn durable_mailboxes_survive_a_restart_and_memory_ones_do_not() {
    let mut daemon = TestDaemon::start();
    let mut c = daemon.client();
    for (name, fsync) in [
        ("always", Fsync::Always),
        ("interval", Fsync::IntervalMs(50)),
        ("never", Fsync::Never),
    ] {
        c.create(name, &durable(fsync)).unwrap();
        for (i, mtype) in [3, 1, 2].into_iter().enumerate() {
            let mut options = SendOptions::mtype(mtype);
            options.headers.correlation_id = Some(i as u64);
            options.headers.content_type = Some("text/plain".into());
            c.send(name, format!("{name} {i}"), &options).unwrap();
        }
        // One taken before the restart: it must not come back.
        assert_eq!(c.recv(name, &now()).unwrap().id, 1);
    }
    c.create("memory", &CreateOptions::default()).unwrap();
    c.send("memory", "gone", &SendOptions::default()).unwrap();
    c.set(
        "always",
        MailboxChanges {
            mode: Some(0o640),
            limits: ipc_client::LimitChanges {
                max_msgs: Some(7),
                ..Default::default()
            },
            ..MailboxChanges::default()
        },
    )
    .unwrap();
    c.create("purged", &durable(Fsync::Always)).unwrap();
    c.send("purged", "x", &SendOptions::default()).unwrap();
    c.purge("purged").unwrap();
    c.create("removed", &durable(Fsync::Always)).unwrap();
    c.send("removed", "x", &SendOptions::default()).unwrap();
    c.remove("removed").unwrap();
    drop(c);

    daemon.restart();
    let mut c = daemon.client();
    let names: Vec<String> = c
        .list()
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["always", "interval", "never", "purged"]);
    for name in ["always", "interval", "never"] {
        let info = c.stat(name).unwrap();
        assert!(info.durable);
        assert_eq!(info.messages, 2, "{name}");
        // Type order as msgrcv sees it, with ids, senders and headers intact.
        let m = c
            .recv(
                name,
                &RecvOptions::selector(ipc_client::Selector::Type(2)).wait(Wait::NoWait),
            )
            .unwrap();
        assert_eq!(
            (m.id, m.mtype, &m.payload[..]),
            (3, 2, format!("{name} 2").as_bytes())
        );
        assert_eq!(m.headers.correlation_id, Some(2));
        assert_eq!(m.headers.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.sender.uid, ipcd_tests::uid());
        let m = c.recv(name, &now()).unwrap();
        assert_eq!((m.id, m.mtype), (2, 1));
        // Ids continue past the old ones.
        assert_eq!(c.send(name, "new", &SendOptions::default()).unwrap(), 4);
    }
    let always = c.stat("always").unwrap();
    assert_eq!((always.mode, always.max_msgs), (0o640, 7));
    assert_eq!(always.fsync, Some(Fsync::Always));
    assert_eq!(
        c.stat("interval").unwrap().fsync,
        Some(Fsync::IntervalMs(50))
    );
    assert_eq!(c.stat("purged").unwrap().messages, 0);
    assert!(matches!(c.stat("memory"), Err(Error::NoSuchMailbox(_))));

    // `ipcctl stat` says which kind a mailbox is.
    let out = ipcctl(daemon.socket())
        .args(["stat", "always"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("yes (fsync always)"), "{text}");
}

#[test]
fn leases_end_by_ack_nack_timeout_or_closing_the_connection() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("jobs", &durable(Fsync::Always)).unwrap();
    for i in 1..=4 {
        c.send("jobs", format!("job {i}"), &SendOptions::default())
            .unwrap();
    }

    // A lease hides the message; nack puts it back at its place, marked redelivered.
    let mut worker = daemon.client();
    let first = worker
        .recv_leased("jobs", &now(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        (first.id, first.deliveries, first.redelivered),
        (1, 1, false)
    );
    let info = c.stat("jobs").unwrap();
    assert_eq!((info.messages, info.unacked), (3, 1));
    first.nack().unwrap();
    let again = worker
        .recv_leased("jobs", &now(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        (again.id, again.deliveries, again.redelivered),
        (1, 2, true)
    );
    // Ack: gone for good.
    again.ack().unwrap();
    assert_eq!(c.stat("jobs").unwrap().unacked, 0);
    assert!(matches!(c.ack("jobs", 1), Err(Error::Server { .. })));

    // Dropping an unsettled delivery nacks it.
    drop(
        worker
            .recv_leased("jobs", &now(), Duration::from_secs(60))
            .unwrap(),
    );
    assert_eq!(c.stat("jobs").unwrap().unacked, 0);

    // A lease that times out is redelivered; the timekeeper is the only actor here.
    c.purge("jobs").unwrap();
    c.send("jobs", "slow", &SendOptions::default()).unwrap();
    let short = worker
        .recv_leased("jobs", &now(), Duration::from_millis(30))
        .unwrap();
    let id = short.id;
    std::mem::forget(short); // neither ack nor nack: let the lease run out
    let wait = RecvOptions::default().wait(Wait::timeout(Duration::from_secs(30)));
    let back = c.recv("jobs", &wait).unwrap();
    assert_eq!((back.id, back.redelivered, back.deliveries), (id, true, 2));

    // Closing the connection ends its (attached) leases...
    c.send("jobs", "held", &SendOptions::default()).unwrap();
    let mut leaving = daemon.client();
    let held = leaving
        .recv_leased("jobs", &now(), Duration::from_secs(60))
        .unwrap();
    let held_id = held.id;
    std::mem::forget(held);
    drop(leaving);
    let back = c.recv("jobs", &wait).unwrap();
    assert_eq!((back.id, back.redelivered), (held_id, true));

    // ...but not a detached one, which another connection of the same uid settles.
    c.send("jobs", "detached", &SendOptions::default()).unwrap();
    let out = ipcctl(daemon.socket())
        .args(["--json", "recv", "jobs", "--ack", "--lease", "1m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let leased: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leased_id = leased["id"].as_u64().unwrap();
    assert_eq!(
        c.stat("jobs").unwrap().unacked,
        1,
        "the lease outlived ipcctl"
    );
    let out = ipcctl(daemon.socket())
        .args(["ack", "jobs", &leased_id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info = c.stat("jobs").unwrap();
    assert_eq!((info.messages, info.unacked), (0, 0));
}

#[test]
fn a_waiting_leased_receive_gets_a_durable_message_once_it_is_stored() {
    // The hand-over happens as the store completes the send, on its writer thread.
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("jobs", &durable(Fsync::Always)).unwrap();
    let socket = daemon.socket().to_path_buf();
    let worker = std::thread::spawn(move || {
        let mut w = ipc_client::BlockingClient::connect_to(socket).unwrap();
        let wait = RecvOptions::default().wait(Wait::Forever);
        let d = w
            .recv_leased("jobs", &wait, Duration::from_millis(50))
            .unwrap();
        let id = d.id;
        std::mem::forget(d);
        id
    });
    daemon.wait_for_receivers("jobs", 1);
    let id = c.send("jobs", "late", &SendOptions::default()).unwrap();
    assert_eq!(worker.join().unwrap(), id);
    // Its lease runs out on the timekeeper, and it comes back.
    let wait = RecvOptions::default().wait(Wait::timeout(Duration::from_secs(30)));
    let back = c.recv("jobs", &wait).unwrap();
    assert_eq!((back.id, back.redelivered), (id, true));
}

#[test]
fn unacked_leases_are_redelivered_after_a_restart_and_acked_ones_are_not() {
    let mut daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("jobs", &durable(Fsync::Always)).unwrap();
    for i in 1..=3 {
        c.send("jobs", format!("job {i}"), &SendOptions::default())
            .unwrap();
    }
    let acked = c
        .recv_leased("jobs", &now(), Duration::from_secs(60))
        .unwrap();
    acked.ack().unwrap();
    let out = ipcctl(daemon.socket())
        .args(["recv", "jobs", "--ack", "--lease", "1h"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"job 2\n");
    drop(c);
    daemon.restart();
    let mut c = daemon.client();
    let again = c.recv("jobs", &now()).unwrap();
    // It was leased once before the restart, and says so.
    assert_eq!(
        (again.id, again.redelivered, again.deliveries),
        (2, true, 2)
    );
    let last = c.recv("jobs", &now()).unwrap();
    assert_eq!((last.id, last.redelivered), (3, false));
}

#[test]
fn messages_past_max_deliveries_are_dead_lettered_or_dropped() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("dead", &CreateOptions::default()).unwrap();
    let mut options = durable(Fsync::Always);
    options.delivery = DeliveryChanges {
        max_deliveries: Some(2),
        dead_letter: Some(MailboxName::new("dead").unwrap()),
        ..DeliveryChanges::default()
    };
    c.create("poison", &options).unwrap();
    c.send("poison", "bad", &SendOptions::mtype(4)).unwrap();
    for delivery in 1..=2 {
        let d = c
            .recv_leased("poison", &now(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(d.deliveries, delivery);
        d.nack().unwrap();
    }
    // Nacked for the second time: into the dead-letter mailbox, with its type and sender.
    let dead = c
        .recv(
            "dead",
            &RecvOptions::default().wait(Wait::timeout(Duration::from_secs(30))),
        )
        .unwrap();
    assert_eq!((&dead.payload[..], dead.mtype), (&b"bad"[..], 4));
    assert_eq!(dead.sender.uid, ipcd_tests::uid());
    let info = c.stat("poison").unwrap();
    assert_eq!((info.messages, info.unacked, info.dead_lettered), (0, 0, 1));

    // Without a dead-letter mailbox: dropped and counted.
    c.set(
        "poison",
        MailboxChanges {
            delivery: DeliveryChanges {
                max_deliveries: Some(1),
                clear_dead_letter: true,
                ..DeliveryChanges::default()
            },
            ..MailboxChanges::default()
        },
    )
    .unwrap();
    c.send("poison", "worse", &SendOptions::default()).unwrap();
    c.recv_leased("poison", &now(), Duration::from_secs(60))
        .unwrap()
        .nack()
        .unwrap();
    let info = c.stat("poison").unwrap();
    assert_eq!(
        (info.messages, info.dropped, info.dead_letter),
        (0, 1, None)
    );

    // A mailbox cannot be its own dead-letter mailbox.
    let own = c.set(
        "poison",
        MailboxChanges {
            delivery: DeliveryChanges {
                dead_letter: Some(MailboxName::new("poison").unwrap()),
                ..DeliveryChanges::default()
            },
            ..MailboxChanges::default()
        },
    );
    assert!(matches!(own, Err(Error::BadData(_))), "{own:?}");
}

#[test]
fn recv_ack_exec_acks_on_success_and_nacks_on_failure() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("work", &durable(Fsync::Always)).unwrap();
    c.send("work", "fine", &SendOptions::default()).unwrap();
    let marker = daemon.dir().join("ran");
    let command = format!(
        "read line; test \"$line\" = fine && echo \"$IPC_MESSAGE_ID $IPC_MAILBOX\" > {}",
        marker.display()
    );
    let out = ipcctl(daemon.socket())
        .args(["recv", "work", "--ack", "--exec", &command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "1 work\n");
    assert_eq!(c.stat("work").unwrap().messages, 0);

    c.send("work", "broken", &SendOptions::default()).unwrap();
    let out = ipcctl(daemon.socket())
        .args(["recv", "work", "--ack", "--exec", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nacked"));
    let back = c.recv("work", &now()).unwrap();
    assert_eq!(
        (&back.payload[..], back.redelivered),
        (&b"broken"[..], true)
    );
}

#[test]
fn delays_and_ttls_survive_a_restart() {
    let mut daemon = TestDaemon::start();
    let send = |args: &[&str]| {
        let out = ipcctl(daemon.socket()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    send(&["create", "timed", "--durable", "--dead-letter", "expired"]);
    send(&["create", "expired", "--durable"]);
    send(&["send", "timed", "hidden", "--delay", "1h"]);
    send(&["send", "timed", "soon gone", "--ttl", "300ms"]);
    send(&["send", "timed", "kept", "--ttl", "1h"]);
    daemon.restart();
    let mut c = daemon.client();
    let info = c.stat("timed").unwrap();
    assert_eq!(info.delayed, 1, "still delayed after the restart");
    // The short TTL runs out (its deadline was stored as a wall-clock time), and the
    // message goes to the dead-letter mailbox; the delayed one stays hidden.
    let wait = RecvOptions::default().wait(Wait::timeout(Duration::from_secs(30)));
    let dead = c.recv("expired", &wait).unwrap();
    assert_eq!(&dead.payload[..], b"soon gone");
    assert_eq!(&c.recv("timed", &now()).unwrap().payload[..], b"kept");
    assert!(matches!(c.recv("timed", &now()), Err(Error::WouldBlock(_))));
    let info = c.stat("timed").unwrap();
    assert_eq!((info.expired, info.delayed), (1, 1));
}

#[test]
fn a_declared_durable_mailbox_keeps_its_bindings_and_what_was_published_across_a_restart() {
    let pattern = ipc_client::TopicPattern::new("sensors.>").unwrap();
    let config = ipcd::Config {
        declared: vec![ipcd::config::DeclaredMailbox {
            name: MailboxName::new("readings").unwrap(),
            mode: 0o600,
            owner: None,
            group: None,
            fsync: Some(Fsync::Always),
            limits: ipcd::Config::default().default_limits,
            max_deliveries: 0,
            dead_letter: None,
            default_ttl: None,
            bindings: vec![pattern.clone()],
        }],
        ..ipcd::Config::default()
    };
    let mut daemon = TestDaemon::start_with(config);
    let publish = |daemon: &TestDaemon, payload: &'static str| {
        let report = daemon
            .client()
            .publish("sensors.kitchen", payload, &SendOptions::default())
            .unwrap();
        assert_eq!(report.delivered, 1, "{report:?}");
    };
    publish(&daemon, "before");
    daemon.restart();
    assert_eq!(
        daemon.client().stat("readings").unwrap().bindings,
        [pattern]
    );
    publish(&daemon, "after");
    let mut c = daemon.client();
    let got = c.recv_batch("readings", 10, &now()).unwrap();
    let payloads: Vec<_> = got.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(payloads, ["before", "after"]);
    assert!(
        got.iter()
            .all(|m| m.headers.topic.as_ref().map(|t| t.as_str()) == Some("sensors.kitchen")),
        "{got:?}"
    );
}
