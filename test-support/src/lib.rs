//! A scripted fake daemon that speaks the ipcd protocol from a thread, for the tests of
//! `ipc-client` and `ipcctl`: a test decides which request is answered when, out of
//! order, with an error, or never, and where a connection breaks — what the real daemon
//! does only under conditions a test cannot order deterministically.
//!
//! It knows only `ipc-proto`, so that the client library can use it in its own tests.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use ipc_proto::{
    Credentials, DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameKind, HeaderBox, Hello, Message,
    PROTOCOL_VERSION, Request, Response, Timestamp, Welcome, codec,
};

/// What the fake daemon says about itself unless a test says otherwise.
pub fn welcome() -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        server: "scripted".into(),
        max_frame: DEFAULT_MAX_FRAME,
        max_msg_size: 1 << 20,
        max_in_flight: 16,
        features: Vec::new(),
        peer: credentials(),
    }
}

fn credentials() -> Credentials {
    Credentials {
        pid: 1,
        uid: 0,
        gid: 0,
    }
}

/// A message as the daemon would hand it out, with message id `id`.
pub fn message(id: u64, payload: impl Into<Bytes>) -> Message {
    Message {
        id,
        mtype: 1,
        sender: credentials(),
        sent_at: Timestamp(0),
        headers: HeaderBox::default(),
        redelivered: false,
        deliveries: 1,
        payload: payload.into(),
    }
}

/// Starts a fake daemon listening on a fresh socket path; `script` runs on its own
/// thread and accepts connections as the test needs. Join the handle to see the
/// script's assertions.
pub fn daemon(script: impl FnOnce(&UnixListener) + Send + 'static) -> (PathBuf, JoinHandle<()>) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "ipcd-fake-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || script(&listener));
    (path, thread)
}

/// The daemon's side of one connection.
#[derive(Debug)]
pub struct Peer {
    stream: UnixStream,
    rbuf: BytesMut,
    decoder: FrameDecoder,
}

impl Peer {
    /// Accepts the next connection and shakes hands with [`welcome`].
    pub fn accept(listener: &UnixListener) -> Self {
        Self::accept_with(listener, &welcome())
    }

    /// Accepts the next connection and shakes hands, answering the hello with `welcome`.
    pub fn accept_with(listener: &UnixListener, welcome: &Welcome) -> Self {
        let (stream, _) = listener.accept().unwrap();
        let mut peer = Self {
            stream,
            rbuf: BytesMut::new(),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
        };
        let hello = peer.read().expect("a hello");
        let _: Hello = codec::decode_body(&hello, FrameKind::Hello).unwrap();
        let mut out = BytesMut::new();
        codec::encode_frame(FrameKind::Welcome, 0, welcome, DEFAULT_MAX_FRAME, &mut out).unwrap();
        peer.stream.write_all(&out).unwrap();
        peer
    }

    /// The next frame, or `None` once the client has closed the connection.
    pub fn read(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.rbuf).unwrap() {
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next request and its id; panics if the client closed the connection.
    pub fn request(&mut self) -> (u64, Request) {
        let frame = self.read().expect("a request");
        (
            frame.request_id,
            codec::decode_body(&frame, FrameKind::Request).unwrap(),
        )
    }

    /// Answers request `id`.
    pub fn reply(&mut self, id: u64, response: &Response) {
        let mut out = BytesMut::new();
        codec::encode_frame(
            FrameKind::Response,
            id,
            response,
            DEFAULT_MAX_FRAME,
            &mut out,
        )
        .unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// Answers request `id` with a message whose id is the request's and whose payload
    /// is that id in decimal.
    pub fn message(&mut self, id: u64) {
        self.reply(id, &Response::Message(message(id, id.to_string())));
    }
}
