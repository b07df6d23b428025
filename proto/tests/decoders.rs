//! The wire decoders under proptest, on stable and in every `cargo test`: the same
//! properties the `fuzz/` targets check at length, kept short enough to run each time.
//!
//! - Any bytes, in any chunking, give `FrameDecoder` no way to panic or to yield a body
//!   above its limit, and the chunking never changes what it decodes.
//! - Any body bytes decode as `Hello`, `Request`, `Welcome` or `Response` to a value or an
//!   error, never a panic, and what decodes re-encodes to itself.
//! - Every `Request` survives encoding, framing in any chunking and decoding unchanged,
//!   with the variant number that docs/protocol.md gives it.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use ipc_proto::codec::{self, CodecError};
use ipc_proto::{
    BatchMessage, CallRequest, CreateRequest, Credentials, DEFAULT_MAX_FRAME, Delivered,
    DeliveryChanges, Frame, FrameDecoder, FrameError, FrameKind, Fsync, HEADER_LEN, HeaderBox,
    Headers, Hello, Lease, LimitChanges, MailboxChanges, MailboxName, Message, MessageRef,
    PublishRequest, RecvBatchRequest, RecvRequest, Request, Response, Selector, SendBatchRequest,
    SendRequest, Timestamp, Topic, TopicPattern, Wait, Welcome,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// The decoders' limit in these tests: small, so that both sides of it are reached.
const MAX_BODY: u32 = 256;

/// Everything a decoder made of a stream: its frames, and the error that ended it.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
}

/// Feeds `stream` to a fresh decoder in pieces whose sizes cycle through `chunks` (all at
/// once when `chunks` is empty), checking the limit on every frame.
fn decode_in_chunks(stream: &[u8], max_body: u32, chunks: &[usize]) -> Outcome {
    let mut decoder = FrameDecoder::new(max_body);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut sizes = chunks.iter().copied().cycle();
    let mut fed = 0;
    while fed < stream.len() {
        let n = sizes.next().unwrap_or(stream.len()).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(
                        frame.body.len() <= max_body as usize,
                        "frame above the limit"
                    );
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

/// One piece of a hostile stream: a header whose every field may be wrong (a length near
/// or past the limit, an unknown kind, reserved flags), and up to that many body bytes.
fn segment() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        4 => 0..=MAX_BODY + 8,
        1 => any::<u32>(),
    ];
    let kind = prop_oneof![8 => 1u16..=4, 1 => any::<u16>()];
    let flags = prop_oneof![8 => Just(0u16), 1 => any::<u16>()];
    // Now and then, bytes that belong to no frame.
    let garbage = proptest::option::weighted(0.2, vec(any::<u8>(), 1..40));
    (
        len,
        kind,
        flags,
        any::<u64>(),
        vec(any::<u8>(), 0..300),
        garbage,
    )
        .prop_map(|(len, kind, flags, id, body, garbage)| {
            let mut out = Vec::new();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&body[..body.len().min(len as usize)]);
            out.extend(garbage.unwrap_or_default());
            out
        })
}

fn name() -> impl Strategy<Value = MailboxName> {
    "[A-Za-z0-9_-][A-Za-z0-9._/-]{0,40}"
        .prop_filter_map("not a mailbox name", |s| MailboxName::new(s).ok())
}

fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![
        Just(Wait::Forever),
        Just(Wait::NoWait),
        any::<u64>().prop_map(Wait::TimeoutMs),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::Any),
        any::<i64>().prop_map(Selector::Type),
        any::<i64>().prop_map(Selector::Except),
        any::<i64>().prop_map(Selector::AtMost),
    ]
}

fn limits() -> impl Strategy<Value = LimitChanges> {
    any::<(Option<u64>, Option<u64>, Option<u64>)>().prop_map(
        |(max_msgs, max_bytes, max_msg_size)| LimitChanges {
            max_msgs,
            max_bytes,
            max_msg_size,
        },
    )
}

fn headers() -> impl Strategy<Value = HeaderBox> {
    (
        proptest::option::of(name()),
        any::<Option<u64>>(),
        proptest::option::of(".{0,20}"),
        proptest::option::of(topic()),
    )
        .prop_map(|(reply_to, correlation_id, content_type, topic)| {
            Headers {
                reply_to,
                correlation_id,
                content_type,
                topic,
            }
            .into()
        })
}

fn topic() -> impl Strategy<Value = Topic> {
    "[a-z0-9_:/-]{1,8}(\\.[a-z0-9_:/-]{1,8}){0,3}".prop_map(|t| Topic::new(t).unwrap())
}

fn pattern() -> impl Strategy<Value = TopicPattern> {
    "([a-z]{1,4}|\\*)(\\.([a-z]{1,4}|\\*)){0,3}(\\.>)?".prop_map(|p| TopicPattern::new(p).unwrap())
}

/// Every kind of request, with every field drawn from its whole range.
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            name(),
            any::<Option<u32>>(),
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(Fsync::Always)),
                Just(Some(Fsync::Never)),
                any::<u32>().prop_map(|ms| Some(Fsync::IntervalMs(ms))),
            ],
            limits(),
            delivery(),
            any::<bool>()
        )
            .prop_map(
                |(mailbox, mode, durable, fsync, limits, delivery, exist_ok)| {
                    Request::Create(Box::new(CreateRequest {
                        mailbox,
                        mode,
                        durable,
                        fsync,
                        limits,
                        delivery,
                        exist_ok,
                    }))
                }
            ),
        (
            name(),
            any::<i64>(),
            headers(),
            wait(),
            any::<(Option<u64>, Option<u64>)>(),
            vec(any::<u8>(), 0..200)
        )
            .prop_map(
                |(mailbox, mtype, headers, wait, (ttl_ms, delay_ms), payload)| {
                    Request::Send(SendRequest {
                        mailbox,
                        mtype,
                        headers,
                        wait,
                        ttl_ms,
                        delay_ms,
                        payload: Bytes::from(payload),
                    })
                }
            ),
        (
            name(),
            selector(),
            wait(),
            any::<bool>(),
            any::<Option<(u64, bool)>>(),
            any::<Option<u64>>()
        )
            .prop_map(|(mailbox, selector, wait, peek, lease, max_size)| {
                Request::Recv(RecvRequest {
                    mailbox,
                    selector,
                    wait,
                    peek,
                    lease: lease.map(|(timeout_ms, detached)| Lease {
                        timeout_ms,
                        detached,
                    }),
                    max_size,
                })
            }),
        name().prop_map(|mailbox| Request::Stat { mailbox }),
        Just(Request::List),
        (
            name(),
            any::<(Option<u32>, Option<u32>, Option<u32>)>(),
            limits(),
            delivery()
        )
            .prop_map(
                |(mailbox, (mode, owner_uid, owner_gid), limits, delivery)| Request::Set {
                    mailbox,
                    changes: Box::new(MailboxChanges {
                        mode,
                        owner_uid,
                        owner_gid,
                        limits,
                        delivery,
                    }),
                }
            ),
        name().prop_map(|mailbox| Request::Purge { mailbox }),
        name().prop_map(|mailbox| Request::Remove { mailbox }),
        Just(Request::Status),
        any::<u64>().prop_map(|request_id| Request::Cancel { request_id }),
        (name(), any::<u64>()).prop_map(|(mailbox, id)| Request::Ack { mailbox, id }),
        (name(), any::<u64>()).prop_map(|(mailbox, id)| Request::Nack { mailbox, id }),
        (
            name(),
            wait(),
            vec(
                (
                    any::<i64>(),
                    headers(),
                    any::<(Option<u64>, Option<u64>)>(),
                    vec(any::<u8>(), 0..40)
                ),
                0..5
            )
        )
            .prop_map(|(mailbox, wait, messages)| {
                Request::SendBatch(SendBatchRequest {
                    mailbox,
                    wait,
                    messages: messages
                        .into_iter()
                        .map(
                            |(mtype, headers, (ttl_ms, delay_ms), payload)| BatchMessage {
                                mtype,
                                headers,
                                ttl_ms,
                                delay_ms,
                                payload: Bytes::from(payload),
                            },
                        )
                        .collect(),
                })
            }),
        (
            name(),
            selector(),
            any::<u32>(),
            wait(),
            any::<Option<(u64, bool)>>()
        )
            .prop_map(|(mailbox, selector, max, wait, lease)| {
                Request::RecvBatch(RecvBatchRequest {
                    mailbox,
                    selector,
                    max,
                    wait,
                    lease: lease.map(|(timeout_ms, detached)| Lease {
                        timeout_ms,
                        detached,
                    }),
                })
            }),
        (name(), pattern(), any::<bool>()).prop_map(|(mailbox, pattern, bind)| if bind {
            Request::Bind { mailbox, pattern }
        } else {
            Request::Unbind { mailbox, pattern }
        }),
        (
            topic(),
            any::<i64>(),
            headers(),
            any::<Option<u64>>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(|(topic, mtype, headers, ttl_ms, payload)| {
                Request::Publish(PublishRequest {
                    topic,
                    mtype,
                    headers,
                    ttl_ms,
                    payload: Bytes::from(payload),
                })
            }),
        pattern().prop_map(|pattern| Request::Subscribe { pattern }),
        (name(), any::<u64>()).prop_map(|(mailbox, index)| Request::PeekAt { mailbox, index }),
        (
            name(),
            any::<i64>(),
            headers(),
            any::<u64>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(|(mailbox, mtype, headers, timeout_ms, payload)| {
                Request::Call(CallRequest {
                    mailbox,
                    mtype,
                    headers,
                    timeout_ms,
                    payload: Bytes::from(payload),
                })
            }),
    ]
}

fn delivery() -> impl Strategy<Value = DeliveryChanges> {
    (
        any::<Option<u32>>(),
        proptest::option::of(name()),
        any::<bool>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(max_deliveries, dead_letter, clear_dead_letter, default_ttl_ms)| DeliveryChanges {
                max_deliveries,
                dead_letter,
                clear_dead_letter,
                default_ttl_ms,
            },
        )
}

/// The variant number of docs/protocol.md. The match is exhaustive, so a new request
/// does not compile until it has a number here and a case in [`request`].
fn documented_variant(request: &Request) -> u8 {
    match request {
        Request::Create(_) => 0,
        Request::Send(_) => 1,
        Request::Recv(_) => 2,
        Request::Stat { .. } => 3,
        Request::List => 4,
        Request::Set { .. } => 5,
        Request::Purge { .. } => 6,
        Request::Remove { .. } => 7,
        Request::Status => 8,
        Request::Cancel { .. } => 9,
        Request::Ack { .. } => 10,
        Request::Nack { .. } => 11,
        Request::SendBatch(_) => 12,
        Request::RecvBatch(_) => 13,
        Request::Bind { .. } => 14,
        Request::Unbind { .. } => 15,
        Request::Publish(_) => 16,
        Request::Subscribe { .. } => 17,
        Request::Call(_) => 18,
        Request::PeekAt { .. } => 19,
    }
}

/// Decodes `body` as a `kind` frame (`None`: refused); a value that decodes must come
/// back unchanged from encoding and decoding again, and re-encode to the same bytes.
fn decode_and_round_trip<T>(kind: FrameKind, body: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let frame = Frame {
        kind,
        flags: 0,
        request_id: 1,
        body: Bytes::copy_from_slice(body),
    };
    let value: T = match codec::decode_body(&frame, kind) {
        Ok(value) => value,
        Err(error) => {
            // The daemon puts this text in its error reply.
            let _ = error.to_string();
            return Ok(None);
        }
    };
    let encoded = codec::encode_value(&value).expect("a decoded value encodes");
    let again: T = codec::decode_value(&encoded).expect("a re-encoded value decodes");
    prop_assert_eq!(&again, &value);
    prop_assert_eq!(codec::encode_value(&again).expect("encodes"), encoded);
    Ok(Some(value))
}

/// Decodes `body` under every frame kind the daemon or a client decodes. A refused body
/// is fine; a panic or a broken round trip is not.
fn no_panic_and_round_trip(body: &[u8]) -> Result<(), TestCaseError> {
    decode_and_round_trip::<Hello>(FrameKind::Hello, body)?;
    decode_and_round_trip::<Request>(FrameKind::Request, body)?;
    decode_and_round_trip::<Welcome>(FrameKind::Welcome, body)?;
    decode_and_round_trip::<Response>(FrameKind::Response, body)?;
    Ok(())
}

proptest! {
    /// Arbitrary bytes in arbitrary chunks: no panic, no frame above the limit, and the
    /// same frames and error as when the stream comes in one piece.
    #[test]
    fn frame_decoder_takes_any_bytes_in_any_chunking(
        data in vec(any::<u8>(), 0..2048),
        chunks in vec(1usize..64, 1..32),
        max_body in 0..=MAX_BODY,
    ) {
        prop_assert_eq!(
            decode_in_chunks(&data, max_body, &chunks),
            decode_in_chunks(&data, max_body, &[])
        );
    }

    /// Streams of near-valid frames (lengths around the limit, bad kinds and flags,
    /// stray bytes) reach every branch of the decoder; the same properties hold.
    #[test]
    fn frame_decoder_takes_hostile_frames_in_any_chunking(
        segments in vec(segment(), 0..8),
        chunks in vec(1usize..64, 1..32),
    ) {
        let stream = segments.concat();
        let whole = decode_in_chunks(&stream, MAX_BODY, &[]);
        prop_assert_eq!(decode_in_chunks(&stream, MAX_BODY, &chunks), whole);
    }

    /// Arbitrary bodies, under every frame kind the daemon or a client decodes.
    #[test]
    fn body_decoders_take_any_bytes(body in vec(any::<u8>(), 0..512)) {
        no_panic_and_round_trip(&body)?;
    }

    /// Valid request bodies with bytes changed or cut short: these get past the variant
    /// number and into the fields, where random bytes rarely go.
    #[test]
    fn body_decoders_take_damaged_requests(
        request in request(),
        damage in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = codec::encode_value(&request).expect("a request encodes");
        for (at, byte) in damage {
            let at = at.index(body.len());
            body[at] = byte;
        }
        body.truncate(cut.index(body.len() + 1));
        no_panic_and_round_trip(&body)?;
    }

    /// Every request comes back unchanged from encoding, framing in any chunking and
    /// decoding, under its documented variant number.
    #[test]
    fn requests_round_trip(
        requests in vec(request(), 1..6),
        chunks in vec(1usize..64, 1..16),
    ) {
        let mut wire = BytesMut::new();
        for (id, request) in (1..).zip(&requests) {
            codec::encode_frame(FrameKind::Request, id, request, DEFAULT_MAX_FRAME, &mut wire)
                .expect("a request encodes");
        }
        let outcome = decode_in_chunks(&wire, DEFAULT_MAX_FRAME, &chunks);
        prop_assert_eq!(outcome.error, None);
        prop_assert_eq!(outcome.frames.len(), requests.len());
        for ((id, request), frame) in (1..).zip(&requests).zip(&outcome.frames) {
            prop_assert_eq!(frame.request_id, id);
            prop_assert_eq!(frame.body[0], documented_variant(request));
            let decoded: Request = codec::decode_body(frame, FrameKind::Request)
                .expect("an encoded request decodes");
            prop_assert_eq!(&decoded, request);
        }
    }

    /// A request body is refused under any other frame kind.
    #[test]
    fn request_body_is_refused_under_another_kind(request in request()) {
        let body = Bytes::from(codec::encode_value(&request).expect("a request encodes"));
        for kind in [FrameKind::Hello, FrameKind::Welcome, FrameKind::Response] {
            let frame = Frame { kind, flags: 0, request_id: 1, body: body.clone() };
            let refused = matches!(
                codec::decode_body::<Request>(&frame, FrameKind::Request),
                Err(CodecError::UnexpectedKind { .. })
            );
            prop_assert!(refused, "a {:?} frame was decoded as a request", kind);
        }
    }
}

/// A frame as long as the limit passes and one byte more is refused from the header,
/// whatever follows.
#[test]
fn the_limit_is_inclusive() {
    let mut wire = Vec::new();
    for len in [MAX_BODY, MAX_BODY + 1] {
        wire.extend_from_slice(&len.to_le_bytes());
        wire.extend_from_slice(&(FrameKind::Request as u16).to_le_bytes());
        wire.extend_from_slice(&[0; 10]);
        wire.resize(wire.len() + len as usize, 0xAA);
    }
    assert_eq!(wire.len(), 2 * HEADER_LEN + 2 * MAX_BODY as usize + 1);
    let outcome = decode_in_chunks(&wire, MAX_BODY, &[7]);
    assert_eq!(outcome.frames.len(), 1);
    assert_eq!(
        outcome.error,
        Some(FrameError::TooLarge {
            len: (MAX_BODY + 1).into(),
            max: MAX_BODY
        })
    );
}

/// A delivered message, every field drawn from its whole range.
fn message() -> impl Strategy<Value = Message> {
    (
        any::<(u64, i64, u32, u32, u32, u64)>(),
        headers(),
        any::<(bool, u32)>(),
        vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |((id, mtype, pid, uid, gid, at), headers, (redelivered, deliveries), payload)| {
                Message {
                    id,
                    mtype,
                    sender: Credentials { pid, uid, gid },
                    sent_at: Timestamp(at),
                    headers,
                    redelivered,
                    deliveries,
                    payload: Bytes::from(payload),
                }
            },
        )
}

fn encoded(body: &impl serde::Serialize) -> BytesMut {
    let mut out = BytesMut::new();
    codec::encode_frame(FrameKind::Response, 7, body, DEFAULT_MAX_FRAME, &mut out).unwrap();
    out
}

proptest! {
    /// The daemon writes delivered messages from where it keeps them: the bytes must be
    /// those of the response a client decodes.
    #[test]
    fn delivered_messages_encode_as_their_responses(messages in vec(message(), 1..5)) {
        let one = encoded(&Delivered::One(MessageRef::from(&messages[0])));
        prop_assert_eq!(&one, &encoded(&Response::Message(messages[0].clone())));
        let many = encoded(&Delivered::Many(messages.iter().map(MessageRef::from).collect()));
        prop_assert_eq!(&many, &encoded(&Response::Messages(messages.clone())));
    }
}

/// The replies a client decodes by hand ([`codec::decode_response`]), and one it leaves
/// to serde.
fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u64>().prop_map(|id| Response::Sent { id }),
        message().prop_map(Response::Message),
        vec(message(), 0..4).prop_map(Response::Messages),
        any::<bool>().prop_map(|created| Response::Created { created }),
    ]
}

fn frame_of(kind: FrameKind, body: &[u8]) -> Frame {
    Frame {
        kind,
        flags: 0,
        request_id: 1,
        body: Bytes::copy_from_slice(body),
    }
}

/// The hand-laid request decoding gives what serde's gives for `body`: the same request,
/// or the same refusal.
fn requests_agree(body: &[u8]) -> Result<(), TestCaseError> {
    let frame = frame_of(FrameKind::Request, body);
    let by_hand = codec::decode_request(frame.clone(), 64).map_err(|e| e.to_string());
    let by_serde = codec::decode_body_sharing::<Request>(&frame, FrameKind::Request, 64)
        .map_err(|e| e.to_string());
    prop_assert_eq!(by_hand, by_serde);
    Ok(())
}

/// As [`requests_agree`], for replies.
fn responses_agree(body: &[u8]) -> Result<(), TestCaseError> {
    let frame = frame_of(FrameKind::Response, body);
    let by_hand = codec::decode_response(&frame).map_err(|e| e.to_string());
    let by_serde =
        codec::decode_body::<Response>(&frame, FrameKind::Response).map_err(|e| e.to_string());
    prop_assert_eq!(by_hand, by_serde);
    Ok(())
}

proptest! {
    /// Requests laid out by hand are serde's bytes, and read back by hand as serde reads
    /// them; a payload of at most the sharing limit is a slice of the frame.
    #[test]
    fn hand_laid_requests_are_serdes(request in request()) {
        let mut by_hand = BytesMut::new();
        codec::encode_request(9, &request, DEFAULT_MAX_FRAME, &mut by_hand).unwrap();
        let mut by_serde = BytesMut::new();
        codec::encode_frame(FrameKind::Request, 9, &request, DEFAULT_MAX_FRAME, &mut by_serde)
            .unwrap();
        prop_assert_eq!(&by_hand, &by_serde);
        let body = &by_hand[HEADER_LEN..];
        let frame = frame_of(FrameKind::Request, body);
        let decoded = codec::decode_request(frame.clone(), 64).unwrap();
        prop_assert_eq!(&decoded, &request);
        requests_agree(body)?;
        if let Request::Send(send) = &decoded {
            let shared = frame.body.as_ptr_range().contains(&send.payload.as_ptr());
            prop_assert_eq!(shared, !send.payload.is_empty() && send.payload.len() <= 64);
        }
    }

    /// Replies likewise, and delivered messages laid out from where the daemon keeps
    /// them.
    #[test]
    fn hand_laid_responses_are_serdes(response in response()) {
        let mut by_hand = BytesMut::new();
        codec::encode_response(9, &response, DEFAULT_MAX_FRAME, &mut by_hand).unwrap();
        let mut by_serde = BytesMut::new();
        codec::encode_frame(FrameKind::Response, 9, &response, DEFAULT_MAX_FRAME, &mut by_serde)
            .unwrap();
        prop_assert_eq!(&by_hand, &by_serde);
        let delivered = match &response {
            Response::Message(m) => Some(Delivered::One(MessageRef::from(m))),
            Response::Messages(ms) => Some(Delivered::Many(ms.iter().map(MessageRef::from).collect())),
            _ => None,
        };
        if let Some(delivered) = delivered {
            let mut laid = BytesMut::new();
            codec::encode_delivered(9, &delivered, DEFAULT_MAX_FRAME, &mut laid).unwrap();
            prop_assert_eq!(&laid, &by_serde);
        }
        let body = &by_hand[HEADER_LEN..];
        prop_assert_eq!(&codec::decode_response(&frame_of(FrameKind::Response, body)).unwrap(), &response);
        responses_agree(body)?;
    }

    /// Damaged and cut-short bodies: where the hand-laid reading answers at all, it
    /// answers as serde does (and where it does not, serde answers).
    #[test]
    fn hand_laid_decoding_agrees_on_damaged_bodies(
        request in request(),
        response in response(),
        damage in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut body in [
            codec::encode_value(&request).expect("a request encodes"),
            codec::encode_value(&response).expect("a response encodes"),
        ] {
            for (at, byte) in &damage {
                let at = at.index(body.len());
                body[at] = *byte;
            }
            body.truncate(cut.index(body.len() + 1));
            requests_agree(&body)?;
            responses_agree(&body)?;
        }
    }

    /// And on any bytes at all.
    #[test]
    fn hand_laid_decoding_agrees_on_any_bytes(body in vec(any::<u8>(), 0..256)) {
        requests_agree(&body)?;
        responses_agree(&body)?;
    }
}

/// Numbers at the edges of postcard's integers, where a hand-laid varint goes wrong
/// first: the largest of each width, one group too many, a last group too large, and
/// groups with nothing in them (which postcard takes).
#[test]
fn hand_laid_varints_agree_at_the_edges() {
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let recv = |tail: &[u8]| {
        // `Recv`, a one-byte name, then a selector given by `tail`.
        let mut body = vec![2, 1, b'q'];
        body.extend_from_slice(tail);
        body
    };
    for tail in [
        &[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0, 0,
        ][..],
        &[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0,
        ],
        &[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00, 0, 0, 0, 0,
        ],
        &[1, 0x80, 0x80, 0x00, 0, 0, 0, 0],
        &[0x80, 0x00, 0, 0, 0, 0],
        &[0, 0x82, 0x80, 0x80, 0x80, 0x00, 0x05, 0, 0, 0],
        &[0, 0x82, 0x80, 0x80, 0x80, 0x10, 0x05, 0, 0, 0],
        &[
            0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0,
        ],
        &[0, 0, 2, 0, 0],
        &[0, 0, 0, 2, 0],
        &[0, 0, 0, 1, 5, 2, 0],
    ] {
        bodies.push(recv(tail));
    }
    // A `Sent` with the largest id, and one a group too long.
    bodies.push(vec![
        2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ]);
    bodies.push(vec![
        2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
    ]);
    // A variant number of five groups, the last too large for a u32.
    bodies.push(vec![0x82, 0x80, 0x80, 0x80, 0x10, 1, b'q']);
    for body in &bodies {
        requests_agree(body).unwrap();
        responses_agree(body).unwrap();
    }
}
