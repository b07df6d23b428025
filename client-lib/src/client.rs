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

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ipc_proto::{
    DEFAULT_MAX_FRAME, DaemonStatus, ErrorCode, Frame, FrameDecoder, FrameKind, Hello,
    MailboxChanges, MailboxInfo, MailboxName, Message, PROTOCOL_VERSION, Request, Response, Wait,
    Welcome, codec,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::reconnect::{self, Backoff, ReconnectPolicy, Retry};
use crate::typed::{self, TypeMap, reply};
use crate::{CreateOptions, Error, RecvOptions, Result, SendOptions, default_socket_path};

/// Largest batch of requests the writer task puts in one write.
const WRITE_BATCH: usize = 64 * 1024;
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
    frames: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    /// Set when the daemon said it is shutting down: requests in flight on this
    /// connection still get their replies, new ones go to a new connection.
    draining: AtomicBool,
}

impl Conn {
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

/// Why a request made on one connection got no reply there.
enum Unanswered {
    /// It was refused before anything was sent (it could not be encoded).
    Refused(Error),
    /// It never left: the connection was closed before it could be written.
    NotSent(String),
    /// The connection broke before its reply.
    Lost(Error),
}

impl Client {
    /// Connects to the default socket ([`default_socket_path`]).
    pub async fn connect() -> Result<Self> {
        Self::connect_to(default_socket_path()).await
    }

    /// Connects to the socket at `path`.
    pub async fn connect_to(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_named(path, "ipc-client").await
    }

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

    /// Reconnects by itself under `policy` when the connection breaks, making again the
    /// requests that are safe to make again ([`crate::reconnect`] has the rules). The
    /// policy is shared by every clone.
    pub fn with_reconnect(self, policy: ReconnectPolicy) -> Self {
        self.set_reconnect(Some(policy));
        self
    }

    /// Sets or clears (`None`: a broken connection stays broken) the reconnect policy of
    /// this client and every clone.
    pub fn set_reconnect(&self, policy: Option<ReconnectPolicy>) {
        *self.inner.policy.lock().expect("policy lock") = policy;
    }

    fn policy(&self) -> Option<ReconnectPolicy> {
        *self.inner.policy.lock().expect("policy lock")
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
        let pause = reconnect::churn_pause(policy, now.opened, &mut state.churn);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut backoff = Backoff::new(policy);
        let generation = now.generation + 1;
        loop {
            let timeout = backoff.left();
            match open(
                &self.inner.path,
                &self.inner.client_name,
                generation,
                Some(timeout),
            )
            .await
            {
                Ok((conn, _)) => {
                    *self.inner.conn.lock().expect("conn lock") = conn.clone();
                    state.last_failure = None;
                    return Ok(conn);
                }
                Err(e) if reconnect::is_transient(&e) => match backoff.pause() {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => {
                        let e = reconnect::gave_up(&self.inner.path, policy.max_wait, e);
                        if let Error::NotReachable { source, .. } = &e {
                            state.last_failure = Some((source.kind(), source.to_string()));
                        }
                        self.inner.failures.fetch_add(1, Ordering::AcqRel);
                        return Err(e);
                    }
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one request and waits for its reply. If the returned future is dropped
    /// before the reply, a request that could be waiting at the daemon is cancelled there.
    /// With a reconnect policy, a request whose connection breaks first is made again
    /// on a new connection when that is safe ([`crate::reconnect`]).
    pub async fn request(&self, request: Request) -> Result<Response> {
        self.request_tracked(request)
            .await
            .map(|(response, _)| response)
    }

    /// [`Self::request`], also telling which connection answered.
    async fn request_tracked(&self, request: Request) -> Result<(Response, u64)> {
        let retry = Retry::new(&request);
        let mut attempt = Cow::Borrowed(&request);
        loop {
            let policy = self.policy();
            let retryable = policy.is_some() && reconnect::retry_safe(&request);
            let conn = self.connection(policy.as_ref()).await?;
            match self.request_on(&conn, &attempt).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::ShuttingDown && policy.is_some() => {
                    // What else is in flight here still gets its replies; new requests
                    // go to the next daemon.
                    conn.draining.store(true, Ordering::Relaxed);
                    if !retryable {
                        return Ok((Response::Error(e), conn.generation));
                    }
                }
                Ok(response) => return Ok((response, conn.generation)),
                Err(Unanswered::Refused(e)) => return Err(e),
                Err(Unanswered::NotSent(reason)) => {
                    if policy.is_none() {
                        return Err(disconnected(&reason));
                    }
                }
                Err(Unanswered::Lost(e)) if retryable && e.is_connection_lost() => {}
                Err(Unanswered::Lost(e)) => return Err(reconnect::lost(&request, e)),
            }
            attempt = retry.again()?;
        }
    }

    /// Makes `request` on `conn` and waits for what becomes of it there.
    async fn request_on(&self, conn: &Conn, request: &Request) -> Result<Response, Unanswered> {
        let _permit = self.inner.window.acquire().await.expect("never closed");
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        codec::encode_frame(FrameKind::Request, id, request, conn.max_frame, &mut buf)
            .map_err(|e| Unanswered::Refused(Error::BadData(e.to_string())))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = conn.pending.lock().expect("pending lock");
            if let Some(reason) = &pending.closed {
                return Err(Unanswered::NotSent(reason.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        let mut guard = CancelOnDrop {
            inner: &self.inner,
            conn,
            id,
            may_wait: may_wait(request),
        };
        if conn.frames.send(buf.freeze()).is_err() {
            // The writer has stopped, so the frame was never written.
            guard.may_wait = false;
            return Err(Unanswered::NotSent("the writer has stopped".to_owned()));
        }
        let outcome = match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Unanswered::Lost(e)),
            Err(_) => Err(Unanswered::Lost(disconnected("the reader has stopped"))),
        };
        guard.may_wait = false;
        guard.id = 0;
        outcome
    }

    /// Acks (or nacks) leased message `id` on the connection that holds its lease,
    /// `generation`, and only there.
    async fn settle(
        &self,
        generation: u64,
        mailbox: MailboxName,
        id: u64,
        ack: bool,
    ) -> Result<()> {
        let request = if ack {
            Request::Ack { mailbox, id }
        } else {
            Request::Nack { mailbox, id }
        };
        let conn = self.current();
        if conn.generation != generation {
            return Err(reconnect::lease_lost(id));
        }
        match self.request_on(&conn, &request).await {
            Ok(response) => reply::ok(response),
            Err(Unanswered::Refused(e)) => Err(e),
            Err(Unanswered::NotSent(_)) => Err(reconnect::lease_lost(id)),
            Err(Unanswered::Lost(e)) => Err(reconnect::lost(&request, e)),
        }
    }

    /// Creates a mailbox; `Ok(false)` when it existed and `exist_ok` was set.
    pub async fn create(&self, mailbox: &str, options: &CreateOptions) -> Result<bool> {
        let request = Request::Create(options.request(MailboxName::new(mailbox)?));
        reply::created(self.request(request).await?)
    }

    /// Sends `payload`; returns the message's id in the mailbox.
    pub async fn send(
        &self,
        mailbox: &str,
        payload: impl Into<Bytes>,
        options: &SendOptions,
    ) -> Result<u64> {
        let request = Request::Send(options.request(MailboxName::new(mailbox)?, payload.into()));
        reply::sent(self.request(request).await?)
    }

    /// Receives (or peeks at) one message.
    pub async fn recv(&self, mailbox: &str, options: &RecvOptions) -> Result<Message> {
        let request = Request::Recv(options.request(MailboxName::new(mailbox)?));
        reply::message(self.request(request).await?)
    }

    /// Receives one message on a lease (acknowledged receive, at least once): settle it
    /// with [`Delivery::ack`] or [`Delivery::nack`]; dropping it unsettled nacks it, and
    /// so does the connection closing, so an unprocessed message is redelivered.
    pub async fn recv_leased(
        &self,
        mailbox: &str,
        options: &RecvOptions,
        lease: std::time::Duration,
    ) -> Result<Delivery> {
        let name = MailboxName::new(mailbox)?;
        let options = options.lease(lease, false);
        let (response, generation) = self
            .request_tracked(Request::Recv(options.request(name.clone())))
            .await?;
        let message = reply::message(response)?;
        Ok(Delivery {
            client: self.clone(),
            generation,
            mailbox: name,
            message: Some(message),
        })
    }

    /// Settles leased message `id` of `mailbox` for good (e.g. one leased by
    /// `ipcctl recv --ack`).
    pub async fn ack(&self, mailbox: &str, id: u64) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(Request::Ack { mailbox, id }).await?)
    }

    /// Gives leased message `id` of `mailbox` back, to be redelivered.
    pub async fn nack(&self, mailbox: &str, id: u64) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(Request::Nack { mailbox, id }).await?)
    }

    /// Queues `request` on connection `generation`, if it is still the current one,
    /// without waiting for (or keeping) its reply.
    fn send_unanswered(&self, generation: u64, request: &Request) {
        let conn = self.current();
        if conn.generation != generation {
            return;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        if codec::encode_frame(FrameKind::Request, id, request, u32::MAX, &mut buf).is_ok() {
            // The reader drops a reply nobody waits for.
            let _ = conn.frames.send(buf.freeze());
        }
    }

    pub async fn stat(&self, mailbox: &str) -> Result<MailboxInfo> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::mailbox(self.request(Request::Stat { mailbox }).await?)
    }

    /// The mailboxes the caller may read or owns.
    pub async fn list(&self) -> Result<Vec<MailboxInfo>> {
        reply::mailboxes(self.request(Request::List).await?)
    }

    pub async fn set(&self, mailbox: &str, changes: MailboxChanges) -> Result<MailboxInfo> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::mailbox(self.request(Request::Set { mailbox, changes }).await?)
    }

    /// Drops every queued message; returns how many.
    pub async fn purge(&self, mailbox: &str) -> Result<u64> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::purged(self.request(Request::Purge { mailbox }).await?)
    }

    pub async fn remove(&self, mailbox: &str) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(Request::Remove { mailbox }).await?)
    }

    pub async fn status(&self) -> Result<DaemonStatus> {
        reply::status(self.request(Request::Status).await?)
    }

    /// A typed handle on `mailbox` (see [`Mailbox`]).
    pub fn mailbox<T>(&self, mailbox: &str) -> Result<Mailbox<T>> {
        Ok(Mailbox {
            client: self.clone(),
            name: MailboxName::new(mailbox)?,
            types: TypeMap::default(),
            _type: PhantomData,
        })
    }
}

/// Whether the daemon may hold `request` waiting, so that abandoning it needs a cancel.
fn may_wait(request: &Request) -> bool {
    match request {
        Request::Send(s) => s.wait != Wait::NoWait,
        Request::Recv(r) => r.wait != Wait::NoWait,
        _ => false,
    }
}

fn disconnected(reason: &str) -> Error {
    Error::Disconnected(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        reason.to_owned(),
    ))
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
            let cancel_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let mut buf = BytesMut::new();
            let cancel = Request::Cancel {
                request_id: self.id,
            };
            if codec::encode_frame(FrameKind::Request, cancel_id, &cancel, u32::MAX, &mut buf)
                .is_ok()
            {
                // Nobody waits for the cancel's own reply; the reader drops it.
                let _ = self.conn.frames.send(buf.freeze());
            }
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
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::NotReachable {
                path: path.to_path_buf(),
                source,
            })?;
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut rbuf = BytesMut::new();
        let welcome = handshake(&mut stream, &mut decoder, &mut rbuf, client_name).await?;
        Ok::<_, Error>((stream, decoder, rbuf, welcome))
    };
    let (stream, decoder, rbuf, welcome) = match timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| disconnected("the daemon did not answer the handshake in time"))??,
        None => connect.await?,
    };
    let (read, write) = stream.into_split();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (frames, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(write, outgoing, pending.clone()));
    tokio::spawn(read_loop(read, decoder, rbuf, pending.clone()));
    let conn = Conn {
        generation,
        opened: Instant::now(),
        max_frame: welcome.max_frame,
        frames,
        pending,
        draining: AtomicBool::new(false),
    };
    Ok((Arc::new(conn), welcome))
}

async fn handshake(
    stream: &mut UnixStream,
    decoder: &mut FrameDecoder,
    rbuf: &mut BytesMut,
    client_name: &str,
) -> Result<Welcome> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.to_owned(),
    };
    let mut out = BytesMut::new();
    codec::encode_frame(FrameKind::Hello, 0, &hello, DEFAULT_MAX_FRAME, &mut out)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    stream.write_all(&out).await.map_err(Error::Disconnected)?;
    let frame = read_frame(stream, decoder, rbuf)
        .await?
        .ok_or_else(|| disconnected("the daemon closed the connection during the handshake"))?;
    match frame.kind {
        FrameKind::Welcome => codec::decode_body(&frame, FrameKind::Welcome)
            .map_err(|e| Error::Protocol(e.to_string())),
        FrameKind::Response => match codec::decode_body(&frame, FrameKind::Response)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            Response::Error(e) => Err(e.into()),
            _ => Err(Error::Protocol("daemon answered hello with a reply".into())),
        },
        kind => Err(Error::Protocol(format!(
            "daemon answered hello with a {kind:?} frame"
        ))),
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
async fn read_frame<R: AsyncReadExt + Unpin>(
    read: &mut R,
    decoder: &mut FrameDecoder,
    rbuf: &mut BytesMut,
) -> Result<Option<Frame>> {
    loop {
        if let Some(frame) = decoder
            .decode(rbuf)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            return Ok(Some(frame));
        }
        rbuf.reserve(64 * 1024);
        let n = read.read_buf(rbuf).await.map_err(Error::Disconnected)?;
        if n == 0 {
            return if rbuf.is_empty() {
                Ok(None)
            } else {
                Err(disconnected("the daemon closed the connection mid-frame"))
            };
        }
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    pending: Arc<Mutex<Pending>>,
) {
    let mut batch = BytesMut::new();
    while let Some(first) = frames.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            match frames.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = write.write_all(&batch).await {
            close(&pending, format!("write failed: {e}"));
            return;
        }
        batch.clear();
    }
    // Every handle is gone: tell the daemon we are done.
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut decoder: FrameDecoder,
    mut rbuf: BytesMut,
    pending: Arc<Mutex<Pending>>,
) {
    let reason = loop {
        let frame = match read_frame(&mut read, &mut decoder, &mut rbuf).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the daemon closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        };
        let response: Response = match codec::decode_body(&frame, FrameKind::Response) {
            Ok(r) => r,
            Err(e) => break format!("undecodable reply: {e}"),
        };
        if frame.request_id == 0 {
            break match response {
                Response::Error(e) => e.message,
                _ => "unsolicited reply from the daemon".to_owned(),
            };
        }
        let waiter = pending
            .lock()
            .expect("pending lock")
            .waiting
            .remove(&frame.request_id);
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

/// A typed view of one mailbox through a [`Client`]: values of `T` go in and come out,
/// tagged with [`crate::type_tag`] so a message of another type is an
/// [`Error::TypeMismatch`]. Cheap to clone.
#[derive(Debug)]
pub struct Mailbox<T> {
    client: Client,
    name: MailboxName,
    types: TypeMap,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            name: self.name.clone(),
            types: self.types,
            _type: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Mailbox<T> {
    /// Maps `T` to SysV type `mtype`: sends carry it and receives select only it, so
    /// several types can share one mailbox.
    pub fn with_mtype(mut self, mtype: i64) -> Self {
        self.types = TypeMap::exact(mtype);
        self
    }

    pub fn name(&self) -> &MailboxName {
        &self.name
    }

    pub async fn send(&self, value: &T) -> Result<u64> {
        let (payload, tag) = typed::encode(value)?;
        let mut options = SendOptions::mtype(self.types.mtype);
        options.headers.content_type = Some(tag);
        let request = Request::Send(options.request(self.name.clone(), payload));
        reply::sent(self.client.request(request).await?)
    }

    /// Waits for the next message and decodes it.
    pub async fn recv(&self) -> Result<T> {
        self.recv_with(RecvOptions::default()).await.map(|(_, v)| v)
    }

    /// Receives with `options` (its selector is replaced by this handle's type mapping)
    /// and returns the message's metadata beside the value.
    pub async fn recv_with(&self, mut options: RecvOptions) -> Result<(Message, T)> {
        options.selector = self.types.selector;
        let request = Request::Recv(options.request(self.name.clone()));
        let message = reply::message(self.client.request(request).await?)?;
        let value = typed::decode(&message)?;
        Ok((message, value))
    }
}

/// A message received on a lease. [`ack`](Self::ack) it once it is processed; dropping it
/// unsettled gives it back (a nack), so a task that fails or panics midway does not lose
/// it. The lease belongs to the connection that took it: if that connection is lost, the
/// lease ends with it and `ack`/`nack` fail with `ErrorCode::NotLeased` at once.
#[derive(Debug)]
pub struct Delivery {
    client: Client,
    /// The connection that holds the lease: settling it anywhere else is meaningless.
    generation: u64,
    mailbox: MailboxName,
    /// `None` once settled.
    message: Option<Message>,
}

impl Delivery {
    pub fn message(&self) -> &Message {
        self.message.as_ref().expect("present until settled")
    }

    /// Settles it: it leaves the mailbox for good (for a durable mailbox, once that is
    /// stored).
    pub async fn ack(mut self) -> Result<()> {
        let message = self.message.take().expect("present until settled");
        let mailbox = self.mailbox.clone();
        self.client
            .settle(self.generation, mailbox, message.id, true)
            .await
    }

    /// Gives it back at once, to be redelivered.
    pub async fn nack(mut self) -> Result<()> {
        let message = self.message.take().expect("present until settled");
        let mailbox = self.mailbox.clone();
        self.client
            .settle(self.generation, mailbox, message.id, false)
            .await
    }
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        self.message()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.client.send_unanswered(
                self.generation,
                &Request::Nack {
                    mailbox: self.mailbox.clone(),
                    id: message.id,
                },
            );
        }
    }
}
