//! The blocking client: one `std` Unix socket, no threads, no runtime. Requests can be
//! pipelined with [`BlockingClient::submit`] and [`BlockingClient::next_reply`]; the
//! one-call methods use the same machinery and keep replies that arrive for other
//! requests until they are asked for.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use ipc_proto::{
    DEFAULT_MAX_FRAME, DaemonStatus, FrameDecoder, FrameKind, Hello, MailboxChanges, MailboxInfo,
    MailboxName, Message, PROTOCOL_VERSION, Request, Response, Welcome, codec,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::typed::{self, TypeMap, reply};
use crate::{CreateOptions, Error, RecvOptions, Result, SendOptions, default_socket_path};

/// Writes are gathered up to this size before they go to the socket.
const WRITE_BATCH: usize = 64 * 1024;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to ipcd with blocking calls.
#[derive(Debug)]
pub struct BlockingClient {
    stream: UnixStream,
    /// Bytes read and not yet decoded into frames.
    rbuf: BytesMut,
    /// Encoded requests not yet written.
    wbuf: BytesMut,
    decoder: FrameDecoder,
    next_id: u64,
    /// Replies that arrived while the caller waited for another one.
    stash: HashMap<u64, Response>,
    welcome: Welcome,
    path: PathBuf,
}

impl BlockingClient {
    /// Connects to the default socket ([`default_socket_path`]).
    pub fn connect() -> Result<Self> {
        Self::connect_to(default_socket_path())
    }

    /// Connects to the socket at `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_named(path, "ipc-client")
    }

    /// Connects to the socket at `path`, giving the daemon `client_name` for its logs.
    pub fn connect_named(path: impl AsRef<Path>, client_name: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| Error::NotReachable {
            path: path.clone(),
            source,
        })?;
        let mut client = Self {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
            next_id: 1,
            stash: HashMap::new(),
            welcome: placeholder_welcome(),
            path,
        };
        client.handshake(client_name)?;
        Ok(client)
    }

    fn handshake(&mut self, client_name: &str) -> Result<()> {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
        };
        codec::encode_frame(
            FrameKind::Hello,
            0,
            &hello,
            DEFAULT_MAX_FRAME,
            &mut self.wbuf,
        )
        .map_err(|e| Error::Protocol(e.to_string()))?;
        self.flush()?;
        let frame = self.read_frame()?;
        match frame.kind {
            FrameKind::Welcome => {
                self.welcome = codec::decode_body(&frame, FrameKind::Welcome)
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                Ok(())
            }
            FrameKind::Response => {
                match codec::decode_body(&frame, FrameKind::Response)
                    .map_err(|e| Error::Protocol(e.to_string()))?
                {
                    Response::Error(e) => Err(e.into()),
                    _ => Err(Error::Protocol("daemon answered hello with a reply".into())),
                }
            }
            kind => Err(Error::Protocol(format!(
                "daemon answered hello with a {kind:?} frame"
            ))),
        }
    }

    /// What the daemon said about itself at connection time.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Queues `request` for sending and returns its id. Nothing is written until the
    /// batch is large, [`Self::flush`] is called, or a reply is awaited.
    pub fn submit(&mut self, request: &Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        codec::encode_frame(
            FrameKind::Request,
            id,
            request,
            self.welcome.max_frame,
            &mut self.wbuf,
        )
        .map_err(|e| Error::BadData(e.to_string()))?;
        if self.wbuf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(id)
    }

    /// Writes every queued request.
    pub fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .map_err(Error::Disconnected)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Flushes, then waits for the next reply to any submitted request, in the order the
    /// daemon sends them (which need not be submission order).
    pub fn next_reply(&mut self) -> Result<(u64, Response)> {
        if let Some(&id) = self.stash.keys().next() {
            let response = self.stash.remove(&id).expect("key just seen");
            return Ok((id, response));
        }
        self.read_reply()
    }

    /// Flushes, then waits for the reply to request `id`.
    pub fn wait_for(&mut self, id: u64) -> Result<Response> {
        if let Some(response) = self.stash.remove(&id) {
            return Ok(response);
        }
        loop {
            let (got, response) = self.read_reply()?;
            if got == id {
                return Ok(response);
            }
            self.stash.insert(got, response);
        }
    }

    /// Sends one request and waits for its reply.
    pub fn request(&mut self, request: &Request) -> Result<Response> {
        let id = self.submit(request)?;
        self.wait_for(id)
    }

    fn read_reply(&mut self) -> Result<(u64, Response)> {
        self.flush()?;
        let frame = self.read_frame()?;
        let response = codec::decode_body(&frame, FrameKind::Response)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if frame.request_id == 0 {
            // A connection-level error: the daemon closes after sending it.
            return Err(match response {
                Response::Error(e) => e.into(),
                _ => Error::Protocol("unsolicited reply from the daemon".into()),
            });
        }
        Ok((frame.request_id, response))
    }

    fn read_frame(&mut self) -> Result<ipc_proto::Frame> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| Error::Protocol(e.to_string()))?
            {
                return Ok(frame);
            }
            let n = loop {
                match self.stream.read(&mut chunk) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::Disconnected(e)),
                }
            };
            if n == 0 {
                return Err(Error::Disconnected(io::ErrorKind::UnexpectedEof.into()));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Creates a mailbox; `Ok(false)` when it existed and `exist_ok` was set.
    pub fn create(&mut self, mailbox: &str, options: &CreateOptions) -> Result<bool> {
        let request = Request::Create(options.request(MailboxName::new(mailbox)?));
        reply::created(self.request(&request)?)
    }

    /// Sends `payload`; returns the message's id in the mailbox.
    pub fn send(
        &mut self,
        mailbox: &str,
        payload: impl Into<Bytes>,
        options: &SendOptions,
    ) -> Result<u64> {
        let request = Request::Send(options.request(MailboxName::new(mailbox)?, payload.into()));
        reply::sent(self.request(&request)?)
    }

    /// Receives (or peeks at) one message.
    pub fn recv(&mut self, mailbox: &str, options: &RecvOptions) -> Result<Message> {
        let request = Request::Recv(options.request(MailboxName::new(mailbox)?));
        reply::message(self.request(&request)?)
    }

    /// Receives one message on a lease (acknowledged receive): settle it with
    /// [`BlockingDelivery::ack`] or [`BlockingDelivery::nack`]; dropping it unsettled
    /// nacks it, as does closing the connection.
    pub fn recv_leased(
        &mut self,
        mailbox: &str,
        options: &RecvOptions,
        lease: std::time::Duration,
    ) -> Result<BlockingDelivery<'_>> {
        let name = MailboxName::new(mailbox)?;
        let options = options.lease(lease, false);
        let message = reply::message(self.request(&Request::Recv(options.request(name.clone())))?)?;
        Ok(BlockingDelivery {
            client: self,
            mailbox: name,
            message: Some(message),
        })
    }

    /// Settles leased message `id` of `mailbox` for good.
    pub fn ack(&mut self, mailbox: &str, id: u64) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(&Request::Ack { mailbox, id })?)
    }

    /// Gives leased message `id` of `mailbox` back, to be redelivered.
    pub fn nack(&mut self, mailbox: &str, id: u64) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(&Request::Nack { mailbox, id })?)
    }

    pub fn stat(&mut self, mailbox: &str) -> Result<MailboxInfo> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::mailbox(self.request(&Request::Stat { mailbox })?)
    }

    /// The mailboxes the caller may read or owns.
    pub fn list(&mut self) -> Result<Vec<MailboxInfo>> {
        reply::mailboxes(self.request(&Request::List)?)
    }

    pub fn set(&mut self, mailbox: &str, changes: MailboxChanges) -> Result<MailboxInfo> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::mailbox(self.request(&Request::Set { mailbox, changes })?)
    }

    /// Drops every queued message; returns how many.
    pub fn purge(&mut self, mailbox: &str) -> Result<u64> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::purged(self.request(&Request::Purge { mailbox })?)
    }

    pub fn remove(&mut self, mailbox: &str) -> Result<()> {
        let mailbox = MailboxName::new(mailbox)?;
        reply::ok(self.request(&Request::Remove { mailbox })?)
    }

    pub fn status(&mut self) -> Result<DaemonStatus> {
        reply::status(self.request(&Request::Status)?)
    }

    /// A typed handle on `mailbox` (see [`BlockingMailbox`]).
    pub fn mailbox<T>(&mut self, mailbox: &str) -> Result<BlockingMailbox<'_, T>> {
        Ok(BlockingMailbox {
            client: self,
            name: MailboxName::new(mailbox)?,
            types: TypeMap::default(),
            _type: PhantomData,
        })
    }
}

fn placeholder_welcome() -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        server: String::new(),
        max_frame: DEFAULT_MAX_FRAME,
        max_msg_size: 0,
        max_in_flight: 1,
        features: Vec::new(),
        peer: ipc_proto::Credentials {
            pid: 0,
            uid: 0,
            gid: 0,
        },
    }
}

/// A typed view of one mailbox through a [`BlockingClient`]: values of `T` go in and come
/// out, tagged with [`crate::type_tag`] so a message of another type is an
/// [`Error::TypeMismatch`].
#[derive(Debug)]
pub struct BlockingMailbox<'c, T> {
    client: &'c mut BlockingClient,
    name: MailboxName,
    types: TypeMap,
    _type: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> BlockingMailbox<'_, T> {
    /// Maps `T` to SysV type `mtype`: sends carry it and receives select only it, so
    /// several types can share one mailbox.
    pub fn with_mtype(mut self, mtype: i64) -> Self {
        self.types = TypeMap::exact(mtype);
        self
    }

    pub fn send(&mut self, value: &T) -> Result<u64> {
        let (payload, tag) = typed::encode(value)?;
        let mut options = SendOptions::mtype(self.types.mtype);
        options.headers.content_type = Some(tag);
        let request = Request::Send(options.request(self.name.clone(), payload));
        reply::sent(self.client.request(&request)?)
    }

    /// Waits for the next message and decodes it.
    pub fn recv(&mut self) -> Result<T> {
        self.recv_with(RecvOptions::default()).map(|(_, v)| v)
    }

    /// Receives with `options` (its selector is replaced by this handle's type mapping)
    /// and returns the message's metadata beside the value.
    pub fn recv_with(&mut self, mut options: RecvOptions) -> Result<(Message, T)> {
        options.selector = self.types.selector;
        let request = Request::Recv(options.request(self.name.clone()));
        let message = reply::message(self.client.request(&request)?)?;
        let value = typed::decode(&message)?;
        Ok((message, value))
    }
}

/// A message received on a lease by a [`BlockingClient`], which it borrows until settled.
/// Dropping it unsettled nacks it.
#[derive(Debug)]
pub struct BlockingDelivery<'a> {
    client: &'a mut BlockingClient,
    mailbox: MailboxName,
    message: Option<Message>,
}

impl BlockingDelivery<'_> {
    pub fn message(&self) -> &Message {
        self.message.as_ref().expect("present until settled")
    }

    /// Settles it: it leaves the mailbox for good.
    pub fn ack(mut self) -> Result<()> {
        let id = self.message.take().expect("present until settled").id;
        let request = Request::Ack {
            mailbox: self.mailbox.clone(),
            id,
        };
        reply::ok(self.client.request(&request)?)
    }

    /// Gives it back at once, to be redelivered.
    pub fn nack(mut self) -> Result<()> {
        let id = self.message.take().expect("present until settled").id;
        let request = Request::Nack {
            mailbox: self.mailbox.clone(),
            id,
        };
        reply::ok(self.client.request(&request)?)
    }
}

impl std::ops::Deref for BlockingDelivery<'_> {
    type Target = Message;

    fn deref(&self) -> &Message {
        self.message()
    }
}

impl Drop for BlockingDelivery<'_> {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            let request = Request::Nack {
                mailbox: self.mailbox.clone(),
                id: message.id,
            };
            // Best effort: if the connection is broken, closing it ends the lease anyway.
            let _ = self.client.request(&request);
        }
    }
}
