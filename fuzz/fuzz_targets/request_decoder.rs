//! Fuzz target `request_decoder`: arbitrary bytes as the body of every frame kind, decoded
//! as the daemon decodes them (`Hello`, `Request`) and as the clients do (`Welcome`,
//! `Response`), through `codec::decode_body`, `codec::decode_body_sharing` and
//! `codec::decode_value`. It checks that decoding never panics (nor does describing its
//! error, which the daemon sends back), that the entry points agree, that a body is refused under any other kind, and that
//! every value that decodes re-encodes into a frame that decodes to the same value.

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
