//! The async client on tokio. One connection is shared by every clone of a [`Client`];
//! a writer task batches encoded requests onto the socket and a reader task hands each
//! reply to the future waiting for its request id, so any number of tasks can have
//! requests in flight at once. Dropping a waiting `recv`/`send` future cancels the
//! request at the daemon, so an abandoned receive does not swallow a message.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use ipc_proto::{
    DEFAULT_MAX_FRAME, DaemonStatus, Frame, FrameDecoder, FrameKind, Hello, MailboxChanges,
    MailboxInfo, MailboxName, Message, PROTOCOL_VERSION, Request, Response, Wait, Welcome, codec,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::typed::{self, TypeMap, reply};
use crate::{CreateOptions, Error, RecvOptions, Result, SendOptions, default_socket_path};

/// Largest batch of requests the writer task puts in one write.
const WRITE_BATCH: usize = 64 * 1024;

/// An async connection to ipcd. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    frames: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    welcome: Welcome,
    path: PathBuf,
}

/// Requests waiting for replies, and why the connection ended once it has.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Response>>>,
    closed: Option<String>,
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
    pub async fn connect_named(path: impl AsRef<Path>, client_name: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| Error::NotReachable {
                    path: path.clone(),
                    source,
                })?;
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut rbuf = BytesMut::new();
        let welcome = handshake(&mut stream, &mut decoder, &mut rbuf, client_name).await?;
        let (read, write) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (frames, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, outgoing, pending.clone()));
        tokio::spawn(read_loop(read, decoder, rbuf, pending.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                frames,
                pending,
                next_id: AtomicU64::new(1),
                welcome,
                path,
            }),
        })
    }

    /// What the daemon said about itself at connection time.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// Sends one request and waits for its reply. If the returned future is dropped
    /// before the reply, a request that could be waiting at the daemon is cancelled there.
    pub async fn request(&self, request: Request) -> Result<Response> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        codec::encode_frame(
            FrameKind::Request,
            id,
            &request,
            self.inner.welcome.max_frame,
            &mut buf,
        )
        .map_err(|e| Error::BadData(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            if let Some(reason) = &pending.closed {
                return Err(disconnected(reason));
            }
            pending.waiting.insert(id, tx);
        }
        let mut guard = CancelOnDrop {
            inner: &self.inner,
            id,
            may_wait: may_wait(&request),
        };
        if self.inner.frames.send(buf.freeze()).is_err() {
            return Err(disconnected("the writer has stopped"));
        }
        let reply = rx
            .await
            .unwrap_or_else(|_| Err(disconnected("the reader has stopped")));
        guard.may_wait = false;
        guard.id = 0;
        reply
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
        let message = reply::message(
            self.request(Request::Recv(options.request(name.clone())))
                .await?,
        )?;
        Ok(Delivery {
            client: self.clone(),
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

    /// Queues `request` without waiting for (or keeping) its reply.
    fn send_unanswered(&self, request: &Request) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        if codec::encode_frame(FrameKind::Request, id, request, u32::MAX, &mut buf).is_ok() {
            // The reader drops a reply nobody waits for.
            let _ = self.inner.frames.send(buf.freeze());
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
            .inner
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
                let _ = self.inner.frames.send(buf.freeze());
            }
        }
    }
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
/// it.
#[derive(Debug)]
pub struct Delivery {
    client: Client,
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
        let request = Request::Ack {
            mailbox: self.mailbox.clone(),
            id: message.id,
        };
        reply::ok(self.client.request(request).await?)
    }

    /// Gives it back at once, to be redelivered.
    pub async fn nack(mut self) -> Result<()> {
        let message = self.message.take().expect("present until settled");
        let request = Request::Nack {
            mailbox: self.mailbox.clone(),
            id: message.id,
        };
        reply::ok(self.client.request(request).await?)
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
            self.client.send_unanswered(&Request::Nack {
                mailbox: self.mailbox.clone(),
                id: message.id,
            });
        }
    }
}
