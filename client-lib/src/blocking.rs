//! The blocking client: one `std` Unix socket, no threads, no runtime. Requests can be
//! pipelined with [`BlockingClient::submit`] and [`BlockingClient::next_reply`]; the
//! one-call methods use the same machinery and keep replies that arrive for other
//! requests until they are asked for.
//!
//! With a [`ReconnectPolicy`] ([`BlockingClient::with_reconnect`]) a broken connection is
//! replaced by a new one, and the one-call methods make again what is safe to make again
//! (see [`crate::reconnect`] for the rules); without one, a broken connection stays
//! broken and every later call fails with [`Error::Disconnected`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipc_proto::{FLAG_FD, Request, Response, Welcome, memfd};
use serde::{Serialize, de::DeserializeOwned};

use crate::reconnect::{self, Attempt, Backoff, ReconnectPolicy};
use crate::session::{self, Inbound, WRITE_BATCH, operations};
use crate::subscription::{BATCH, Subscribed};
use crate::typed::{Leased, TypedMailbox, settle_operations, typed_operations};
use crate::{Error, Result};

/// The most requests [`BlockingClient::submit`] leaves unread by default: well below the
/// daemon's bound on the replies it queues for one connection (`max_queued_replies`,
/// 1024), past which it stops reading requests — and a client that writes without
/// reading would then wait for ever on its own write.
pub const DEFAULT_PIPELINE_WINDOW: usize = 512;

/// A connection to ipcd with blocking calls.
#[derive(Debug)]
pub struct BlockingClient {
    /// The live connection; `None` once it has broken, until a new one is made.
    conn: Option<Connection>,
    /// Counts connections made: a lease belongs to the connection that took it.
    generation: u64,
    /// When the current (or last) connection was made, to tell a connection that broke
    /// at once from one that served for a while.
    opened: Instant,
    /// The pause before reconnecting after connections that keep breaking at once.
    churn: Duration,
    next_id: u64,
    /// Requests with lower ids were made on a connection that has since broken: a reply
    /// to one of them that is not in the stash will never come.
    first_live_id: u64,
    /// Replies that arrived while the caller waited for another one…
    stash: HashMap<u64, Response>,
    /// …and their ids in the order they arrived, for [`Self::next_reply`]; an id whose
    /// reply was taken by [`Self::wait_for`] is skipped when met.
    arrival: VecDeque<u64>,
    /// Requests written (or queued) on the current connection whose replies have not
    /// been read off it.
    unread: usize,
    /// `submit` reads replies into the stash before it lets `unread` go past this.
    window: usize,
    /// A signal ends a wait for a reply (see [`Self::set_interruptible`]).
    interruptible: bool,
    /// What the daemon of the current connection said about itself.
    welcome: Welcome,
    path: PathBuf,
    /// Given again to the daemon when reconnecting.
    client_name: String,
    /// `None`: a broken connection stays broken.
    reconnect: Option<ReconnectPolicy>,
    /// Why the last connection broke, for the calls that find it broken.
    broken: Option<(io::ErrorKind, String)>,
}

/// One connection's socket and buffers. The socket is non-blocking, and the connection
/// waits for it in `poll`: a thread blocked in `recv` on a Unix socket is also woken
/// whenever the daemon reads from it (a read frees write space, and readers and writers
/// of a socket wait in one queue), so a client waiting for its replies would be woken for
/// nothing once per request it sent; `poll` wakes only for the events asked for.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    /// How long one wait for the socket may take (the handshake's); `None`: no limit.
    timeout: Option<Duration>,
    inbound: Inbound,
    /// Encoded requests not yet written.
    wbuf: BytesMut,
    /// Payloads passed as memfds, each with the offset in `wbuf` of the frame it goes
    /// with: written with that frame's first byte, in a `sendmsg` of its own.
    fds: VecDeque<(usize, OwnedFd)>,
}

/// Whether a read waits for bytes not yet on the socket, and whether a signal ends the
/// wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    No,
    Yes,
    Interruptible,
}

/// A write that failed, and how much of the buffer had gone out before it did.
struct WriteFailed {
    written: usize,
    error: io::Error,
}

impl Connection {
    /// Connects and shakes hands; with `timeout`, neither may take longer (a daemon
    /// that accepted but never answers must not hold a reconnection for ever).
    fn open(path: &Path, client_name: &str, timeout: Option<Duration>) -> Result<(Self, Welcome)> {
        let stream = UnixStream::connect(path).map_err(|source| Error::NotReachable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, client_name, timeout)
    }

    /// Says hello on a connected `stream` and reads the welcome.
    fn handshake(
        stream: UnixStream,
        client_name: &str,
        timeout: Option<Duration>,
    ) -> Result<(Self, Welcome)> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        stream.set_nonblocking(true).map_err(Error::Disconnected)?;
        let mut conn = Self {
            stream,
            timeout,
            inbound: Inbound::default(),
            wbuf: session::hello(client_name)?,
            fds: VecDeque::new(),
        };
        if let Err(failed) = conn.flush() {
            // A daemon that refuses a connection says why and closes it at once, maybe
            // before the hello is written: its reason is still there to read, and says
            // more than the broken pipe.
            let refusal = match conn.read_frame(Wait::Yes) {
                Ok(Some(frame)) => session::welcome(&frame).err(),
                _ => None,
            };
            return Err(refusal.unwrap_or(Error::Disconnected(failed.error)));
        }
        let frame = conn.read_frame(Wait::Yes)?;
        let welcome = session::welcome(&frame.expect("a waiting read returns a frame"))?;
        conn.timeout = None;
        Ok((conn, welcome))
    }

    /// Writes the whole buffer, or says how much of it went out before the failure.
    fn flush(&mut self) -> Result<(), WriteFailed> {
        let mut written = 0;
        while written < self.wbuf.len() {
            // Up to the next frame with a descriptor; that frame starts a write of its own,
            // with its descriptor.
            let next_fd = self.fds.front().map(|(at, _)| *at);
            let write = match next_fd {
                Some(at) if at == written => {
                    // Up to the frame with the next descriptor, which needs a write of its
                    // own.
                    let end = self.fds.get(1).map_or(self.wbuf.len(), |(next, _)| *next);
                    let (_, fd) = self.fds.front().expect("checked");
                    memfd::send_with_fd(self.stream.as_fd(), &self.wbuf[written..end], fd.as_fd())
                        .inspect(|_| drop(self.fds.pop_front()))
                }
                Some(at) => self.stream.write(&self.wbuf[written..at]),
                None => self.stream.write(&self.wbuf[written..]),
            };
            match write {
                Ok(0) => {
                    return Err(WriteFailed {
                        written,
                        error: io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(libc::POLLOUT)
                        .map_err(|error| WriteFailed { written, error })?;
                }
                Err(error) => return Err(WriteFailed { written, error }),
            }
        }
        self.wbuf.clear();
        debug_assert!(self.fds.is_empty(), "every descriptor went with its frame");
        Ok(())
    }

    /// The next frame; with `Wait::No`, `None` rather than waiting for bytes that are
    /// not yet on the socket; with `Wait::Interruptible`, [`Error::Interrupted`] when a
    /// signal ends the wait.
    fn read_frame(&mut self, wait: Wait) -> Result<Option<ipc_proto::Frame>> {
        loop {
            if let Some(frame) = self.inbound.frame()? {
                return Ok(Some(frame));
            }
            match self.inbound.read_from(self.stream.as_fd()) {
                Ok(0) => {
                    return Err(Error::Disconnected(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the daemon closed the connection",
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait == Wait::No => {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.wait_for_events(libc::POLLIN, wait == Wait::Interruptible) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            return Err(Error::Interrupted);
                        }
                        Err(e) => return Err(Error::Disconnected(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Disconnected(e)),
            }
        }
    }

    /// Waits until the socket has `events` (or an error or hang-up, which the next read
    /// or write reports), within the connection's timeout.
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        self.wait_for_events(events, false)
    }

    /// [`Self::wait`]; `interruptible`, a signal ends it with `ErrorKind::Interrupted`.
    fn wait_for_events(&self, events: libc::c_short, interruptible: bool) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events,
            revents: 0,
        };
        let timeout = self.timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        loop {
            // SAFETY: `fd` is one valid pollfd that outlives the call.
            match unsafe { libc::poll(&mut fd, 1, timeout) } {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the daemon did not answer in time",
                    ));
                }
                n if n > 0 => return Ok(()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted || interruptible {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl BlockingClient {
    /// Connects to the socket at `path`, giving the daemon `client_name` for its logs.
    /// Fails at once if no daemon answers; reconnecting is only for connections that
    /// were made (see [`Self::with_reconnect`]).
    pub fn connect_named(path: impl AsRef<Path>, client_name: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (conn, welcome) = Connection::open(&path, client_name, None)?;
        Ok(Self {
            conn: Some(conn),
            generation: 1,
            opened: Instant::now(),
            churn: Duration::ZERO,
            next_id: 1,
            first_live_id: 1,
            stash: HashMap::new(),
            arrival: VecDeque::new(),
            unread: 0,
            window: DEFAULT_PIPELINE_WINDOW,
            interruptible: false,
            welcome,
            path,
            client_name: client_name.to_owned(),
            reconnect: None,
            broken: None,
        })
    }

    /// Sets or clears (`None`: a broken connection stays broken) the reconnect policy.
    pub fn set_reconnect(&mut self, policy: Option<ReconnectPolicy>) {
        self.reconnect = policy;
    }

    /// Sets how many requests [`Self::submit`] may leave unanswered (at least 1; by
    /// default [`DEFAULT_PIPELINE_WINDOW`]): past it, `submit` first waits for a reply and
    /// keeps it for [`Self::next_reply`]. A caller that parks more receives than this on
    /// purpose, none of which is answered soon, raises it.
    pub fn set_pipeline_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// Makes a signal end a wait for a reply, as it ends a blocked `msgrcv(2)` with
    /// `EINTR` (whether or not the handler was installed with `SA_RESTART`): the one-call
    /// methods then withdraw their request at the daemon and fail with
    /// [`Error::Interrupted`] — unless it completed first, in which case they return its
    /// outcome as usual. Off by default: a wait goes on through signals.
    pub fn set_interruptible(&mut self, interruptible: bool) {
        self.interruptible = interruptible;
    }

    /// What the daemon said about itself when the current connection was made.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Makes a new connection now, waiting for the daemon as `policy` allows, whether or
    /// not the current one is still up. Requests in flight on the old connection are
    /// lost (their [`Self::wait_for`] fails with [`Error::Disconnected`]); leases it
    /// held end.
    pub fn reconnect(&mut self, policy: &ReconnectPolicy) -> Result<()> {
        if self.conn.is_some() {
            let why = "the connection was replaced";
            self.break_connection(io::ErrorKind::ConnectionAborted, why);
        }
        std::thread::sleep(reconnect::churn_pause(policy, self.opened, &mut self.churn));
        let mut backoff = Backoff::new(policy);
        loop {
            match Connection::open(&self.path, &self.client_name, Some(backoff.left())) {
                Ok((conn, welcome)) => {
                    self.conn = Some(conn);
                    self.welcome = welcome;
                    self.generation += 1;
                    self.opened = Instant::now();
                    self.broken = None;
                    return Ok(());
                }
                Err(e) => std::thread::sleep(backoff.failed(&self.path, e)?),
            }
        }
    }

    /// Forgets a connection that failed (`kind`, `why`): what was in flight on it will
    /// not be answered.
    fn break_connection(&mut self, kind: io::ErrorKind, why: impl ToString) {
        self.conn = None;
        self.unread = 0;
        self.first_live_id = self.next_id;
        self.broken = Some((kind, why.to_string()));
    }

    fn broken_error(&self) -> Error {
        let (kind, text) = self
            .broken
            .clone()
            .unwrap_or((io::ErrorKind::NotConnected, "not connected".to_owned()));
        Error::Disconnected(io::Error::new(kind, text))
    }

    /// The live connection, making a new one first if it broke and a policy allows.
    fn connection(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            match self.reconnect {
                Some(policy) => self.reconnect(&policy)?,
                None => return Err(self.broken_error()),
            }
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// Encodes `request` onto the connection's write buffer and returns its id.
    fn queue(&mut self, request: &Request) -> Result<u64> {
        self.connection()?;
        // Read after connecting: a new daemon may allow another frame size.
        let max_frame = self.welcome.max_frame;
        let id = self.next_id;
        let memfd = session::takes_memfds(&self.welcome);
        let conn = self.conn.as_mut().expect("connected");
        let at = conn.wbuf.len();
        if let Some(fd) = session::encode_with_memfd(id, request, max_frame, memfd, &mut conn.wbuf)?
        {
            conn.fds.push_back((at, fd));
        }
        self.next_id += 1;
        self.unread += 1;
        Ok(id)
    }

    /// Queues `request` for sending and returns its id. Nothing is written until the
    /// batch is large, [`Self::flush`] is called, or a reply is awaited. If the
    /// connection has broken, a new one is made first when a reconnect policy is set;
    /// requests submitted are never made again by the client itself.
    ///
    /// With the pipeline window full ([`Self::set_pipeline_window`]), it first waits for
    /// a reply and keeps it: a daemon whose replies go unread stops reading requests,
    /// and a client that only wrote would then wait for ever.
    pub fn submit(&mut self, request: &Request) -> Result<u64> {
        while self.conn.is_some() && self.unread >= self.window {
            let (id, response) = self.read_reply()?;
            self.keep(id, response);
        }
        let id = self.queue(request)?;
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.wbuf.len() >= WRITE_BATCH)
        {
            self.flush()?;
        }
        Ok(id)
    }

    /// Writes every queued request.
    pub fn flush(&mut self) -> Result<()> {
        self.write_out().map_err(|f| Error::Disconnected(f.error))
    }

    /// Writes every queued request; a failure breaks the connection.
    fn write_out(&mut self) -> Result<(), WriteFailed> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.flush()
            .inspect_err(|f| self.break_connection(f.error.kind(), &f.error))
    }

    /// Flushes, then waits for the next reply to any submitted request, in the order the
    /// daemon sends them (which need not be submission order).
    pub fn next_reply(&mut self) -> Result<(u64, Response)> {
        match self.take_kept() {
            Some(kept) => Ok(kept),
            None => self.read_reply(),
        }
    }

    /// Keeps a reply read while the caller waited for another.
    fn keep(&mut self, id: u64, response: Response) {
        self.stash.insert(id, response);
        self.arrival.push_back(id);
    }

    /// The earliest kept reply not yet taken.
    fn take_kept(&mut self) -> Option<(u64, Response)> {
        while let Some(id) = self.arrival.pop_front() {
            if let Some(response) = self.stash.remove(&id) {
                return Some((id, response));
            }
        }
        None
    }

    /// The next reply to any submitted request if one has already arrived, without
    /// waiting and without writing what is queued: for a caller that has other work to
    /// finish (writing out what it received, say) before it blocks in
    /// [`Self::next_reply`].
    pub fn try_next_reply(&mut self) -> Result<Option<(u64, Response)>> {
        match self.take_kept() {
            Some(kept) => Ok(Some(kept)),
            None => self.read(Wait::No),
        }
    }

    /// Flushes, then waits for the reply to request `id`. Interruptible
    /// ([`Self::set_interruptible`]), a signal withdraws the request: it is cancelled at
    /// the daemon, and its reply awaited all the same — `Cancelled` then is
    /// [`Error::Interrupted`], anything else (it completed first) its outcome.
    pub fn wait_for(&mut self, id: u64) -> Result<Response> {
        match self.wait_for_reply(id, self.interruptible) {
            Err(Error::Interrupted) => self.withdraw(id),
            outcome => outcome,
        }
    }

    fn wait_for_reply(&mut self, id: u64, interruptible: bool) -> Result<Response> {
        if let Some(response) = self.stash.remove(&id) {
            return Ok(response);
        }
        loop {
            if id < self.first_live_id {
                return Err(self.broken_error());
            }
            let (got, response) = self.read_reply_interruptible(interruptible)?;
            if got == id {
                return Ok(response);
            }
            self.keep(got, response);
        }
    }

    /// Cancels request `id`, interrupted by a signal while it waited, and says what
    /// became of it; the cancel's own reply is read and dropped.
    fn withdraw(&mut self, id: u64) -> Result<Response> {
        let cancel = self.queue(&Request::Cancel { request_id: id })?;
        let outcome = self.wait_for_reply(id, false);
        // The cancel is answered at once; its reply must not linger for `next_reply`.
        if self.conn.is_some() {
            let _ = self.wait_for_reply(cancel, false);
        }
        match outcome? {
            Response::Error(e) if e.code == ipc_proto::ErrorCode::Cancelled => {
                Err(Error::Interrupted)
            }
            done => Ok(done),
        }
    }

    /// Sends one request and waits for its reply. With a reconnect policy, a request
    /// whose connection breaks first is made again on a new connection when that is
    /// safe ([`crate::reconnect`]).
    pub fn request(&mut self, request: &Request) -> Result<Response> {
        Ok(self.request_tracked(request)?.0)
    }

    fn reconnecting(&self) -> bool {
        self.reconnect.is_some()
    }

    /// One try at `request` (on a new connection if the last one broke) and the
    /// connection it went to. What `submit` queued goes out first, on its own, so that a
    /// failed write of this request alone tells whether any of it reached the daemon.
    fn attempt(&mut self, request: &Request) -> Result<(Attempt, u64)> {
        // A failure here breaks the connection, and `queue` deals with that.
        let _ = self.write_out();
        let id = self.queue(request)?;
        let attempt = match self.write_out() {
            Ok(()) => self
                .wait_for(id)
                .map_or_else(Attempt::Lost, Attempt::Answered),
            Err(f) if f.written == 0 => Attempt::NotSent(Error::Disconnected(f.error)),
            Err(f) => Attempt::Lost(Error::Disconnected(f.error)),
        };
        Ok((attempt, self.generation))
    }

    /// One try at `request` on connection `generation`, never on another.
    fn attempt_on(&mut self, generation: u64, request: &Request) -> Result<Attempt> {
        if self.generation == generation {
            let _ = self.write_out();
        }
        if self.generation != generation || self.conn.is_none() {
            return Ok(Attempt::NotSent(self.broken_error()));
        }
        Ok(self.attempt(request)?.0)
    }

    /// The daemon that says it is stopping closes the connection after this reply.
    fn stopping(&mut self, _generation: u64, why: &str) {
        self.break_connection(io::ErrorKind::ConnectionAborted, why);
    }

    /// Nacks a delivery dropped unsettled, on the connection that holds its lease.
    fn nack_on_drop(client: &mut &mut Self, generation: u64, nack: &Request) {
        let _ = client.settle(generation, nack);
    }

    /// Flushes, then waits for the next reply on the connection.
    fn read_reply(&mut self) -> Result<(u64, Response)> {
        self.read_reply_interruptible(false)
    }

    /// [`Self::read_reply`]; `interruptible`, a signal ends the wait with
    /// [`Error::Interrupted`], the connection intact.
    fn read_reply_interruptible(&mut self, interruptible: bool) -> Result<(u64, Response)> {
        self.flush()?;
        let wait = if interruptible {
            Wait::Interruptible
        } else {
            Wait::Yes
        };
        Ok(self.read(wait)?.expect("a waiting read returns a reply"))
    }

    /// The next reply on the connection; with `Wait::No`, `None` rather than waiting for
    /// bytes not yet on the socket. A failure breaks the connection; an interruption
    /// does not.
    fn read(&mut self, wait: Wait) -> Result<Option<(u64, Response)>> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.broken_error());
        };
        match conn.read_frame(wait) {
            Ok(Some(frame)) if frame.flags & FLAG_FD != 0 => {
                let fd = conn.inbound.fds.pop_front();
                let reply = self.reply_of(frame)?;
                session::with_memfd(reply, fd)
                    .map(Some)
                    .map_err(|e| self.broken_by(e))
            }
            Ok(Some(frame)) => self.reply_of(frame).map(Some),
            Ok(None) => Ok(None),
            Err(Error::Interrupted) => Err(Error::Interrupted),
            Err(e) => Err(self.broken_by(e)),
        }
    }

    /// Breaks the connection because reading from it failed with `e`, and returns `e`.
    fn broken_by(&mut self, e: Error) -> Error {
        let (kind, why) = match &e {
            Error::Disconnected(io) => (io.kind(), io.to_string()),
            other => (io::ErrorKind::Other, other.to_string()),
        };
        self.break_connection(kind, why);
        e
    }

    /// The request id and reply a frame read from the daemon carries.
    fn reply_of(&mut self, frame: ipc_proto::Frame) -> Result<(u64, Response)> {
        match session::reply_of(&frame) {
            Ok(reply) => {
                self.unread = self.unread.saturating_sub(1);
                Ok(reply)
            }
            Err(ended) => {
                self.break_connection(io::ErrorKind::ConnectionAborted, ended.reason);
                Err(ended.error)
            }
        }
    }

    operations!(
        [mut],
        [],
        [],
        BlockingDelivery<'_>,
        BlockingMailbox<'_, T>,
        BlockingSubscription<'_>
    );
}

/// A typed view of one mailbox through a [`BlockingClient`], which it borrows (see
/// [`TypedMailbox`]).
pub type BlockingMailbox<'c, T> = TypedMailbox<&'c mut BlockingClient, T>;

impl<T: Serialize + DeserializeOwned> BlockingMailbox<'_, T> {
    typed_operations!([mut], []);
}

/// A subscription through a [`BlockingClient`], which it borrows (see [`Subscribed`]):
/// an `Iterator` of the messages published on matching topics, waiting for each.
pub type BlockingSubscription<'c> = Subscribed<&'c mut BlockingClient>;

impl Iterator for BlockingSubscription<'_> {
    type Item = Result<ipc_proto::Message>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(message) = self.pop() {
            return Some(Ok(message));
        }
        if self.ended() {
            return None;
        }
        let mailbox = self.mailbox().clone();
        let options = crate::RecvOptions::default();
        let received = self.client.recv_batch(mailbox.as_str(), BATCH, &options);
        self.take(received)
    }
}

/// A message received on a lease by a [`BlockingClient`], which it borrows until settled
/// (see [`Leased`]).
pub type BlockingDelivery<'a> = Leased<&'a mut BlockingClient>;

impl BlockingDelivery<'_> {
    settle_operations!([]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::refusal;

    /// The daemon refused and closed before the hello went out: the hello's write fails,
    /// and the client still reports the daemon's reason, not a broken pipe.
    #[test]
    fn a_refusal_that_beats_the_hello_is_still_reported() {
        let (client, mut daemon) = UnixStream::pair().unwrap();
        io::Write::write_all(&mut daemon, &refusal()).unwrap();
        drop(daemon);
        let e = Connection::handshake(client, "t", None).expect_err("refused");
        assert!(matches!(e, Error::QuotaExceeded(_)), "{e:?}");
        assert!(e.to_string().contains("waiting to send their hello"), "{e}");
    }

    /// A daemon that went away without a word: the write's own error.
    #[test]
    fn a_close_without_a_reason_is_a_disconnection() {
        let (client, daemon) = UnixStream::pair().unwrap();
        drop(daemon);
        let e = Connection::handshake(client, "t", None).expect_err("closed");
        assert!(matches!(e, Error::Disconnected(_)), "{e:?}");
    }
}
