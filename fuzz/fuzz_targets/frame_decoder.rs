//! Fuzz target `frame_decoder`: arbitrary bytes, fed in arbitrary chunks, to
//! `ipc_proto::FrameDecoder` with a small maximum body (as the daemon's connection reader
//! does through its tokio-util codec). It checks that the decoder never panics, that no
//! frame it yields is longer than the limit, that a refused frame reserves no space and
//! other reservations stay proportional to the bytes fed, and that the chunking never
//! changes which frames come out or which error ends the stream.

#![no_main]

use arbitrary::Unstructured;
use bytes::BytesMut;
use ipc_proto::{Frame, FrameDecoder, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// Upper bound of the decoder's limit: small, so that short inputs reach both sides of it.
const MAX_BODY_CEILING: u32 = 512;

/// Upper bound of one chunk, so that headers and bodies are often split.
const MAX_CHUNK: usize = 64;

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let (Ok(max_body), Ok(chunks)) = (
        u.int_in_range(0..=MAX_BODY_CEILING),
        u.arbitrary::<Vec<u8>>(),
    ) else {
        return;
    };
    let stream = u.take_rest();

    let whole = decode_in_chunks(stream, max_body, &[]);
    let chunked = decode_in_chunks(stream, max_body, &chunks);
    assert_eq!(whole, chunked, "the chunking changed the result");
});

/// Everything a decoder made of a stream: its frames, and the error that ended it.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    /// Bytes left in the buffer (an incomplete frame) when the stream ended cleanly.
    left: usize,
}

/// Feeds `stream` to a fresh decoder in pieces whose sizes cycle through `chunks` (all of
/// it at once when `chunks` is empty), decoding every frame after each piece.
fn decode_in_chunks(stream: &[u8], max_body: u32, chunks: &[u8]) -> Outcome {
    let mut decoder = FrameDecoder::new(max_body);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut sizes = chunks
        .iter()
        .map(|&c| usize::from(c) % MAX_CHUNK + 1)
        .cycle();
    while fed < stream.len() {
        let n = sizes.next().unwrap_or(stream.len()).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let capacity_before = buf.capacity();
            let decoded = match decoder.decode(&mut buf) {
                Ok(decoded) => decoded,
                Err(error) => {
                    assert_eq!(
                        buf.capacity(),
                        capacity_before,
                        "space was reserved for a refused frame"
                    );
                    return Outcome {
                        frames,
                        error: Some(error),
                        left: 0,
                    };
                }
            };
            // Growth by doubling is fine; growth driven by a header's length beyond
            // the limit is not.
            let bound = 2 * (fed + max_body as usize + HEADER_LEN);
            assert!(
                buf.capacity() <= bound,
                "{} bytes reserved after {fed} bytes fed with a limit of {max_body}",
                buf.capacity()
            );
            let Some(frame) = decoded else { break };
            assert!(
                frame.body.len() <= max_body as usize,
                "a frame of {} bytes passed a limit of {max_body}",
                frame.body.len()
            );
            frames.push(frame);
        }
    }
    Outcome {
        frames,
        error: None,
        left: buf.len(),
    }
}
