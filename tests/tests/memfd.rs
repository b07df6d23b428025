//! Large payloads passed as sealed memfds: they arrive intact, the daemon keeps and hands
//! on the descriptor without copying, charges its size, survives a restart in a durable
//! mailbox, refuses what is not a sealed memfd, and leaks no descriptor when a sender or
//! a receiver goes away.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ipc_client::{BlockingClient, CreateOptions, LimitChanges, RecvOptions, SendOptions, Wait};
use ipc_proto::{
    ErrorCode, FLAG_FD, FrameKind, MailboxName, Request, Response, SendRequest, codec, memfd,
};
use ipcd_tests::DaemonProcess;

/// A payload large enough to go as a memfd, different at every byte position.
fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|n| (n as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn big_mailbox(client: &mut BlockingClient, name: &str, durable: bool) {
    let options = CreateOptions {
        durable,
        limits: LimitChanges {
            max_msg_size: Some(16 << 20),
            max_bytes: Some(256 << 20),
            max_msgs: None,
        },
        ..CreateOptions::default()
    };
    client.create(name, &options).unwrap();
}

/// Descriptors the daemon process has open.
fn open_fds(daemon: &DaemonProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .expect("the daemon's fd directory")
        .count()
}

/// Waits until the daemon has `n` descriptors open: it closes a connection's after the
/// client has gone, in its own time.
fn settle_fds(daemon: &DaemonProcess, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_fds(daemon) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon holds {} descriptors, not {n}",
            open_fds(daemon)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_large_payload_goes_as_a_memfd_and_comes_back_whole() {
    let daemon = DaemonProcess::spawn();
    let mut c = daemon.client();
    assert!(c.welcome().features.iter().any(|f| f == "memfd"));
    big_mailbox(&mut c, "big", false);
    let idle = open_fds(&daemon);
    let sent = payload(4 << 20, 1);
    c.send("big", sent.clone(), &SendOptions::default())
        .unwrap();
    // Kept as it came: one more descriptor while the message is queued, charged its size.
    assert_eq!(open_fds(&daemon), idle + 1);
    let info = c.stat("big").unwrap();
    assert_eq!(info.bytes, 4 << 20);
    let got = c.recv("big", &RecvOptions::default()).unwrap();
    assert_eq!(got.payload, sent);
    settle_fds(&daemon, idle);
    // The async client sends and takes payloads the same way.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(ipc_client::Client::connect_to(&daemon.socket));
    let client = client.unwrap();
    let other = payload(3 << 20, 2);
    let options = SendOptions::default();
    runtime
        .block_on(client.send("big", other.clone(), &options))
        .unwrap();
    assert_eq!(
        open_fds(&daemon),
        idle + 2,
        "its connection, and the memfd kept"
    );
    let got = runtime.block_on(client.recv("big", &RecvOptions::default()));
    assert_eq!(got.unwrap().payload, other);
    drop(client);
    drop(runtime);
    settle_fds(&daemon, idle);
}

#[test]
fn no_descriptor_is_left_behind_by_senders_and_receivers_that_go_away() {
    let daemon = DaemonProcess::spawn();
    let mut c = daemon.client();
    big_mailbox(&mut c, "gone", false);
    let idle = open_fds(&daemon);
    // Senders that exit at once: their messages stay, with their memfds, until taken.
    for seed in 0..5 {
        let mut sender = daemon.client();
        sender
            .send("gone", payload(1 << 20, seed), &SendOptions::default())
            .unwrap();
    }
    settle_fds(&daemon, idle + 5);
    // Receivers that ask and go away before reading their replies: what was handed to
    // them is gone with them, and so are the descriptors.
    for taken in 1..=3 {
        let mut receiver = daemon.client();
        receiver
            .submit(&Request::Recv(ipc_proto::RecvRequest {
                mailbox: MailboxName::new("gone").unwrap(),
                selector: ipc_proto::Selector::Any,
                wait: Wait::Forever,
                peek: false,
                lease: None,
                max_size: None,
            }))
            .unwrap();
        receiver.flush().unwrap();
        while c.stat("gone").unwrap().total_received < taken {
            std::thread::yield_now();
        }
    }
    // The rest is purged.
    c.purge("gone").unwrap();
    settle_fds(&daemon, idle);
}

#[test]
fn a_memfd_payload_in_a_durable_mailbox_survives_a_crash() {
    let dir = ipcd_tests::tempdir();
    let sent = payload(2 << 20, 9);
    {
        let mut daemon = DaemonProcess::spawn_in(dir.path(), &[]);
        let mut c = daemon.client();
        big_mailbox(&mut c, "kept", true);
        c.send("kept", sent.clone(), &SendOptions::default())
            .unwrap();
        daemon.kill();
    }
    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    let mut c = daemon.client();
    let got = c
        .recv("kept", &RecvOptions::default().wait(Wait::NoWait))
        .unwrap();
    assert_eq!(got.payload, sent);
}

/// Writes a `Send` of an empty payload to `mailbox` flagged as carrying a descriptor,
/// with `fd` (or none), after a handshake; returns the stream.
fn raw_send_with(socket: &Path, fd: Option<std::os::fd::BorrowedFd<'_>>) -> UnixStream {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(&ipcd_tests::hello_frame("raw")).unwrap();
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let mut welcome = vec![0; len];
    stream.read_exact(&mut welcome).unwrap();
    let request = Request::Send(SendRequest {
        mailbox: MailboxName::new("raw").unwrap(),
        mtype: 1,
        headers: Default::default(),
        wait: Wait::NoWait,
        ttl_ms: None,
        delay_ms: None,
        payload: Bytes::new(),
    });
    let mut frame = bytes::BytesMut::new();
    codec::encode_frame(FrameKind::Request, 1, &request, u32::MAX, &mut frame).unwrap();
    codec::set_flags(&mut frame, FLAG_FD);
    match fd {
        Some(fd) => {
            let n = memfd::send_with_fd(stream.as_fd(), &frame, fd).unwrap();
            stream.write_all(&frame[n..]).unwrap();
        }
        None => stream.write_all(&frame).unwrap(),
    }
    stream
}

/// The next reply frame on `stream`: its request id and response.
fn read_reply(stream: &mut UnixStream) -> (u64, Response) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let id = u64::from_le_bytes(header[8..].try_into().unwrap());
    let mut body = vec![0; len];
    stream.read_exact(&mut body).unwrap();
    let frame = ipc_proto::Frame {
        kind: FrameKind::Response,
        flags: 0,
        request_id: id,
        body: Bytes::from(body),
    };
    (id, codec::decode_body(&frame, FrameKind::Response).unwrap())
}

#[test]
fn what_is_not_a_sealed_memfd_is_refused_and_a_missing_one_ends_the_connection() {
    let daemon = DaemonProcess::spawn();
    let mut c = daemon.client();
    big_mailbox(&mut c, "raw", false);
    let idle = open_fds(&daemon);
    // A pipe is not a sealed memfd: that send is refused, the connection goes on.
    let (read_end, _write_end) = std::io::pipe().unwrap();
    let mut stream = raw_send_with(&daemon.socket, Some(read_end.as_fd()));
    match read_reply(&mut stream) {
        (1, Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains("not a sealed memfd"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    drop(stream);
    // A memfd not sealed against writes is refused the same way.
    let unsealed = {
        // SAFETY: memfd_create with a valid name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a descriptor just made, owned here.
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
    };
    let mut stream = raw_send_with(&daemon.socket, Some(unsealed.as_fd()));
    assert!(
        matches!(read_reply(&mut stream), (1, Response::Error(e)) if e.code == ErrorCode::InvalidArgument)
    );
    drop(stream);
    // Flagged, but no descriptor came: the stream cannot be trusted, so it is closed.
    let mut stream = raw_send_with(&daemon.socket, None);
    match read_reply(&mut stream) {
        (0, Response::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    drop(stream);
    assert_eq!(c.stat("raw").unwrap().messages, 0);
    settle_fds(&daemon, idle);
}

#[test]
fn past_max_memfds_a_payload_is_copied_and_its_memfd_closed() {
    let dir = ipcd_tests::tempdir();
    let daemon = DaemonProcess::spawn_with_config(dir.path(), "[connections]\nmax_memfds = 1\n");
    let mut c = daemon.client();
    big_mailbox(&mut c, "cap", false);
    let idle = open_fds(&daemon);
    let (first, second) = (payload(1 << 20, 3), payload(1 << 20, 4));
    c.send("cap", first.clone(), &SendOptions::default())
        .unwrap();
    c.send("cap", second.clone(), &SendOptions::default())
        .unwrap();
    assert_eq!(open_fds(&daemon), idle + 1, "only one memfd is kept");
    let options = RecvOptions::default().wait(Wait::NoWait);
    assert_eq!(c.recv("cap", &options).unwrap().payload, first);
    assert_eq!(c.recv("cap", &options).unwrap().payload, second);
    settle_fds(&daemon, idle);
}

#[test]
fn pipelined_large_sends_each_carry_their_own_memfd() {
    let daemon = DaemonProcess::spawn();
    let mut c = daemon.client();
    big_mailbox(&mut c, "many", false);
    let payloads: Vec<Bytes> = (0..5).map(|seed| payload(300_000, seed)).collect();
    // Written in one flush: each frame with a descriptor goes in a write of its own.
    let ids: Vec<u64> = payloads
        .iter()
        .map(|p| {
            c.submit(&Request::Send(SendRequest {
                mailbox: MailboxName::new("many").unwrap(),
                mtype: 1,
                headers: Default::default(),
                wait: Wait::Forever,
                ttl_ms: None,
                delay_ms: None,
                payload: p.clone(),
            }))
            .unwrap()
        })
        .collect();
    c.flush().unwrap();
    for id in ids {
        assert!(matches!(c.wait_for(id).unwrap(), Response::Sent { .. }));
    }
    let options = RecvOptions::default().wait(Wait::NoWait);
    for p in &payloads {
        assert_eq!(&c.recv("many", &options).unwrap().payload, p);
    }
}
