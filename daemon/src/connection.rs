//! Bytes ↔ frames on a connection: the proto crate's [`FrameDecoder`] as a tokio-util
//! codec for reading, and [`Output`], the replies waiting to be written.
//!
//! A reply is encoded when it is queued, at the end of the connection's one output
//! buffer, and costs its encoded length until its last byte is written, whatever kind of
//! reply it is (a message, a list of mailboxes, a status); the buffer lets go of what
//! was written once that is as large as what still waits. The connection's own task
//! writes the buffer when it has nothing else ready — every request it could read and
//! every wait that ended answered — so one write carries all the replies of a round, and
//! no task or channel stands between a reply and the socket. The replies waiting are
//! bounded three ways: in number, by `max_queued_replies` (past it the peer stops reading
//! requests until the socket takes some — back-pressure); in bytes, by
//! `max_pending_output` (past it the client is not reading and is cut off); and as bytes
//! the daemon holds for a uid: what waits is charged to the uid of the connection that
//! asked as `queued_bytes`, each reply given back once the socket has taken all of it. A client that stalls can
//! thus make the daemon hold no more for it than its uid's quota allows, however many
//! connections it opens, and `status` shows what it holds.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use ipc_proto::{
    Delivered, ErrorCode, ErrorReply, FLAG_FD, Frame, FrameDecoder, FrameError, FrameKind,
    HEADER_LEN, Response, Welcome, codec,
};
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::Decoder;

use crate::broker::Broker;
use crate::dispatch::Body;
use crate::mailbox::{Envelope, Memfd, headers_size};
use crate::quota::{Resource, UidAccount};

/// The most a message's fixed fields take encoded (each integer as a varint of at most
/// ten bytes, a payload's length among them), beyond its payload and header strings.
const MESSAGE_FIELDS_ROOM: usize = 128;

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
    /// The last read took all the room it was given: the client may have written more
    /// than it took, still waiting on the socket.
    filled: bool,
}

impl FdReader {
    pub fn new(half: tokio::net::unix::OwnedReadHalf) -> Self {
        Self {
            half,
            fds: VecDeque::new(),
            filled: false,
        }
    }

    /// Whether the last read filled the room it was given, so that more may wait on the
    /// socket (a read that took less found the socket drained, as far as it knows).
    pub fn filled(&self) -> bool {
        self.filled
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
            if this.half.as_ref().poll_read_ready(cx)?.is_pending() {
                // Nothing more now: the replies to what was read need not wait for it.
                this.filled = false;
                return std::task::Poll::Pending;
            }
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
                    this.filled = n == unfilled.len();
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

/// A reply as the peer hands it to its [`Output`].
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "replies are the common case; boxing them would allocate per reply"
)]
pub enum Outgoing {
    Welcome(Welcome),
    Reply(u64, Body),
    /// A reply whose message's payload goes as the memfd it came in (its `payload` field
    /// empty), written with the frame's first byte.
    Carried(u64, Body, Arc<Memfd>),
}

impl Outgoing {
    /// The reply `response` to request `id`.
    pub fn response(id: u64, response: Response) -> Self {
        Outgoing::Reply(id, Body::Response(response))
    }
}

/// Why a reply could not be queued: the client is not reading, and is cut off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
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
    broker: Arc<Broker>,
    /// The limits as last read, with the configuration's generation they were read
    /// at: a reply reads one counter rather than the configuration (a load, and a
    /// lookup of the uid's quota) until a reload moves it.
    read: Cell<Option<(u64, (u64, u64))>>,
}

impl Payer {
    pub fn new(account: Arc<UidAccount>, broker: Arc<Broker>) -> Self {
        Self {
            account,
            broker,
            read: Cell::new(None),
        }
    }

    /// The uid's `queued_bytes` quota, and the replies a connection may have waiting
    /// past it (`reply_allowance`).
    fn limits(&self) -> (u64, u64) {
        // Read before the configuration: a reload in between is seen by the next reply.
        let generation = self.broker.config_generation();
        if let Some((read_at, limits)) = self.read.get()
            && read_at == generation
        {
            return limits;
        }
        let config = self.broker.config();
        let quota = config.quota_for(self.account.uid());
        let limits = (Resource::QueuedBytes.limit(&quota), config.reply_allowance);
        self.read.set(Some((generation, limits)));
        limits
    }
}

/// Room the output buffer keeps once it is empty: a round of small replies fits, and a
/// burst's large buffer is not kept by an idle connection. Written bytes stay in the
/// buffer's allocation until it is reused or let go, so they are let go past this too
/// once they are as many as the bytes still waiting.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The replies waiting to be written on one connection, encoded back to back, and what
/// they are charged. Dropping it (the connection gone, or cut off) gives back the charge.
#[derive(Debug)]
pub struct Output {
    /// The encoded frames not yet written; the front is consumed as the socket takes it.
    buf: BytesMut,
    /// Bytes written so far: the stream offset of `buf`'s first byte.
    written: u64,
    /// The stream offset where the first reply not yet written whole begins: a reply is
    /// charged whole until its last byte is written.
    done: u64,
    /// Bytes written since `buf` was last made anew, which its allocation still holds.
    spent: usize,
    /// The stream offsets where the waiting replies end, oldest first; their number is
    /// what `max_queued_replies` bounds.
    ends: VecDeque<u64>,
    /// Memfds to pass, each with the stream offset of its frame's first byte, which it
    /// goes with.
    memfds: VecDeque<(u64, Arc<Memfd>)>,
    /// Bytes of those memfds: held until passed, they count as waiting.
    memfd_bytes: u64,
    /// Bytes charged to the payer's uid as `queued_bytes`: all that waits, except across
    /// a write (see [`Output::write_to`]).
    charged: u64,
    payer: Payer,
    /// `max_pending_output`.
    limit: u64,
    /// `max_queued_replies`.
    max_replies: usize,
    /// Largest frame body a reply may have.
    max_frame: u32,
}

impl Output {
    /// An empty output charged to `payer`, of at most `max_replies` replies and `limit`
    /// bytes, with frame bodies of at most `max_frame` bytes.
    pub fn new(payer: Payer, max_replies: usize, limit: u64, max_frame: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            written: 0,
            done: 0,
            spent: 0,
            ends: VecDeque::new(),
            memfds: VecDeque::new(),
            memfd_bytes: 0,
            charged: 0,
            payer,
            limit,
            max_replies: max_replies.max(1),
            max_frame,
        }
    }

    /// Bytes waiting: the replies not yet written whole, and the memfds they pass.
    pub fn pending(&self) -> u64 {
        self.written + self.buf.len() as u64 - self.done + self.memfd_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the peer may read more requests: fewer than `max_queued_replies` replies
    /// wait.
    pub fn accepting(&self) -> bool {
        self.ends.len() < self.max_replies
    }

    /// Encodes `out` at the end of the buffer and charges it.
    ///
    /// Past the uid's `queued_bytes` quota a reply is still accepted, charged all the
    /// same, while this connection has less than `reply_allowance` waiting: a client that
    /// reads is not cut off because its uid's quota is taken by queued messages, and one
    /// reply of any size always goes, so a message as large as the frame limit can be
    /// delivered whatever the bounds. Past `max_pending_output`, or past the quota with
    /// the allowance used up, the client is not reading: the reply is refused, and the
    /// caller cuts the connection off.
    pub fn push(&mut self, out: Outgoing) -> Result<(), QueueError> {
        let before = self.pending();
        let start = self.buf.len();
        let memfd = encode(out, self.max_frame, &mut self.buf);
        let len = (self.buf.len() - start) as u64;
        // A memfd the reply carries is held until it is passed: it costs its size.
        let cost = len + memfd.as_ref().map_or(0, |m| m.len);
        if let Err(e) = self.admit(before, cost) {
            self.buf.truncate(start);
            return Err(e);
        }
        self.charged += cost;
        let at = self.written + start as u64;
        self.ends.push_back(at + len);
        if let Some(memfd) = memfd {
            self.memfd_bytes += memfd.len;
            self.memfds.push_back((at, memfd));
        }
        Ok(())
    }

    /// Charges a reply of `cost` bytes to the connection's uid, `before` bytes waiting on
    /// this connection already.
    fn admit(&self, before: u64, cost: u64) -> Result<(), QueueError> {
        if before > 0 && before.saturating_add(cost) > self.limit {
            return Err(QueueError::NotReading {
                pending: before + cost,
                limit: self.limit,
            });
        }
        let account = &self.payer.account;
        let (limit, allowance) = self.payer.limits();
        match account.try_hold(Resource::QueuedBytes, cost, limit) {
            Ok(()) => Ok(()),
            Err(_) if before == 0 || before < allowance => {
                account.hold(Resource::QueuedBytes, cost);
                Ok(())
            }
            Err(held) => Err(QueueError::OverQuota {
                uid: account.uid(),
                held,
                cost,
                limit,
            }),
        }
    }

    /// Writes what the socket takes now, without waiting; `Ok` once it would block or
    /// all is written.
    ///
    /// A reply the socket takes is readable by the client at once, so the charge is given
    /// back just before each write: a client that has read a reply never finds it still
    /// charged to its uid. What the socket did not take is charged again at once, so a
    /// client that does not read still pays for all of it. A memfd goes with its frame's
    /// first byte, in a write of its own.
    pub fn write_to(&mut self, write: &OwnedWriteHalf) -> io::Result<()> {
        while !self.buf.is_empty() {
            self.payer
                .account
                .give_back(Resource::QueuedBytes, self.charged);
            self.charged = 0;
            let written = self.write_some(write);
            if let Ok(n) = written {
                self.consume(n);
            }
            let pending = self.pending();
            self.payer.account.hold(Resource::QueuedBytes, pending);
            self.charged = pending;
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.let_go();
        Ok(())
    }

    /// Lets go of written bytes the buffer's allocation still holds (`advance` frees
    /// nothing): the whole allocation once all is written and it is larger than
    /// [`KEEP_CAPACITY`], or the written part once it is that large and as large as what
    /// still waits (what waits is copied to a buffer of its own: at most once per as many
    /// bytes written).
    fn let_go(&mut self) {
        if self.buf.is_empty() {
            // True only if the allocation can hold more than is kept (it is reclaimed
            // whole for the test, the written bytes being none of its content).
            if self.buf.try_reclaim(KEEP_CAPACITY + 1) {
                self.buf = BytesMut::new();
            }
            self.spent = 0;
        } else if self.spent > KEEP_CAPACITY && self.spent >= self.buf.len() {
            self.buf = BytesMut::from(&self.buf[..]);
            self.spent = 0;
        }
    }

    /// One write: up to the next memfd's frame, or from it with the memfd.
    fn write_some(&self, write: &OwnedWriteHalf) -> io::Result<usize> {
        let offset = |at: u64| (at - self.written) as usize;
        match self.memfds.front() {
            Some((at, memfd)) if *at == self.written => {
                let end = self
                    .memfds
                    .get(1)
                    .map_or(self.buf.len(), |(next, _)| offset(*next));
                let bytes = &self.buf[..end];
                let stream = write.as_ref();
                stream.try_io(tokio::io::Interest::WRITABLE, || {
                    use std::os::fd::AsFd;
                    ipc_proto::memfd::send_with_fd(stream.as_fd(), bytes, memfd.fd.as_fd())
                })
            }
            next => {
                let end = next.map_or(self.buf.len(), |(at, _)| offset(*at));
                write.try_write(&self.buf[..end])
            }
        }
    }

    /// Takes `n` written bytes off the front.
    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.spent += n;
        self.written += n as u64;
        while let Some(end) = self
            .ends
            .front()
            .copied()
            .filter(|&end| end <= self.written)
        {
            self.done = end;
            self.ends.pop_front();
        }
        // A memfd whose frame has begun to go went with its first byte.
        while let Some((_, memfd)) = self.memfds.front().filter(|(at, _)| *at < self.written) {
            self.memfd_bytes -= memfd.len;
            self.memfds.pop_front();
        }
    }

    /// Writes everything, waiting for the socket as needed.
    pub async fn flush(&mut self, write: &OwnedWriteHalf) -> io::Result<()> {
        while !self.is_empty() {
            write.writable().await?;
            self.write_to(write)?;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.payer
            .account
            .give_back(Resource::QueuedBytes, self.charged);
    }
}

/// The most `e` takes encoded: so that the buffer grows at most once per reply.
fn message_room(e: &Envelope) -> usize {
    e.payload().len() + headers_size(e.headers()) as usize + MESSAGE_FIELDS_ROOM
}

/// Encodes the reply `body` to request `id` as one frame at the end of `buf`: a message
/// received is written from its envelope.
fn encode_body(
    id: u64,
    body: &Body,
    max_frame: u32,
    buf: &mut BytesMut,
) -> Result<(), codec::CodecError> {
    match body {
        Body::Response(r) => codec::encode_response(id, r, max_frame, buf),
        Body::Message(e) => {
            let delivered = Delivered::One(e.wire());
            codec::encode_delivered(id, &delivered, max_frame, buf)
        }
        Body::Messages(es) => {
            let delivered = Delivered::Many(es.iter().map(Envelope::wire).collect());
            codec::encode_delivered(id, &delivered, max_frame, buf)
        }
    }
}

/// Encodes `out` as one frame at the end of `buf`, and returns the memfd to pass with
/// it, if it carries one. A reply too large to be encoded is replaced by an error reply
/// that says so.
fn encode(out: Outgoing, max_frame: u32, buf: &mut BytesMut) -> Option<Arc<Memfd>> {
    // Room for each message's fields, so that the buffer grows at most once per reply.
    let room = match &out {
        Outgoing::Reply(_, Body::Message(e)) | Outgoing::Carried(_, Body::Message(e), _) => {
            message_room(e)
        }
        Outgoing::Reply(_, Body::Messages(es)) => es.iter().map(message_room).sum(),
        _ => 256,
    };
    buf.reserve(HEADER_LEN + room);
    let start = buf.len();
    let (result, id, memfd) = match out {
        Outgoing::Welcome(w) => (
            codec::encode_frame(FrameKind::Welcome, 0, &w, max_frame, buf),
            None,
            None,
        ),
        Outgoing::Reply(id, body) => (encode_body(id, &body, max_frame, buf), Some(id), None),
        Outgoing::Carried(id, body, memfd) => (
            encode_body(id, &body, max_frame, buf),
            Some(id),
            Some(memfd),
        ),
    };
    match (result, id) {
        (Ok(()), _) => {
            if memfd.is_some() {
                // Its message's payload goes as the memfd sent with the frame's first byte.
                codec::set_flags(&mut buf[start..], FLAG_FD);
            }
            memfd
        }
        (Err(e), Some(id)) => {
            let error = Response::Error(ErrorReply::new(
                ErrorCode::Internal,
                format!("reply could not be encoded: {e}"),
            ));
            codec::encode_frame(FrameKind::Response, id, &error, max_frame, buf)
                .expect("a short error reply always encodes");
            None
        }
        (Err(e), None) => {
            tracing::error!("the welcome could not be encoded: {e}");
            None
        }
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
        Payer::new(broker.accounts().account(1000), broker)
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
        Outgoing::response(
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

    /// Every whole frame in `bytes`, in order.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut copy = BytesMut::from(bytes);
        let mut decoder = FrameDecoder::new(u32::MAX);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut copy).unwrap() {
            frames.push(frame);
        }
        assert!(copy.is_empty(), "bytes after the last whole frame");
        frames
    }

    #[test]
    fn a_reply_costs_its_encoded_size() {
        let payer = payer(u64::MAX);
        let account = payer.account.clone();
        let mut output = Output::new(payer, 16, u64::MAX, u32::MAX);
        output.push(status_reply(7, 1000)).unwrap();
        let decoded = frames(&output.buf);
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].request_id, 7);
        assert_eq!(decoded[0].body.len() + HEADER_LEN, output.buf.len());
        assert!(
            output.buf.len() > 1000 * 50,
            "a status of 1,000 users is large"
        );
        assert_eq!(account.used(Resource::QueuedBytes), output.pending());
    }

    #[test]
    fn a_reply_too_large_to_encode_becomes_an_error_reply() {
        let mut output = Output::new(payer(u64::MAX), 16, u64::MAX, 1_000);
        output.push(status_reply(3, 100)).unwrap();
        let decoded = frames(&output.buf);
        assert_eq!(decoded.len(), 1);
        let response: Response = codec::decode_body(&decoded[0], FrameKind::Response).unwrap();
        let Response::Error(e) = response else {
            panic!("{response:?}")
        };
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("could not be encoded"), "{}", e.message);
    }

    #[test]
    fn waiting_replies_are_charged_to_the_uid_until_dropped() {
        let payer = payer(u64::MAX);
        let account = payer.account.clone();
        let mut output = Output::new(payer, 16, u64::MAX, u32::MAX);
        output.push(status_reply(1, 100)).unwrap();
        output.push(status_reply(2, 100)).unwrap();
        let pending = output.pending();
        assert!(pending > 2 * 100 * 50);
        assert_eq!(account.used(Resource::QueuedBytes), pending);
        drop(output);
        assert_eq!(account.used(Resource::QueuedBytes), 0);
    }

    #[test]
    fn past_max_queued_replies_no_more_requests_are_read() {
        let mut output = Output::new(payer(u64::MAX), 2, u64::MAX, u32::MAX);
        output.push(status_reply(1, 1)).unwrap();
        assert!(output.accepting());
        output.push(status_reply(2, 1)).unwrap();
        assert!(!output.accepting());
    }

    #[test]
    fn over_the_uid_quota_one_reply_goes_and_the_next_cuts_off() {
        let payer = payer(1_000);
        let account = payer.account.clone();
        let mut output = Output::new(payer, 16, u64::MAX, u32::MAX);
        // Alone in the output, a reply larger than the whole quota still goes.
        output.push(status_reply(1, 100)).unwrap();
        let first = account.used(Resource::QueuedBytes);
        assert!(first > 1_000);
        let refused = output.push(status_reply(2, 1)).unwrap_err();
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
        // The refused reply charged nothing and left nothing behind.
        assert_eq!(account.used(Resource::QueuedBytes), first);
        assert_eq!(output.pending(), first);
        assert_eq!(frames(&output.buf).len(), 1);
        drop(output);
        assert_eq!(account.used(Resource::QueuedBytes), 0);
    }

    #[test]
    fn over_the_uid_quota_replies_go_within_the_allowance() {
        let payer = payer_with_allowance(1_000, 20_000);
        let account = payer.account.clone();
        let mut output = Output::new(payer, 64, u64::MAX, u32::MAX);
        // Each is some 8 KB: two fit under 20,000 waiting, the third passes it.
        output.push(status_reply(1, 100)).unwrap();
        output.push(status_reply(2, 100)).unwrap();
        output.push(status_reply(3, 100)).unwrap();
        assert!(account.used(Resource::QueuedBytes) > 20_000);
        let refused = output.push(status_reply(4, 100)).unwrap_err();
        assert!(
            matches!(refused, QueueError::OverQuota { .. }),
            "{refused:?}"
        );
    }

    /// The quota read for replies is kept between replies, and read again once the
    /// configuration is swapped: a reload applies to the next reply.
    #[tokio::test]
    async fn a_reload_applies_to_the_next_reply() {
        let payer = payer(1_000);
        let broker = payer.broker.clone();
        let mut output = Output::new(payer, 16, u64::MAX, u32::MAX);
        output.push(status_reply(1, 100)).unwrap();
        assert!(output.push(status_reply(2, 100)).is_err(), "over the quota");
        let roomy = Config {
            quota: Quota {
                queued_bytes: 1 << 20,
                ..Config::default().quota
            },
            ..Config::default()
        };
        broker.reconfigure(roomy);
        output.push(status_reply(3, 100)).unwrap();
    }

    #[test]
    fn another_uid_is_not_charged() {
        let heavy = payer(1_000);
        let light = Payer::new(heavy.broker.accounts().account(1001), heavy.broker.clone());
        let mut output = Output::new(heavy, 16, u64::MAX, u32::MAX);
        output.push(status_reply(1, 100)).unwrap();
        assert!(output.push(status_reply(2, 100)).is_err());
        let mut others = Output::new(light.clone(), 16, u64::MAX, u32::MAX);
        others.push(status_reply(1, 1)).unwrap();
        others.push(status_reply(2, 1)).unwrap();
        assert_eq!(light.account.used(Resource::QueuedBytes), others.pending());
    }

    #[test]
    fn past_max_pending_output_the_client_is_cut_off() {
        let mut output = Output::new(payer(u64::MAX), 16, 3_000, u32::MAX);
        output.push(status_reply(1, 100)).unwrap();
        let refused = output.push(status_reply(2, 100)).unwrap_err();
        assert!(
            matches!(refused, QueueError::NotReading { limit: 3_000, .. }),
            "{refused:?}"
        );
    }

    /// The socket takes what fits; what it took is given back, and what waits is still
    /// charged and still counted, reply by reply.
    #[tokio::test]
    async fn what_the_socket_takes_is_given_back_and_the_rest_stays_charged() {
        let payer = payer(u64::MAX);
        let account = payer.account.clone();
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let mut output = Output::new(payer, 100_000, u64::MAX, u32::MAX);
        // Far more than a socket buffer holds.
        let mut pushed = 0;
        while output.pending() < 8 << 20 {
            pushed += 1;
            output.push(status_reply(pushed, 100)).unwrap();
        }
        let whole = output.buf.len() / usize::try_from(pushed).unwrap();
        output.write_to(&write).unwrap();
        let left = output.pending();
        assert!(left > 0 && left < 8 << 20, "{left} bytes left");
        assert_eq!(account.used(Resource::QueuedBytes), left);
        // Every reply is alike: a reply partly written is still charged whole.
        assert_eq!(
            left % whole as u64,
            0,
            "{left} bytes left of {whole}-byte replies"
        );
        assert_eq!(left / whole as u64, output.ends.len() as u64);
        let gone = usize::try_from(pushed).unwrap() - output.ends.len();
        let mut read = Vec::new();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut theirs = theirs;
            theirs.read_to_end(&mut read).await.unwrap();
            read
        });
        output.flush(&write).await.unwrap();
        assert_eq!(account.used(Resource::QueuedBytes), 0);
        assert!(output.ends.is_empty());
        drop(write);
        let read = reader.await.unwrap();
        let decoded = frames(&read);
        assert_eq!(decoded.len(), usize::try_from(pushed).unwrap());
        assert!(gone < decoded.len());
        // All written: the buffer that held 8 MiB is let go.
        assert!(!output.buf.try_reclaim(KEEP_CAPACITY + 1));
        let ids: Vec<u64> = decoded.iter().map(|f| f.request_id).collect();
        assert_eq!(ids, (1..=pushed).collect::<Vec<_>>());
    }

    /// A memfd goes with its own frame's first byte, after the frames before it and
    /// before those after it.
    #[tokio::test]
    async fn a_memfd_goes_with_its_frame() {
        use std::os::fd::AsFd;
        let payer = payer(u64::MAX);
        let broker = payer.broker.clone();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (_read, write) = tokio::net::UnixStream::from_std(ours).unwrap().into_split();
        let mut output = Output::new(payer, 16, u64::MAX, u32::MAX);
        let fd = ipc_proto::memfd::seal_payload(&[7u8; 100]).unwrap();
        let memfd = Arc::new(Memfd {
            fd: Arc::new(fd),
            len: 100,
            _place: broker.memfds().enter(10).unwrap(),
        });
        output.push(status_reply(1, 1)).unwrap();
        output
            .push(Outgoing::Carried(2, Body::Response(Response::Ok), memfd))
            .unwrap();
        output.push(status_reply(3, 1)).unwrap();
        assert_eq!(output.pending(), output.buf.len() as u64 + 100);
        output.flush(&write).await.unwrap();
        assert_eq!(output.pending(), 0);
        assert_eq!(
            broker.accounts().account(1000).used(Resource::QueuedBytes),
            0
        );
        drop(write);
        // Read frame by frame: the descriptor must have come by the second's first byte.
        let mut fds = VecDeque::new();
        let mut bytes = Vec::new();
        let mut first = 0;
        let mut chunk = [0u8; 1];
        loop {
            let n = ipc_proto::memfd::recv_with_fds(theirs.as_fd(), &mut chunk, &mut fds).unwrap();
            if n == 0 {
                break;
            }
            bytes.push(chunk[0]);
            if fds.is_empty() {
                first = bytes.len();
            }
        }
        let decoded = frames(&bytes);
        assert_eq!(decoded.len(), 3);
        assert_eq!(fds.len(), 1);
        assert_eq!(decoded[1].flags & FLAG_FD, FLAG_FD);
        assert_eq!(decoded[0].flags & FLAG_FD, 0);
        // Every byte before the descriptor came belongs to the first frame.
        assert_eq!(first, HEADER_LEN + decoded[0].body.len());
    }
}
