//! End-to-end behaviour through the client library: selection rules, blocking, limits,
//! competing consumers, removal, typed mailboxes, pipelining and hostile bytes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ipc_client::{
    BlockingClient, Client, CreateOptions, Error, LimitChanges, RecvOptions, Selector, SendOptions,
    Wait,
};
use ipcd_tests::TestDaemon;

fn create(client: &mut BlockingClient, name: &str) {
    assert!(client.create(name, &CreateOptions::default()).unwrap());
}

fn send(client: &mut BlockingClient, name: &str, mtype: i64, payload: &str) -> u64 {
    client
        .send(
            name,
            payload.as_bytes().to_vec(),
            &SendOptions::mtype(mtype),
        )
        .unwrap()
}

fn recv_now(client: &mut BlockingClient, name: &str, selector: Selector) -> Result<String, Error> {
    client
        .recv(name, &RecvOptions::selector(selector).wait(Wait::NoWait))
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
}

#[test]
fn selection_rules_follow_msgrcv() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "sel");
    for (t, p) in [
        (3, "a3"),
        (1, "b1"),
        (2, "c2"),
        (3, "d3"),
        (5, "e5"),
        (1, "f1"),
    ] {
        send(&mut c, "sel", t, p);
    }
    // type > 0: oldest of that type.
    assert_eq!(recv_now(&mut c, "sel", Selector::Type(3)).unwrap(), "a3");
    // except: oldest of any other type.
    assert_eq!(recv_now(&mut c, "sel", Selector::Except(1)).unwrap(), "c2");
    // type < 0: lowest type ≤ |t|, FIFO within it.
    assert_eq!(recv_now(&mut c, "sel", Selector::AtMost(4)).unwrap(), "b1");
    assert_eq!(recv_now(&mut c, "sel", Selector::AtMost(4)).unwrap(), "f1");
    assert_eq!(recv_now(&mut c, "sel", Selector::AtMost(4)).unwrap(), "d3");
    assert!(matches!(
        recv_now(&mut c, "sel", Selector::AtMost(4)),
        Err(Error::WouldBlock(_))
    ));
    // peek leaves the message; type 0 takes the oldest.
    let peeked = c
        .recv("sel", &RecvOptions::default().wait(Wait::NoWait).peek())
        .unwrap();
    assert_eq!(&peeked.payload[..], b"e5");
    assert_eq!(recv_now(&mut c, "sel", Selector::Any).unwrap(), "e5");
    assert!(matches!(
        recv_now(&mut c, "sel", Selector::Any),
        Err(Error::WouldBlock(_))
    ));
    let info = c.stat("sel").unwrap();
    assert_eq!(
        (
            info.messages,
            info.bytes,
            info.total_sent,
            info.total_received
        ),
        (0, 0, 6, 6)
    );
}

#[test]
fn message_carries_sender_identity_and_ids() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "who");
    let first = send(&mut c, "who", 7, "x");
    let second = send(&mut c, "who", 7, "y");
    assert!(second > first);
    let m = c.recv("who", &RecvOptions::default()).unwrap();
    assert_eq!(m.id, first);
    assert_eq!(m.mtype, 7);
    assert_eq!(m.sender.pid, std::process::id());
    // SAFETY: getuid/getgid have no preconditions.
    assert_eq!(m.sender.uid, unsafe { libc::getuid() });
    assert_eq!(m.sender.gid, unsafe { libc::getgid() });
    assert_eq!((m.deliveries, m.redelivered), (1, false));
}

#[test]
fn binary_payload_round_trips() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "bin");
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    c.send("bin", payload.clone(), &SendOptions::default())
        .unwrap();
    c.send("bin", Vec::new(), &SendOptions::default()).unwrap();
    assert_eq!(
        c.recv("bin", &RecvOptions::default()).unwrap().payload,
        payload
    );
    assert!(
        c.recv("bin", &RecvOptions::default())
            .unwrap()
            .payload
            .is_empty()
    );
}

#[test]
fn receive_waits_and_times_out() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "wait");
    let err = c
        .recv("wait", &RecvOptions::default().wait(Wait::TimeoutMs(50)))
        .unwrap_err();
    assert!(matches!(err, Error::TimedOut(_)), "{err:?}");
    assert_eq!(err.exit_code(), 75);
    // A waiting receiver is woken by a matching send, not by another type.
    let socket = daemon.socket().to_owned();
    let waiter = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(socket).unwrap();
        c.recv("wait", &RecvOptions::selector(Selector::Type(2)))
    });
    daemon.wait_for_receivers("wait", 1);
    send(&mut c, "wait", 1, "not for you");
    send(&mut c, "wait", 2, "for you");
    let got = waiter.join().unwrap().unwrap();
    assert_eq!(&got.payload[..], b"for you");
    assert_eq!(
        recv_now(&mut c, "wait", Selector::Any).unwrap(),
        "not for you"
    );
}

#[test]
fn waiting_receivers_are_served_fifo() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "fifo");
    let mut waiters = Vec::new();
    for i in 0..3 {
        let socket = daemon.socket().to_owned();
        waiters.push(std::thread::spawn(move || {
            let mut c = BlockingClient::connect_to(socket).unwrap();
            c.recv("fifo", &RecvOptions::default()).unwrap()
        }));
        daemon.wait_for_receivers("fifo", i + 1);
    }
    for p in ["first", "second", "third"] {
        send(&mut c, "fifo", 1, p);
    }
    let got: Vec<_> = waiters
        .into_iter()
        .map(|w| String::from_utf8(w.join().unwrap().payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, ["first", "second", "third"]);
}

#[test]
fn competing_consumers_get_each_message_once() {
    const MESSAGES: u64 = 4000;
    const CONSUMERS: usize = 4;
    let daemon = TestDaemon::start();
    let mut producer = daemon.client();
    create(&mut producer, "work");
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let socket = daemon.socket().to_owned();
            std::thread::spawn(move || {
                let mut c = BlockingClient::connect_to(socket).unwrap();
                let mut got = Vec::new();
                loop {
                    let m = c.recv("work", &RecvOptions::default()).unwrap();
                    if m.mtype == 2 {
                        return got;
                    }
                    got.push(u64::from_le_bytes(m.payload[..].try_into().unwrap()));
                }
            })
        })
        .collect();
    // Pipelined sends, as a busy producer would.
    let ids: Vec<u64> = (0..MESSAGES)
        .map(|i| {
            let req = ipc_proto::Request::Send(ipc_proto::SendRequest {
                mailbox: "work".parse().unwrap(),
                mtype: 1,
                headers: Default::default(),
                wait: Wait::Forever,
                ttl_ms: None,
                delay_ms: None,
                payload: i.to_le_bytes().to_vec().into(),
            });
            producer.submit(&req).unwrap()
        })
        .collect();
    for id in ids {
        assert!(matches!(
            producer.wait_for(id).unwrap(),
            ipc_proto::Response::Sent { .. }
        ));
    }
    for _ in 0..CONSUMERS {
        send(&mut producer, "work", 2, "stop");
    }
    let mut seen = HashSet::new();
    for consumer in consumers {
        for value in consumer.join().unwrap() {
            assert!(seen.insert(value), "message {value} delivered twice");
        }
    }
    assert_eq!(seen.len() as u64, MESSAGES);
}

#[test]
fn full_mailbox_blocks_senders_until_room() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let options = CreateOptions {
        limits: LimitChanges {
            max_msgs: Some(2),
            max_bytes: Some(100),
            max_msg_size: Some(60),
        },
        ..CreateOptions::default()
    };
    c.create("small", &options).unwrap();
    send(&mut c, "small", 1, "one");
    send(&mut c, "small", 1, "two");
    let nowait = c.send("small", "three", &SendOptions::default().wait(Wait::NoWait));
    assert!(matches!(nowait, Err(Error::WouldBlock(_))), "{nowait:?}");
    let timed = c.send(
        "small",
        "three",
        &SendOptions::default().wait(Wait::TimeoutMs(30)),
    );
    assert!(matches!(timed, Err(Error::TimedOut(_))), "{timed:?}");
    // Too large for the mailbox: refused at once, whatever the wait.
    let big = c.send("small", vec![0u8; 61], &SendOptions::default());
    assert!(
        matches!(&big, Err(Error::BadData(m)) if m.contains("max_msg_size")),
        "{big:?}"
    );
    assert_eq!(big.unwrap_err().exit_code(), 65);

    let socket = daemon.socket().to_owned();
    let blocked = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(socket).unwrap();
        c.send("small", "three", &SendOptions::default())
    });
    daemon.wait_for_senders("small", 1);
    assert_eq!(recv_now(&mut c, "small", Selector::Any).unwrap(), "one");
    blocked.join().unwrap().unwrap();
    let info = c.stat("small").unwrap();
    assert_eq!((info.messages, info.waiting_senders), (2, 0));
    assert_eq!(recv_now(&mut c, "small", Selector::Any).unwrap(), "two");
    assert_eq!(recv_now(&mut c, "small", Selector::Any).unwrap(), "three");
}

#[test]
fn byte_limit_counts_payload_bytes() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let options = CreateOptions {
        limits: LimitChanges {
            max_bytes: Some(10),
            ..LimitChanges::default()
        },
        ..CreateOptions::default()
    };
    c.create("bytes", &options).unwrap();
    send(&mut c, "bytes", 1, "123456");
    let r = c.send("bytes", "12345", &SendOptions::default().wait(Wait::NoWait));
    assert!(matches!(r, Err(Error::WouldBlock(_))), "{r:?}");
    send(&mut c, "bytes", 1, "1234");
    assert_eq!(c.stat("bytes").unwrap().bytes, 10);
}

#[test]
fn limits_above_ceilings_and_bad_arguments_are_refused() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let options = CreateOptions {
        limits: LimitChanges {
            max_msg_size: Some(1 << 40),
            ..LimitChanges::default()
        },
        ..CreateOptions::default()
    };
    let err = c.create("huge", &options).unwrap_err();
    assert!(err.to_string().contains("ceiling"), "{err}");
    assert_eq!(err.exit_code(), 65);
    let err = c
        .create(
            "m",
            &CreateOptions {
                mode: Some(0o4777),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), 65);
    create(&mut c, "m");
    let err = c.send("m", "x", &SendOptions::mtype(0)).unwrap_err();
    assert_eq!(err.exit_code(), 65, "{err}");
    let err = c.stat("nope").unwrap_err();
    assert!(matches!(err, Error::NoSuchMailbox(_)));
    assert_eq!(err.exit_code(), 66);
    let err = c.stat("../etc").unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)));
    assert_eq!(err.exit_code(), 65);
    let err = c.create("m", &CreateOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Exists(_)));
    assert!(
        !c.create(
            "m",
            &CreateOptions {
                exist_ok: true,
                ..Default::default()
            }
        )
        .unwrap()
    );
}

#[test]
fn removing_a_mailbox_wakes_its_waiters() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "gone");
    let socket = daemon.socket().to_owned();
    let waiter = std::thread::spawn(move || {
        let mut c = BlockingClient::connect_to(socket).unwrap();
        c.recv("gone", &RecvOptions::default())
    });
    daemon.wait_for_receivers("gone", 1);
    c.remove("gone").unwrap();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Removed(_)), "{err:?}");
    assert!(matches!(c.stat("gone"), Err(Error::NoSuchMailbox(_))));
}

#[test]
fn purge_set_list_and_status() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "b");
    create(&mut c, "a");
    for _ in 0..3 {
        send(&mut c, "a", 1, "xy");
    }
    let status = c.status().unwrap();
    assert_eq!((status.mailboxes, status.messages, status.bytes), (2, 3, 6));
    assert!(status.connections >= 1);
    let names: Vec<_> = c
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.purge("a").unwrap(), 3);
    let info = c
        .set(
            "a",
            ipc_client::MailboxChanges {
                mode: Some(0o640),
                limits: LimitChanges {
                    max_msgs: Some(5),
                    ..LimitChanges::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((info.mode, info.max_msgs, info.messages), (0o640, 5, 0));
}

#[test]
fn typed_mailbox_checks_the_type() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        name: String,
    }
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "typed");
    let job = Job {
        id: 1,
        name: "build".into(),
    };
    c.mailbox::<Job>("typed").unwrap().send(&job).unwrap();
    c.mailbox::<Job>("typed").unwrap().send(&job).unwrap();
    assert_eq!(c.mailbox::<Job>("typed").unwrap().recv().unwrap(), job);
    match c.mailbox::<String>("typed").unwrap().recv() {
        Err(Error::TypeMismatch { expected, found }) => {
            assert!(expected.contains("String"), "{expected}");
            assert!(found.ends_with("Job"), "{found}");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    // Mapped to SysV types, each type selects only its own messages.
    c.mailbox::<u32>("typed")
        .unwrap()
        .with_mtype(10)
        .send(&5)
        .unwrap();
    c.mailbox::<String>("typed")
        .unwrap()
        .with_mtype(20)
        .send(&"s".to_owned())
        .unwrap();
    assert_eq!(
        c.mailbox::<String>("typed")
            .unwrap()
            .with_mtype(20)
            .recv()
            .unwrap(),
        "s"
    );
    assert_eq!(
        c.mailbox::<u32>("typed")
            .unwrap()
            .with_mtype(10)
            .recv()
            .unwrap(),
        5
    );
}

#[test]
fn garbage_on_one_connection_leaves_others_working() {
    let daemon = TestDaemon::start();
    let mut good = daemon.client();
    create(&mut good, "steady");
    let hostile: [&[u8]; 4] = [
        // A 4 GiB length: refused from the header alone.
        &[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        // Unknown kind.
        &[0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        // A "hello" whose body is nonsense.
        &[
            3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
        ],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for bytes in hostile {
        let mut raw = UnixStream::connect(daemon.socket()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        raw.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        // The daemon answers with an error frame and closes: read to the end.
        raw.read_to_end(&mut answer).unwrap();
        assert!(answer.len() > 16, "an error reply came back for {bytes:?}");
        assert_eq!(
            u16::from_le_bytes([answer[4], answer[5]]),
            4,
            "a response frame"
        );
        send(&mut good, "steady", 1, "still here");
        assert_eq!(
            recv_now(&mut good, "steady", Selector::Any).unwrap(),
            "still here"
        );
    }
}

#[test]
fn undecodable_request_fails_alone() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    // A whole request frame with a body that is not a request: answered with an error
    // for that id, and the connection goes on.
    let mut raw = UnixStream::connect(daemon.socket()).unwrap();
    let mut out = bytes::BytesMut::new();
    let hello = ipc_proto::Hello {
        version: ipc_proto::PROTOCOL_VERSION,
        client_name: "raw".into(),
    };
    ipc_proto::codec::encode_frame(ipc_proto::FrameKind::Hello, 0, &hello, u32::MAX, &mut out)
        .unwrap();
    out.extend_from_slice(&[2, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 250, 250]);
    ipc_proto::codec::encode_frame(
        ipc_proto::FrameKind::Request,
        10,
        &ipc_proto::Request::Status,
        u32::MAX,
        &mut out,
    )
    .unwrap();
    raw.write_all(&out).unwrap();
    let mut decoder = ipc_proto::FrameDecoder::new(u32::MAX);
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let mut chunk = [0u8; 4096];
        let n = raw.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(frames[0].kind, ipc_proto::FrameKind::Welcome);
    let bad: ipc_proto::Response =
        ipc_proto::codec::decode_body(&frames[1], ipc_proto::FrameKind::Response).unwrap();
    assert_eq!(frames[1].request_id, 9);
    assert!(
        matches!(bad, ipc_proto::Response::Error(e) if e.code == ipc_proto::ErrorCode::BadRequest)
    );
    assert_eq!(frames[2].request_id, 10);
    assert!(c.status().is_ok());
}

#[test]
fn blocked_receive_does_not_hold_up_the_connection() {
    let daemon = TestDaemon::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        client
            .create("pipe", &CreateOptions::default())
            .await
            .unwrap();
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move { client.recv("pipe", &RecvOptions::default()).await })
        };
        // The same connection keeps answering while the receive waits.
        let info = loop {
            let info = client.stat("pipe").await.unwrap();
            if info.waiting_receivers == 1 {
                break info;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(info.messages, 0);
        client
            .send("pipe", "late", &SendOptions::default())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&got.payload[..], b"late");
    });
}

#[test]
fn abandoned_receive_does_not_swallow_a_message() {
    let daemon = TestDaemon::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect_to(daemon.socket()).await.unwrap();
        client
            .create("drop", &CreateOptions::default())
            .await
            .unwrap();
        {
            let options = RecvOptions::default();
            let recv = client.recv("drop", &options);
            tokio::pin!(recv);
            // Poll until the daemon holds the receive, then abandon it.
            loop {
                tokio::select! {
                    r = &mut recv => panic!("nothing to receive yet: {r:?}"),
                    () = tokio::task::yield_now() => {}
                }
                let info = client.stat("drop").await.unwrap();
                if info.waiting_receivers == 1 {
                    break;
                }
            }
        }
        // The cancel travels ahead of this send on the same connection.
        client
            .send("drop", "keep me", &SendOptions::default())
            .await
            .unwrap();
        let got = client
            .recv("drop", &RecvOptions::default().wait(Wait::NoWait))
            .await
            .unwrap();
        assert_eq!(&got.payload[..], b"keep me");
        assert_eq!(client.stat("drop").await.unwrap().waiting_receivers, 0);
    });
}

#[test]
fn silent_connection_is_closed_after_the_handshake_timeout() {
    let config = ipcd::Config {
        handshake_timeout: Duration::from_millis(100),
        ..ipcd::Config::default()
    };
    let daemon = TestDaemon::start_with(config);
    let mut silent = UnixStream::connect(daemon.socket()).unwrap();
    let mut rest = Vec::new();
    // Returns only once the daemon closes the connection.
    silent.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(daemon.client().status().is_ok());
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Returns once thread `tid` of this process is blocked in poll(2), as
/// `/proc/self/task/TID/syscall` reports (its first field is the system call's number
/// while the thread is in one).
fn blocked_in_poll(tid: libc::pid_t) {
    let path = format!("/proc/self/task/{tid}/syscall");
    loop {
        let now = std::fs::read_to_string(&path).expect("the thread's syscall file");
        let number = now
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        if number == Some(libc::SYS_poll) {
            return;
        }
        std::thread::yield_now();
    }
}

/// An interruptible blocking client ends a blocked receive on a signal, as `msgrcv(2)`
/// does with `EINTR` even under `SA_RESTART`: the receive is withdrawn at the daemon, so
/// a message sent afterwards is still there for the next receive, and the connection
/// goes on.
#[test]
fn a_signal_interrupts_an_interruptible_wait_and_takes_nothing() {
    let daemon = TestDaemon::start();
    let mut admin = daemon.client();
    create(&mut admin, "eintr");
    // SAFETY: installs a handler that does nothing, with SA_RESTART, for SIGUSR2.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    let (thread_tx, thread_rx) = std::sync::mpsc::channel();
    let (returned_tx, returned_rx) = std::sync::mpsc::channel();
    let socket = daemon.socket().to_path_buf();
    let waiting = std::thread::spawn(move || {
        let mut client = BlockingClient::connect_to(&socket).unwrap();
        client.set_interruptible(true);
        // SAFETY: pthread_self and gettid have no preconditions.
        thread_tx
            .send(unsafe { (libc::pthread_self(), libc::gettid()) })
            .unwrap();
        let interrupted = client.recv("eintr", &RecvOptions::default());
        returned_tx.send(()).unwrap();
        // The same connection still serves.
        let next = client.recv("eintr", &RecvOptions::default());
        (interrupted, next)
    });
    let (thread, tid) = thread_rx.recv().unwrap();
    daemon.wait_for_receivers("eintr", 1);
    // The daemon may have its receive before the thread is back in poll(2): a signal that
    // came then would be handled and forgotten, and the thread would block for good, as
    // msgrcv(2) would. So the signal waits until the kernel says the thread is in poll.
    blocked_in_poll(tid);
    // SAFETY: the thread is alive: it is blocked in its receive until this signal.
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
    returned_rx.recv().unwrap();
    send(&mut admin, "eintr", 1, "kept");
    let (interrupted, next) = waiting.join().unwrap();
    assert!(
        matches!(interrupted, Err(Error::Interrupted)),
        "{interrupted:?}"
    );
    // The withdrawn receive did not take it: the next one did.
    assert_eq!(next.unwrap().payload, "kept");
}

/// `peek_at` copies the message at a position of the whole queue, whatever its type,
/// and leaves it; past the end it would block. Every mailbox has its own serial.
#[test]
fn peek_at_copies_by_position_and_serials_differ() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    create(&mut c, "copies");
    create(&mut c, "other");
    for (mtype, payload) in [(3, "a"), (1, "b"), (2, "c")] {
        send(&mut c, "copies", mtype, payload);
    }
    let at = |c: &mut BlockingClient, n| c.peek_at("copies", n).map(|m| (m.mtype, m.payload));
    assert_eq!(at(&mut c, 0).unwrap(), (3, "a".into()));
    assert_eq!(at(&mut c, 2).unwrap(), (2, "c".into()));
    assert!(matches!(at(&mut c, 3), Err(Error::WouldBlock(_))));
    assert_eq!(
        c.stat("copies").unwrap().messages,
        3,
        "copies leave the queue as it was"
    );
    assert_ne!(
        c.stat("copies").unwrap().serial,
        c.stat("other").unwrap().serial
    );
}
