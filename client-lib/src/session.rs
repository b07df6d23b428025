//! The protocol session, written once for both clients and free of I/O: the hello and
//! the reading of the welcome, the encoding of a request, the [`Inbound`] buffer that
//! turns the bytes read into frames, the reading of a reply frame (and of the error that
//! ends a connection), and [`operations!`]: the public methods both clients offer, each
//! building its request and extracting its reply. The clients are the transports: they
//! move the bytes this module makes and reads, and route each reply to its waiter.

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};

use bytes::BytesMut;
use ipc_proto::{
    DEFAULT_MAX_FRAME, FEATURE_MEMFD, FLAG_FD, FLAG_TAKES_FD, Frame, FrameDecoder, FrameKind,
    Hello, PROTOCOL_VERSION, Request, Response, Welcome, codec, memfd,
};

use crate::{Error, Result};

/// Requests are gathered up to this size before they go to the socket in one write.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;
/// Bytes read from the socket per read call.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Payloads from this size on are sent as a sealed memfd beside their frame, where the
/// daemon takes them so (its `memfd` feature): written once into the memfd, they are
/// neither copied through the socket nor by the daemon, which keeps them as they came.
pub(crate) const MEMFD_AT: usize = 64 * 1024;

/// Bytes read from the daemon and not yet decoded: a transport reads into `buf` and
/// takes whole frames out, so a frame split across reads is a state, not an error.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub buf: BytesMut,
    /// Memfds that came with the bytes read, for the frames flagged as carrying one.
    pub fds: VecDeque<OwnedFd>,
    decoder: FrameDecoder,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            fds: VecDeque::new(),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
        }
    }
}

impl Inbound {
    /// The next whole frame, if the bytes read so far hold one.
    pub fn frame(&mut self) -> Result<Option<Frame>> {
        let decoded = self.decoder.decode(&mut self.buf);
        decoded.map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Reads what `socket` has (up to [`READ_CHUNK`]) straight onto the end of `buf`,
    /// with the memfds that come with it: one `recvmsg`, and no copy. Returns the number
    /// of bytes read; 0 is the end of the stream.
    pub fn read_from(&mut self, socket: BorrowedFd<'_>) -> std::io::Result<usize> {
        // The frames taken out earlier were decoded and dropped, so this finds the
        // buffer unshared and reuses it.
        self.buf.reserve(READ_CHUNK);
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: the kernel only writes into the spare capacity, and only what it
        // reports as read is taken into the buffer below.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len()) };
        let n = memfd::recv_with_fds(socket, spare, &mut self.fds)?;
        // SAFETY: `n` bytes of the spare capacity were written by the kernel above.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Ok(n)
    }
}

/// Appends request `id` to `out` as [`encode_request`] does, using memfds where the
/// daemon takes them (`memfd`): a large send's payload goes in a sealed memfd, returned
/// to be written with the frame's first byte, and a receive asks for its reply that way.
pub(crate) fn encode_with_memfd(
    id: u64,
    request: &Request,
    max_frame: u32,
    memfd: bool,
    out: &mut BytesMut,
) -> Result<Option<OwnedFd>> {
    let at = out.len();
    match request {
        Request::Send(send) if memfd && send.payload.len() >= MEMFD_AT => {
            let fd = memfd::seal_payload(&send.payload).map_err(Error::Disconnected)?;
            let mut light = send.clone();
            light.payload = bytes::Bytes::new();
            encode_request(id, &Request::Send(light), max_frame, out)?;
            codec::set_flags(&mut out[at..], FLAG_FD);
            Ok(Some(fd))
        }
        Request::Recv(recv) if memfd && !recv.peek => {
            encode_request(id, request, max_frame, out)?;
            codec::set_flags(&mut out[at..], FLAG_TAKES_FD);
            Ok(None)
        }
        _ => encode_request(id, request, max_frame, out).map(|()| None),
    }
}

/// Whether the daemon of `welcome` takes payloads as memfds.
pub(crate) fn takes_memfds(welcome: &Welcome) -> bool {
    welcome.features.iter().any(|f| f == FEATURE_MEMFD)
}

/// The reply a frame flagged [`FLAG_FD`] carries, its message's payload read or mapped
/// from `fd` ([`memfd::receive_payload`]), the memfd that came with it (`None`: none came, which breaks the protocol).
pub(crate) fn with_memfd(
    (id, response): (u64, Response),
    fd: Option<OwnedFd>,
) -> Result<(u64, Response)> {
    let fd = fd.ok_or_else(|| {
        Error::Protocol("a reply flagged as carrying a descriptor came without one".into())
    })?;
    let payload =
        memfd::receive_payload(fd, u64::MAX).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(match response {
        Response::Message(mut message) => {
            message.payload = payload;
            (id, Response::Message(message))
        }
        response => (id, response),
    })
}

/// Appends request `id` to `out`; a request too large for the daemon's `max_frame` is
/// refused here, before anything is written.
pub(crate) fn encode_request(
    id: u64,
    request: &Request,
    max_frame: u32,
    out: &mut BytesMut,
) -> Result<()> {
    codec::encode_request(id, request, max_frame, out).map_err(|e| Error::BadData(e.to_string()))
}

/// The error for a request whose connection ended (or was never usable) for `reason`.
#[cfg(feature = "tokio")]
pub(crate) fn disconnected(reason: &str) -> Error {
    Error::Disconnected(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        reason.to_owned(),
    ))
}

/// The first frame of every connection.
pub(crate) fn hello(client_name: &str) -> Result<BytesMut> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.to_owned(),
    };
    let mut out = BytesMut::new();
    codec::encode_frame(FrameKind::Hello, 0, &hello, DEFAULT_MAX_FRAME, &mut out)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(out)
}

/// What the daemon's answer to the hello says: its welcome, or why it refused.
pub(crate) fn welcome(frame: &Frame) -> Result<Welcome> {
    let protocol = |e: codec::CodecError| Error::Protocol(e.to_string());
    match frame.kind {
        FrameKind::Welcome => codec::decode_body(frame, FrameKind::Welcome).map_err(protocol),
        FrameKind::Response => match codec::decode_body(frame, FrameKind::Response) {
            Ok(Response::Error(e)) => Err(e.into()),
            Ok(_) => Err(Error::Protocol("daemon answered hello with a reply".into())),
            Err(e) => Err(protocol(e)),
        },
        kind => Err(Error::Protocol(format!(
            "daemon answered hello with a {kind:?} frame"
        ))),
    }
}

/// Why a connection ended on a frame from the daemon: the error for the caller, and the
/// reason every other request still waiting on that connection is given.
#[derive(Debug)]
pub(crate) struct Ended {
    pub error: Error,
    pub reason: String,
}

/// The request id and reply a frame from the daemon carries; `Err` when the frame ends
/// the connection (an undecodable reply, or an error for the connection as a whole,
/// after which the daemon closes it).
pub(crate) fn reply_of(frame: &Frame) -> Result<(u64, Response), Ended> {
    let response = codec::decode_response(frame).map_err(|e| Ended {
        reason: format!("undecodable reply: {e}"),
        error: Error::Protocol(e.to_string()),
    })?;
    if frame.request_id == 0 {
        let error = match response {
            Response::Error(e) => Error::from(e),
            _ => Error::Protocol("unsolicited reply from the daemon".into()),
        };
        let reason = error.to_string();
        return Err(Ended { error, reason });
    }
    Ok((frame.request_id, response))
}

/// What a client offers, written once: `operations!([mut], [], [], …)` makes the
/// methods of [`crate::BlockingClient`] (`&mut self`, blocking) and
/// `operations!([], [async], [clone], …, .await)` those of `Client`. Each one-call
/// operation builds its request and extracts its reply; the retry loop over
/// [`crate::reconnect::Retry`] and leased receives are here too, so that a client brings
/// only the I/O: `attempt`, `attempt_on`, `stopping`, `reconnecting` and `nack_on_drop`.
macro_rules! operations {
    (
        [$($mut:tt)?], [$($async:tt)?], [$($clone:ident)?], $delivery:ty, $mailbox:ty,
        $subscription:ty
        $(, $($await:tt)+)?
    ) => {
        /// Makes `request` under the retry rules of [`crate::reconnect`], on as many
        /// connections as they allow, and tells which connection answered.
        $($async)? fn request_tracked(
            &$($mut)? self,
            request: &Request,
        ) -> $crate::Result<(Response, u64)> {
            let retry = $crate::reconnect::Retry::new(request);
            let mut next = std::borrow::Cow::Borrowed(request);
            loop {
                let reconnecting = self.reconnecting();
                let (attempt, generation) = self.attempt(&next)$($($await)+)??;
                let stopping = |why: &str| self.stopping(generation, why);
                if let Some(done) = retry.step(attempt, reconnecting, stopping) {
                    return done.map(|response| (response, generation));
                }
                next = retry.again()?;
            }
        }

        /// Makes `request` and extracts its reply.
        pub(crate) $($async)? fn ask<R>(
            &$($mut)? self,
            request: Request,
            extract: fn(Response) -> $crate::Result<R>,
        ) -> $crate::Result<R> {
            extract(self.request_tracked(&request)$($($await)+)??.0)
        }

        /// Acks (or nacks) a leased message on the connection that holds its lease,
        /// `generation`, and only there.
        $($async)? fn settle(
            &$($mut)? self,
            generation: u64,
            request: &Request,
        ) -> $crate::Result<()> {
            let attempt = self.attempt_on(generation, request)$($($await)+)??;
            $crate::reply::ok($crate::reconnect::settled(request, attempt)?)
        }

        /// Receives one message on a lease (acknowledged receive, at least once): settle
        /// it with `ack` or `nack`; dropping it unsettled nacks it, and so does the
        /// connection closing, so an unprocessed message is redelivered.
        pub $($async)? fn recv_leased(
            &$($mut)? self,
            mailbox: &str,
            options: &$crate::RecvOptions,
            lease: std::time::Duration,
        ) -> $crate::Result<$delivery> {
            let name = ipc_proto::MailboxName::new(mailbox)?;
            let request = Request::Recv(options.lease(lease, false).request(name.clone()));
            let (response, generation) = self.request_tracked(&request)$($($await)+)??;
            let message = $crate::reply::message(response)?;
            let client = self $(.$clone())?;
            Ok($crate::Leased::new(client, generation, name, message, Self::nack_on_drop))
        }

        /// A typed handle on `mailbox` for any serde type, its messages tagged with the
        /// fallback name [`crate::type_tag`]: fine within one program built once, not
        /// between programs (use [`Self::typed`] there).
        pub fn mailbox<T>(&$($mut)? self, mailbox: &str) -> $crate::Result<$mailbox> {
            $crate::TypedMailbox::new(self $(.$clone())?, mailbox)
        }

        /// A typed handle on `mailbox` for a [`crate::MessageType`]: its messages carry
        /// `T::NAME` and are sent in `T::CODEC`, so separately built programs that name
        /// the type alike exchange it.
        pub fn typed<T: $crate::MessageType>(
            &$($mut)? self,
            mailbox: &str,
        ) -> $crate::Result<$mailbox> {
            $crate::TypedMailbox::new_typed(self $(.$clone())?, mailbox)
        }

        /// Connects to the default socket ([`crate::default_socket_path`]).
        pub $($async)? fn connect() -> $crate::Result<Self> {
            Self::connect_to($crate::default_socket_path())$($($await)+)?
        }

        /// Connects to the socket at `path`.
        pub $($async)? fn connect_to(path: impl AsRef<std::path::Path>) -> $crate::Result<Self> {
            Self::connect_named(path, "ipc-client")$($($await)+)?
        }

        /// Reconnects by itself under `policy` when the connection breaks, making again
        /// the requests that are safe to make again ([`crate::reconnect`] has the rules).
        /// The clones of an async client share its policy.
        pub fn with_reconnect($($mut)? self, policy: $crate::ReconnectPolicy) -> Self {
            self.set_reconnect(Some(policy));
            self
        }

        /// Creates a mailbox; `Ok(false)` when it existed and `exist_ok` was set.
        pub $($async)? fn create(
            &$($mut)? self,
            mailbox: &str,
            options: &$crate::CreateOptions,
        ) -> $crate::Result<bool> {
            let request = options.request(ipc_proto::MailboxName::new(mailbox)?);
            self.ask(Request::Create(Box::new(request)), $crate::reply::created)$($($await)+)?
        }

        /// Sends `payload`; returns the message's id in the mailbox.
        pub $($async)? fn send(
            &$($mut)? self,
            mailbox: &str,
            payload: impl Into<bytes::Bytes>,
            options: &$crate::SendOptions,
        ) -> $crate::Result<u64> {
            let name = ipc_proto::MailboxName::new(mailbox)?;
            let request = Request::Send(options.request(name, payload.into()));
            self.ask(request, $crate::reply::sent)$($($await)+)?
        }

        /// Sends each of `payloads` with `options`, in order, in one request (at most
        /// [`ipc_proto::MAX_BATCH`]): each message is checked and charged as a send of its
        /// own. The outcome of each message tried, in order; the batch stops at the first
        /// refused at once, so fewer outcomes than payloads means the rest were not tried.
        pub $($async)? fn send_batch(
            &$($mut)? self,
            mailbox: &str,
            payloads: impl IntoIterator<Item = bytes::Bytes>,
            options: &$crate::SendOptions,
        ) -> $crate::Result<Vec<$crate::Result<u64>>> {
            let name = ipc_proto::MailboxName::new(mailbox)?;
            let request = Request::SendBatch(options.batch(name, payloads));
            self.ask(request, $crate::reply::sent_batch)$($($await)+)?
        }

        /// Receives up to `max` messages (1 to [`ipc_proto::MAX_BATCH`]) in one request:
        /// those there now, oldest first, or — with none there — the first to come,
        /// alone, as `options.wait` allows. Never empty. With a lease in `options`, each
        /// is leased on its terms (settle them by id).
        pub $($async)? fn recv_batch(
            &$($mut)? self,
            mailbox: &str,
            max: u32,
            options: &$crate::RecvOptions,
        ) -> $crate::Result<Vec<ipc_proto::Message>> {
            let request = Request::RecvBatch(options.batch(ipc_proto::MailboxName::new(mailbox)?, max)?);
            self.ask(request, $crate::reply::messages)$($($await)+)?
        }

        /// Receives (or peeks at) one message.
        pub $($async)? fn recv(
            &$($mut)? self,
            mailbox: &str,
            options: &$crate::RecvOptions,
        ) -> $crate::Result<ipc_proto::Message> {
            let request = Request::Recv(options.request(ipc_proto::MailboxName::new(mailbox)?));
            self.ask(request, $crate::reply::message)$($($await)+)?
        }

        /// A copy of the message at position `index` of `mailbox`'s queue (0: the oldest),
        /// left in place: SysV's `MSG_COPY`. `WouldBlock` when there is none there.
        pub $($async)? fn peek_at(&$($mut)? self, mailbox: &str, index: u64) -> $crate::Result<ipc_proto::Message> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::PeekAt { mailbox, index }, $crate::reply::message)$($($await)+)?
        }

        /// Settles leased message `id` of `mailbox` for good (e.g. one leased by
        /// `ipcctl recv --ack`).
        pub $($async)? fn ack(&$($mut)? self, mailbox: &str, id: u64) -> $crate::Result<()> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Ack { mailbox, id }, $crate::reply::ok)$($($await)+)?
        }

        /// Gives leased message `id` of `mailbox` back, to be redelivered.
        pub $($async)? fn nack(&$($mut)? self, mailbox: &str, id: u64) -> $crate::Result<()> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Nack { mailbox, id }, $crate::reply::ok)$($($await)+)?
        }

        /// A mailbox's settings and counters.
        pub $($async)? fn stat(&$($mut)? self, mailbox: &str) -> $crate::Result<$crate::MailboxInfo> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Stat { mailbox }, $crate::reply::mailbox)$($($await)+)?
        }

        /// The mailboxes the caller may read or owns.
        pub $($async)? fn list(&$($mut)? self) -> $crate::Result<Vec<$crate::MailboxInfo>> {
            self.ask(Request::List, $crate::reply::mailboxes)$($($await)+)?
        }

        /// Changes a mailbox's settings; returns them as they now are.
        pub $($async)? fn set(
            &$($mut)? self,
            mailbox: &str,
            changes: $crate::MailboxChanges,
        ) -> $crate::Result<$crate::MailboxInfo> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Set { mailbox, changes: Box::new(changes) }, $crate::reply::mailbox)$($($await)+)?
        }

        /// Drops every queued message; returns how many.
        pub $($async)? fn purge(&$($mut)? self, mailbox: &str) -> $crate::Result<u64> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Purge { mailbox }, $crate::reply::purged)$($($await)+)?
        }

        /// Removes a mailbox; receivers waiting on it get `Removed`.
        pub $($async)? fn remove(&$($mut)? self, mailbox: &str) -> $crate::Result<()> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            self.ask(Request::Remove { mailbox }, $crate::reply::ok)$($($await)+)?
        }

        /// Binds `mailbox` (which the caller must own) to a topic pattern: `.`-separated
        /// segments, `*` for any one segment, `>` (last) for one or more. What is published
        /// on a matching topic gets a copy in it.
        pub $($async)? fn bind(&$($mut)? self, mailbox: &str, pattern: &str) -> $crate::Result<()> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            let pattern = ipc_proto::TopicPattern::new(pattern)?;
            self.ask(Request::Bind { mailbox, pattern }, $crate::reply::ok)$($($await)+)?
        }

        /// Undoes a [`Self::bind`].
        pub $($async)? fn unbind(&$($mut)? self, mailbox: &str, pattern: &str) -> $crate::Result<()> {
            let mailbox = ipc_proto::MailboxName::new(mailbox)?;
            let pattern = ipc_proto::TopicPattern::new(pattern)?;
            self.ask(Request::Unbind { mailbox, pattern }, $crate::reply::ok)$($($await)+)?
        }

        /// Subscribes to a topic pattern: the daemon makes a private mailbox bound to it
        /// for this connection, and the subscription yields what is published on a
        /// matching topic from then on. The mailbox goes when the connection closes.
        pub $($async)? fn subscribe(&$($mut)? self, pattern: &str) -> $crate::Result<$subscription> {
            let pattern = ipc_proto::TopicPattern::new(pattern)?;
            let name = self.ask(Request::Subscribe { pattern }, $crate::reply::subscribed)$($($await)+)??;
            Ok(<$subscription>::new(self $(.$clone())?, name))
        }

        /// Publishes `payload` on `topic`: a copy in every mailbox bound to a matching
        /// pattern (with `options`' type, headers and TTL). Says how many took it and
        /// how many refused; one full mailbox does not fail the rest.
        pub $($async)? fn publish(
            &$($mut)? self,
            topic: &str,
            payload: impl Into<bytes::Bytes>,
            options: &$crate::SendOptions,
        ) -> $crate::Result<ipc_proto::PublishReport> {
            let request = options.publish(ipc_proto::Topic::new(topic)?, payload.into())?;
            self.ask(Request::Publish(request), $crate::reply::published)$($($await)+)?
        }

        /// Sends `payload` to `mailbox` as a request and waits up to `timeout` for its
        /// reply, which a responder sends with [`Self::reply`]. Fails with `TimedOut`
        /// when none comes in time (the request then expires undelivered).
        pub $($async)? fn call(
            &$($mut)? self,
            mailbox: &str,
            payload: impl Into<bytes::Bytes>,
            timeout: std::time::Duration,
        ) -> $crate::Result<ipc_proto::Message> {
            self.call_with(mailbox, payload, timeout, &$crate::SendOptions::default())$($($await)+)?
        }

        /// [`Self::call`] with a request type and headers (`content_type`) from `options`.
        pub $($async)? fn call_with(
            &$($mut)? self,
            mailbox: &str,
            payload: impl Into<bytes::Bytes>,
            timeout: std::time::Duration,
            options: &$crate::SendOptions,
        ) -> $crate::Result<ipc_proto::Message> {
            let name = ipc_proto::MailboxName::new(mailbox)?;
            let request = Request::Call(options.call(name, payload.into(), timeout));
            self.ask(request, $crate::reply::message)$($($await)+)?
        }

        /// Answers `request` (a message received from a mailbox that [`Self::call`]
        /// sent to) with `payload`: sent to its `reply_to` with its `correlation_id`.
        /// Refused when the call no longer waits (it timed out or was answered).
        pub $($async)? fn reply(
            &$($mut)? self,
            request: &ipc_proto::Message,
            payload: impl Into<bytes::Bytes>,
        ) -> $crate::Result<()> {
            self.reply_with(request, payload, &$crate::SendOptions::default())$($($await)+)?
        }

        /// [`Self::reply`] with a message type and headers (`content_type`) from
        /// `options`; the reply's `correlation_id` is always the request's.
        pub $($async)? fn reply_with(
            &$($mut)? self,
            request: &ipc_proto::Message,
            payload: impl Into<bytes::Bytes>,
            options: &$crate::SendOptions,
        ) -> $crate::Result<()> {
            let send = $crate::typed::reply_to(request, payload.into(), options)?;
            self.ask(Request::Send(send), $crate::reply::sent)$($($await)+)?.map(drop)
        }

        /// [`Self::publish`] of a typed value, tagged with its name and codec; receivers
        /// read it with [`crate::MessageType::from_message`] or a typed handle.
        pub $($async)? fn publish_typed<T: $crate::MessageType>(
            &$($mut)? self,
            topic: &str,
            value: &T,
        ) -> $crate::Result<ipc_proto::PublishReport> {
            let (options, payload) = value.to_message()?;
            self.publish(topic, payload, &options)$($($await)+)?
        }

        /// [`Self::call`] with a typed request and a typed reply.
        pub $($async)? fn call_typed<Q: $crate::MessageType, R: $crate::MessageType>(
            &$($mut)? self,
            mailbox: &str,
            request: &Q,
            timeout: std::time::Duration,
        ) -> $crate::Result<R> {
            let (options, payload) = request.to_message()?;
            let reply = self.call_with(mailbox, payload, timeout, &options)$($($await)+)??;
            R::from_message(&reply)
        }

        /// [`Self::reply`] with a typed value.
        pub $($async)? fn reply_typed<R: $crate::MessageType>(
            &$($mut)? self,
            request: &ipc_proto::Message,
            value: &R,
        ) -> $crate::Result<()> {
            let (options, payload) = value.to_message()?;
            self.reply_with(request, payload, &options)$($($await)+)?
        }

        /// The daemon's counters and limits.
        pub $($async)? fn status(&$($mut)? self) -> $crate::Result<$crate::DaemonStatus> {
            self.ask(Request::Status, $crate::reply::status)$($($await)+)?
        }
    };
}
pub(crate) use operations;

/// What the clients' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use bytes::BytesMut;
    use ipc_proto::{ErrorCode, ErrorReply, FrameKind, Response, codec};

    /// What a daemon that refuses a connection writes before it closes it.
    pub fn refusal() -> BytesMut {
        let error = Response::Error(ErrorReply::new(
            ErrorCode::QuotaExceeded,
            "quota exceeded: 32 connections are waiting to send their hello",
        ));
        let mut frame = BytesMut::new();
        codec::encode_frame(FrameKind::Response, 0, &error, u32::MAX, &mut frame).unwrap();
        frame
    }
}
