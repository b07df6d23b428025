//! Send throughput of a durable mailbox: how many messages per second ipcd accepts (and,
//! per the mailbox's fsync policy, stores) from N producers, each on its own connection.
//!
//! A durable send is answered only once its message is stored, so with `--pipeline 1`
//! (the default) every producer waits for each message's reply before sending the next:
//! with `--fsync always` that is one disk sync per message, unless the daemon's group
//! commit lets concurrent producers share one. With `--pipeline K` each connection keeps
//! K sends in flight (`submit` / `next_reply`), so a single producer also feeds the group
//! commit. `--fill` just loads a mailbox as fast as it can (1 producer, pipelined), for
//! recovery tests.
//!
//! Start a daemon, then:
//!
//! ```text
//! cargo run --release -p ipc-client --example bench_durable -- \
//!     --socket /tmp/ipcd.sock --mailbox bench --producers 8 --messages 20000 \
//!     --size 64 --fsync always --pipeline 1
//! ```
//!
//! It creates the mailbox (durable, with that fsync policy, existing is fine; its
//! message limit is raised to fit `--messages`) and prints one line of `key=value`
//! fields ending in `msg_per_s`. `bench/durable.sh` runs the whole set of cases. The
//! messages stay queued: remove the mailbox afterwards (`ipcctl rm NAME`).

use std::path::PathBuf;
use std::process::exit;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipc_client::{
    BlockingClient, Bytes, CreateOptions, Fsync, HeaderBox, LimitChanges, MailboxName, SendOptions,
    Wait, reply,
};
use ipc_proto::{Request, SendRequest};

/// A new mailbox's limits are never lowered below the daemon's defaults.
const DEFAULT_MAX_MSGS: u64 = 100_000;
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// In-flight sends per connection in `--fill` mode unless `--pipeline` says otherwise.
const FILL_PIPELINE: usize = 256;

const USAGE: &str = "usage: bench_durable --socket PATH --mailbox NAME --producers N \
--messages M --size BYTES [--fsync always|interval=MS|never] [--pipeline K] [--fill]";

#[derive(Debug)]
struct Args {
    socket: PathBuf,
    mailbox: String,
    producers: usize,
    messages: u64,
    size: usize,
    fsync: Fsync,
    pipeline: usize,
    fill: bool,
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bench_durable: {e}\n{USAGE}");
        exit(2);
    });
    if let Err(e) = run(&args) {
        eprintln!("bench_durable: {e}");
        exit(1);
    }
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut mailbox = None;
    let mut producers = 1;
    let mut messages = None;
    let mut size = None;
    let mut fsync = Fsync::Always;
    let mut pipeline = None;
    let mut fill = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--fill" {
            fill = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--mailbox" => mailbox = Some(value),
            "--producers" => producers = number(&flag, &value)?,
            "--messages" => messages = Some(number(&flag, &value)?),
            "--size" => size = Some(number(&flag, &value)?),
            "--fsync" => fsync = value.parse()?,
            "--pipeline" => pipeline = Some(number(&flag, &value)?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let producers = if fill { 1 } else { producers };
    let pipeline = pipeline.unwrap_or(if fill { FILL_PIPELINE } else { 1 });
    let messages: u64 = messages.ok_or("--messages is required")?;
    if producers == 0 || pipeline == 0 || messages == 0 {
        return Err("--producers, --pipeline and --messages must be at least 1".into());
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        mailbox: mailbox.ok_or("--mailbox is required")?,
        producers,
        messages,
        size: size.ok_or("--size is required")?,
        fsync,
        pipeline,
        fill,
    })
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not a number"))
}

fn run(args: &Args) -> Result<(), String> {
    let mut admin = BlockingClient::connect_named(&args.socket, "bench_durable")
        .map_err(|e| format!("cannot connect to {}: {e}", args.socket.display()))?;
    let payload_bytes = args.messages.saturating_mul(args.size as u64);
    let create = CreateOptions {
        durable: true,
        fsync: Some(args.fsync),
        limits: LimitChanges {
            max_msgs: Some(args.messages.max(DEFAULT_MAX_MSGS)),
            max_bytes: Some(payload_bytes.max(DEFAULT_MAX_BYTES)),
            max_msg_size: None,
        },
        exist_ok: true,
        ..CreateOptions::default()
    };
    admin
        .create(&args.mailbox, &create)
        .map_err(|e| format!("cannot create mailbox {}: {e}", args.mailbox))?;
    let before = stat_messages(&mut admin, &args.mailbox)?;

    let payload = Bytes::from(vec![b'x'; args.size]);
    // Every producer connects before the clock starts.
    let start = Arc::new(Barrier::new(args.producers + 1));
    let producers: Vec<_> = (0..args.producers)
        .map(|i| {
            // The first `messages % producers` producers send one more.
            let count = args.messages / args.producers as u64
                + u64::from((i as u64) < args.messages % args.producers as u64);
            let socket = args.socket.clone();
            let mailbox = args.mailbox.clone();
            let payload = payload.clone();
            let pipeline = args.pipeline;
            let start = start.clone();
            thread::spawn(move || -> Result<Duration, String> {
                let client = BlockingClient::connect_named(&socket, "bench_durable");
                start.wait();
                let mut client = client.map_err(|e| format!("producer {i}: {e}"))?;
                let began = Instant::now();
                let sent = if pipeline == 1 {
                    one_at_a_time(&mut client, &mailbox, payload, count)
                } else {
                    pipelined(&mut client, &mailbox, payload, count, pipeline)
                };
                sent.map_err(|e| format!("producer {i}: {e}"))?;
                Ok(began.elapsed())
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for producer in producers {
        producer
            .join()
            .map_err(|_| "a producer thread panicked".to_string())??;
    }
    let elapsed = began.elapsed().as_secs_f64();

    println!(
        "producers={} messages={} size={} fsync={} pipeline={} elapsed_s={:.3} msg_per_s={:.0}",
        args.producers,
        args.messages,
        args.size,
        args.fsync,
        args.pipeline,
        elapsed,
        args.messages as f64 / elapsed
    );
    if args.fill {
        let after = stat_messages(&mut admin, &args.mailbox)?;
        println!("filled mailbox={} messages={after}", args.mailbox);
        if after < before + args.messages {
            return Err(format!(
                "mailbox {} holds {after} messages, expected at least {}",
                args.mailbox,
                before + args.messages
            ));
        }
    }
    Ok(())
}

fn stat_messages(client: &mut BlockingClient, mailbox: &str) -> Result<u64, String> {
    client
        .stat(mailbox)
        .map(|info| info.messages)
        .map_err(|e| format!("cannot stat mailbox {mailbox}: {e}"))
}

/// One send in flight: each waits for its reply.
fn one_at_a_time(
    client: &mut BlockingClient,
    mailbox: &str,
    payload: Bytes,
    count: u64,
) -> ipc_client::Result<()> {
    let options = SendOptions::default();
    for _ in 0..count {
        client.send(mailbox, payload.clone(), &options)?;
    }
    Ok(())
}

/// `depth` sends in flight: a new one is submitted as each reply arrives.
fn pipelined(
    client: &mut BlockingClient,
    mailbox: &str,
    payload: Bytes,
    count: u64,
    depth: usize,
) -> ipc_client::Result<()> {
    let request = Request::Send(SendRequest {
        mailbox: MailboxName::new(mailbox)?,
        mtype: 1,
        headers: HeaderBox::default(),
        wait: Wait::Forever,
        ttl_ms: None,
        delay_ms: None,
        payload,
    });
    let (mut submitted, mut answered) = (0u64, 0u64);
    while answered < count {
        while submitted < count && submitted - answered < depth as u64 {
            client.submit(&request)?;
            submitted += 1;
        }
        // Flushes what was submitted, then waits.
        let (_, response) = client.next_reply()?;
        reply::sent(response)?;
        answered += 1;
    }
    Ok(())
}
