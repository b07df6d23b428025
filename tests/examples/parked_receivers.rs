//! Benchmark: send/receive throughput on a mailbox with many receivers parked on
//! selectors that never match, against the same mailbox with none, in one run.
//!
//! `cargo run --release -p ipcd-tests --example parked_receivers -- [PARKED] [MESSAGES]`
//! (defaults 100000 and 200000). One producer and one consumer, 64-byte messages, 256 of
//! each in flight; the daemon runs in this process on a temporary socket.

use std::time::Instant;

use ipc_client::{BlockingClient, CreateOptions, Selector, Wait};
use ipc_proto::{RecvRequest, Request, Response, SendRequest};
use ipcd_tests::TestDaemon;

const WINDOW: u64 = 256;
const MTYPE: i64 = 5;

fn main() {
    let mut args = std::env::args().skip(1);
    let parked: u64 = args.next().map_or(100_000, |a| a.parse().expect("PARKED"));
    let messages: u64 = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let daemon = TestDaemon::start();
    let mut admin = daemon.client();
    for name in ["quiet", "crowded"] {
        admin.create(name, &CreateOptions::default()).unwrap();
    }
    let mut parked_clients = Vec::new();
    let per_connection = 10_000;
    let mut left = parked;
    let mut n = 0i64;
    while left > 0 {
        let mut p = daemon.client();
        // Parked receives are never answered: submitting them must not wait for replies.
        p.set_pipeline_window(usize::MAX);
        for _ in 0..left.min(per_connection) {
            n += 1;
            // Selectors that a message of type MTYPE never matches.
            let selector = match n % 3 {
                0 => Selector::Type(1_000_000 + n),
                1 => Selector::Except(MTYPE),
                _ => Selector::AtMost(1 + n % (MTYPE - 1)),
            };
            p.submit(&recv("crowded", selector, Wait::Forever)).unwrap();
        }
        p.flush().unwrap();
        left -= left.min(per_connection);
        parked_clients.push(p);
    }
    daemon.wait_for_receivers("crowded", parked);

    let quiet = run(&daemon, "quiet", messages);
    let crowded = run(&daemon, "crowded", messages);
    println!("messages: {messages} × 64 B, {WINDOW} in flight each way");
    println!("no parked receivers:      {quiet:>10.0} msg/s");
    println!("{parked:>6} parked receivers: {crowded:>10.0} msg/s");
    println!("ratio (none / parked):    {:>10.2}", quiet / crowded);
}

fn recv(mailbox: &str, selector: Selector, wait: Wait) -> Request {
    Request::Recv(RecvRequest {
        mailbox: mailbox.parse().unwrap(),
        selector,
        wait,
        peek: false,
        lease: None,
        max_size: None,
    })
}

/// Messages per second through `mailbox`, one producer and one consumer.
fn run(daemon: &TestDaemon, mailbox: &str, n: u64) -> f64 {
    let send = Request::Send(SendRequest {
        mailbox: mailbox.parse().unwrap(),
        mtype: MTYPE,
        headers: Default::default(),
        wait: Wait::Forever,
        ttl_ms: None,
        delay_ms: None,
        payload: bytes::Bytes::from_static(&[7; 64]),
    });
    let take = recv(mailbox, Selector::Type(MTYPE), Wait::Forever);
    let mut producer = daemon.client();
    let mut consumer = daemon.client();
    let start = Instant::now();
    let reader = std::thread::spawn(move || pump(&mut consumer, &take, n));
    pump(&mut producer, &send, n);
    reader.join().unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn pump(c: &mut BlockingClient, request: &Request, n: u64) {
    let (mut submitted, mut done) = (0, 0);
    while done < n {
        while submitted < n && submitted - done < WINDOW {
            c.submit(request).unwrap();
            submitted += 1;
        }
        let (_, reply) = c.next_reply().unwrap();
        assert!(!matches!(reply, Response::Error(_)), "{reply:?}");
        done += 1;
    }
}
