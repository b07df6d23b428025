//! Replies waiting to be written are charged to the uid that asked for them, at their
//! encoded size, against the real `ipcd` binary: connections that pipeline receives or
//! `List`s and never read are cut off — past their uid's `queued_bytes` quota or past
//! `max_pending_output` — while `status` shows what they hold, another uid keeps working,
//! and the daemon's peak memory stays bounded.
//!
//! The peak RSS each test saw is printed (`cargo test --test reply_charges -- --nocapture`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use ipc_client::{BlockingClient, CreateOptions, Error, SendOptions};
use ipc_proto::{FrameKind, MailboxName, RecvRequest, Request, Selector, Wait, codec};
use ipcd_tests::{DaemonProcess, Principal, connect_as, hello_frame, is_root, round_trip, tempdir};

const HEAVY: Principal<'static> = Principal::new(62011, 62011);
const LIGHT: Principal<'static> = Principal::new(62012, 62012);

/// Connections of HEAVY that pipeline receives and never read.
const FLOODERS: usize = 5;
/// Receives each of them pipelines.
const RECEIVES: u64 = 10_000;
/// The payload of every message sent to them.
const PAYLOAD: usize = 64 * 1024;
/// HEAVY's `queued_bytes` quota.
const QUOTA: u64 = 16 * 1024 * 1024;
/// Replies a connection may have waiting past the quota (`reply_allowance`).
const ALLOWANCE: u64 = 256 * 1024;

/// Megabytes of resident memory the daemon may add, once the flooders' receives wait,
/// while they are fed: HEAVY's quota of 16 MiB (plus its allowance per connection), five
/// small mailboxes, and room for allocator slack. Without the charge the same flood held
/// about 320 MiB (five connections at their 64 MiB `max_pending_output`).
const FLOOD_RSS_ALLOWANCE_MIB: u64 = 96;

/// As [`FLOOD_RSS_ALLOWANCE_MIB`], for the `List` flood: its 4 MiB `max_pending_output` and
/// slack. Costed at a fixed 128 bytes, the same 1,100 lists held about 300 MiB.
const LIST_RSS_ALLOWANCE_MIB: u64 = 64;

/// A hello and then `count` pipelined copies of `request`, as one buffer.
fn pipelined(request: &Request, count: u64) -> Vec<u8> {
    let mut out = hello_frame("never-reads");
    for id in 1..=count {
        codec::encode_frame(FrameKind::Request, id, request, u32::MAX, &mut out).unwrap();
    }
    out.to_vec()
}

/// Writes `bytes` to `stream` from a thread of its own: the writes block once the daemon
/// stops reading, and fail once it cuts the connection off, both of which are expected.
fn write_in_background(stream: &UnixStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    })
}

/// What `uid` holds now, as root's `status` reports it: its queued bytes and
/// connections (zero when it holds nothing, and so is not listed).
fn usage(root: &mut BlockingClient, uid: u32) -> (u64, u64) {
    let status = root.status().expect("status");
    status
        .users
        .iter()
        .find(|u| u.uid == uid)
        .map_or((0, 0), |u| (u.queued_bytes, u.connections))
}

#[test]
fn unread_replies_count_against_the_uid_that_asked() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as other uids");
        return;
    }
    let dir = tempdir();
    let daemon = DaemonProcess::spawn_with_config(
        dir.path(),
        &format!(
            "[connections]\nreply_allowance = {ALLOWANCE}\n\
             [quota.uid.{}]\nqueued_bytes = {QUOTA}\nin_flight = {RECEIVES}\n",
            HEAVY.uid
        ),
    );
    let socket = daemon.socket.clone();
    let mut root = daemon.client();
    let small = CreateOptions {
        mode: Some(0o666),
        limits: ipc_proto::LimitChanges {
            max_bytes: Some(4 * PAYLOAD as u64),
            ..ipc_proto::LimitChanges::default()
        },
        ..CreateOptions::default()
    };
    let mailboxes: Vec<String> = (0..FLOODERS).map(|i| format!("flood{i}")).collect();
    for name in &mailboxes {
        root.create(name, &small).unwrap();
    }
    let mut light = connect_as(LIGHT, {
        let socket = socket.clone();
        move || BlockingClient::connect_to(&socket).expect("LIGHT connects")
    });
    light.create("light", &CreateOptions::default()).unwrap();
    round_trip(&mut light, "light", 0);
    let idle = daemon.peak_rss_kib();

    // Each flooder pipelines its receives on a mailbox of its own, so that all of them
    // have replies piling up at once, and never reads.
    let mut flooders = Vec::new();
    let mut writers = Vec::new();
    for name in &mailboxes {
        let stream = connect_as(HEAVY, {
            let socket = socket.clone();
            move || UnixStream::connect(&socket).expect("HEAVY connects")
        });
        let recv = Request::Recv(RecvRequest {
            mailbox: MailboxName::new(name.as_str()).unwrap(),
            selector: Selector::Any,
            wait: Wait::Forever,
            peek: false,
            lease: None,
            max_size: None,
        });
        writers.push(write_in_background(&stream, pipelined(&recv, RECEIVES)));
        flooders.push(stream);
    }
    for name in &mailboxes {
        let registered = (0..1_000_000)
            .map(|_| root.stat(name).unwrap().waiting_receivers)
            .find(|&n| n == RECEIVES);
        assert_eq!(
            registered,
            Some(RECEIVES),
            "the receives on {name} register"
        );
    }
    assert_eq!(usage(&mut root, HEAVY.uid).1, FLOODERS as u64);
    // The waiting receives themselves take memory (bounded by the in_flight quota); what
    // is measured is what the replies add to that.
    let waiting = daemon.peak_rss_kib();

    // Messages go to the flooders in turn until every one of them has been cut off.
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    let mut highest = 0;
    let mut sent = 0u64;
    for n in 0..20_000u64 {
        let mailbox = &mailboxes[n as usize % FLOODERS];
        match root.send(
            mailbox,
            payload.clone(),
            &SendOptions::default().wait(Wait::NoWait),
        ) {
            Ok(_) => sent += 1,
            // A cut-off flooder's mailbox fills up: its receives are gone.
            Err(Error::WouldBlock(_)) => {}
            Err(e) => panic!("send {n}: {e}"),
        }
        if n % 16 == 0 {
            let (queued, connections) = usage(&mut root, HEAVY.uid);
            highest = highest.max(queued);
            assert!(
                queued <= QUOTA + FLOODERS as u64 * (ALLOWANCE + PAYLOAD as u64 + 1024),
                "HEAVY holds {queued} bytes, past its quota and allowance per connection"
            );
            round_trip(&mut light, "light", n);
            if connections == 0 {
                break;
            }
        }
    }
    eprintln!(
        "{sent} messages of {PAYLOAD} bytes sent; status showed HEAVY holding at most \
         {highest} bytes of unread replies (quota {QUOTA})"
    );
    assert!(
        highest >= QUOTA / 2,
        "status shows the unread replies rising toward the quota: at most {highest} seen"
    );
    // Lines of one cause are rate-limited: the first is logged, the rest counted.
    let cut = daemon.log_lines("cut off");
    assert!(
        (1..=FLOODERS).contains(&cut.len()),
        "at most one line per flooder: {cut:#?}"
    );
    for line in &cut {
        assert!(
            line.contains(&format!("uid {}", HEAVY.uid))
                && line.contains(&format!("queued_bytes quota of {QUOTA}")),
            "names the uid and its quota: {line}"
        );
    }
    // Everything its replies held is given back with its connections, the last of
    // which is counted until then.
    let left = (0..100_000)
        .map(|_| usage(&mut root, HEAVY.uid))
        .find(|&(_, connections)| connections == 0);
    assert_eq!(left, Some((0, 0)), "HEAVY's (queued bytes, connections)");
    round_trip(&mut light, "light", u64::MAX);
    assert!(daemon.log_lines("panicked").is_empty());
    let peak = daemon.peak_rss_kib();
    eprintln!(
        "unread receives: daemon peak RSS {} MiB (idle {} MiB, {} MiB with the receives \
         waiting)",
        peak / 1024,
        idle / 1024,
        waiting / 1024
    );
    assert!(
        peak < waiting + FLOOD_RSS_ALLOWANCE_MIB * 1024,
        "peak RSS {peak} KiB is past the bound"
    );
    drop(flooders);
    for writer in writers {
        writer.join().unwrap();
    }
}

#[test]
fn pipelined_lists_never_read_are_cut_off_by_their_size() {
    const MAILBOXES: usize = 900;
    const LISTS: u64 = 1_100;
    const MAX_PENDING_OUTPUT: u64 = 4 * 1024 * 1024;
    let dir = tempdir();
    let daemon = DaemonProcess::spawn_with_config(
        dir.path(),
        &format!("[connections]\nmax_pending_output = {MAX_PENDING_OUTPUT}\n"),
    );
    let mut good = daemon.client();
    // Long names make each list some 300 KB: far more than a fixed allowance per reply.
    for i in 0..MAILBOXES {
        let name = format!("{i:04}-{}", "n".repeat(240));
        good.create(&name, &CreateOptions::default()).unwrap();
    }
    good.create("steady", &CreateOptions::default()).unwrap();
    let one_list = {
        let mut out = BytesMut::new();
        let reply = ipc_proto::Response::Mailboxes(good.list().unwrap());
        codec::encode_frame(FrameKind::Response, 1, &reply, u32::MAX, &mut out).unwrap();
        out.len() as u64
    };
    assert!(one_list > 250_000, "a list is {one_list} bytes");
    let idle = daemon.peak_rss_kib();

    let stalled = UnixStream::connect(&daemon.socket).unwrap();
    let writer = write_in_background(&stalled, pipelined(&Request::List, LISTS));
    let line = daemon
        .wait_for_log("cut off", Duration::from_secs(120))
        .expect("the daemon cuts the reader off and says why");
    assert!(
        line.contains(&format!("above max_pending_output of {MAX_PENDING_OUTPUT}")),
        "{line}"
    );
    assert_eq!(daemon.log_lines("cut off").len(), 1, "one log line");
    writer.join().unwrap();

    // The well-behaved connection of the same uid is untouched, and once the cut-off
    // one is closed nothing is left charged for it.
    let me = ipcd_tests::uid();
    let mut own = None;
    for n in 0..100_000 {
        round_trip(&mut good, "steady", n);
        own = good
            .status()
            .unwrap()
            .users
            .into_iter()
            .find(|u| u.uid == me);
        if own
            .as_ref()
            .is_some_and(|u| u.connections == 1 && u.queued_bytes == 0)
        {
            break;
        }
    }
    let own = own.expect("the test's uid holds a connection");
    assert_eq!(own.connections, 1, "the cut-off connection is closed");
    assert_eq!(own.queued_bytes, 0, "its replies were given back");
    let peak = daemon.peak_rss_kib();
    eprintln!(
        "unread lists of {one_list} bytes: daemon peak RSS {} MiB (idle {} MiB)",
        peak / 1024,
        idle / 1024
    );
    assert!(daemon.log_lines("panicked").is_empty());
    assert!(
        peak < idle + LIST_RSS_ALLOWANCE_MIB * 1024,
        "peak RSS {peak} KiB is past the bound"
    );
}
