//! Many requests written at once, as a streaming client writes them, are read at once:
//! each is still answered as it would be alone — checked, limited and charged per
//! message, refused one by one, in the order written — whatever else is written between
//! them, and a refusal of one (a bad type, a frame that does not decode, a full or
//! missing or forbidden mailbox) leaves the others as they were.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use bytes::{Bytes, BytesMut};
use ipc_client::{CreateOptions, SendOptions};
use ipc_proto::{
    ErrorCode, FrameDecoder, FrameKind, LimitChanges, RecvRequest, Request, Response, Selector,
    SendRequest, Wait, codec,
};
use ipcd_tests::{Principal, TestDaemon, connect_as, hello_frame, is_root};

/// Sends to one mailbox written at once, more than one read of the daemon's takes.
const SENDS: usize = 3_000;

fn send(mailbox: &str, mtype: i64, payload: impl Into<Bytes>) -> Request {
    Request::Send(SendRequest {
        mailbox: mailbox.parse().unwrap(),
        mtype,
        headers: Default::default(),
        wait: Wait::NoWait,
        ttl_ms: None,
        delay_ms: None,
        payload: payload.into(),
    })
}

fn recv(mailbox: &str, wait: Wait) -> Request {
    Request::Recv(RecvRequest {
        mailbox: mailbox.parse().unwrap(),
        selector: Selector::Any,
        wait,
        peek: false,
        lease: None,
        max_size: None,
    })
}

/// A raw connection that writes many requests with one `write` and reads their answers.
struct Raw {
    stream: UnixStream,
    out: BytesMut,
    next_id: u64,
    decoder: FrameDecoder,
    read: BytesMut,
    welcomed: bool,
}

impl Raw {
    fn connect(daemon: &TestDaemon) -> Self {
        Self::on(UnixStream::connect(daemon.socket()).unwrap())
    }

    fn on(stream: UnixStream) -> Self {
        Self {
            stream,
            out: hello_frame("runs"),
            next_id: 1,
            decoder: FrameDecoder::new(u32::MAX),
            read: BytesMut::new(),
            welcomed: false,
        }
    }

    /// Adds `request` to what the next [`Raw::flush`] writes; returns its id.
    fn push(&mut self, request: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        codec::encode_frame(FrameKind::Request, id, request, u32::MAX, &mut self.out).unwrap();
        id
    }

    /// Adds a frame whose body is not a request that decodes; returns its id.
    fn push_malformed(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        // A Stat of "../etc": the name is refused as it is decoded.
        codec::encode_frame(
            FrameKind::Request,
            id,
            &(3u8, "../etc"),
            u32::MAX,
            &mut self.out,
        )
        .unwrap();
        id
    }

    fn flush(&mut self) {
        self.stream.write_all(&self.out).unwrap();
        self.out.clear();
    }

    /// The next `n` answers, as (request id, response), in the order they came.
    fn answers(&mut self, n: usize) -> Vec<(u64, Response)> {
        let mut answers = Vec::with_capacity(n);
        while answers.len() < n {
            while let Some(frame) = self.decoder.decode(&mut self.read).unwrap() {
                if !self.welcomed {
                    assert_eq!(frame.kind, FrameKind::Welcome);
                    self.welcomed = true;
                    continue;
                }
                let response: Response = codec::decode_body(&frame, FrameKind::Response).unwrap();
                answers.push((frame.request_id, response));
            }
            if answers.len() >= n {
                break;
            }
            let mut chunk = [0u8; 64 * 1024];
            let got = match self.stream.read(&mut chunk) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("reading the answers: {e}"),
            };
            assert!(
                got > 0,
                "the connection closed after {} answers",
                answers.len()
            );
            self.read.extend_from_slice(&chunk[..got]);
        }
        answers
    }

    /// Writes `request` alone and reads its answer.
    fn answers_to(&mut self, request: &Request) -> Response {
        let id = self.push(request);
        self.flush();
        let (got, response) = self.answers(1).pop().unwrap();
        assert_eq!(got, id);
        response
    }
}

fn error_code(response: &Response) -> ErrorCode {
    match response {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn requests_written_together_are_each_answered_as_alone_and_in_order() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("a", &CreateOptions::default()).unwrap();
    let small = CreateOptions {
        limits: LimitChanges {
            max_msgs: Some(5),
            ..LimitChanges::default()
        },
        ..CreateOptions::default()
    };
    c.create("small", &small).unwrap();

    let mut raw = Raw::connect(&daemon);
    // What each request is expected to get, by id.
    enum Expect {
        /// Sent to the mailbox named: its message ids follow the order written.
        Sent(&'static str),
        Refused(ErrorCode),
        Count(u64),
        Payload(String),
    }
    let mut expected = Vec::new();
    let mut sent_to_a = Vec::new();
    for i in 0..SENDS {
        let payload = format!("a{i}");
        // A send no mailbox accepts, one that does not decode, and the stretch of sends
        // goes on after each.
        if i == 100 {
            let id = raw.push(&send("a", 0, payload));
            expected.push((id, Expect::Refused(ErrorCode::InvalidArgument)));
            continue;
        }
        if i == 150 {
            let id = raw.push_malformed();
            expected.push((id, Expect::Refused(ErrorCode::InvalidName)));
        }
        let id = raw.push(&send("a", 1, payload.clone()));
        expected.push((id, Expect::Sent("a")));
        sent_to_a.push(payload);
    }
    // Another kind of request between two stretches sees every send before it.
    let id = raw.push(&Request::Stat {
        mailbox: "a".parse().unwrap(),
    });
    expected.push((id, Expect::Count(sent_to_a.len() as u64)));
    // A mailbox of five: the sixth send and those after it find it full.
    for i in 0..8 {
        let id = raw.push(&send("small", 1, format!("s{i}")));
        let expect = if i < 5 {
            Expect::Sent("small")
        } else {
            Expect::Refused(ErrorCode::WouldBlock)
        };
        expected.push((id, expect));
    }
    // No such mailbox: every send of the stretch is refused.
    for i in 0..3 {
        let id = raw.push(&send("nowhere", 1, format!("n{i}")));
        expected.push((id, Expect::Refused(ErrorCode::NoSuchMailbox)));
    }
    // Receives take the messages in the order they were sent, and then find none.
    for payload in &sent_to_a {
        let id = raw.push(&recv("a", Wait::NoWait));
        expected.push((id, Expect::Payload(payload.clone())));
    }
    for _ in 0..6 {
        let id = raw.push(&recv("a", Wait::NoWait));
        expected.push((id, Expect::Refused(ErrorCode::WouldBlock)));
    }
    raw.flush();

    let answers = raw.answers(expected.len());
    let ids: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
    let expected_ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids, expected_ids,
        "every request is answered once, in order"
    );
    let mut last_sent = std::collections::HashMap::new();
    for ((id, response), (_, expect)) in answers.iter().zip(&expected) {
        match expect {
            Expect::Sent(mailbox) => {
                let Response::Sent { id: message } = response else {
                    panic!("request {id}: {response:?}");
                };
                let last = last_sent.entry(*mailbox).or_insert(0);
                assert!(*message > *last, "request {id}: ids follow the sends");
                *last = *message;
            }
            Expect::Refused(code) => assert_eq!(error_code(response), *code, "request {id}"),
            Expect::Count(n) => {
                let Response::Mailbox(info) = response else {
                    panic!("request {id}: {response:?}");
                };
                assert_eq!(info.messages, *n, "request {id}");
            }
            Expect::Payload(payload) => {
                let Response::Message(message) = response else {
                    panic!("request {id}: {response:?}");
                };
                assert_eq!(&message.payload[..], payload.as_bytes(), "request {id}");
            }
        }
    }
    assert_eq!(c.stat("small").unwrap().messages, 5);
    assert_eq!(c.stat("a").unwrap().messages, 0);
    // The connection still serves one request at a time.
    assert!(matches!(
        raw.answers_to(&send("a", 1, "after")),
        Response::Sent { .. }
    ));
}

#[test]
fn receives_written_together_wait_and_are_served_in_the_order_written() {
    const WAITING: usize = 40;
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create("w", &CreateOptions::default()).unwrap();
    let mut raw = Raw::connect(&daemon);
    let ids: Vec<u64> = (0..WAITING)
        .map(|_| raw.push(&recv("w", Wait::Forever)))
        .collect();
    raw.flush();
    daemon.wait_for_receivers("w", WAITING as u64);
    for i in 0..WAITING {
        c.send("w", format!("w{i}"), &SendOptions::default())
            .unwrap();
    }
    let answers = raw.answers(WAITING);
    let mut by_id: Vec<(u64, String)> = answers
        .into_iter()
        .map(|(id, response)| {
            let Response::Message(message) = response else {
                panic!("request {id}: {response:?}");
            };
            (id, String::from_utf8(message.payload.to_vec()).unwrap())
        })
        .collect();
    by_id.sort();
    let expected: Vec<(u64, String)> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, format!("w{i}")))
        .collect();
    assert_eq!(
        by_id, expected,
        "the first receive written gets the first message"
    );
    let info = c.stat("w").unwrap();
    assert_eq!((info.messages, info.waiting_receivers), (0, 0));
}

#[test]
fn a_stretch_of_sends_to_a_mailbox_the_caller_may_not_write_is_refused_send_by_send() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return;
    }
    const OTHER: Principal<'static> = Principal::new(62031, 62031);
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    let private = CreateOptions {
        mode: Some(0o644),
        ..CreateOptions::default()
    };
    c.create("mine", &private).unwrap();
    c.create(
        "open",
        &CreateOptions {
            mode: Some(0o666),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let socket = daemon.socket().to_path_buf();
    let mut raw = Raw::on(connect_as(OTHER, move || {
        UnixStream::connect(socket).unwrap()
    }));
    let mut expected = Vec::new();
    for i in 0..50 {
        expected.push((raw.push(&send("mine", 1, format!("m{i}"))), false));
    }
    for i in 0..5 {
        expected.push((raw.push(&send("open", 1, format!("o{i}"))), true));
    }
    raw.flush();
    let answers = raw.answers(expected.len());
    for ((id, response), (expected_id, allowed)) in answers.iter().zip(&expected) {
        assert_eq!(id, expected_id);
        if *allowed {
            assert!(matches!(response, Response::Sent { .. }), "{response:?}");
        } else {
            assert_eq!(error_code(response), ErrorCode::PermissionDenied);
        }
    }
    assert_eq!(c.stat("mine").unwrap().messages, 0);
    assert_eq!(c.stat("open").unwrap().messages, 5);
}

/// Requests that fill one read of the daemon exactly, with nothing behind them, are
/// answered. A read that fills its room is followed by another before the replies are
/// written (the client may have written more than the read took); when that one finds
/// the socket drained, the replies must still go out rather than wait for a request
/// that is not coming. The room of a read is the daemon's business, so every write
/// here ends at one of the sizes a read buffer is likely to have, each on a connection
/// of its own, the hello written with the requests so that the first read is all of it.
#[test]
fn requests_that_end_exactly_where_a_read_ends_are_answered() {
    let daemon = TestDaemon::start();
    let mut c = daemon.client();
    c.create(
        "exact",
        &CreateOptions {
            limits: LimitChanges {
                max_msgs: Some(100_000),
                max_bytes: Some(1 << 30),
                ..LimitChanges::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap();
    for total in [1024, 2048, 4096, 8192, 16_384, 32_768, 65_536] {
        let mut raw = Raw::connect(&daemon);
        raw.stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        // Sends of 300-byte payloads, then one whose payload makes the write `total`
        // bytes long.
        let mut ids = Vec::new();
        while total - raw.out.len() > 1000 {
            ids.push(raw.push(&send("exact", 1, vec![b'x'; 300])));
        }
        let before = raw.out.len();
        let mut last = 0;
        loop {
            raw.out.truncate(before);
            raw.next_id = ids.len() as u64 + 1;
            raw.push(&send("exact", 1, vec![b'y'; last]));
            if raw.out.len() >= total {
                break;
            }
            last += 1;
        }
        assert_eq!(raw.out.len(), total, "a write of exactly {total} bytes");
        ids.push(raw.next_id - 1);
        raw.flush();
        let answers = raw.answers(ids.len());
        let got: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(got, ids, "a write of {total} bytes");
        for (id, response) in &answers {
            assert!(
                matches!(response, Response::Sent { .. }),
                "request {id} of a write of {total} bytes: {response:?}"
            );
        }
    }
}
