//! Bytes ↔ frames on a connection: the proto crate's [`FrameDecoder`] as a tokio-util
//! codec for reading, and batched encoding of replies for writing.

use std::io;

use bytes::BytesMut;
use ipc_proto::{
    ErrorCode, ErrorReply, Frame, FrameDecoder, FrameError, FrameKind, Response, Welcome, codec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// Replies are gathered up to this size before one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

/// [`FrameDecoder`] as a tokio-util decoder.
#[derive(Debug)]
pub struct FrameCodec(pub FrameDecoder);

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ReadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ReadError> {
        Ok(self.0.decode(src)?)
    }
}

/// What the writer task puts on the socket.
#[derive(Debug)]
pub enum Outgoing {
    Welcome(Welcome),
    Reply(u64, Response),
}

/// Writes every queued frame, batching those already waiting into one write, until the
/// sending side is dropped; then flushes and shuts the socket's write side.
pub async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    max_frame: u32,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(first) = queue.recv().await {
        encode(first, max_frame, &mut buf);
        while buf.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(next) => encode(next, max_frame, &mut buf),
                Err(_) => break,
            }
        }
        write.write_all(&buf).await?;
        buf.clear();
    }
    write.shutdown().await
}

fn encode(out: Outgoing, max_frame: u32, buf: &mut BytesMut) {
    let result = match &out {
        Outgoing::Welcome(w) => codec::encode_frame(FrameKind::Welcome, 0, w, max_frame, buf),
        Outgoing::Reply(id, r) => codec::encode_frame(FrameKind::Response, *id, r, max_frame, buf),
    };
    if let (Err(e), Outgoing::Reply(id, _)) = (result, &out) {
        // The reply itself cannot be sent (too large): say so instead.
        let error = Response::Error(ErrorReply::new(
            ErrorCode::Internal,
            format!("reply could not be encoded: {e}"),
        ));
        codec::encode_frame(FrameKind::Response, *id, &error, max_frame, buf)
            .expect("a short error reply always encodes");
    }
}
