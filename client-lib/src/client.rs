//! The async client on tokio. One connection is shared by every clone of a [`Client`];
//! a writer task batches encoded requests onto the socket and a reader task hands each
//! reply to the future waiting for its request id, so any number of tasks can have
//! requests in flight at once. Dropping a waiting `recv`/`send` future cancels the
//! request at the daemon, so an abandoned receive does not swallow a message.
//!
//! When the connection breaks, its reader (or writer) task fails every request waiting
//! on it and ends. With a [`ReconnectPolicy`] ([`Client::with_reconnect`]) the next
//! request — or a waiting one that is safe to make again — makes a new connection, one
//! task doing it for all, and gets new reader and writer tasks; the rules of what is
//! made again are those of the blocking client ([`crate::reconnect`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ipc_proto::{FLAG_FD, Frame, Request, Response, Wait, Welcome, memfd};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::reconnect::{self, Attempt, Backoff, ReconnectPolicy};
use crate::session::{self, Inbound, WRITE_BATCH, disconnected, operations};
use crate::subscription::{BATCH, Subscribed};
use crate::typed::{Leased, TypedMailbox, settle_operations, typed_operations};
use crate::{Error, Result};

/// The most requests all clones together have in flight (queued to be written or
/// waiting for their replies); a request past it waits for one of them to finish. This
/// bounds what waits in the writer's queue, and stays below the daemon's bound on the
/// replies it queues for one connection (`max_queued_replies`, 1024).
const WINDOW: usize = crate::DEFAULT_PIPELINE_WINDOW;

/// An async connection to ipcd. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: AtomicU64,
    /// What the daemon said at the first connection.
    welcome: Welcome,
    path: PathBuf,
    /// Given again to the daemon when reconnecting.
    client_name: String,
    /// The connection new requests go to; replaced by reconnecting.
    conn: Mutex<Arc<Conn>>,
    /// `None`: a broken connection stays broken.
    policy: Mutex<Option<ReconnectPolicy>>,
    /// Held by the one task that reconnects while the others wait for its outcome.
    reconnecting: tokio::sync::Mutex<Reconnecting>,
    /// Reconnections that failed, so that a task that waited for another's attempt
    /// takes its outcome instead of waiting all over again.
    failures: AtomicU64,
    /// One permit per request in flight, up to [`WINDOW`]. Cancels and the nacks of
    /// dropped deliveries take none: they are sent from `Drop`, which cannot wait.
    window: Semaphore,
}

/// What the reconnecting task leaves for the others.
#[derive(Debug, Default)]
struct Reconnecting {
    /// The last failed reconnection's error, as text.
    last_failure: Option<(std::io::ErrorKind, String)>,
    /// The pause before reconnecting after connections that keep breaking at once.
    churn: Duration,
}

/// One connection: where its requests go and who waits for its replies.
#[derive(Debug)]
struct Conn {
    /// Counts connections made: a lease belongs to the connection that took it.
    generation: u64,
    opened: Instant,
    max_frame: u32,
    /// Whether the daemon takes payloads as memfds.
    memfd: bool,
    frames: mpsc::UnboundedSender<Outgoing>,
    pending: Arc<Mutex<Pending>>,
    /// Set when the daemon said it is shutting down: requests in flight on this
    /// connection still get their replies, new ones go to a new connection.
    draining: AtomicBool,
}

impl Conn {
    /// Queues `request` without waiting for its reply, or for room in the window: this
    /// is for `Drop`, which cannot wait.
    fn send_unanswered(&self, inner: &Inner, request: &Request) {
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        if session::encode_request(id, request, u32::MAX, &mut buf).is_ok() {
            let _ = self.frames.send((buf.freeze(), None));
        }
    }

    /// Whether new requests may go to this connection; else why not.
    fn unusable(&self) -> Option<String> {
        if let Some(reason) = &self.pending.lock().expect("pending lock").closed {
            return Some(reason.clone());
        }
        self.draining
            .load(Ordering::Relaxed)
            .then(|| "the daemon is shutting down".to_owned())
    }
}

/// Requests waiting for replies, and why the connection ended once it has.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Response>>>,
    closed: Option<String>,
}

impl Client {
    /// Connects to the socket at `path`, giving the daemon `client_name` for its logs.
    /// Fails at once if no daemon answers; reconnecting is only for connections that
    /// were made (see [`Self::with_reconnect`]).
    pub async fn connect_named(path: impl AsRef<Path>, client_name: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (conn, welcome) = open(&path, client_name, 1, None).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                welcome,
                path,
                client_name: client_name.to_owned(),
                conn: Mutex::new(conn),
                policy: Mutex::new(None),
                reconnecting: tokio::sync::Mutex::new(Reconnecting::default()),
                failures: AtomicU64::new(0),
                window: Semaphore::new(WINDOW),
            }),
        })
    }

    /// Sets or clears (`None`: a broken connection stays broken) the reconnect policy of
    /// this client and every clone.
    pub fn set_reconnect(&self, policy: Option<ReconnectPolicy>) {
        *self.inner.policy.lock().expect("policy lock") = policy;
    }

    /// What the daemon said about itself when this client first connected (after a
    /// reconnection the daemon may be another process, but the protocol is the same).
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    fn current(&self) -> Arc<Conn> {
        self.inner.conn.lock().expect("conn lock").clone()
    }

    /// The connection to use now: the current one if it can take requests; else, under
    /// a policy, a new one (made by one task for all).
    async fn connection(&self, policy: Option<&ReconnectPolicy>) -> Result<Arc<Conn>> {
        let conn = self.current();
        let Some(reason) = conn.unusable() else {
            return Ok(conn);
        };
        let Some(policy) = policy else {
            return Err(disconnected(&reason));
        };
        let failures = self.inner.failures.load(Ordering::Acquire);
        let mut state = self.inner.reconnecting.lock().await;
        let now = self.current();
        if now.generation != conn.generation && now.unusable().is_none() {
            return Ok(now);
        }
        if self.inner.failures.load(Ordering::Acquire) != failures {
            // Another task gave up while this one waited: its answer holds for this one.
            let (kind, text) = state
                .last_failure
                .clone()
                .unwrap_or_else(|| (std::io::ErrorKind::ConnectionRefused, reason.clone()));
            return Err(Error::NotReachable {
                path: self.inner.path.clone(),
                source: std::io::Error::new(kind, text),
            });
        }
        tokio::time::sleep(reconnect::churn_pause(policy, now.opened, &mut state.churn)).await;
        let mut backoff = Backoff::new(policy);
        let (path, name) = (&self.inner.path, &self.inner.client_name);
        loop {
            match open(path, name, now.generation + 1, Some(backoff.left())).await {
                Ok((conn, _)) => {
                    *self.inner.conn.lock().expect("conn lock") = conn.clone();
                    state.last_failure = None;
                    return Ok(conn);
                }
                Err(e) => match backoff.failed(path, e) {
                    Ok(pause) => tokio::time::sleep(pause).await,
                    Err(e) => {
                        if let Error::NotReachable { source, .. } = &e {
                            state.last_failure = Some((source.kind(), source.to_string()));
                        }
                        self.inner.failures.fetch_add(1, Ordering::AcqRel);
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Sends one request and waits for its reply. If the returned future is dropped
    /// before the reply, a request that could be waiting at the daemon is cancelled there.
    /// With a reconnect policy, a request whose connection breaks first is made again
    /// on a new connection when that is safe ([`crate::reconnect`]).
    pub async fn request(&self, request: Request) -> Result<Response> {
        Ok(self.request_tracked(&request).await?.0)
    }

    fn policy(&self) -> Option<ReconnectPolicy> {
        *self.inner.policy.lock().expect("policy lock")
    }

    fn reconnecting(&self) -> bool {
        self.policy().is_some()
    }

    /// One try at `request`, on a new connection if the current one cannot take it, and
    /// the connection it went to.
    async fn attempt(&self, request: &Request) -> Result<(Attempt, u64)> {
        let conn = self.connection(self.policy().as_ref()).await?;
        Ok((self.request_on(&conn, request).await?, conn.generation))
    }

    /// Connection `generation`, if it is still the current one.
    fn holding(&self, generation: u64) -> Option<Arc<Conn>> {
        Some(self.current()).filter(|conn| conn.generation == generation)
    }

    /// One try at `request` on connection `generation`, never on another.
    async fn attempt_on(&self, generation: u64, request: &Request) -> Result<Attempt> {
        match self.holding(generation) {
            Some(conn) => self.request_on(&conn, request).await,
            None => Ok(Attempt::NotSent(disconnected(
                "the connection was replaced",
            ))),
        }
    }

    /// The daemon of connection `generation` is stopping: what else is in flight there
    /// still gets its replies, new requests go to the next daemon.
    fn stopping(&self, generation: u64, _why: &str) {
        if let Some(conn) = self.holding(generation) {
            conn.draining.store(true, Ordering::Relaxed);
        }
    }

    /// Nacks a delivery dropped unsettled, only on the connection that holds its lease,
    /// and without keeping the reply: the reader drops a reply nobody waits for.
    fn nack_on_drop(&mut self, generation: u64, nack: &Request) {
        if let Some(conn) = self.holding(generation) {
            conn.send_unanswered(&self.inner, nack);
        }
    }

    /// Makes `request` on `conn` and waits for what becomes of it there; `Err` if it
    /// could not be encoded.
    async fn request_on(&self, conn: &Conn, request: &Request) -> Result<Attempt> {
        let _permit = self.inner.window.acquire().await.expect("never closed");
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        let fd = session::encode_with_memfd(id, request, conn.max_frame, conn.memfd, &mut buf)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = conn.pending.lock().expect("pending lock");
            if let Some(reason) = &pending.closed {
                return Ok(Attempt::NotSent(disconnected(reason)));
            }
            pending.waiting.insert(id, tx);
        }
        let mut guard = CancelOnDrop {
            inner: &self.inner,
            conn,
            id,
            may_wait: may_wait(request),
        };
        if conn.frames.send((buf.freeze(), fd)).is_err() {
            // The writer has stopped, so the frame was never written.
            guard.may_wait = false;
            return Ok(Attempt::NotSent(disconnected("the writer has stopped")));
        }
        let outcome = match rx.await {
            Ok(Ok(response)) => Attempt::Answered(response),
            Ok(Err(e)) => Attempt::Lost(e),
            Err(_) => Attempt::Lost(disconnected("the reader has stopped")),
        };
        guard.may_wait = false;
        guard.id = 0;
        Ok(outcome)
    }

    operations!([], [async], [clone], Delivery, Mailbox<T>, Subscription, .await);
}

/// Whether the daemon may hold `request` waiting, so that abandoning it needs a cancel.
fn may_wait(request: &Request) -> bool {
    match request {
        Request::Send(s) => s.wait != Wait::NoWait,
        Request::Recv(r) => r.wait != Wait::NoWait,
        Request::SendBatch(s) => s.wait != Wait::NoWait,
        Request::RecvBatch(r) => r.wait != Wait::NoWait,
        Request::Call(_) => true,
        _ => false,
    }
}

/// Unregisters an abandoned request and, if the daemon may be holding it, cancels it.
struct CancelOnDrop<'a> {
    inner: &'a Inner,
    /// The connection the request went to: a cancel means something only there.
    conn: &'a Conn,
    /// 0 once the reply has arrived.
    id: u64,
    may_wait: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        let removed = self
            .conn
            .pending
            .lock()
            .map(|mut p| p.waiting.remove(&self.id).is_some())
            .unwrap_or(false);
        if removed && self.may_wait {
            let request_id = self.id;
            self.conn
                .send_unanswered(self.inner, &Request::Cancel { request_id });
        }
    }
}

/// Makes connection number `generation`: connects, shakes hands (within `timeout`, if
/// given) and starts its reader and writer tasks.
async fn open(
    path: &Path,
    client_name: &str,
    generation: u64,
    timeout: Option<Duration>,
) -> Result<(Arc<Conn>, Welcome)> {
    let connect = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::NotReachable {
                path: path.to_path_buf(),
                source,
            })?;
        handshake(stream, client_name).await
    };
    let (stream, inbound, welcome) = match timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| disconnected("the daemon did not answer the handshake in time"))??,
        None => connect.await?,
    };
    let (read, write) = stream.into_split();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (frames, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(write, outgoing, pending.clone()));
    tokio::spawn(read_loop(read, inbound, pending.clone()));
    let conn = Conn {
        generation,
        opened: Instant::now(),
        max_frame: welcome.max_frame,
        memfd: session::takes_memfds(&welcome),
        frames,
        pending,
        draining: AtomicBool::new(false),
    };
    Ok((Arc::new(conn), welcome))
}

/// Says hello on a connected `stream` and reads the welcome: the stream, what was read
/// past the welcome, and the welcome.
async fn handshake(
    mut stream: UnixStream,
    client_name: &str,
) -> Result<(UnixStream, Inbound, Welcome)> {
    let hello = session::hello(client_name)?;
    let mut inbound = Inbound::default();
    if let Err(e) = stream.write_all(&hello).await {
        // A daemon that refuses a connection says why and closes it at once, maybe
        // before the hello is written: its reason is still there to read, and says more
        // than the broken pipe.
        let refusal = match read_frame(&stream, &mut inbound).await {
            Ok(Some(frame)) => session::welcome(&frame).err(),
            _ => None,
        };
        return Err(refusal.unwrap_or(Error::Disconnected(e)));
    }
    let frame = read_frame(&stream, &mut inbound)
        .await?
        .ok_or_else(|| disconnected("the daemon closed the connection during the handshake"))?;
    let welcome = session::welcome(&frame)?;
    Ok((stream, inbound, welcome))
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames. Reads with
/// `recvmsg`, keeping the memfds that come with the bytes in `inbound`.
async fn read_frame(stream: &UnixStream, inbound: &mut Inbound) -> Result<Option<Frame>> {
    loop {
        if let Some(frame) = inbound.frame()? {
            return Ok(Some(frame));
        }
        let n = loop {
            stream.readable().await.map_err(Error::Disconnected)?;
            let read = stream.try_io(Interest::READABLE, || inbound.read_from(stream.as_fd()));
            match read {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Disconnected(e)),
            }
        };
        if n == 0 {
            return if inbound.buf.is_empty() {
                Ok(None)
            } else {
                Err(disconnected("the daemon closed the connection mid-frame"))
            };
        }
    }
}

/// An encoded request, and the memfd to send with its first byte.
type Outgoing = (Bytes, Option<OwnedFd>);

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    pending: Arc<Mutex<Pending>>,
) {
    let mut batch = BytesMut::new();
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some((frame, fd)) = next.take() {
            if let Some(fd) = fd {
                // A frame with a memfd goes in a write of its own, after what is
                // gathered.
                let written = write_out(&mut write, &mut batch).await;
                if let Err(e) = written.and(send_with_fd(&mut write, &frame, fd).await) {
                    close(&pending, format!("write failed: {e}"));
                    return;
                }
            } else {
                batch.extend_from_slice(&frame);
            }
            if batch.len() < WRITE_BATCH {
                next = frames.try_recv().ok();
            }
        }
        if let Err(e) = write_out(&mut write, &mut batch).await {
            close(&pending, format!("write failed: {e}"));
            return;
        }
    }
    // Every handle is gone: tell the daemon we are done.
    let _ = write.shutdown().await;
}

/// Writes what `batch` holds, and empties it.
async fn write_out(write: &mut OwnedWriteHalf, batch: &mut BytesMut) -> std::io::Result<()> {
    if !batch.is_empty() {
        write.write_all(batch).await?;
        batch.clear();
    }
    Ok(())
}

/// Writes `frame` with `fd` sent with its first byte.
async fn send_with_fd(
    write: &mut OwnedWriteHalf,
    frame: &[u8],
    fd: OwnedFd,
) -> std::io::Result<()> {
    let stream: &UnixStream = write.as_ref();
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            memfd::send_with_fd(stream.as_fd(), frame, fd.as_fd())
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    };
    write.write_all(&frame[sent..]).await
}

async fn read_loop(read: OwnedReadHalf, mut inbound: Inbound, pending: Arc<Mutex<Pending>>) {
    let reason = loop {
        let frame = match read_frame(read.as_ref(), &mut inbound).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the daemon closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        };
        let reply = match session::reply_of(&frame) {
            Ok(reply) => reply,
            Err(ended) => break ended.reason,
        };
        let reply = if frame.flags & FLAG_FD != 0 {
            session::with_memfd(reply, inbound.fds.pop_front())
        } else {
            Ok(reply)
        };
        let (id, response) = match reply {
            Ok(reply) => reply,
            Err(e) => break e.to_string(),
        };
        let waiter = pending.lock().expect("pending lock").waiting.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(response));
        }
    };
    close(&pending, reason);
}

/// Marks the connection closed and fails every waiting request with `reason`.
fn close(pending: &Mutex<Pending>, reason: String) {
    let waiting = {
        let mut p = pending.lock().expect("pending lock");
        if p.closed.is_none() {
            p.closed = Some(reason.clone());
        }
        std::mem::take(&mut p.waiting)
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(disconnected(&reason)));
    }
}

/// A typed view of one mailbox through a [`Client`] (see [`TypedMailbox`]). Cheap to
/// clone.
pub type Mailbox<T> = TypedMailbox<Client, T>;

impl<T: Serialize + DeserializeOwned> Mailbox<T> {
    typed_operations!([], [async], .await);
}

/// A subscription through a [`Client`] (see [`Subscribed`]): a `Stream` of the messages
/// published on matching topics, also read with [`Subscription::next`].
pub struct Subscription {
    inner: Subscribed<Client>,
    /// The receive in flight, while one is.
    receiving: Option<Receiving>,
}

type Receiving =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<ipc_proto::Message>>> + Send>>;

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("inner", &self.inner)
            .field("receiving", &self.receiving.is_some())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(client: Client, mailbox: ipc_proto::MailboxName) -> Self {
        Self {
            inner: Subscribed::new(client, mailbox),
            receiving: None,
        }
    }

    /// The next message; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<ipc_proto::Message>> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *self).poll_message(cx)).await
    }

    /// The private mailbox the daemon made for this subscription.
    pub fn mailbox(&self) -> &ipc_proto::MailboxName {
        self.inner.mailbox()
    }

    /// Messages the daemon dropped so far because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped()
    }

    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<ipc_proto::Message>>> {
        use std::task::Poll;
        if let Some(message) = self.inner.pop() {
            return Poll::Ready(Some(Ok(message)));
        }
        if self.inner.ended() {
            return Poll::Ready(None);
        }
        let receiving = self.receiving.get_or_insert_with(|| {
            let client = self.inner.client.clone();
            let mailbox = self.inner.mailbox().clone();
            Box::pin(async move {
                let options = crate::RecvOptions::default();
                client.recv_batch(mailbox.as_str(), BATCH, &options).await
            })
        });
        let received = std::task::ready!(receiving.as_mut().poll(cx));
        self.receiving = None;
        Poll::Ready(self.inner.take(received))
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<ipc_proto::Message>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}

/// A message received on a lease through a [`Client`] (see [`Leased`]).
pub type Delivery = Leased<Client>;

impl Delivery {
    settle_operations!([async], .await);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::refusal;

    /// The daemon refused and closed before the hello went out: the hello's write fails,
    /// and the client still reports the daemon's reason, not a broken pipe.
    #[tokio::test]
    async fn a_refusal_that_beats_the_hello_is_still_reported() {
        let (client, mut daemon) = UnixStream::pair().unwrap();
        daemon.write_all(&refusal()).await.unwrap();
        drop(daemon);
        let e = handshake(client, "t").await.expect_err("refused");
        assert!(matches!(e, Error::QuotaExceeded(_)), "{e:?}");
        assert!(e.to_string().contains("waiting to send their hello"), "{e}");
    }
}
