//! The frame layer: a fixed 16-byte little-endian header followed by a body.
//!
//! ```text
//! offset  size  field
//!      0     4  body length in bytes (u32 LE), header excluded
//!      4     2  kind (u16 LE): 1 Hello, 2 Welcome, 3 Request, 4 Response
//!      6     2  flags (u16 LE): FLAG_FD, FLAG_TAKES_FD; other bits must be 0
//!      8     8  request id (u64 LE); 0 for the handshake and connection-level errors
//! ```
//!
//! The decoder checks the length against its maximum *before* reserving any space for the
//! body, so a hostile length costs nothing. An incomplete frame is not an error: the
//! decoder answers `Ok(None)` and waits for more bytes.

use bytes::{Buf, Bytes, BytesMut};

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 16;

/// Flag: the frame came with one file descriptor (`SCM_RIGHTS`), sent with its first
/// byte: a sealed memfd holding the payload of the `Send` (or of the `Message` reply)
/// whose `payload` field is then empty.
pub const FLAG_FD: u16 = 1 << 0;
/// Flag, on a request: the reply may carry its payload as a descriptor ([`FLAG_FD`]).
pub const FLAG_TAKES_FD: u16 = 1 << 1;
/// Every flag this version knows; a frame with another is refused.
const KNOWN_FLAGS: u16 = FLAG_FD | FLAG_TAKES_FD;

/// What a frame's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    /// Client → server, first frame: [`crate::Hello`].
    Hello = 1,
    /// Server → client, answer to `Hello`: [`crate::Welcome`].
    Welcome = 2,
    /// Client → server: [`crate::Request`].
    Request = 3,
    /// Server → client: [`crate::Response`] to the request with the same id.
    Response = 4,
}

impl FrameKind {
    pub fn from_u16(n: u16) -> Option<Self> {
        Some(match n {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Request,
            4 => FrameKind::Response,
            _ => return None,
        })
    }
}

/// One decoded frame; the body is still in the wire format (see [`crate::codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// [`FLAG_FD`], [`FLAG_TAKES_FD`].
    pub flags: u16,
    pub request_id: u64,
    pub body: Bytes,
}

/// A framing violation. Framing cannot be resynchronised after one, so the receiver
/// reports it and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("reserved frame flags are set ({0:#06x})")]
    BadFlags(u16),
}

/// The fixed header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub kind: FrameKind,
    pub flags: u16,
    pub request_id: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.body_len.to_le_bytes());
        out[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
    }

    /// Parses and checks a header; `max_body` is the largest body accepted.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<Self, FrameError> {
        let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let kind = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
        let flags = u16::from_le_bytes(bytes[6..8].try_into().expect("2 bytes"));
        let request_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if body_len > max_body {
            return Err(FrameError::TooLarge {
                len: body_len.into(),
                max: max_body,
            });
        }
        let kind = FrameKind::from_u16(kind).ok_or(FrameError::UnknownKind(kind))?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::BadFlags(flags));
        }
        Ok(Header {
            body_len,
            kind,
            flags,
            request_id,
        })
    }
}

/// Splits a byte stream into frames; used by the daemon (through a tokio-util codec)
/// and by the blocking client alike.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_body: u32,
}

impl FrameDecoder {
    /// A decoder that refuses bodies longer than `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        Self { max_body }
    }

    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Changes the limit, e.g. once the handshake has negotiated one.
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body;
    }

    /// Whether `buf` starts with a whole frame, so that [`decode`](Self::decode) would
    /// not need more bytes (it may still refuse the frame).
    pub fn holds_frame(buf: &[u8]) -> bool {
        buf.first_chunk::<4>().is_some_and(|len| {
            (u32::from_le_bytes(*len) as usize).saturating_add(HEADER_LEN) <= buf.len()
        })
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. Space is reserved only for a body whose length was accepted.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(head, self.max_body)?;
        let total = HEADER_LEN + header.body_len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(header.body_len as usize).freeze();
        Ok(Some(Frame {
            kind: header.kind,
            flags: header.flags,
            request_id: header.request_id,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(kind: u16, flags: u16, id: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn holds_frame_says_whether_decode_has_a_whole_frame() {
        let mut wire = frame_bytes(3, 0, 7, b"hello");
        wire.extend(frame_bytes(3, 0, 8, b""));
        let first = HEADER_LEN + 5;
        for split in 0..=wire.len() {
            let holds = FrameDecoder::holds_frame(&wire[..split]);
            assert_eq!(holds, split >= first, "split at {split}");
            let mut buf = BytesMut::from(&wire[..split]);
            let decoded = FrameDecoder::new(1024).decode(&mut buf).unwrap();
            assert_eq!(decoded.is_some(), holds, "split at {split}");
        }
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut wire = frame_bytes(3, 0, 7, b"hello");
        wire.extend(frame_bytes(4, 0, 8, b""));
        for split in 0..=wire.len() {
            let mut dec = FrameDecoder::new(1024);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut frames = Vec::new();
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].kind, FrameKind::Request);
            assert_eq!(frames[0].request_id, 7);
            assert_eq!(&frames[0].body[..], b"hello");
            assert_eq!(frames[1].kind, FrameKind::Response);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&frame_bytes(3, 0, 1, b"")[..]);
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let cap_before = buf.capacity();
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: u32::MAX.into(),
                max: 1024
            })
        );
        assert_eq!(buf.capacity(), cap_before, "no space was reserved");
    }

    #[test]
    fn unknown_kind_and_flags_are_errors() {
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&frame_bytes(99, 0, 1, b"")[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::UnknownKind(99)));
        let mut buf = BytesMut::from(&frame_bytes(3, 4, 1, b"")[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::BadFlags(4)));
        let mut buf = BytesMut::from(&frame_bytes(3, FLAG_FD | FLAG_TAKES_FD, 1, b"")[..]);
        let frame = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.flags, FLAG_FD | FLAG_TAKES_FD);
    }

    proptest! {
        /// Any bytes, fed in any chunking, never make the decoder panic, and it never
        /// holds more than one accepted frame's worth of reserved space.
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            chunks in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let mut dec = FrameDecoder::new(2048);
            let mut buf = BytesMut::new();
            let mut rest = &data[..];
            let mut chunk_iter = chunks.iter().cycle();
            'feed: while !rest.is_empty() {
                let n = (*chunk_iter.next().unwrap()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(frame)) => prop_assert!(frame.body.len() <= 2048),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                prop_assert!(buf.capacity() <= 2048 + HEADER_LEN + 4096);
            }
        }

        /// Whole valid frames survive any chunking intact.
        #[test]
        fn valid_frames_round_trip(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for (i, b) in bodies.iter().enumerate() {
                wire.extend(frame_bytes(3, 0, i as u64, b));
            }
            let mut dec = FrameDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), bodies.len());
            for (i, (f, b)) in got.iter().zip(&bodies).enumerate() {
                prop_assert_eq!(f.request_id, i as u64);
                prop_assert_eq!(&f.body[..], &b[..]);
            }
        }
    }
}
