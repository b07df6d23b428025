//! Bytes ↔ frames on a connection: the proto crate's [`FrameDecoder`] as a tokio-util
//! codec for reading, and batched encoding of replies for writing.
//!
//! The replies waiting for a connection are bounded twice: in number, by the channel to
//! the writer (when it is full the peer stops reading requests — back-pressure), and in
//! bytes, by [`Replies`] (past `max_pending_output` the client is not reading and is cut
//! off, so a reader that stalls cannot make the daemon hold messages for it without end).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use ipc_proto::{
    ErrorCode, ErrorReply, Frame, FrameDecoder, FrameError, FrameKind, Response, Welcome, codec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

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
#[allow(
    clippy::large_enum_variant,
    reason = "replies are the common case; boxing them would allocate per reply"
)]
pub enum Outgoing {
    Welcome(Welcome),
    Reply(u64, Response),
}

impl Outgoing {
    /// Bytes this reply holds in memory until written, near enough: its payload, plus
    /// a fixed allowance for the rest.
    fn cost(&self) -> u64 {
        const OVERHEAD: u64 = 128;
        match self {
            Outgoing::Reply(_, Response::Message(m)) => OVERHEAD + m.payload.len() as u64,
            _ => OVERHEAD,
        }
    }
}

/// Why a reply could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the connection's writer has stopped")]
    WriterGone,
    #[error(
        "client is not reading its replies: {pending} bytes would be waiting for it, \
         above max_pending_output of {limit}"
    )]
    NotReading { pending: u64, limit: u64 },
}

/// The sending side of a connection's reply queue. Clones share the byte count; the
/// first send that would pass the bound cuts the connection off for all of them.
#[derive(Debug, Clone)]
pub struct Replies {
    tx: mpsc::Sender<Outgoing>,
    pending: Arc<AtomicU64>,
    limit: u64,
    cut: CancellationToken,
}

impl Replies {
    /// Queues `out` for the writer, waiting while the queue is full. One reply is always
    /// accepted when nothing else is pending, so a message as large as the frame limit
    /// can be delivered whatever the bound.
    pub async fn send(&self, out: Outgoing) -> Result<(), QueueError> {
        let cost = out.cost();
        let before = self.pending.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > self.limit {
            self.pending.fetch_sub(cost, Ordering::AcqRel);
            self.cut.cancel();
            return Err(QueueError::NotReading {
                pending: before + cost,
                limit: self.limit,
            });
        }
        if self.tx.send(out).await.is_err() {
            self.pending.fetch_sub(cost, Ordering::AcqRel);
            return Err(QueueError::WriterGone);
        }
        Ok(())
    }

    /// Completes once the connection has been cut off for not reading.
    pub async fn cut_off(&self) {
        self.cut.cancelled().await
    }
}

/// A reply queue of `capacity` replies and `limit` bytes, and the writer task's end.
pub fn reply_queue(capacity: usize, limit: u64) -> (Replies, Writer) {
    let (tx, rx) = mpsc::channel(capacity);
    let pending = Arc::new(AtomicU64::new(0));
    let cut = CancellationToken::new();
    let replies = Replies {
        tx,
        pending: pending.clone(),
        limit,
        cut: cut.clone(),
    };
    let writer = Writer { rx, pending, cut };
    (replies, writer)
}

/// The writer task's end of a reply queue.
#[derive(Debug)]
pub struct Writer {
    rx: mpsc::Receiver<Outgoing>,
    pending: Arc<AtomicU64>,
    cut: CancellationToken,
}

/// Writes every queued frame, batching those already waiting into one write, until the
/// sending side is dropped; then flushes and shuts the socket's write side. Stops at once
/// if the connection is cut off: a client that is not reading will not read the rest.
pub async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: Writer,
    max_frame: u32,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        let first = tokio::select! {
            () = queue.cut.cancelled() => return Ok(()),
            first = queue.rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        // Encoding drops each reply, and with it any charge its message still held.
        let mut cost = first.cost();
        encode(first, max_frame, &mut buf);
        while buf.len() < WRITE_BATCH {
            match queue.rx.try_recv() {
                Ok(next) => {
                    cost += next.cost();
                    encode(next, max_frame, &mut buf);
                }
                Err(_) => break,
            }
        }
        tokio::select! {
            () = queue.cut.cancelled() => return Ok(()),
            written = write.write_all(&buf) => written?,
        }
        queue.pending.fetch_sub(cost, Ordering::AcqRel);
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH {
            // A large message grew it: do not keep that much per idle connection.
            buf = BytesMut::with_capacity(WRITE_BATCH);
        }
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
