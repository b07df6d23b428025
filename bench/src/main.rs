//! `ipc-bench`: the same message-passing shapes over ipcd and over what it competes with
//! on one host — System V message queues, POSIX message queues, one raw Unix-socket hop
//! and a minimal two-hop relay (a broker's ceiling: every message crosses two sockets) —
//! in one run on one machine, printed as a table with each figure's ratio to SysV.
//!
//! `cargo run --release -p ipc-bench` runs everything; `-- --smoke` runs each shape
//! briefly and checks only that every message arrives intact and in order (what
//! `.ci/run` does); `-- --messages N` sets the messages per streaming case; `-- --only
//! ipcd` runs one transport and `-- --section NAME` one section (`streaming`, `batched`,
//! `ping-pong`, `scale` or `topics`), to profile them; `-- --size N`, `-- --window N`
//! and `-- --pairs N` keep only the streaming cases of `N`-byte payloads, of a window of
//! `N`, or of `N` producers and `N` consumers (`--pairs` the batched cases too);
//! `-- --rounds N` makes each streaming and batched figure the median of `N` runs, the
//! transports taking turns, so that a slow moment of the machine skews no one transport.
//!
//! `-- --peers redis=SOCKET,nats=HOST:PORT` adds the brokers ipcd is compared with: a
//! Redis server on a Unix socket and a NATS server, both already running (either may be
//! left out). `bash bench/peers.sh` installs them, starts private instances, and runs
//! the bench with them; without `--peers` nothing outside this process is needed.
//!
//! Besides streaming with a window (requests outstanding, one message each), the table
//! has a batched section: one request carrying a batch of messages, for the transports
//! that have such a request (`Transport::batched`), with a ratio of ipcd to NATS.

mod kernel;
mod mailboxes;
mod peers;
mod sockets;
mod topics;

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
    /// Messages per second for a case sent and received in batches of its `window`
    /// messages per request, or `None` where the transport has no such request.
    fn batched(&mut self, _case: Stream) -> Option<f64> {
        None
    }
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
    let mut peers = Peers::default();
    let mut section: Option<String> = None;
    // `--size N`: only the streaming cases of that payload size (to profile one).
    let mut size_only: Option<usize> = None;
    // `--window N`, `--pairs N`: only the streaming cases of that window, or of N→N.
    let mut window_only: Option<usize> = None;
    let mut pairs_only: Option<usize> = None;
    // `--rounds N`: each streaming and batched figure is the median of N runs, the
    // transports taking turns, so that a slow moment of the machine falls on one run of
    // each rather than on one transport's only run.
    let mut rounds: usize = 1;
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
            "--section" => section = args.next(),
            "--size" => size_only = Some(number(args.next(), "--size")),
            "--window" => window_only = Some(number(args.next(), "--window")),
            "--pairs" => pairs_only = Some(number(args.next(), "--pairs")),
            "--rounds" => rounds = number(args.next(), "--rounds").max(1),
            "--peers" => {
                let arg = args.next().unwrap_or_default();
                peers = Peers::parse(&arg).unwrap_or_else(|| usage(&format!("--peers {arg}")));
            }
            other => usage(other),
        }
    }
    let daemon = mailboxes::Daemon::start();
    // `--section NAME` runs one section (streaming, batched, ping-pong, scale, topics): to
    // profile one shape.
    let wanted = |name: &str| section.as_deref().is_none_or(|s| s == name);
    // First, while nothing freed by other cases can be reused for it: what a queued
    // message costs the daemon. It belongs to the scale section, and is left out of a
    // run of another, whose profile a million queued messages would swamp.
    let queued = if smoke { 10_000 } else { 1_000_000 };
    let per_message =
        wanted("scale").then(|| mailboxes::Ipcd::new(&daemon).bytes_per_message(queued));
    let mut transports: Vec<Box<dyn Transport>> = vec![
        Box::new(kernel::SysV),
        Box::new(kernel::Posix),
        Box::new(sockets::Hop),
        Box::new(sockets::Relay),
        Box::new(mailboxes::Ipcd::new(&daemon)),
    ];
    if let Some(socket) = peers.redis {
        transports.push(Box::new(peers::Redis::new(socket)));
    }
    if let Some(addr) = peers.nats {
        transports.push(Box::new(peers::Nats::new(addr)));
    }
    if let Some(only) = &only {
        transports.retain(|t| t.name().contains(only.as_str()));
    }
    let scale_messages = if smoke { 200 } else { messages / 2 };
    let started = Instant::now();
    let sizes: &[usize] = &[64, 4096, 1 << 20];
    let mut cases = Vec::new();
    for &size in sizes
        .iter()
        .filter(|&&s| size_only.is_none_or(|only| only == s))
    {
        for (producers, consumers) in [(1, 1), (4, 4)] {
            if pairs_only.is_some_and(|p| p != producers) {
                continue;
            }
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
                let window = if size >= 1 << 20 {
                    window.min(4)
                } else {
                    window
                };
                if window_only.is_some_and(|w| w != window) {
                    continue;
                }
                cases.push(Stream {
                    producers,
                    consumers,
                    size,
                    window,
                    messages: n,
                });
            }
        }
    }
    if !wanted("streaming") {
        cases.clear();
    }
    if rounds > 1 {
        println!(
            "each streaming and batched figure: the median of {rounds} runs, the transports taking turns\n"
        );
    }
    header(&transports, "streaming, msg/s", Some("ipcd/SysV"));
    for case in cases {
        let label = format!(
            "{}→{} {:>7} B, window {}",
            case.producers, case.consumers, case.size, case.window
        );
        let figures = medians(&mut transports, rounds, |t| t.stream(case));
        row(&transports, &label, &figures, "SysV msgq");
    }
    // Batches: one request carries `window` messages. Only 64 B, where the cost per
    // request rather than per byte sets the rate.
    println!();
    header(
        &transports,
        "batched 64 B, batch 64, msg/s",
        Some("ipcd/NATS"),
    );
    for (producers, consumers) in [(1, 1), (4, 4)]
        .into_iter()
        .filter(|&(p, _)| wanted("batched") && pairs_only.is_none_or(|only| only == p))
    {
        let n = if smoke { 200 } else { messages };
        let case = Stream {
            producers,
            consumers,
            size: 64,
            window: 64,
            messages: n.div_ceil(producers * consumers * 64) * producers * consumers * 64,
        };
        let label = format!("{producers}→{consumers}      64 B, batch 64");
        let figures = medians(&mut transports, rounds, |t| t.batched(case));
        row(&transports, &label, &figures, "NATS");
    }
    let rounds = if smoke { 200 } else { 20_000 };
    println!();
    header(&transports, "ping-pong 64 B, p50 / p99 µs", None);
    let mut line = format!("{:<34}", "");
    for t in transports.iter_mut().filter(|_| wanted("ping-pong")) {
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
    if wanted("scale") {
        scale(&daemon, smoke, scale_messages);
    }
    if wanted("topics") {
        topics::run(&daemon, smoke, messages);
    }
    if let Some(per_message) = per_message {
        println!(
            "  daemon memory per queued 64 B message beyond its payload ({queued} queued): {:.0} B",
            per_message.max(0.0)
        );
    }
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

/// How ipcd's cost per message holds up as mailboxes and queued messages grow: the rate,
/// and the CPU time per message of the whole process (clients and daemon), each with its
/// ratio to the first case. The CPU figure is the steadier one on a shared machine: time
/// the host gives to others lowers a rate but is not counted as this process's CPU.
fn scale(daemon: &mailboxes::Daemon, smoke: bool, messages: usize) {
    let mut ipcd = mailboxes::Ipcd::new(daemon);
    println!(
        "\nscale (ipcd 1→1 64 B window 64, median of {})  msg/s   ratio    CPU µs/msg   ratio",
        mailboxes::SCALE_ROUNDS
    );
    let line = |label: String, scaled: mailboxes::Scaled, first: mailboxes::Scaled| {
        let cpu = |s: mailboxes::Scaled| s.cpu_per_message.as_secs_f64() * 1e6;
        println!(
            "  {label:<26} {:>17.0} {:>7.2} {:>13.2} {:>7.2}",
            scaled.rate,
            first.rate / scaled.rate,
            cpu(scaled),
            cpu(scaled) / cpu(first),
        );
    };
    let mailboxes: &[usize] = if smoke {
        &[1, 100]
    } else {
        &[1, 1_000, 100_000]
    };
    let figures = ipcd.with_mailboxes(mailboxes, messages);
    for (&n, &scaled) in mailboxes.iter().zip(&figures) {
        line(format!("{n:>9} mailboxes"), scaled, figures[0]);
    }
    let depths: &[usize] = if smoke {
        &[1, 1_000]
    } else {
        &[1, 1_000, 100_000, 1_000_000]
    };
    let figures = ipcd.with_depth(depths, messages);
    for (&depth, &scaled) in depths.iter().zip(&figures) {
        line(format!("{depth:>9} queued"), scaled, figures[0]);
    }
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "ipc-bench: cannot use {bad}; use --smoke, --messages N, --only NAME (e.g. \
         ipcd, for profiling), --section NAME (streaming, batched, ping-pong, scale or \
         topics), --size N, --window N, --pairs N (only the streaming cases of N-byte \
         payloads, a window of N, or N→N), --rounds N (each streaming and batched \
         figure the median of N runs) or --peers redis=SOCKET,nats=HOST:PORT (either \
         part may be left out)"
    );
    std::process::exit(2);
}

/// The number that follows `flag`, or the usage and exit.
fn number(arg: Option<String>, flag: &str) -> usize {
    arg.as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} {}", arg.as_deref().unwrap_or(""))))
}

/// The brokers named with `--peers`, each already running.
#[derive(Default)]
struct Peers {
    /// A Redis server's Unix socket.
    redis: Option<std::path::PathBuf>,
    /// A NATS server's `host:port`.
    nats: Option<String>,
}

impl Peers {
    /// `redis=SOCKET,nats=HOST:PORT`, either part optional; `None` if malformed.
    fn parse(arg: &str) -> Option<Peers> {
        let mut peers = Peers::default();
        for part in arg.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=')? {
                ("redis", socket) if !socket.is_empty() => peers.redis = Some(socket.into()),
                ("nats", addr) if addr.contains(':') => peers.nats = Some(addr.into()),
                _ => return None,
            }
        }
        Some(peers)
    }
}

/// A section's header line: its title, each transport's name, then the ratio's name.
/// Each transport's median over `rounds` runs of `run`, the transports taking turns
/// within each round.
fn medians(
    transports: &mut [Box<dyn Transport + '_>],
    rounds: usize,
    mut run: impl FnMut(&mut dyn Transport) -> Option<f64>,
) -> Vec<Option<f64>> {
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); transports.len()];
    for _ in 0..rounds {
        for (t, figures) in transports.iter_mut().zip(&mut runs) {
            figures.extend(run(t.as_mut()));
        }
    }
    runs.into_iter()
        .map(|mut figures| {
            figures.sort_by(f64::total_cmp);
            figures.get(figures.len() / 2).copied()
        })
        .collect()
}

fn header(transports: &[Box<dyn Transport + '_>], title: &str, ratio: Option<&str>) {
    print!("{title:<34}");
    for t in transports {
        print!("{:>14}", t.name());
    }
    match ratio {
        Some(ratio) => println!("{ratio:>14}"),
        None => println!(),
    }
}

/// One line of figures, then ipcd's figure over `base`'s where both ran and carried the
/// case ("—" otherwise).
fn row(transports: &[Box<dyn Transport + '_>], label: &str, figures: &[Option<f64>], base: &str) {
    print!("{label:<34}");
    for f in figures {
        match f {
            Some(rate) => print!("{rate:>14.0}"),
            None => print!("{:>14}", "n/a"),
        }
    }
    let figure = |name: &str| {
        transports
            .iter()
            .position(|t| t.name() == name)
            .and_then(|i| figures[i])
    };
    match (figure("ipcd"), figure(base)) {
        (Some(ipcd), Some(base)) => println!("{:>14.2}", ipcd / base),
        _ => println!("{:>14}", "—"),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
