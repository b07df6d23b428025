//! Fuzz target `store_record`: arbitrary bytes through the durable store's record
//! decoder (`ipcd::fuzzing`), both as they come — a frame, checksum and all — and as a
//! body framed here with a correct checksum, so that every body reaches the field
//! decoder. It checks that nothing panics, that a record that decodes re-encodes to
//! exactly the bytes it came from (the format has one spelling per record), that its
//! body's own fields span exactly its framed length (what recovery relies on to step over
//! a damaged record), and that a refused frame never claims more bytes than it was given.

#![no_main]

use ipcd::fuzzing::{self, Framed, RECORD_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&max, input)) = input.split_first() else {
        return;
    };
    // A bound from tiny to unlimited, so both sides of `TooLong` are reached.
    let max_body = if max == 0xff {
        u32::MAX
    } else {
        u32::from(max) * 16
    };
    check_frame(input, max_body);

    // The same bytes as a body with a valid checksum.
    let mut framed = (input.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&crc32fast::hash(input).to_le_bytes());
    framed.extend_from_slice(input);
    check_frame(&framed, u32::MAX);
    let _ = fuzzing::body_shape(input);
});

/// Decodes the frame at the start of `bytes` and checks what came out.
fn check_frame(bytes: &[u8], max_body: u32) {
    let framed = fuzzing::frame(&bytes::Bytes::copy_from_slice(bytes));
    match fuzzing::decode(bytes, max_body) {
        Ok((record, used)) => {
            assert!(used <= bytes.len(), "used {used} of {} bytes", bytes.len());
            let again = fuzzing::encode(&record).expect("a decoded record encodes");
            assert_eq!(
                &again[..],
                &bytes[..used],
                "{record:?} re-encodes differently"
            );
            assert_eq!(
                fuzzing::body_shape(&bytes[RECORD_HEADER..used]),
                Some(used - RECORD_HEADER),
                "the fields of {record:?} do not span its body"
            );
            assert!(
                matches!(framed, Framed::Intact { used: u, .. } if u == used),
                "decode and frame disagree: {framed:?}"
            );
        }
        Err(_) => {
            if let Framed::Intact { used, .. } | Framed::Corrupt { used, .. } = framed {
                assert!(
                    used <= bytes.len(),
                    "a frame of {used} in {} bytes",
                    bytes.len()
                );
            }
        }
    }
}
