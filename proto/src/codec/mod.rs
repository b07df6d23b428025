//! The serialization formats: frame bodies and, by default, typed payloads are postcard
//! 1.x, a stable, documented, compact serde format; typed payloads may be JSON instead,
//! for programs that read them without sharing our Rust types (other languages, `jq`).
//! This is the only module that names them, so a format can be swapped here alone.
//!
//! Payloads are `bytes::Bytes`, which serde treats as one byte string (a length and a
//! single copy), never element by element as it would a `Vec<u8>`.
//!
//! The bodies of a streamed message — a send, a receive, and their replies — are laid
//! out by hand in the same format (`fast.rs`), serde's code staying the definition.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::frame::{Frame, FrameKind, HEADER_LEN, Header};
use crate::message::{Delivered, Request, Response};
use crate::name::NameError;

mod fast;

/// A body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("cannot decode {what} as JSON: {source}")]
    DecodeJson {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot encode {what} as JSON: {source}")]
    EncodeJson {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    InvalidName(#[from] NameError),
    #[error("cannot decode {what}: {extra} bytes after its end")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("encoded frame body is {len} bytes, more than the maximum of {max}")]
    TooLarge { len: usize, max: u32 },
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind { expected: FrameKind, got: FrameKind },
}

/// Appends one whole frame (header and encoded `body`) to `out`. On error `out` is left
/// as it was.
pub fn encode_frame<T: Serialize>(
    kind: FrameKind,
    request_id: u64,
    body: &T,
    max_body: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    frame_with(kind, request_id, max_body, out, |out| serde_body(body, out))
}

/// Appends a request's frame to `out`, as [`encode_frame`] does: a send's or a
/// receive's body is laid out by hand (`fast.rs`), any other through serde.
pub fn encode_request(
    request_id: u64,
    request: &Request,
    max_body: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let kind = FrameKind::Request;
    frame_with(kind, request_id, max_body, out, |out| {
        by_hand_or_serde(request, out, fast::encode_request)
    })
}

/// Appends a reply's frame to `out`, as [`encode_frame`] does: a `Sent`, `Message` or
/// `Messages` body is laid out by hand (`fast.rs`), any other through serde.
pub fn encode_response(
    request_id: u64,
    response: &Response,
    max_body: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let kind = FrameKind::Response;
    frame_with(kind, request_id, max_body, out, |out| {
        by_hand_or_serde(response, out, fast::encode_response)
    })
}

/// `body` laid out by `by_hand`, or through serde where that takes none of it.
fn by_hand_or_serde<T: Serialize>(
    body: &T,
    out: &mut BytesMut,
    by_hand: fn(&T, &mut BytesMut) -> bool,
) -> postcard::Result<()> {
    if by_hand(body, out) {
        Ok(())
    } else {
        serde_body(body, out)
    }
}

/// Appends the reply frame of delivered messages, laid out by hand (`fast.rs`).
pub fn encode_delivered(
    request_id: u64,
    delivered: &Delivered<'_>,
    max_body: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    frame_with(FrameKind::Response, request_id, max_body, out, |out| {
        fast::encode_delivered(delivered, out);
        Ok(())
    })
}

fn serde_body<T: Serialize + ?Sized>(body: &T, out: &mut BytesMut) -> postcard::Result<()> {
    postcard::serialize_with_flavor(body, Append(out))
}

/// Appends a frame whose body `write` appends: the header is filled in once the body's
/// length is known. On error `out` is left as it was.
fn frame_with(
    kind: FrameKind,
    request_id: u64,
    max_body: u32,
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> postcard::Result<()>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    if let Err(source) = write(out) {
        out.truncate(start);
        return Err(CodecError::Encode {
            what: kind_name(kind),
            source,
        });
    }
    let len = out.len() - start - HEADER_LEN;
    let body_len = match u32::try_from(len) {
        Ok(n) if n <= max_body => n,
        _ => {
            out.truncate(start);
            return Err(CodecError::TooLarge { len, max: max_body });
        }
    };
    Header {
        body_len,
        kind,
        flags: 0,
        request_id,
    }
    .write(&mut out[start..start + HEADER_LEN]);
    Ok(())
}

/// Postcard's output straight onto the end of a buffer: every reply and request is
/// encoded through here, a field at a time, and an `io::Write` adapter in between cost
/// a call and a copy routine per field.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.put_u8(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        // Many fields are varints of one byte (a small id, a type, a length, a count):
        // those are pushed, not copied by a call.
        if let [byte] = *bytes {
            self.0.put_u8(byte);
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Sets the flags of the encoded frame that starts `frame` (see [`crate::frame::FLAG_FD`]).
pub fn set_flags(frame: &mut [u8], flags: u16) {
    frame[6..8].copy_from_slice(&flags.to_le_bytes());
}

/// Decodes the body of `frame`, which must be of kind `expected`.
pub fn decode_body<T: DeserializeOwned>(
    frame: &Frame,
    expected: FrameKind,
) -> Result<T, CodecError> {
    if frame.kind != expected {
        return Err(CodecError::UnexpectedKind {
            expected,
            got: frame.kind,
        });
    }
    LAST_NAME_ERROR.set(None);
    let (body, rest) = postcard::take_from_bytes(&frame.body).map_err(|source| {
        // A body that is well formed but for a bad mailbox name says what is wrong with
        // the name.
        match (source, LAST_NAME_ERROR.take()) {
            (postcard::Error::SerdeDeCustom, Some(name)) => CodecError::InvalidName(name),
            (source, _) => CodecError::Decode {
                what: kind_name(expected),
                source,
            },
        }
    })?;
    if !rest.is_empty() {
        // A body is exactly one value: anything after it means the sender and this side
        // disagree about the format, and guessing would be worse than refusing.
        return Err(CodecError::TrailingBytes {
            what: kind_name(expected),
            extra: rest.len(),
        });
    }
    Ok(body)
}

/// Decodes a request frame as [`decode_body_sharing`] does: a send's or a receive's body
/// is read by hand (`fast.rs`), any other — and any body the hand-laid reading is not
/// sure of — through serde. The frame is taken: a small payload becomes its body.
#[inline]
pub fn decode_request(mut frame: Frame, share_up_to: usize) -> Result<Request, CodecError> {
    if frame.kind == FrameKind::Request
        && let Some(request) = fast::decode_request(&mut frame.body, share_up_to)
    {
        return Ok(request);
    }
    decode_body_sharing(&frame, FrameKind::Request, share_up_to)
}

/// Decodes a reply frame as [`decode_body`] does: a `Sent`, `Message` or `Messages`
/// body is read by hand (`fast.rs`), any other through serde.
#[inline]
pub fn decode_response(frame: &Frame) -> Result<Response, CodecError> {
    if frame.kind == FrameKind::Response
        && let Some(response) = fast::decode_response(&frame.body)
    {
        return Ok(response);
    }
    decode_body(frame, FrameKind::Response)
}

/// Decodes as [`decode_body`] does, except that a payload of at most `share_up_to` bytes
/// is a slice of the frame's body rather than a copy of it: for a reader that copies
/// small payloads again at once (the daemon, into a message's own block), one allocation
/// and copy saved per message. A larger payload is copied as usual, so that a payload
/// kept for long never holds the buffer its frame was read into; a small one kept for
/// long must be copied by its keeper.
pub fn decode_body_sharing<T: DeserializeOwned>(
    frame: &Frame,
    expected: FrameKind,
    share_up_to: usize,
) -> Result<T, CodecError> {
    /// Takes the frame back off the thread however decoding ends.
    struct Unshare;
    impl Drop for Unshare {
        fn drop(&mut self) {
            SHARED_BODY.with_borrow_mut(|shared| *shared = None);
        }
    }
    SHARED_BODY.with_borrow_mut(|shared| *shared = Some((frame.body.clone(), share_up_to)));
    let _unshare = Unshare;
    decode_body(frame, expected)
}

/// A payload field's decoding (`#[serde(deserialize_with)]` on a request's payload): a
/// slice of the frame being decoded by [`decode_body_sharing`] when it is small enough,
/// else a copy, as `Bytes` itself decodes.
pub(crate) fn payload<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    struct Payload;
    impl<'de> serde::de::Visitor<'de> for Payload {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(SHARED_BODY.with_borrow(|shared| match shared {
                Some((body, up_to)) if v.len() <= *up_to && within(body, v) => body.slice_ref(v),
                _ => Bytes::copy_from_slice(v),
            }))
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(Bytes::from(bytes))
        }
    }
    d.deserialize_bytes(Payload)
}

/// A borrowed payload's encoding: one byte string, as `Bytes` encodes (serde would
/// otherwise encode a slice element by element).
pub(crate) fn byte_string<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Whether `part` lies within `whole`'s bytes.
fn within(whole: &[u8], part: &[u8]) -> bool {
    let range = whole.as_ptr_range();
    let part = part.as_ptr_range();
    range.start <= part.start && part.end <= range.end
}

thread_local! {
    /// The body of the frame [`decode_body_sharing`] is decoding on this thread, and the
    /// largest payload it shares.
    static SHARED_BODY: std::cell::RefCell<Option<(Bytes, usize)>> =
        const { std::cell::RefCell::new(None) };

    /// Why the last mailbox name decoded on this thread was refused: the format's own
    /// error type drops the reason, and decoding is synchronous, so it is passed here.
    static LAST_NAME_ERROR: std::cell::Cell<Option<NameError>> =
        const { std::cell::Cell::new(None) };
}

pub(crate) fn note_name_error(error: NameError) {
    LAST_NAME_ERROR.set(Some(error));
}

impl CodecError {
    /// The error code a request that failed so is answered with.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            CodecError::InvalidName(_) => crate::ErrorCode::InvalidName,
            _ => crate::ErrorCode::BadRequest,
        }
    }
}

/// Encodes a typed payload (the typed client API).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(|source| CodecError::Encode {
        what: "payload",
        source,
    })
}

/// Decodes a typed payload (the typed client API).
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Decode {
        what: "payload",
        source,
    })
}

/// The media type of a JSON payload, as a message's `content_type` names it.
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// Whether a message's `content_type` says its payload is JSON: [`JSON_MEDIA_TYPE`] in any
/// case (media types are case-insensitive), with or without parameters such as a typed
/// message's `; type=…` or a `; charset=…`.
pub fn is_json_content_type(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default();
    media_type.trim().eq_ignore_ascii_case(JSON_MEDIA_TYPE)
}

/// Encodes a typed payload as compact JSON (UTF-8, one line), for a message whose readers
/// may not share the sender's Rust types.
pub fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_vec(value).map_err(|source| CodecError::EncodeJson {
        what: "payload",
        source,
    })
}

/// Decodes a typed payload written as JSON. The whole payload must be one value
/// (whitespace around it aside), as [`decode_value`] refuses trailing bytes.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|source| CodecError::DecodeJson {
        what: "payload",
        source,
    })
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Hello => "hello",
        FrameKind::Welcome => "welcome",
        FrameKind::Request => "request",
        FrameKind::Response => "response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// A send of `payload` to `q`, as one frame.
    fn send_frame(payload: &[u8]) -> Frame {
        let request = Request::SendBatch(SendBatchRequest {
            mailbox: "q".parse().unwrap(),
            wait: Wait::NoWait,
            messages: vec![BatchMessage {
                mtype: 1,
                headers: HeaderBox::default(),
                ttl_ms: None,
                delay_ms: None,
                payload: Bytes::copy_from_slice(payload),
            }],
        });
        let mut buf = BytesMut::new();
        encode_frame(FrameKind::Request, 1, &request, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        FrameDecoder::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
    }

    fn batch_payload(request: Request) -> Bytes {
        match request {
            Request::SendBatch(mut batch) => batch.messages.remove(0).payload,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_small_payload_is_shared_with_its_frame_only_when_asked() {
        let frame = send_frame(&[7; 100]);
        let shared: Request = decode_body_sharing(&frame, FrameKind::Request, 100).unwrap();
        let shared = batch_payload(shared);
        assert_eq!(&shared[..], &[7; 100]);
        assert!(within(&frame.body, &shared), "a slice of the frame");
        // Larger than asked: a copy.
        let copied: Request = decode_body_sharing(&frame, FrameKind::Request, 99).unwrap();
        let copied = batch_payload(copied);
        assert_eq!(&copied[..], &[7; 100]);
        assert!(!within(&frame.body, &copied));
        // The plain decoding copies, also once a sharing one is done on this thread.
        let plain = batch_payload(decode_body(&frame, FrameKind::Request).unwrap());
        assert_eq!(&plain[..], &[7; 100]);
        assert!(!within(&frame.body, &plain));
    }

    fn round_trip<T: Serialize + DeserializeOwned>(kind: FrameKind, value: &T) -> T {
        let mut buf = BytesMut::new();
        encode_frame(kind, 42, value, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        let frame = FrameDecoder::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(frame.request_id, 42);
        assert!(buf.is_empty());
        decode_body(&frame, kind).unwrap()
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let req = Request::Send(SendRequest {
            mailbox: MailboxName::new("jobs").unwrap(),
            mtype: 3,
            headers: Headers {
                reply_to: Some(MailboxName::new("replies").unwrap()),
                correlation_id: Some(9),
                content_type: Some("text/plain".into()),
                topic: Some(crate::Topic::new("orders.eu").unwrap()),
            }
            .into(),
            wait: Wait::TimeoutMs(1500),
            ttl_ms: Some(60_000),
            delay_ms: None,
            payload: Bytes::from_static(&[0, 1, 2, 255]),
        });
        assert_eq!(round_trip(FrameKind::Request, &req), req);
        let resp = Response::Error(ErrorReply::new(ErrorCode::WouldBlock, "empty"));
        assert_eq!(round_trip(FrameKind::Response, &resp), resp);
    }

    /// The worked example of docs/protocol.md, byte for byte: the encoding is a contract
    /// with clients in other languages.
    #[test]
    fn protocol_doc_example_is_exact() {
        let req = Request::Send(SendRequest {
            mailbox: MailboxName::new("jobs").unwrap(),
            mtype: 1,
            headers: HeaderBox::default(),
            wait: Wait::Forever,
            ttl_ms: None,
            delay_ms: None,
            payload: Bytes::from_static(b"hi"),
        });
        let mut buf = BytesMut::new();
        encode_frame(FrameKind::Request, 1, &req, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        let expected: &[u8] = &[
            0x11, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, // header
            0x01, 0x04, b'j', b'o', b'b', b's', 0x02, 0, 0, 0, 0, 0, 0, 0, 0x02, b'h', b'i',
        ];
        assert_eq!(&buf[..], expected);
        let mut buf = BytesMut::new();
        encode_frame(
            FrameKind::Response,
            1,
            &Response::Sent { id: 1 },
            1024,
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            &buf[..],
            &[2, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1]
        );
    }

    #[test]
    fn payload_is_encoded_as_one_byte_string() {
        let payload = Bytes::from(vec![0xAB; 4096]);
        let encoded = encode_value(&payload).unwrap();
        // A varint length (2 bytes for 4096) followed by the bytes themselves.
        assert_eq!(encoded.len(), 4096 + 2);
    }

    #[test]
    fn json_values_round_trip_and_errors_say_json() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Job {
            id: u32,
            name: String,
        }
        let job = Job {
            id: 7,
            name: "build".into(),
        };
        let bytes = encode_json(&job).unwrap();
        assert_eq!(bytes, br#"{"id":7,"name":"build"}"#);
        assert_eq!(decode_json::<Job>(&bytes).unwrap(), job);
        assert_eq!(
            decode_json::<Job>(b" {\"name\":\"build\",\"id\":7}\n").unwrap(),
            job
        );

        let err = decode_json::<Job>(b"{\"id\":7}").unwrap_err();
        assert!(matches!(err, CodecError::DecodeJson { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with("cannot decode payload as JSON: "),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
        assert!(matches!(
            decode_json::<Job>(br#"{"id":7,"name":"build"} trailing"#),
            Err(CodecError::DecodeJson { .. })
        ));
        for json in [
            "application/json",
            "application/json; type=a.B",
            " Application/JSON ;charset=utf-8",
        ] {
            assert!(is_json_content_type(json), "{json}");
        }
        for other in ["application/jsonl", "text/plain", "a.B", "", "json"] {
            assert!(!is_json_content_type(other), "{other}");
        }

        // JSON object keys are strings; a map with other keys cannot be written.
        let map = std::collections::BTreeMap::from([((1, 2), 3)]);
        let err = encode_json(&map).unwrap_err();
        assert!(matches!(err, CodecError::EncodeJson { .. }), "{err}");
    }

    #[test]
    fn oversized_body_is_refused_and_buffer_untouched() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let big = Bytes::from(vec![1u8; 100]);
        let err = encode_frame(FrameKind::Request, 1, &big, 50, &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn wrong_kind_is_reported() {
        let mut buf = BytesMut::new();
        encode_frame(FrameKind::Response, 1, &Response::Ok, 1024, &mut buf).unwrap();
        let frame = FrameDecoder::new(1024).decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            decode_body::<Request>(&frame, FrameKind::Request),
            Err(CodecError::UnexpectedKind { .. })
        ));
    }

    proptest! {
        /// Any body bytes given to the request decoder give a value or an error, never a
        /// panic.
        #[test]
        fn arbitrary_request_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = Frame { kind: FrameKind::Request, flags: 0, request_id: 1, body: Bytes::from(body) };
            let _ = decode_body::<Request>(&frame, FrameKind::Request);
            let _ = decode_body::<Hello>(&Frame { kind: FrameKind::Hello, ..frame }, FrameKind::Hello);
        }
    }
}
