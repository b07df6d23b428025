//! Many requests in flight on one connection, with their outcomes handed back in the
//! order the requests were made. `send --lines` and `recv --count` go through it: waiting
//! for each reply before sending the next request would cost a round trip per message.
//!
//! The daemon answers blocked receives when they can, so replies arrive out of order;
//! this module keeps each request's reply in its slot until every earlier one is out.

use std::collections::VecDeque;
use std::io;

use ipc_client::{BlockingClient, Error};
use ipc_proto::{Request, Response};

/// The most requests kept in flight, whatever the daemon allows: beyond this a larger
/// window buys no speed, only memory.
pub const MAX_WINDOW: usize = 512;

/// The window to use on `client`: what the daemon allows per connection, at most
/// [`MAX_WINDOW`].
pub fn window(client: &BlockingClient) -> usize {
    usize::try_from(client.welcome().max_in_flight)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_WINDOW)
}

/// One submitted request, tagged by the caller (e.g. with its input line number).
#[derive(Debug)]
struct Slot<T> {
    id: u64,
    tag: T,
    reply: Option<Result<Response, Error>>,
}

/// Requests in flight on one [`BlockingClient`], oldest first.
#[derive(Debug)]
pub struct Pipeline<'c, T> {
    client: &'c mut BlockingClient,
    window: usize,
    /// Submitted requests whose outcome the caller has not taken yet, in submission
    /// order (and so in increasing id order, which the lookup by id relies on).
    slots: VecDeque<Slot<T>>,
    /// Cancels sent whose acknowledgement has not been read. They are read before the
    /// pipeline reports itself empty, so that the command does not close the connection
    /// with replies unread (which resets it, and the daemon logs that).
    cancels: Vec<u64>,
    /// Set once the connection has failed: every request still unanswered then fails too.
    broken: Option<(io::ErrorKind, String)>,
}

impl<'c, T> Pipeline<'c, T> {
    pub fn new(client: &'c mut BlockingClient, window: usize) -> Self {
        Self {
            client,
            window: window.max(1),
            slots: VecDeque::new(),
            cancels: Vec::new(),
            broken: None,
        }
    }

    /// Whether the window is full: the caller must take an outcome before submitting.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.window
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Queues `request`. It is written when the client's batch fills up or when an
    /// outcome is awaited, so a burst of submissions goes out in few writes.
    pub fn submit(&mut self, tag: T, request: &Request) -> Result<(), Error> {
        debug_assert!(!self.is_full(), "submit past the window");
        let id = self.client.submit(request)?;
        self.slots.push_back(Slot {
            id,
            tag,
            reply: None,
        });
        Ok(())
    }

    /// Writes every submitted request now; for callers about to block on something else
    /// (their input), so that the daemon is not kept waiting meanwhile.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.client.flush()
    }

    /// The outcome of the oldest request, waiting for it if need be; `None` when nothing
    /// is in flight. An error reply comes back as `Err` in the outcome; a broken
    /// connection fails the oldest unanswered request with the real error and all later
    /// ones with a copy of it, so that replies already received are still handed out.
    pub fn next(&mut self) -> Option<(T, Result<Response, Error>)> {
        let Some(front) = self.slots.front() else {
            self.read_cancel_acks();
            return None;
        };
        if front.reply.is_none() && self.broken.is_none() {
            let id = front.id;
            self.read_until_answered(id);
        }
        let slot = self.slots.pop_front().expect("front exists");
        let reply = slot.reply.unwrap_or_else(|| {
            let (kind, text) = self.broken.clone().expect("unanswered only when broken");
            Err(Error::Disconnected(io::Error::new(kind, text)))
        });
        Some((slot.tag, reply))
    }

    /// Reads replies, filing each in its slot, until request `id` has its reply or the
    /// connection fails.
    fn read_until_answered(&mut self, id: u64) {
        loop {
            match self.client.next_reply() {
                Ok((got, response)) => {
                    let reply = match response {
                        Response::Error(e) => Err(Error::from(e)),
                        other => Ok(other),
                    };
                    if let Ok(at) = self.slots.binary_search_by_key(&got, |s| s.id) {
                        self.slots[at].reply = Some(reply);
                    } else {
                        self.cancels.retain(|&c| c != got);
                    }
                    if got == id {
                        return;
                    }
                }
                Err(e) => {
                    let copy = match &e {
                        Error::Disconnected(io) => (io.kind(), io.to_string()),
                        other => (io::ErrorKind::Other, other.to_string()),
                    };
                    if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
                        slot.reply = Some(Err(e));
                    }
                    self.broken = Some(copy);
                    return;
                }
            }
        }
    }

    /// Asks the daemon to abandon every request still unanswered; each then answers
    /// `Cancelled`, or with its result if it completed first, which the caller still gets
    /// from [`Self::next`]. Used after a failure, so that a receive blocked forever does
    /// not keep the command from reporting it.
    pub fn cancel_pending(&mut self) -> Result<(), Error> {
        if self.broken.is_some() {
            return Ok(());
        }
        let pending: Vec<u64> = self
            .slots
            .iter()
            .filter(|s| s.reply.is_none())
            .map(|s| s.id)
            .collect();
        for request_id in pending {
            let id = self.client.submit(&Request::Cancel { request_id })?;
            self.cancels.push(id);
        }
        self.client.flush()
    }

    /// Reads the acknowledgements of cancels still unread; the daemon answers cancels at
    /// once, so this does not wait long.
    fn read_cancel_acks(&mut self) {
        while !self.cancels.is_empty() && self.broken.is_none() {
            match self.client.next_reply() {
                Ok((got, _)) => self.cancels.retain(|&c| c != got),
                Err(_) => return,
            }
        }
    }
}
