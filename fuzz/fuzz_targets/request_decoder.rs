//! Fuzz target `request_decoder`: arbitrary bytes as the body of every frame kind, decoded
//! as the daemon decodes them (`Hello`, `Request`) and as the clients do (`Welcome`,
//! `Response`), through `codec::decode_body`, `codec::decode_body_sharing`,
//! `codec::decode_value` and the hand-laid `codec::decode_request` and
//! `codec::decode_response`. It checks that decoding never panics (nor does describing
//! its error, which the daemon sends back), that the entry points agree (the hand-laid
//! ones with serde's, in what they decode, how they refuse and how they encode again),
//! that a body is refused under any other kind, and that every value that decodes
//! re-encodes into a frame that decodes to the same value.

#![no_main]

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use ipc_proto::codec::{self, CodecError};
use ipc_proto::{
    DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameKind, Hello, Request, Response, Welcome,
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

const KINDS: [FrameKind; 4] = [
    FrameKind::Hello,
    FrameKind::Welcome,
    FrameKind::Request,
    FrameKind::Response,
];

fuzz_target!(|body: &[u8]| {
    let body = Bytes::copy_from_slice(body);
    check::<Hello>(FrameKind::Hello, &body);
    check::<Request>(FrameKind::Request, &body);
    check::<Welcome>(FrameKind::Welcome, &body);
    check::<Response>(FrameKind::Response, &body);
    hand_laid(&body);
});

fn check<T>(kind: FrameKind, body: &Bytes)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let frame = Frame {
        kind,
        flags: 0,
        request_id: 1,
        body: body.clone(),
    };
    for other in KINDS.into_iter().filter(|&k| k != kind) {
        let result = codec::decode_body::<T>(&frame, other);
        assert!(
            matches!(result, Err(CodecError::UnexpectedKind { .. })),
            "a {kind:?} frame was accepted as {other:?}"
        );
    }

    let as_value = codec::decode_value::<T>(body);
    let value: T = match codec::decode_body(&frame, kind) {
        Ok(value) => value,
        Err(error) => {
            // A frame's body is exactly one value; a typed payload may be followed by
            // bytes `decode_value` leaves alone.
            assert!(
                as_value.is_err() || matches!(error, CodecError::TrailingBytes { .. }),
                "decode_value accepted what decode_body refused: {error}"
            );
            // The daemon puts this text in its error reply.
            let _ = error.to_string();
            return;
        }
    };
    assert_eq!(
        as_value.as_ref().ok(),
        Some(&value),
        "the two decoders disagree"
    );
    // As the daemon decodes requests: small payloads as slices of the frame.
    let shared: T = codec::decode_body_sharing(&frame, kind, 1024)
        .expect("the sharing decoder takes what the copying one takes");
    assert_eq!(shared, value, "sharing payloads changed what decodes");

    // Back through a whole frame, as the other side would send it.
    let mut wire = BytesMut::new();
    codec::encode_frame(kind, 1, &value, DEFAULT_MAX_FRAME, &mut wire)
        .expect("a decoded value encodes");
    let again = FrameDecoder::new(DEFAULT_MAX_FRAME)
        .decode(&mut wire)
        .expect("an encoded frame is well formed")
        .expect("an encoded frame is whole");
    assert!(wire.is_empty(), "encode_frame wrote more than one frame");
    assert_eq!((again.kind, again.request_id), (kind, 1));
    let decoded: T = codec::decode_body(&again, kind).expect("a re-encoded value decodes");
    assert_eq!(decoded, value, "{kind:?} did not round-trip");

    // The canonical encoding is a fixed point.
    let encoded = codec::encode_value(&value).expect("a decoded value encodes");
    assert_eq!(&encoded[..], &again.body[..], "the two encoders disagree");
    let reencoded = codec::encode_value(&decoded).expect("a decoded value encodes");
    assert_eq!(encoded, reencoded, "re-encoding changed the bytes");
}

/// The hand-laid reading of the streamed bodies (`codec::decode_request`,
/// `codec::decode_response`) answers as serde does, or leaves the body to it; and what
/// decodes is laid out again by hand as serde lays it out.
fn hand_laid(body: &Bytes) {
    let frame = |kind| Frame {
        kind,
        flags: 0,
        request_id: 1,
        body: body.clone(),
    };
    agree::<Request>(
        FrameKind::Request,
        &frame(FrameKind::Request),
        |f| codec::decode_request(f.clone(), 1024),
        codec::encode_request,
    );
    agree::<Response>(
        FrameKind::Response,
        &frame(FrameKind::Response),
        codec::decode_response,
        codec::encode_response,
    );
}

type Encode<T> = fn(u64, &T, u32, &mut BytesMut) -> Result<(), CodecError>;

fn agree<T>(
    kind: FrameKind,
    frame: &Frame,
    by_hand: impl Fn(&Frame) -> Result<T, CodecError>,
    lay_out: Encode<T>,
) where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let by_serde = codec::decode_body_sharing::<T>(frame, kind, 1024);
    assert_eq!(
        by_hand(frame).map_err(|e| e.to_string()),
        by_serde.as_ref().map_err(|e| e.to_string()).cloned(),
        "the hand-laid reading of a {kind:?} disagrees with serde"
    );
    if let Ok(value) = by_serde {
        let (mut by_hand, mut laid) = (BytesMut::new(), BytesMut::new());
        lay_out(1, &value, DEFAULT_MAX_FRAME, &mut by_hand).expect("encodes");
        codec::encode_frame(kind, 1, &value, DEFAULT_MAX_FRAME, &mut laid).expect("encodes");
        assert_eq!(by_hand, laid, "the hand-laid {kind:?} encoding disagrees with serde");
    }
}
