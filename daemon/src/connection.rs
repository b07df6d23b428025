//! Bytes ↔ frames on a connection: the proto crate's [`FrameDecoder`] as a tokio-util
//! codec for reading, and the queue of encoded replies with its batching writer.
//!
//! A reply is encoded when it is queued, so what it costs is exactly the bytes it holds
//! until written, whatever kind of reply it is (a message, a list of mailboxes, a status).
//! The replies waiting for a connection are bounded three ways: in number, by the channel
//! to the writer (when it is full the peer stops reading requests — back-pressure); in
//! bytes, by `max_pending_output` (past it the client is not reading and is cut off); and
//! as bytes the daemon holds for a uid: each waiting reply is a [`Charge`] of
//! `queued_bytes` to the uid of the connection that asked, given back once the reply is
//! written. A client that stalls can thus make the daemon hold no more for it than its
//! uid's quota allows, however many connections it opens, and `status` shows what it
//! holds.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes, BytesMut};
use ipc_proto::{
    ErrorCode, ErrorReply, FLAG_FD, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN,
    Message, Response, Welcome, codec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::mailbox::Memfd;
use crate::quota::{Charge, Resource, UidAccount};

/// Replies are gathered up to this size before one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Most replies gathered into one write: small ones are often a hundred bytes, and the
/// kernel takes at most `IOV_MAX` (1,024) pieces per write.
const WRITE_BATCH_FRAMES: usize = 256;

/// The most a message's fixed fields take encoded (each integer as a varint of at most
/// ten bytes, a payload's length among them), beyond its payload and header strings.
const MESSAGE_FIELDS_ROOM: usize = 128;

/// Unused capacity an encoded reply may keep. Past it the frame is copied into a buffer
/// of its own size, so the memory a waiting reply holds is what it is charged.
const MAX_SLACK: usize = 4 * 1024;

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

/// Descriptors received and not yet claimed by a frame flagged as carrying one; a client
/// that sends more without such frames is breaking the protocol.
const MAX_UNCLAIMED_FDS: usize = 8;

/// The read half of a connection, read with `recvmsg`: the bytes, and the descriptors
/// that came with them, kept in order for the frames flagged as carrying one
/// ([`ipc_proto::FLAG_FD`]).
#[derive(Debug)]
pub struct FdReader {
    half: tokio::net::unix::OwnedReadHalf,
    pub fds: VecDeque<std::os::fd::OwnedFd>,
}

impl FdReader {
    pub fn new(half: tokio::net::unix::OwnedReadHalf) -> Self {
        Self {
            half,
            fds: VecDeque::new(),
        }
    }
}

impl tokio::io::AsyncRead for FdReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::os::fd::AsFd;
        let this = self.get_mut();
        loop {
            std::task::ready!(this.half.as_ref().poll_read_ready(cx))?;
            let stream = this.half.as_ref();
            let fds = &mut this.fds;
            // SAFETY: the kernel only writes into the unfilled part, and only what it
            // reports as read is marked initialised below.
            let unfilled = unsafe {
                let unfilled = buf.unfilled_mut();
                std::slice::from_raw_parts_mut(unfilled.as_mut_ptr().cast::<u8>(), unfilled.len())
            };
            let read = stream.try_io(tokio::io::Interest::READABLE, || {
                ipc_proto::memfd::recv_with_fds(stream.as_fd(), unfilled, fds)
            });
            match read {
                Ok(n) => {
                    if this.fds.len() > MAX_UNCLAIMED_FDS {
                        return std::task::Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "descriptors were sent that no frame claims",
                        )));
                    }
                    // SAFETY: `n` bytes were written by the kernel above.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

/// What the peer queues for the writer.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "replies are the common case; boxing them would allocate per reply"
)]
pub enum Outgoing {
    Welcome(Welcome),
    Reply(u64, Response),
    /// A reply whose message's payload goes as the memfd it came in (its `payload` field
    /// empty), written with the frame's first byte.
    Carried(u64, Response, Arc<Memfd>),
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the connection's writer has stopped")]
    WriterGone,
    #[error(
        "client is not reading its replies: {pending} bytes would be waiting for it, \
         above max_pending_output of {limit}"
    )]
    NotReading { pending: u64, limit: u64 },
    #[error(
        "client is not reading its replies: uid {uid} holds {held} bytes of replies and \
         messages, and a reply of {cost} more would pass its queued_bytes quota of {limit}"
    )]
    OverQuota {
        uid: u32,
        held: u64,
        cost: u64,
        limit: u64,
    },
}

/// Who pays for a connection's replies while they wait to be written: the uid at the
/// other end, within its `queued_bytes` quota as the configuration in force sets it.
#[derive(Debug, Clone)]
pub struct Payer {
    pub account: Arc<UidAccount>,
    /// Where the quota in force is read, so a reload applies to the next reply.
    pub broker: Arc<Broker>,
}

impl Payer {
    /// The uid's `queued_bytes` quota, and the replies a connection may have waiting
    /// past it (`reply_allowance`).
    fn limits(&self) -> (u64, u64) {
        let config = self.broker.config();
        let quota = config.quota_for(self.account.uid());
        (Resource::QueuedBytes.limit(&quota), config.reply_allowance)
    }
}

/// One encoded reply waiting for the writer.
#[derive(Debug)]
pub struct Queued {
    /// The bytes still to be written; the front is consumed as the socket takes it.
    frame: Bytes,
    /// The whole frame's length: what it added to the connection's pending count.
    cost: u64,
    /// The same bytes charged to the uid that asked, given back when this is dropped
    /// (thrown away with the connection) or once the socket has it (see `write_batch`).
    charge: Option<Charge>,
    /// The memfd to send with the frame's first byte, until it is sent.
    memfd: Option<Arc<Memfd>>,
}

/// What a connection's reply queue and its writer share.
#[derive(Debug)]
struct Shared {
    /// Bytes queued and not yet written.
    pending: AtomicU64,
    /// `max_pending_output`.
    limit: u64,
    /// Cancelled when the client is cut off for not reading.
    cut: CancellationToken,
    /// Why it was cut off: the first reason wins.
    reason: OnceLock<QueueError>,
    payer: Payer,
    /// Largest frame body the writer may send.
    max_frame: u32,
}

/// The sending side of a connection's reply queue. Clones share the byte count; the
/// first send that would pass a bound cuts the connection off for all of them.
#[derive(Debug, Clone)]
pub struct Replies {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl Replies {
    /// Encodes `out` and queues it for the writer, waiting while the queue is full.
    ///
    /// Past the uid's `queued_bytes` quota a reply is still accepted, charged all the
    /// same, while this connection has less than `reply_allowance` waiting: a client that
    /// reads is not cut off because its uid's quota is taken by queued messages, and one
    /// reply of any size always goes, so a message as large as the frame limit can be
    /// delivered whatever the bounds. Past `max_pending_output`, or past the quota with
    /// the allowance used up, the client is not reading and is cut off.
    pub async fn send(&self, out: Outgoing) -> Result<(), QueueError> {
        let queued = self.prepare(out)?;
        self.push(queued).await
    }

    /// The first half of [`Self::send`]: encodes `out` and charges it, as pending output
    /// of this connection and to the uid, without waiting.
    pub fn prepare(&self, out: Outgoing) -> Result<Queued, QueueError> {
        let memfd = match &out {
            Outgoing::Carried(_, _, memfd) => Some(memfd.clone()),
            _ => None,
        };
        let frame = encode(out, self.shared.max_frame);
        // Sent only with a frame flagged for it (not with an error put in its place).
        let flags = u16::from_le_bytes([frame[6], frame[7]]);
        let memfd = memfd.filter(|_| flags & FLAG_FD != 0);
        // A memfd the reply carries is held until the reply is written: it costs its size.
        let cost = frame.len() as u64 + memfd.as_ref().map_or(0, |m| m.len);
        let shared = &self.shared;
        let before = shared.pending.fetch_add(cost, Ordering::AcqRel);
        let charge = match self.admit(before, cost) {
            Ok(charge) => charge,
            Err(e) => {
                shared.pending.fetch_sub(cost, Ordering::AcqRel);
                let _ = shared.reason.set(e.clone());
                shared.cut.cancel();
                return Err(e);
            }
        };
        Ok(Queued {
            frame,
            cost,
            charge: Some(charge),
            memfd,
        })
    }

    /// The second half of [`Self::send`]: hands a prepared reply to the writer, waiting
    /// while the queue is full.
    pub async fn push(&self, queued: Queued) -> Result<(), QueueError> {
        let cost = queued.cost;
        // On failure the reply comes back inside the error and is dropped, and with it
        // its charge.
        if self.tx.send(queued).await.is_err() {
            self.shared.pending.fetch_sub(cost, Ordering::AcqRel);
            return Err(QueueError::WriterGone);
        }
        Ok(())
    }

    /// Charges a reply of `cost` bytes to the connection's uid, `before` bytes being
    /// queued on this connection already.
    fn admit(&self, before: u64, cost: u64) -> Result<Charge, QueueError> {
        let shared = &self.shared;
        if before > 0 && before.saturating_add(cost) > shared.limit {
            return Err(QueueError::NotReading {
                pending: before + cost,
                limit: shared.limit,
            });
        }
        let account = &shared.payer.account;
        let (limit, allowance) = shared.payer.limits();
        match account.try_charge(Resource::QueuedBytes, cost, limit) {
            Ok(charge) => Ok(charge),
            Err(_) if before == 0 || before < allowance => {
                Ok(account.force(Resource::QueuedBytes, cost))
            }
            Err(held) => Err(QueueError::OverQuota {
                uid: account.uid(),
                held,
                cost,
                limit,
            }),
        }
    }

    /// Completes once the connection has been cut off for not reading, with the reason.
    pub async fn cut_off(&self) -> QueueError {
        self.shared.cut.cancelled().await;
        self.shared
            .reason
            .get()
            .cloned()
            .expect("the reason is set before the connection is cut off")
    }
}

/// A reply queue of `capacity` replies and `limit` bytes, charged to `payer`, and the
/// writer task's end. Frames are encoded with bodies of at most `max_frame` bytes.
pub fn reply_queue(capacity: usize, limit: u64, max_frame: u32, payer: Payer) -> (Replies, Writer) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        pending: AtomicU64::new(0),
        limit,
        cut: CancellationToken::new(),
        reason: OnceLock::new(),
        payer,
        max_frame,
    });
    let replies = Replies {
        tx,
        shared: shared.clone(),
    };
    let writer = Writer { rx, shared };
    (replies, writer)
}

/// The writer task's end of a reply queue.
#[derive(Debug)]
pub struct Writer {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
}

/// Writes every queued frame, gathering those already waiting into one write, until the
/// sending side is dropped; then shuts the socket's write side. Stops at once if the
/// connection is cut off: a client that is not reading will not read the rest.
pub async fn write_loop(mut write: OwnedWriteHalf, mut queue: Writer) -> io::Result<()> {
    let mut batch = VecDeque::with_capacity(WRITE_BATCH_FRAMES);
    let shared = queue.shared.clone();
    let cut = shared.cut.cancelled();
    tokio::pin!(cut);
    loop {
        let first = tokio::select! {
            () = &mut cut => return Ok(()),
            first = queue.rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        let mut size = first.frame.len();
        batch.push_back(first);
        while size < WRITE_BATCH && batch.len() < WRITE_BATCH_FRAMES {
            match queue.rx.try_recv() {
                Ok(next) => {
                    size += next.frame.len();
                    batch.push_back(next);
                }
                Err(_) => break,
            }
        }
        tokio::select! {
            () = &mut cut => return Ok(()),
            written = write_batch(&mut write, &mut batch, &shared) => written?,
        }
    }
    write.shutdown().await
}

/// Writes `batch` whole with vectored writes, dropping each reply as soon as the socket
/// has taken all of it.
///
/// A reply the socket takes is readable by the client at once, so its charge is given
/// back just before the write: a client that has read a reply never finds it still
/// charged to its uid. What the socket did not take is charged again at once, so a
/// client that does not read still pays for all of it.
async fn write_batch(
    write: &mut OwnedWriteHalf,
    batch: &mut VecDeque<Queued>,
    shared: &Shared,
) -> io::Result<()> {
    while !batch.is_empty() {
        write.writable().await?;
        for queued in batch.iter_mut() {
            queued.charge = None;
        }
        // A frame with a memfd goes in a write of its own, the memfd with its first byte;
        // the frames before it go together as usual.
        let carried = batch.iter().position(|q| q.memfd.is_some());
        let written = match carried {
            Some(0) => {
                let front = batch.front_mut().expect("not empty");
                let memfd = front.memfd.clone().expect("checked");
                let stream = write.as_ref();
                let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                    use std::os::fd::AsFd;
                    ipc_proto::memfd::send_with_fd(stream.as_fd(), &front.frame, memfd.fd.as_fd())
                });
                if sent.is_ok() {
                    front.memfd = None;
                }
                sent
            }
            _ => {
                let before = carried.unwrap_or(batch.len());
                let slices: Vec<IoSlice<'_>> = batch
                    .iter()
                    .take(before)
                    .map(|q| IoSlice::new(&q.frame))
                    .collect();
                write.try_write_vectored(&slices)
            }
        };
        let written = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            // Readiness can be spurious: nothing was written.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        consume(batch, written, &shared.pending);
        let account = &shared.payer.account;
        for queued in batch.iter_mut() {
            queued.charge = Some(account.force(Resource::QueuedBytes, queued.cost));
        }
    }
    Ok(())
}

/// Takes `n` written bytes off the front of `batch`.
fn consume(batch: &mut VecDeque<Queued>, mut n: usize, pending: &AtomicU64) {
    while n > 0 {
        let Some(front) = batch.front_mut() else {
            return;
        };
        if n < front.frame.len() {
            front.frame.advance(n);
            return;
        }
        n -= front.frame.len();
        if let Some(done) = batch.pop_front() {
            pending.fetch_sub(done.cost, Ordering::AcqRel);
        }
    }
}

/// The most `m` takes encoded: so that encoding a reply allocates once.
fn message_room(m: &Message) -> usize {
    let names = m.headers.reply_to.as_ref().map_or(0, |n| n.as_str().len());
    let content_type = m.headers.content_type.as_ref().map_or(0, String::len);
    m.payload.len() + names + content_type + MESSAGE_FIELDS_ROOM
}

/// Encodes `out` as one frame. A reply too large to be encoded is replaced by an error
/// reply that says so.
fn encode(out: Outgoing, max_frame: u32) -> Bytes {
    // Room for each message's fields, not a generous round figure: the frame would keep
    // far more memory than it holds, and a buffer past 1 KiB costs the allocator a
    // consolidation of its small free lists each time.
    let room = match &out {
        Outgoing::Reply(_, Response::Message(m)) => message_room(m),
        Outgoing::Reply(_, Response::Messages(ms)) => ms.iter().map(message_room).sum(),
        _ => 256,
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + room);
    let result = match &out {
        Outgoing::Welcome(w) => codec::encode_frame(FrameKind::Welcome, 0, w, max_frame, &mut buf),
        Outgoing::Reply(id, r) | Outgoing::Carried(id, r, _) => {
            codec::encode_frame(FrameKind::Response, *id, r, max_frame, &mut buf)
        }
    };
    if let (Err(e), Outgoing::Reply(id, _) | Outgoing::Carried(id, _, _)) = (result, &out) {
        let error = Response::Error(ErrorReply::new(
            ErrorCode::Internal,
            format!("reply could not be encoded: {e}"),
        ));
        codec::encode_frame(FrameKind::Response, *id, &error, max_frame, &mut buf)
            .expect("a short error reply always encodes");
    } else if let Outgoing::Carried(..) = out {
        // Its message's payload goes as the memfd sent with the frame's first byte.
        codec::set_flags(&mut buf, FLAG_FD);
    }
    // A buffer that grew by doubling (a long list) may be up to twice what it holds.
    if buf.capacity() - buf.len() > MAX_SLACK.max(buf.len() / 8) {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::config::{Config, Quota};
    use ipc_proto::FrameDecoder;

    /// A payer of uid 1000 with a `queued_bytes` quota, allowed nothing waiting past it
    /// beyond the one reply that always goes.
    fn payer(queued_bytes: u64) -> Payer {
        payer_with_allowance(queued_bytes, 1)
    }

    fn payer_with_allowance(queued_bytes: u64, reply_allowance: u64) -> Payer {
        let config = Config {
            quota: Quota {
                queued_bytes,
                ..Config::default().quota
            },
            reply_allowance,
            ..Config::default()
        };
        let broker = Arc::new(Broker::new(config, Err("no store in this test".into())));
        Payer {
            account: broker.accounts().account(1000),
            broker,
        }
    }

    fn status_reply(id: u64, users: usize) -> Outgoing {
        // Large numbers, so that each user takes some 80 bytes in its varint encoding.
        let user = ipc_proto::UidUsage {
            uid: u32::MAX,
            connections: u64::MAX,
            mailboxes: u64::MAX,
            queued_bytes: u64::MAX,
            max_connections: Some(u64::MAX),
            max_mailboxes: Some(u64::MAX),
            max_queued_bytes: Some(u64::MAX),
            max_in_flight: Some(u64::MAX),
        };
        Outgoing::Reply(
            id,
            Response::Status(Box::new(ipc_proto::DaemonStatus {
                version: "test".into(),
                pid: 1,
                uptime_ms: 1,
                connections: 1,
                mailboxes: 1,
                messages: 1,
                bytes: 1,
                users: vec![user; users],
            })),
        )
    }

    #[test]
    fn a_reply_costs_its_encoded_size() {
        let frame = encode(status_reply(7, 1000), u32::MAX);
        let mut copy = BytesMut::from(&frame[..]);
        let decoded = FrameDecoder::new(u32::MAX)
            .decode(&mut copy)
            .unwrap()
            .expect("one whole frame");
        assert_eq!(decoded.request_id, 7);
        assert_eq!(decoded.body.len() + HEADER_LEN, frame.len());
        assert!(frame.len() > 1000 * 50, "a status of 1,000 users is large");
    }

    #[tokio::test]
    async fn waiting_replies_are_charged_to_the_uid_until_dropped() {
        let payer = payer(u64::MAX);
        let account = payer.account.clone();
        let (replies, writer) = reply_queue(16, u64::MAX, u32::MAX, payer);
        replies.send(status_reply(1, 100)).await.unwrap();
        replies.send(status_reply(2, 100)).await.unwrap();
        let pending = writer.shared.pending.load(Ordering::Acquire);
        assert!(pending > 2 * 100 * 50);
        assert_eq!(account.used(Resource::QueuedBytes), pending);
        drop((replies, writer));
        assert_eq!(account.used(Resource::QueuedBytes), 0);
    }

    #[tokio::test]
    async fn over_the_uid_quota_one_reply_goes_and_the_next_cuts_off() {
        let payer = payer(1_000);
        let account = payer.account.clone();
        let (replies, writer) = reply_queue(16, u64::MAX, u32::MAX, payer);
        // Alone on the queue, a reply larger than the whole quota still goes.
        replies.send(status_reply(1, 100)).await.unwrap();
        let first = account.used(Resource::QueuedBytes);
        assert!(first > 1_000);
        let refused = replies.send(status_reply(2, 1)).await.unwrap_err();
        assert!(
            matches!(
                refused,
                QueueError::OverQuota {
                    uid: 1000,
                    limit: 1_000,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("queued_bytes quota of 1000"));
        let reason = replies.cut_off().await;
        assert_eq!(reason.to_string(), refused.to_string());
        // The refused reply charged nothing; the queued one is given back with the queue.
        assert_eq!(account.used(Resource::QueuedBytes), first);
        drop((replies, writer));
        assert_eq!(account.used(Resource::QueuedBytes), 0);
    }

    #[tokio::test]
    async fn over_the_uid_quota_replies_go_within_the_allowance() {
        let payer = payer_with_allowance(1_000, 20_000);
        let account = payer.account.clone();
        let (replies, _writer) = reply_queue(64, u64::MAX, u32::MAX, payer);
        // Each is some 8 KB: two fit under 20,000 waiting, the third passes it.
        replies.send(status_reply(1, 100)).await.unwrap();
        replies.send(status_reply(2, 100)).await.unwrap();
        replies.send(status_reply(3, 100)).await.unwrap();
        assert!(account.used(Resource::QueuedBytes) > 20_000);
        let refused = replies.send(status_reply(4, 100)).await.unwrap_err();
        assert!(
            matches!(refused, QueueError::OverQuota { .. }),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn another_uid_is_not_charged() {
        let heavy = payer(1_000);
        let light = Payer {
            account: heavy.broker.accounts().account(1001),
            broker: heavy.broker.clone(),
        };
        let (replies, _writer) = reply_queue(16, u64::MAX, u32::MAX, heavy.clone());
        replies.send(status_reply(1, 100)).await.unwrap();
        assert!(replies.send(status_reply(2, 100)).await.is_err());
        let (others, _other_writer) = reply_queue(16, u64::MAX, u32::MAX, light.clone());
        others.send(status_reply(1, 1)).await.unwrap();
        others.send(status_reply(2, 1)).await.unwrap();
        assert_eq!(
            light.account.used(Resource::QueuedBytes),
            others.shared.pending.load(Ordering::Acquire)
        );
    }

    #[tokio::test]
    async fn past_max_pending_output_the_client_is_cut_off() {
        let (replies, _writer) = reply_queue(16, 3_000, u32::MAX, payer(u64::MAX));
        replies.send(status_reply(1, 100)).await.unwrap();
        let refused = replies.send(status_reply(2, 100)).await.unwrap_err();
        assert!(
            matches!(refused, QueueError::NotReading { limit: 3_000, .. }),
            "{refused:?}"
        );
        assert!(matches!(
            replies.cut_off().await,
            QueueError::NotReading { .. }
        ));
    }

    #[test]
    fn consuming_written_bytes_gives_back_whole_replies_only() {
        let payer = payer(u64::MAX);
        let pending = AtomicU64::new(0);
        let mut batch: VecDeque<Queued> = [10usize, 20, 30]
            .into_iter()
            .map(|n| {
                pending.fetch_add(n as u64, Ordering::AcqRel);
                Queued {
                    frame: Bytes::from(vec![0u8; n]),
                    cost: n as u64,
                    charge: Some(payer.account.force(Resource::QueuedBytes, n as u64)),
                    memfd: None,
                }
            })
            .collect();
        consume(&mut batch, 15, &pending);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].frame.len(), 15);
        assert_eq!(pending.load(Ordering::Acquire), 50);
        assert_eq!(payer.account.used(Resource::QueuedBytes), 50);
        consume(&mut batch, 45, &pending);
        assert!(batch.is_empty());
        assert_eq!(pending.load(Ordering::Acquire), 0);
        assert_eq!(payer.account.used(Resource::QueuedBytes), 0);
    }
}
