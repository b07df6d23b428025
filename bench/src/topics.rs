//! ipcd's topics and calls, which the other transports have no shape for: publish
//! fan-out (one publisher, a copy into each of 1, 10 and 100 bound mailboxes) in copies
//! delivered per second, and request/reply round trips per second through `Call`, one at
//! a time and 16 in flight. In the smoke run every copy and reply is checked.

use std::time::Instant;

use bytes::Bytes;
use ipc_client::{CreateOptions, LimitChanges, RecvOptions, Wait};
use ipc_proto::{CallRequest, HeaderBox, PublishRequest, Request, Response};

use crate::mailboxes::Daemon;
use crate::payload;

/// Publishes in flight per connection.
const WINDOW: usize = 64;

pub fn run(daemon: &Daemon, smoke: bool, messages: usize) {
    println!("\ntopics and calls (ipcd)                       per second");
    for fan_out in [1, 10, 100] {
        // The copies made, not the publishes, are the work: about the same in each case.
        let publishes = if smoke {
            50
        } else {
            (messages / fan_out).max(2_000)
        };
        let rate = fan_out_rate(daemon, fan_out, publishes, smoke);
        println!("  publish to {fan_out:>3} bound mailboxes {rate:>17.0} copies delivered");
    }
    let rounds = if smoke { 100 } else { 20_000 };
    for in_flight in [1, 16] {
        let rate = call_rate(daemon, rounds, in_flight, smoke);
        println!("  call → reply, {in_flight:>2} in flight {rate:>22.0} round trips");
    }
}

/// Copies delivered per second when `publishes` 64 B messages are published to a topic
/// that `fan_out` mailboxes are bound to. Each publish is answered once every copy is in.
fn fan_out_rate(daemon: &Daemon, fan_out: usize, publishes: usize, check: bool) -> f64 {
    let mut admin = daemon.client();
    let options = CreateOptions {
        limits: LimitChanges {
            max_msgs: Some(publishes as u64 + 1),
            max_bytes: Some(1 << 30),
            max_msg_size: None,
        },
        ..CreateOptions::default()
    };
    let names: Vec<String> = (0..fan_out).map(|i| format!("bench.fanout.{i}")).collect();
    for name in &names {
        admin.create(name, &options).expect("create");
        admin.bind(name, "bench.topic.>").expect("bind");
    }
    let mut publisher = daemon.client();
    let topic = ipc_proto::Topic::new("bench.topic.readings").expect("a topic");
    let started = Instant::now();
    let (mut submitted, mut answered) = (0, 0);
    while answered < publishes {
        while submitted < publishes && submitted - answered < WINDOW {
            let request = Request::Publish(PublishRequest {
                topic: topic.clone(),
                mtype: 1,
                headers: HeaderBox::default(),
                ttl_ms: None,
                payload: Bytes::from(payload(submitted as u64, 64)),
            });
            publisher.submit(&request).expect("submit");
            submitted += 1;
        }
        match publisher.next_reply().expect("a reply").1 {
            Response::Published(report) => assert_eq!(report.delivered as usize, fan_out),
            other => panic!("publish answered {other:?}"),
        }
        answered += 1;
    }
    let rate = (publishes * fan_out) as f64 / started.elapsed().as_secs_f64();
    for name in &names {
        if check {
            let copies = admin
                .recv_batch(name, publishes as u32, &RecvOptions::default())
                .expect("the copies");
            assert_eq!(copies.len(), publishes, "every copy arrived in {name}");
            let seqs: Vec<u64> = copies
                .iter()
                .map(|m| crate::check(&m.payload, 64))
                .collect();
            crate::in_order(&seqs);
        }
        admin.remove(name).expect("remove");
    }
    rate
}

/// Round trips per second of `rounds` calls with up to `in_flight` waiting, each answered
/// by a responder thread that echoes the request.
fn call_rate(daemon: &Daemon, rounds: usize, in_flight: usize, check: bool) -> f64 {
    let name = "bench.calls";
    let mut admin = daemon.client();
    admin
        .create(name, &CreateOptions::default())
        .expect("create");
    let mut responder = daemon.client();
    let serving = std::thread::spawn(move || {
        let options = RecvOptions::default().wait(Wait::Forever);
        for _ in 0..rounds {
            let request = responder.recv(name, &options).expect("a request");
            let payload = request.payload.clone();
            responder.reply(&request, payload).expect("reply");
        }
    });
    let mut caller = daemon.client();
    let mailbox = ipc_proto::MailboxName::new(name).expect("a name");
    let started = Instant::now();
    let mut asked = std::collections::HashMap::new();
    let (mut submitted, mut answered) = (0, 0);
    while answered < rounds {
        while submitted < rounds && submitted - answered < in_flight {
            let body = Bytes::from(payload(submitted as u64, 64));
            let request = Request::Call(CallRequest {
                mailbox: mailbox.clone(),
                mtype: 1,
                headers: HeaderBox::default(),
                timeout_ms: 60_000,
                payload: body.clone(),
            });
            asked.insert(caller.submit(&request).expect("submit"), body);
            submitted += 1;
        }
        let (id, reply) = caller.next_reply().expect("a reply");
        let sent = asked.remove(&id).expect("a reply to a call made");
        match reply {
            Response::Message(reply) if !check || reply.payload == sent => {}
            other => panic!("call answered {other:?}"),
        }
        answered += 1;
    }
    let rate = rounds as f64 / started.elapsed().as_secs_f64();
    serving.join().expect("the responder");
    admin.remove(name).expect("remove");
    rate
}
