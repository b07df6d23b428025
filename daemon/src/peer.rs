//! One client connection, from handshake to close. The peer reads frames, answers each
//! request through [`dispatch`], and keeps blocked sends and receives as waits it polls
//! beside its reading, so that one waiting request never holds up the others on the same
//! connection (pipelining). The waits are futures of the connection's own task, not tasks
//! of their own: a send that hands messages to many of its receives wakes the connection
//! once, not once per receive, and a blocked receive costs no spawn. A panic in a wait
//! ends that request with an internal error, not the connection.
//!
//! Replies are encoded into the connection's [`Output`] as they are made and charged to
//! its uid until written; the peer writes them itself, once it has nothing else ready,
//! so one write carries a round's replies. When the client stops reading, replies pile
//! up and the peer stops reading its requests in turn (its waits are still polled, so a
//! timeout still ends its wait), and past the output's byte bounds the client is cut off.
//!
//! Everything that goes wrong here ends this connection only, with one log line naming
//! the [`CloseReason`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipc_proto::{
    Credentials, ErrorCode, ErrorReply, FLAG_FD, FLAG_TAKES_FD, Frame, FrameDecoder, FrameKind,
    Hello, MAX_CLIENT_NAME, PROTOCOL_VERSION, Request, Response, Welcome, codec, memfd,
};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::caller::{Caller, peer_groups};
use crate::config::Config;
use crate::connection::{FdReader, FrameCodec, Outgoing, Output, Payer, QueueError, ReadError};
use crate::dispatch::{Answer, Reply, answer_of, dispatch, message_answer};
use crate::logging;
use crate::mailbox::{
    Cancelled, Canceller, Completed, Envelope, KeyMap, Memfd, OWN_PAYLOAD_UP_TO, Parked, RecvError,
};

/// A payload passed as a memfd is kept as it came from this size on; a smaller one is
/// copied, and its memfd closed: a descriptor and a mapping cost more than a small copy.
const KEEP_MEMFD_AT: usize = 64 * 1024;
use crate::quota::{Charge, GaugeSlot, QuotaError, Resource};

/// Why a connection ended.
#[derive(Debug)]
pub enum CloseReason {
    /// The client closed its side.
    ClientClosed,
    /// No hello within the handshake timeout.
    HandshakeTimeout,
    /// The client speaks another protocol version.
    VersionMismatch(u16),
    /// Framing broke (oversized length, unknown kind): the stream cannot be resynchronised.
    BadFrame(String),
    /// A well-framed message that breaks the protocol (wrong frame kind, request id 0).
    ProtocolViolation(String),
    /// Reading or writing the socket failed.
    Io(String),
    /// The daemon is stopping.
    ShuttingDown,
    /// The uid is at its connections quota.
    OverQuota(String),
    /// The client let more replies pile up than `max_pending_output`, or than its uid's
    /// `queued_bytes` quota allows.
    NotReading(String),
}

impl CloseReason {
    /// The cause, for rate-limiting the log lines of closes alike.
    fn kind(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::VersionMismatch(_) => "version mismatch",
            CloseReason::BadFrame(_) => "bad frame",
            CloseReason::ProtocolViolation(_) => "protocol violation",
            CloseReason::Io(_) => "socket error",
            CloseReason::ShuttingDown => "shutting down",
            CloseReason::OverQuota(_) => "over quota",
            CloseReason::NotReading(_) => "not reading",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("client closed the connection"),
            CloseReason::HandshakeTimeout => f.write_str("no hello within the handshake timeout"),
            CloseReason::VersionMismatch(v) => write!(f, "client speaks protocol version {v}"),
            CloseReason::BadFrame(e) => write!(f, "bad frame: {e}"),
            CloseReason::ProtocolViolation(e) => write!(f, "protocol violation: {e}"),
            CloseReason::Io(e) => write!(f, "socket error: {e}"),
            CloseReason::ShuttingDown => f.write_str("daemon shutting down"),
            CloseReason::OverQuota(e) => write!(f, "refused: {e}"),
            CloseReason::NotReading(e) => write!(f, "cut off: {e}"),
        }
    }
}

/// A connection let in: who is at the other end, and its place among the connections
/// not yet past their hello.
#[derive(Debug)]
pub struct Admitted {
    stream: UnixStream,
    caller: Caller,
    hello_slot: HelloSlot,
}

/// Decides, in the accept loop and in accept order, whether a new connection may wait for
/// its hello: it needs a place among its uid's `handshakes` and the daemon's
/// `max_handshakes`, so that connections that never speak cannot fill the daemon's
/// descriptors. A connection without one is told why, if its socket takes it at once, and
/// closed: nothing is spawned or kept for it.
pub fn admit(stream: UnixStream, broker: &Broker) -> Option<Admitted> {
    let identity = stream.peer_cred().and_then(|cred| {
        let groups = peer_groups(&stream)?;
        Ok((cred, groups))
    });
    let (cred, groups) = match identity {
        Ok(identity) => identity,
        Err(e) => {
            if let Some(suppressed) = logging::throttled("no credentials") {
                tracing::warn!(
                    "cannot read the credentials of a new connection, closing it: {e}{}",
                    more(suppressed)
                );
            }
            return None;
        }
    };
    let creds = Credentials {
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let caller = Caller {
        creds,
        groups,
        account: broker.accounts().account(creds.uid),
        leases: Arc::default(),
        connection: broker.new_connection_number(),
        private: Arc::default(),
        origins: Arc::default(),
        recent: RefCell::default(),
        parked: Arc::default(),
    };
    match begin_handshake(broker, &caller, &broker.config()) {
        Ok(hello_slot) => Some(Admitted {
            stream,
            caller,
            hello_slot,
        }),
        Err(why) => {
            if let Some(suppressed) = logging::throttled("refused before hello") {
                tracing::info!(
                    pid = creds.pid,
                    uid = creds.uid,
                    "connection refused: {why}{}",
                    more(suppressed)
                );
            }
            refuse_at_once(&stream, &why);
            None
        }
    }
}

/// Serves one admitted connection until it closes.
pub async fn serve(admitted: Admitted, broker: Arc<Broker>, shutdown: CancellationToken) {
    let Admitted {
        stream,
        caller,
        hello_slot,
    } = admitted;
    let creds = caller.creds;
    let config = broker.config_held();
    // Held for the connection's life; over quota, the client is told so at once.
    let counted = broker.charge(&caller, Resource::Connections, 1);
    let (read, write) = stream.into_split();
    // Until the hello, only a frame the size of a hello is read.
    let frames = FramedRead::new(
        FdReader::new(read),
        FrameCodec(FrameDecoder::new(config.max_hello_frame)),
    );
    // Replies wait charged to the uid that asked for them, as its queued bytes.
    let payer = Payer::new(caller.account.clone(), broker.clone());
    let output = Output::new(
        payer,
        config.max_queued_replies,
        config.max_pending_output,
        u32::MAX,
    );
    let in_flight = config.quota_for(creds.uid).in_flight;
    let mut peer = Peer {
        broker,
        caller,
        in_flight,
        frames,
        write,
        output,
        waits: FuturesUnordered::new(),
        cancels: HashMap::new(),
        parked: KeyMap::default(),
        client_name: String::new(),
        hello_slot: Some(hello_slot),
    };
    let reason = peer.run(counted.as_ref().err(), &shutdown).await;
    // Given back while the socket is still open, so that a client that sees it close can
    // count on the place being free.
    peer.hello_slot = None;
    let Peer {
        broker,
        client_name,
        write,
        mut output,
        waits,
        mut parked,
        caller,
        ..
    } = peer;
    // Abandoned waits deregister as they drop, returning any message they held.
    drop(waits);
    // Parked receives likewise: each leaves its mailbox, then nothing more can be handed
    // to them, and a message one was handed and not answered goes back.
    for p in parked.values() {
        p.at.leave();
    }
    for (slot, result) in caller.parked.close() {
        if let (Some(p), Ok(envelope)) = (parked.remove(&slot), result) {
            p.at.give_back(envelope);
        }
    }
    // Messages leased to this connection (not detached) go back to be redelivered. Even
    // a reply with one of them that was written is not an ack.
    caller.leases.release_all();
    broker.end_connection(&caller);
    // What waits is written, unless the client was cut off for not reading it; a client
    // that keeps its socket open without reading is given `shutdown_timeout`, not more.
    let written = match reason {
        CloseReason::NotReading(_) => Ok(Ok(())),
        _ => tokio::time::timeout(config.shutdown_timeout, output.flush(&write)).await,
    };
    // The replies' charges go with them, then the socket with its write side shut.
    drop((output, write));
    // Given back last: once its uid's connections count drops, nothing of this
    // connection is left charged.
    drop(counted);
    let level_is_info = !matches!(
        reason,
        CloseReason::ClientClosed | CloseReason::ShuttingDown
    );
    let flushed = match &written {
        Ok(Err(e)) => client_went_away(e),
        Ok(Ok(())) => true,
        Err(_) => false,
    };
    if level_is_info || !flushed {
        // One line per cause per interval, whatever a client repeats.
        if let Some(suppressed) = logging::throttled(reason.kind()) {
            tracing::info!(
                pid = creds.pid,
                uid = creds.uid,
                client = %client_name,
                "connection closed: {reason}{}",
                more(suppressed)
            );
        }
    } else {
        tracing::debug!(pid = creds.pid, uid = creds.uid, client = %client_name, "connection closed: {reason}");
    }
}

type Frames = FramedRead<FdReader, FrameCodec>;

struct Peer {
    broker: Arc<Broker>,
    caller: Caller,
    /// Most blocked requests at once (the uid's `in_flight` quota).
    in_flight: u64,
    frames: Frames,
    write: OwnedWriteHalf,
    /// The replies waiting to be written.
    output: Output,
    /// Blocked requests, polled by this connection's task, even while the client is slow
    /// to read its replies: a timeout still ends its wait (which stops taking messages).
    waits: FuturesUnordered<Blocked>,
    /// How to cancel each blocked request, by request id.
    cancels: HashMap<u64, Cancel>,
    /// Receives parked in their mailboxes, by slot (see `mailbox::parked`): answered
    /// from `caller.parked` as their messages come, without a future each.
    parked: KeyMap<ParkedRecv>,
    /// The client's name as it may appear in a log line (control characters escaped).
    client_name: String,
    /// The place this connection holds among those not yet past their hello; given
    /// back once the hello is answered.
    hello_slot: Option<HelloSlot>,
}

/// How a blocked request is cancelled: a future's by its canceller, a parked receive's
/// through where it is parked.
enum Cancel {
    Wait(Canceller),
    Parked(u64),
}

/// A parked receive: the request it answers, and where it waits.
struct ParkedRecv {
    id: u64,
    at: Parked,
    /// The receiver takes a memfd's payload as the memfd.
    takes_fd: bool,
}

impl ParkedRecv {
    /// The answer to this receive, of what its mailbox handed it.
    fn answer(&self, result: Result<Envelope, RecvError>) -> Answer {
        answer_of(result, |envelope| message_answer(envelope, self.takes_fd))
    }
}

/// What woke a connection's loop, in the order it looks: an ended wait, a parked
/// receive's result, room to write, a request (or the end of the stream), the daemon
/// shutting down.
enum Event {
    Ended((u64, Answer)),
    Handed(Completed),
    Writable(std::io::Result<()>),
    Read(Option<Result<Frame, ReadError>>),
    ShuttingDown,
}

/// A blocked request: its wait, answered under its request id.
struct Blocked {
    id: u64,
    wait: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

impl Future for Blocked {
    type Output = (u64, Answer);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        let wait = &mut self.wait;
        // Caught here, a bug in one request's wait fails that request, and the connection
        // still ends through its own cleanup (leases given back, private mailboxes gone).
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait.as_mut().poll(cx))) {
            Ok(polled) => polled.map(|answer| (id, answer)),
            Err(_) => {
                tracing::error!(request = id, "a waiting request panicked; it fails alone");
                let error = ErrorReply::new(ErrorCode::Internal, "internal error in this request");
                Poll::Ready((id, Answer::from(Response::Error(error))))
            }
        }
    }
}

/// A connection's place among those not yet past their hello: one of its uid's
/// `handshakes` and one of the daemon's `max_handshakes`.
#[derive(Debug)]
struct HelloSlot {
    _uid: Charge,
    _all: GaugeSlot,
}

fn begin_handshake(broker: &Broker, caller: &Caller, config: &Config) -> Result<HelloSlot, String> {
    let limit = config.quota_for(caller.uid()).handshakes;
    let uid = caller
        .account
        .try_charge(Resource::Handshakes, 1, limit)
        .map_err(|held| {
            format!(
                "uid {} already has {held} connections that have not sent their hello, its \
                 handshakes quota of {limit}",
                caller.uid()
            )
        })?;
    let all = broker
        .handshaking()
        .enter(config.max_handshakes)
        .ok_or_else(|| {
            format!(
                "{} connections are waiting to send their hello, the daemon's max_handshakes",
                config.max_handshakes
            )
        })?;
    Ok(HelloSlot {
        _uid: uid,
        _all: all,
    })
}

/// Tells a client refused before its hello why, if the socket takes it at once, and
/// closes: nothing is held for it.
fn refuse_at_once(stream: &UnixStream, why: &str) {
    let mut frame = bytes::BytesMut::new();
    let error = Response::Error(ErrorReply::new(
        ErrorCode::QuotaExceeded,
        format!("quota exceeded: {why}"),
    ));
    if codec::encode_frame(FrameKind::Response, 0, &error, u32::MAX, &mut frame).is_ok() {
        let _ = stream.try_write(&frame);
    }
}

/// What follows a rate-limited log line: how many like it were held back.
fn more(suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(" ({n} more like it since the last such line)"),
    }
}

/// Replies this many bytes long are written before more requests are read, even while
/// more are ready: a client that streams requests still gets its replies on time.
const WRITE_AT: usize = 64 * 1024;

impl Peer {
    async fn run(
        &mut self,
        refused: Option<&QuotaError>,
        shutdown: &CancellationToken,
    ) -> CloseReason {
        if let Err(reason) = self.handshake(refused).await {
            return reason;
        }
        // Made once, not per request (each one made registers with its token), and polled
        // last (a poll takes locks): made and polled for every request, it was a tenth of
        // the daemon's time in a streaming bench. It is still polled whenever the
        // connection would wait, and at the latest once its budget of reads runs out
        // (tokio makes a busy task's reads wait after a while).
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let mut yielded = false;
        loop {
            let accepting = self.output.accepting();
            // Replies are written before the socket is read again, not while requests
            // already read wait — nor while the client's requests may still be on the
            // socket because the last read filled the buffer (8 KiB: a hundred 64-byte
            // sends, but three of 2 KiB). One write then carries the replies to all
            // that the client wrote at once, however its requests fell across reads:
            // writing after each read woke the client for every three replies, and
            // streaming 2 KiB messages cost twice the CPU and three times the context
            // switches (`perf stat`). A read that took less than its room is not
            // followed by another before the write: that one would most likely find
            // nothing, and it delayed every reply of a ping-pong by about 10%.
            let request_ready = accepting
                && (self.frames.get_ref().filled()
                    || FrameDecoder::holds_frame(self.frames.read_buffer()));
            let replies_wait = !self.output.is_empty();
            let write_now = replies_wait && !request_ready;
            if write_now && !yielded {
                // The connections this round handed messages to were woken onto this
                // thread, behind this task: they run first, and what they make ready
                // for this one joins the write.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            // By hand rather than `tokio::select!`, which builds every branch's future
            // (a readiness future among them) on each turn and moves them: this loop
            // turns once per request.
            let event = std::future::poll_fn(|cx| {
                // As `select!` does: once the task's budget is spent, give the thread
                // back. Requests already in the buffer are decoded without touching the
                // budget, and would otherwise all be handled first.
                if !tokio::task::coop::has_budget_remaining() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if !self.waits.is_empty()
                    && let Poll::Ready(Some(ended)) = self.waits.poll_next_unpin(cx)
                {
                    return Poll::Ready(Event::Ended(ended));
                }
                if !self.parked.is_empty()
                    && let Poll::Ready(handed) = self.caller.parked.poll_next(cx)
                {
                    return Poll::Ready(Event::Handed(handed));
                }
                if write_now && let Poll::Ready(ready) = self.write.as_ref().poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(ready));
                }
                if accepting && let Poll::Ready(frame) = self.frames.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Read(frame));
                }
                // The read after one that filled the buffer found the socket drained:
                // what waits goes now.
                if replies_wait
                    && !write_now
                    && let Poll::Ready(ready) = self.write.as_ref().poll_write_ready(cx)
                {
                    return Poll::Ready(Event::Writable(ready));
                }
                shutting_down
                    .as_mut()
                    .poll(cx)
                    .map(|()| Event::ShuttingDown)
            })
            .await;
            match event {
                Event::Ended((id, answer)) => {
                    // A cancel completes the wait itself (with `Cancelled`), so every
                    // wait ends with a reply.
                    self.cancels.remove(&id);
                    if let Err(reason) = self.reply(outgoing(id, answer)) {
                        return reason;
                    }
                }
                Event::Handed((slot, result)) => {
                    // Every result is for a receive still parked: one refused for the
                    // quota took its result back out when it was withdrawn.
                    let Some(parked) = self.parked.remove(&slot) else {
                        debug_assert!(false, "a result for slot {slot}, which is not parked");
                        continue;
                    };
                    self.cancels.remove(&parked.id);
                    let answer = parked.answer(result);
                    if let Err(reason) = self.reply(outgoing(parked.id, answer)) {
                        return reason;
                    }
                }
                Event::Writable(ready) => {
                    yielded = false;
                    if let Err(e) = ready.and_then(|()| self.output.write_to(&self.write)) {
                        return write_failed(&e);
                    }
                }
                Event::Read(frame) => {
                    let frame = match frame {
                        None => return CloseReason::ClientClosed,
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => return self.fail_connection(e),
                    };
                    if let Err(reason) = self.handle(frame) {
                        return reason;
                    }
                    if self.output.pending() >= WRITE_AT as u64
                        && let Err(e) = self.output.write_to(&self.write)
                    {
                        return write_failed(&e);
                    }
                }
                Event::ShuttingDown => {
                    // The broker has failed every waiter with "shutting down"; let those
                    // replies go out, then close.
                    while let Some((id, answer)) = self.waits.next().await {
                        let _ = self.output.push(outgoing(id, answer));
                    }
                    while let Some((slot, result)) = self.caller.parked.try_next() {
                        if let Some(parked) = self.parked.remove(&slot) {
                            let answer = parked.answer(result);
                            let _ = self.output.push(outgoing(parked.id, answer));
                        }
                    }
                    return CloseReason::ShuttingDown;
                }
            }
        }
    }

    /// Reads the hello and answers it: a welcome, or the error that ends the connection.
    /// A connection over its uid's connections quota (`refused`) is told so at once; its
    /// hello is still read (small and soon, or not at all), so that closing does not reset
    /// the connection before the client has read why.
    async fn handshake(&mut self, refused: Option<&QuotaError>) -> Result<(), CloseReason> {
        let timeout = self.broker.config().handshake_timeout;
        if let Some(&quota) = refused {
            let error = ErrorReply::from(quota);
            self.send_connection_error(error.code, &error.message);
            // Written now: the hello is waited for only so that the client reads this.
            let _ = self.output.write_to(&self.write);
            let _ = tokio::time::timeout(timeout, self.frames.next()).await;
            return Err(CloseReason::OverQuota(error.message));
        }
        let frame = match tokio::time::timeout(timeout, self.frames.next()).await {
            Err(_) => return Err(CloseReason::HandshakeTimeout),
            Ok(None) => return Err(CloseReason::ClientClosed),
            Ok(Some(Err(e))) => return Err(self.fail_connection(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let hello: Hello = match codec::decode_body(&frame, FrameKind::Hello) {
            Ok(hello) => hello,
            Err(e) => {
                let message = format!("expected a hello: {e}");
                self.send_connection_error(ErrorCode::BadRequest, &message);
                return Err(CloseReason::ProtocolViolation(message));
            }
        };
        self.client_name = logging::escape(&hello.client_name);
        if hello.client_name.len() > MAX_CLIENT_NAME {
            let message = format!(
                "client_name is {} bytes long; at most {MAX_CLIENT_NAME} are allowed",
                hello.client_name.len()
            );
            self.client_name.truncate(MAX_CLIENT_NAME);
            self.send_connection_error(ErrorCode::BadRequest, &message);
            return Err(CloseReason::ProtocolViolation(message));
        }
        if hello.version != PROTOCOL_VERSION {
            let message = format!(
                "ipcd speaks protocol version {PROTOCOL_VERSION}, the client {}; upgrade the older side",
                hello.version
            );
            self.send_connection_error(ErrorCode::VersionMismatch, &message);
            return Err(CloseReason::VersionMismatch(hello.version));
        }
        let config = self.broker.config_held();
        // Past the hello: requests may be as large as the daemon allows, and this
        // connection no longer counts among those that have not spoken.
        self.frames.decoder_mut().0.set_max_body(config.max_frame());
        self.hello_slot = None;
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            server: format!("ipcd {}", env!("CARGO_PKG_VERSION")),
            max_frame: config.max_frame(),
            max_msg_size: config.ceilings.max_msg_size,
            max_in_flight: u32::try_from(self.in_flight).unwrap_or(u32::MAX),
            features: vec![
                ipc_proto::FEATURE_BATCH.to_owned(),
                ipc_proto::FEATURE_MEMFD.to_owned(),
            ],
            peer: self.caller.creds,
        };
        self.reply(Outgoing::Welcome(welcome))
    }

    fn handle(&mut self, frame: Frame) -> Result<(), CloseReason> {
        let id = frame.request_id;
        if frame.kind != FrameKind::Request || id == 0 {
            let message = if id == 0 {
                "request id 0 is reserved".to_owned()
            } else {
                format!("expected a request frame, got {:?}", frame.kind)
            };
            self.send_connection_error(ErrorCode::BadRequest, &message);
            return Err(CloseReason::ProtocolViolation(message));
        }
        let fd = if frame.flags & FLAG_FD != 0 {
            let Some(fd) = self.frames.get_mut().fds.pop_front() else {
                let message = "a frame flagged as carrying a descriptor came without one";
                self.send_connection_error(ErrorCode::BadRequest, message);
                return Err(CloseReason::ProtocolViolation(message.to_owned()));
            };
            Some(fd)
        } else {
            None
        };
        let takes_fd = frame.flags & FLAG_TAKES_FD != 0;
        // A small payload is a slice of the frame: a message copies it into its own block.
        let decoded = codec::decode_request(frame, OWN_PAYLOAD_UP_TO);
        let mut request: Request = match decoded {
            Ok(request) => request,
            // The frame was whole, so the stream is still in step: refuse this request
            // only.
            Err(e) => {
                let error = ErrorReply::new(e.code(), e.to_string());
                return self.reply(Outgoing::response(id, Response::Error(error)));
            }
        };
        let memfd = match fd.map(|fd| self.attach(&mut request, fd)).transpose() {
            Ok(memfd) => memfd.flatten(),
            Err(error) => {
                return self.reply(Outgoing::response(id, Response::Error(error)));
            }
        };
        match dispatch(&self.broker, &self.caller, request, memfd, takes_fd) {
            Reply::Now(answer) => self.reply(outgoing(id, answer)),
            Reply::Later {
                wait,
                cancel,
                undoable,
            } => {
                // A wait for the store goes on past the quota: it ends by itself, and
                // what it stores must be answered as stored.
                if undoable && self.blocked() >= self.in_flight {
                    // Dropping `wait` deregisters it without losing anything.
                    drop(wait);
                    return self.reply(self.over_in_flight(id));
                }
                self.cancels.insert(id, Cancel::Wait(cancel));
                self.waits.push(Blocked { id, wait });
                Ok(())
            }
            Reply::Parked(at) => {
                if self.blocked() >= self.in_flight {
                    at.withdraw(&self.caller.parked);
                    return self.reply(self.over_in_flight(id));
                }
                let slot = at.slot;
                self.cancels.insert(id, Cancel::Parked(slot));
                self.parked.insert(slot, ParkedRecv { id, at, takes_fd });
                Ok(())
            }
            Reply::Cancel(target) => {
                // Synchronous: the waiter is gone before the next request is read, so
                // a send that follows on this connection can no longer reach it.
                let cancelled = Cancelled { request: target };
                match self.cancels.remove(&target) {
                    Some(Cancel::Wait(cancel)) => cancel(cancelled),
                    Some(Cancel::Parked(slot)) => {
                        if let Some(parked) = self.parked.get(&slot) {
                            parked.at.cancel(cancelled);
                        }
                    }
                    None => {}
                }
                self.reply(Outgoing::response(id, Response::Ok))
            }
        }
    }

    /// Requests waiting now, as futures or parked: what the `in_flight` quota bounds.
    fn blocked(&self) -> u64 {
        (self.waits.len() + self.parked.len()) as u64
    }

    /// The refusal of request `id` past the `in_flight` quota.
    fn over_in_flight(&self, id: u64) -> Outgoing {
        let limit = self.in_flight;
        let error = ErrorReply::new(
            ErrorCode::QuotaExceeded,
            format!(
                "quota exceeded: this connection already has {limit} requests waiting, its \
                 uid's in_flight quota of {limit}"
            ),
        );
        Outgoing::response(id, Response::Error(error))
    }

    /// Puts the payload passed as memfd `fd` into `request`, a `Send` whose payload field
    /// is empty. The payload is a mapping of the memfd, which the daemon keeps to hand on
    /// as it came — unless it is small, or the daemon keeps `max_memfds` already: then
    /// it is copied and the memfd closed.
    fn attach(&self, request: &mut Request, fd: OwnedFd) -> Result<Option<Arc<Memfd>>, ErrorReply> {
        let invalid = |why: &str| ErrorReply::new(ErrorCode::InvalidArgument, why);
        let Request::Send(send) = request else {
            return Err(invalid("only a send may pass its payload as a descriptor"));
        };
        if !send.payload.is_empty() {
            return Err(invalid(
                "a send that passes its payload as a descriptor must leave its payload field \
                 empty",
            ));
        }
        let config = self.broker.config();
        let (payload, fd) = memfd::map_payload(fd, config.ceilings.max_msg_size).map_err(|e| {
            let code = match e {
                memfd::MemfdError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::InvalidArgument,
            };
            ErrorReply::new(code, e.to_string())
        })?;
        let place = (payload.len() >= KEEP_MEMFD_AT)
            .then(|| self.broker.memfds().enter(config.max_memfds))
            .flatten();
        Ok(match place {
            Some(place) => {
                let len = payload.len() as u64;
                send.payload = payload;
                Some(Arc::new(Memfd {
                    fd,
                    len,
                    _place: place,
                }))
            }
            None => {
                send.payload = Bytes::copy_from_slice(&payload);
                None
            }
        })
    }

    /// Queues the reply to a request.
    fn reply(&mut self, out: Outgoing) -> Result<(), CloseReason> {
        self.output.push(out).map_err(closing)
    }

    /// Queues the error that ends the connection; it is written as the connection closes.
    fn send_connection_error(&mut self, code: ErrorCode, message: &str) {
        let error = Response::Error(ErrorReply::new(code, message));
        let _ = self.output.push(Outgoing::response(0, error));
    }

    fn fail_connection(&mut self, error: ReadError) -> CloseReason {
        match error {
            // A client that exits with replies unread makes the kernel reset the
            // connection: that is an ordinary close, not a fault worth logging.
            ReadError::Io(e) if client_went_away(&e) => CloseReason::ClientClosed,
            ReadError::Io(e) => CloseReason::Io(e.to_string()),
            ReadError::Frame(e) => {
                let message = e.to_string();
                self.send_connection_error(ErrorCode::BadRequest, &message);
                CloseReason::BadFrame(message)
            }
        }
    }
}

/// Why the connection closes when writing its replies failed.
fn write_failed(e: &std::io::Error) -> CloseReason {
    if client_went_away(e) {
        CloseReason::ClientClosed
    } else {
        CloseReason::Io(e.to_string())
    }
}

/// Why the connection closes when its reply could not be queued.
fn closing(e: QueueError) -> CloseReason {
    CloseReason::NotReading(e.to_string())
}

/// The reply to request `id`: its payload as a memfd when the answer carries one.
fn outgoing(id: u64, answer: Answer) -> Outgoing {
    match answer.memfd {
        Some(memfd) => Outgoing::Carried(id, answer.body, memfd),
        None => Outgoing::Reply(id, answer.body),
    }
}

/// Whether `error` means only that the client closed its end first.
fn client_went_away(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}
