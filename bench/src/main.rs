//! `ipc-bench`: the same message-passing shapes over ipcd and over what it competes with
//! on one host — System V message queues, POSIX message queues, one raw Unix-socket hop
//! and a minimal two-hop relay (a broker's ceiling: every message crosses two sockets) —
//! in one run on one machine, printed as a table with each figure's ratio to SysV.
//!
//! `cargo run --release -p ipc-bench` runs everything; `-- --smoke` runs each shape
//! briefly and checks only that every message arrives intact and in order (what
//! `.ci/run` does); `-- --messages N` sets the messages per streaming case; `-- --only
//! ipcd` runs one transport (to profile it).

mod kernel;
mod mailboxes;
mod sockets;

use std::time::{Duration, Instant};

/// One streaming case: `producers` → `consumers`, `size`-byte messages, up to `window`
/// sends and `window` receives in flight per connection (where the transport has such a
/// thing), `messages` in all.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub producers: usize,
    pub consumers: usize,
    pub size: usize,
    pub window: usize,
    pub messages: usize,
}

/// What a transport offers the benchmark.
pub trait Transport {
    fn name(&self) -> &'static str;
    /// Messages per second for `case`, or `None` where the transport cannot carry it
    /// (a message above its size limit).
    fn stream(&mut self, case: Stream) -> Option<f64>;
    /// Round trips of one `size`-byte message there and back, each timed.
    fn ping_pong(&mut self, size: usize, rounds: usize) -> Option<Vec<Duration>>;
}

/// The payload of message `seq`: its sequence number, then a fill that depends on it, so
/// that a receiver can check each message arrived whole and in order.
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![(seq % 251) as u8; size.max(8)];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p.truncate(size.max(8));
    p
}

/// Checks a received payload; returns its sequence number.
pub fn check(p: &[u8], size: usize) -> u64 {
    assert_eq!(p.len(), size.max(8), "message of the wrong size");
    let seq = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
    assert!(
        p[8..].iter().all(|&b| b == (seq % 251) as u8),
        "message {seq} arrived damaged"
    );
    seq
}

/// Checks that each consumer saw its producer's messages in order (1→1: all of them in
/// order; with several producers, per-producer order cannot be told apart, so only the
/// count and integrity are checked).
pub fn in_order(seqs: &[u64]) {
    for pair in seqs.windows(2) {
        assert!(
            pair[0] < pair[1],
            "out of order: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

fn main() {
    let mut smoke = false;
    let mut only: Option<String> = None;
    let mut messages: usize = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--only" => only = Some(args.next().expect("--only takes a transport's name")),
            "--messages" => {
                messages = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--messages takes a number");
            }
            other => {
                eprintln!(
                    "ipc-bench: unknown argument {other}; use --smoke, --messages N or \
                     --only NAME (e.g. ipcd, for profiling)"
                );
                std::process::exit(2);
            }
        }
    }
    let daemon = mailboxes::Daemon::start();
    // First, while nothing freed by other cases can be reused for it: what a queued
    // message costs the daemon.
    let queued = if smoke { 10_000 } else { 1_000_000 };
    let per_message = mailboxes::Ipcd::new(&daemon).bytes_per_message(queued);
    let mut transports: Vec<Box<dyn Transport>> = vec![
        Box::new(kernel::SysV),
        Box::new(kernel::Posix),
        Box::new(sockets::Hop),
        Box::new(sockets::Relay),
        Box::new(mailboxes::Ipcd::new(&daemon)),
    ];
    if let Some(only) = &only {
        transports.retain(|t| t.name().contains(only.as_str()));
    }
    let scale_messages = if smoke { 200 } else { messages / 2 };
    let started = Instant::now();
    let sizes: &[usize] = &[64, 4096, 1 << 20];
    let mut cases = Vec::new();
    for &size in sizes {
        for (producers, consumers) in [(1, 1), (4, 4)] {
            for window in [1, 64] {
                // Large messages move fewer at a time, so a case takes seconds, not minutes.
                let n: usize = if smoke {
                    200
                } else if size >= 1 << 20 {
                    messages / 200
                } else if size >= 4096 {
                    messages / 4
                } else {
                    messages
                };
                let n = n.div_ceil(producers * consumers) * producers * consumers;
                cases.push(Stream {
                    producers,
                    consumers,
                    size,
                    window: if size >= 1 << 20 {
                        window.min(4)
                    } else {
                        window
                    },
                    messages: n,
                });
            }
        }
    }
    print!("{:<34}", "streaming, msg/s");
    for t in &transports {
        print!("{:>14}", t.name());
    }
    println!("{:>14}", "ipcd/SysV");
    for case in cases {
        let label = format!(
            "{}→{} {:>7} B, window {}",
            case.producers, case.consumers, case.size, case.window
        );
        print!("{label:<34}");
        let mut figures = Vec::new();
        for t in &mut transports {
            let f = t.stream(case);
            figures.push(f);
            match f {
                Some(rate) => print!("{rate:>14.0}"),
                None => print!("{:>14}", "n/a"),
            }
        }
        match (figures.first(), figures.last()) {
            (Some(Some(sysv)), Some(Some(ipcd))) if only.is_none() => {
                println!("{:>14.2}", ipcd / sysv);
            }
            _ => println!("{:>14}", "—"),
        }
    }
    let rounds = if smoke { 200 } else { 20_000 };
    println!();
    print!("{:<34}", "ping-pong 64 B, p50 / p99 µs");
    for t in &transports {
        print!("{:>14}", t.name());
    }
    println!();
    let mut line = format!("{:<34}", "");
    for t in &mut transports {
        match t.ping_pong(64, rounds) {
            Some(mut times) => {
                times.sort_unstable();
                let p = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
                line.push_str(&format!(
                    " {:>13}",
                    format!("{:.1}/{:.1}", micros(p(50)), micros(p(99)))
                ));
            }
            None => line.push_str(&format!("{:>14}", "n/a")),
        }
    }
    println!("{line}");
    drop(transports);
    scale(&daemon, smoke, scale_messages);
    println!(
        "  daemon memory per queued 64 B message beyond its payload ({queued} queued): {:.0} B",
        per_message.max(0.0)
    );
    println!(
        "\n{} in {:.1} s{}",
        if smoke { "smoke run" } else { "full run" },
        started.elapsed().as_secs_f64(),
        if smoke {
            ": every message arrived intact and in order"
        } else {
            ""
        }
    );
}

/// How ipcd's cost per message holds up as mailboxes and queued messages grow.
fn scale(daemon: &mailboxes::Daemon, smoke: bool, messages: usize) {
    let mut ipcd = mailboxes::Ipcd::new(daemon);
    println!("\nscale (ipcd, 1→1 64 B, window 64)            msg/s   ratio to the first");
    let mailboxes: &[usize] = if smoke {
        &[1, 100]
    } else {
        &[1, 1_000, 100_000]
    };
    let mut first = None;
    for &n in mailboxes {
        let rate = ipcd.with_mailboxes(n, messages);
        let base = *first.get_or_insert(rate);
        println!("  {n:>9} mailboxes {:>30.0} {:>10.2}", rate, base / rate);
    }
    let depths: &[usize] = if smoke {
        &[1, 1_000]
    } else {
        &[1, 1_000, 100_000, 1_000_000]
    };
    let mut first = None;
    for &depth in depths {
        let rate = ipcd.with_depth(depth, messages);
        let base = *first.get_or_insert(rate);
        println!("  {depth:>9} queued {:>33.0} {:>10.2}", rate, base / rate);
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
