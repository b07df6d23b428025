//! Benchmark: what one hostile local user (bob) does to another (alice). For each attack,
//! on a fresh daemon: alice's command latency (connect, hello, `status`, close — what one
//! `ipcctl` command costs) while idle and under the attack, as p50/p99, and the daemon's
//! peak resident memory.
//!
//! `sudo cargo run --release -p ipcd-tests --example hostile_latency -- [IPCD]`
//! Needs root (the attacker and the victim are other uids). IPCD is the daemon binary to
//! measure, by default the one built beside this example; give another build's to compare.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipc_client::{BlockingClient, CreateOptions, SendOptions, Wait};
use ipc_proto::{FrameKind, RecvRequest, Request, Selector, codec};
use ipcd_tests::{DaemonProcess, Principal, connect_as, hello_frame, is_root};

const ALICE: Principal<'static> = Principal::new(64001, 64001);
const BOB: Principal<'static> = Principal::new(64002, 64002);
const SAMPLES: usize = 200;

/// What an attack leaves running: connections held open and threads writing into them.
struct Held {
    _streams: Vec<UnixStream>,
    _writers: Vec<std::thread::JoinHandle<()>>,
}

type Attack = fn(&DaemonProcess) -> Held;

fn main() {
    assert!(is_root(), "run as root: attacker and victim are other uids");
    let fds = raise_fd_limit();
    let _ = SILENT.set(
        usize::try_from(fds.saturating_sub(1_000))
            .unwrap_or(20_000)
            .min(20_000),
    );
    let ipcd = std::env::args()
        .nth(1)
        .map_or_else(|| ipcd_tests::binary("ipcd"), PathBuf::from);
    println!("daemon: {}", ipcd.display());
    println!(
        "{:<34} {:>9} {:>9} {:>11} {:>11} {:>9}",
        "attack by bob", "idle p50", "idle p99", "attack p50", "attack p99", "peak RSS"
    );
    let attacks: [(&str, Attack); 6] = [
        ("silent connections (fd limit)", silent_connections),
        ("5 hellos with a 40 MiB name", huge_hellos),
        ("3 × 1,100 unread Lists", unread_lists),
        ("5 × 10,000 unread 64 KiB receives", unread_receives),
        ("64 B messages up to his quota", empty_messages),
        ("50,000 TTL expiries to nowhere", expiry_flood),
    ];
    for (name, attack) in attacks {
        let dir = ipcd_tests::tempdir();
        let daemon = DaemonProcess::spawn_program(&ipcd, dir.path(), &[], &[], &[]);
        let idle = victim(&daemon.socket);
        let held = attack(&daemon);
        let under = victim(&daemon.socket);
        let peak = daemon.peak_rss_kib();
        drop(held);
        println!(
            "{name:<34} {:>9} {:>9} {:>11} {:>11} {:>6} MiB",
            ms(idle.0),
            ms(idle.1),
            ms(under.0),
            ms(under.1),
            peak / 1024
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// p50 and p99 of alice's commands: each a new connection, its hello, `status`, close.
fn victim(socket: &Path) -> (Duration, Duration) {
    let socket = socket.to_owned();
    let mut times: Vec<Duration> = connect_as(ALICE, move || {
        (0..SAMPLES)
            .map(|_| {
                let start = Instant::now();
                let mut c = BlockingClient::connect_to(&socket).expect("alice connects");
                c.status().expect("alice's status");
                start.elapsed()
            })
            .collect()
    });
    times.sort_unstable();
    (times[SAMPLES / 2], times[SAMPLES * 99 / 100])
}

/// Raises this process's descriptor limit to its hard limit, and returns it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or fill the struct we pass; nothing else.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Silent connections bob opens: as many as this process can hold, less room for the
/// rest of the benchmark.
static SILENT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Connections as bob, opened on a thread that has his ids.
fn bob_connects(socket: &Path, n: usize) -> Vec<UnixStream> {
    let socket = socket.to_owned();
    connect_as(BOB, move || {
        (0..n)
            .map_while(|_| UnixStream::connect(&socket).ok())
            .collect()
    })
}

/// Writes `bytes` into `stream` from a thread of its own (it blocks once the daemon
/// stops reading; it fails once it is cut off).
fn write_behind(stream: &UnixStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut writer = stream.try_clone().expect("clone the stream");
    std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    })
}

fn bob_client(daemon: &DaemonProcess) -> BlockingClient {
    let socket = daemon.socket.clone();
    connect_as(BOB, move || {
        BlockingClient::connect_to(&socket).expect("bob connects")
    })
}

fn silent_connections(daemon: &DaemonProcess) -> Held {
    Held {
        _streams: bob_connects(&daemon.socket, *SILENT.get().expect("set in main")),
        _writers: Vec::new(),
    }
}

fn huge_hellos(daemon: &DaemonProcess) -> Held {
    let streams = bob_connects(&daemon.socket, 5);
    let writers = streams
        .iter()
        .map(|s| write_behind(s, hello_frame(&"n".repeat(40 << 20)).to_vec()))
        .collect();
    Held {
        _streams: streams,
        _writers: writers,
    }
}

fn unread_lists(daemon: &DaemonProcess) -> Held {
    let mut bob = bob_client(daemon);
    for i in 0..990 {
        let name = format!("{i:04}.{}", "l".repeat(240));
        bob.create(&name, &CreateOptions::default())
            .expect("bob creates");
    }
    let streams = bob_connects(&daemon.socket, 3);
    let writers = streams
        .iter()
        .map(|s| {
            let mut out = hello_frame("lists");
            for id in 1..=1_100 {
                codec::encode_frame(FrameKind::Request, id, &Request::List, u32::MAX, &mut out)
                    .expect("list");
            }
            write_behind(s, out.to_vec())
        })
        .collect();
    Held {
        _streams: streams,
        _writers: writers,
    }
}

fn unread_receives(daemon: &DaemonProcess) -> Held {
    let mut bob = bob_client(daemon);
    bob.create(
        "bob.flood",
        &CreateOptions {
            mode: Some(0o666),
            ..CreateOptions::default()
        },
    )
    .expect("create");
    let streams = bob_connects(&daemon.socket, 5);
    let writers: Vec<_> = streams
        .iter()
        .map(|s| {
            let mut out = hello_frame("never-reads");
            let recv = Request::Recv(RecvRequest {
                mailbox: "bob.flood".parse().unwrap(),
                selector: Selector::Any,
                wait: Wait::Forever,
                peek: false,
                lease: None,
                max_size: None,
            });
            for id in 1..=10_000 {
                codec::encode_frame(FrameKind::Request, id, &recv, u32::MAX, &mut out)
                    .expect("recv");
            }
            write_behind(s, out.to_vec())
        })
        .collect();
    // Root feeds them until every receive is answered or none is left to take.
    let mut root = daemon.client();
    let payload = vec![7u8; 64 * 1024];
    let nowait = SendOptions {
        wait: Wait::NoWait,
        ..SendOptions::default()
    };
    for _ in 0..50_000 {
        if root.send("bob.flood", payload.clone(), &nowait).is_err()
            && root.stat("bob.flood").map_or(0, |i| i.waiting_receivers) == 0
        {
            break;
        }
    }
    Held {
        _streams: streams,
        _writers: writers,
    }
}

fn empty_messages(daemon: &DaemonProcess) -> Held {
    let mut bob = bob_client(daemon);
    bob.create(
        "bob.empty",
        &CreateOptions {
            limits: ipc_client::LimitChanges {
                max_msgs: Some(10_000_000),
                max_bytes: Some(4 << 30),
                ..Default::default()
            },
            ..CreateOptions::default()
        },
    )
    .expect("create");
    let send = Request::Send(ipc_proto::SendRequest {
        mailbox: "bob.empty".parse().unwrap(),
        mtype: 1,
        headers: Default::default(),
        wait: Wait::NoWait,
        ttl_ms: None,
        delay_ms: None,
        payload: bytes::Bytes::from_static(&[0; 64]),
    });
    let (mut submitted, mut answered) = (0u64, 0u64);
    let mut refused = false;
    while !(refused && submitted == answered) && answered < 2_000_000 {
        while !refused && submitted - answered < 256 {
            bob.submit(&send).expect("submit");
            submitted += 1;
        }
        let (_, reply) = bob.next_reply().expect("reply");
        answered += 1;
        refused |= matches!(reply, ipc_proto::Response::Error(_));
    }
    Held {
        _streams: Vec::new(),
        _writers: Vec::new(),
    }
}

fn expiry_flood(daemon: &DaemonProcess) -> Held {
    let mut bob = bob_client(daemon);
    bob.create(
        "bob.spam",
        &CreateOptions {
            delivery: ipc_client::DeliveryChanges {
                dead_letter: Some("nowhere".parse().unwrap()),
                ..Default::default()
            },
            ..CreateOptions::default()
        },
    )
    .expect("create");
    let send = Request::Send(ipc_proto::SendRequest {
        mailbox: "bob.spam".parse().unwrap(),
        mtype: 1,
        headers: Default::default(),
        wait: Wait::NoWait,
        ttl_ms: Some(1),
        delay_ms: None,
        payload: bytes::Bytes::from_static(b"x"),
    });
    let (mut submitted, mut answered) = (0u64, 0u64);
    while answered < 50_000 {
        while submitted < 50_000 && submitted - answered < 256 {
            bob.submit(&send).expect("submit");
            submitted += 1;
        }
        bob.next_reply().expect("reply");
        answered += 1;
    }
    Held {
        _streams: Vec::new(),
        _writers: Vec::new(),
    }
}
