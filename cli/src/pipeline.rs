//! Many requests in flight on one connection, with their outcomes handed back in the
//! order the requests were made. `send --lines` and `recv` (its receives and the acks of
//! what it wrote) go through it: waiting for each reply before sending the next request
//! would cost a round trip per message.
//!
//! The daemon answers blocked receives when they can, so replies arrive out of order;
//! this module keeps each request's reply in its slot until every earlier one is out.
//! Requests whose outcome has no place in that order (`recv`'s acks) may be submitted
//! *unordered*: their outcomes are handed out as soon as they arrive, so that one
//! answered late (an ack of a durable message waits for the disk) holds up nothing.

use std::collections::{HashMap, VecDeque};
use std::io;

use ipc_client::{BlockingClient, Error};
use ipc_proto::{Request, Response};

/// The most requests kept in flight, whatever the daemon allows: plenty to keep the
/// connection busy, while bounding what the command holds (each may bring back a reply of
/// up to a maximal message).
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
    /// Whether submissions are being accepted: see [`Self::has_room`].
    filling: bool,
    /// Submitted requests whose outcome the caller has not taken yet, in submission
    /// order (and so in increasing id order, which the lookup by id relies on).
    slots: VecDeque<Slot<T>>,
    /// Unordered requests not yet answered, by id.
    loose: HashMap<u64, T>,
    /// Outcomes of unordered requests, to be handed out before any other.
    loose_done: VecDeque<(T, Result<Response, Error>)>,
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
            filling: true,
            slots: VecDeque::new(),
            loose: HashMap::new(),
            loose_done: VecDeque::new(),
            cancels: Vec::new(),
            broken: None,
        }
    }

    /// The connection, for what it knows about the daemon.
    pub fn client(&self) -> &BlockingClient {
        self.client
    }

    /// Whether the caller may submit now. Once the window is full it stays closed until
    /// half of it has been taken: the client writes what is queued whenever it waits for
    /// a reply, so refilling one request per outcome taken would cost a write per request
    /// instead of one per half window.
    pub fn has_room(&mut self) -> bool {
        if self.is_full() {
            self.filling = false;
        } else if self.slots.len() <= self.window / 2 {
            self.filling = true;
        }
        self.filling
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.loose.is_empty() && self.loose_done.is_empty()
    }

    /// Whether the window is full: the caller must take an outcome before submitting.
    pub fn is_full(&self) -> bool {
        self.slots.len() + self.loose.len() >= self.window
    }

    /// Whether [`Self::next`] has the oldest outcome at hand, so that taking it will not
    /// wait: for callers that have work to finish (writing out, acknowledging) before
    /// they block. Files the replies that have already arrived, reading nothing more;
    /// `false` when nothing is in flight.
    pub fn has_outcome(&mut self) -> bool {
        loop {
            if !self.loose_done.is_empty() {
                return true;
            }
            let front = self.slots.front().map(|s| (s.id, s.reply.is_some()));
            match front {
                Some((_, true)) => return true,
                Some(_) if self.broken.is_some() => return true,
                None if self.loose.is_empty() => return false,
                _ => {}
            }
            match self.client.try_next_reply() {
                Ok(Some((got, response))) => self.file(got, response),
                Ok(None) => return false,
                Err(e) => {
                    self.fail(front.map(|(id, _)| id), e);
                    return true;
                }
            }
        }
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

    /// Queues `request` as [`Self::submit`] does, but its outcome comes out of
    /// [`Self::next`] as soon as it arrives, ahead of the ordered ones.
    pub fn submit_unordered(&mut self, tag: T, request: &Request) -> Result<(), Error> {
        debug_assert!(!self.is_full(), "submit past the window");
        if let Some((kind, text)) = self.broken.clone() {
            // The connection is gone: this one fails as every unanswered one did.
            let e = Error::Disconnected(io::Error::new(kind, text));
            self.loose_done.push_back((tag, Err(e)));
            return Ok(());
        }
        let id = self.client.submit(request)?;
        self.loose.insert(id, tag);
        Ok(())
    }

    /// Writes every submitted request now; for callers about to block on something else
    /// (their input), so that the daemon is not kept waiting meanwhile.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.client.flush()
    }

    /// The outcome of an unordered request if one is in, else of the oldest request,
    /// waiting for either if need be; `None` when nothing is in flight. An error reply comes back as `Err` in the outcome; a broken
    /// connection fails the oldest unanswered request with the real error and all later
    /// ones with a copy of it, so that replies already received are still handed out.
    pub fn next(&mut self) -> Option<(T, Result<Response, Error>)> {
        if let Some(done) = self.loose_done.pop_front() {
            return Some(done);
        }
        let Some(front) = self.slots.front() else {
            if !self.loose.is_empty() {
                // Only unordered requests are in flight: whichever is answered first.
                self.read_until_answered(None);
                return self.loose_done.pop_front();
            }
            self.read_cancel_acks();
            return None;
        };
        if front.reply.is_none() && self.broken.is_none() {
            let id = front.id;
            self.read_until_answered(Some(id));
            if let Some(done) = self.loose_done.pop_front() {
                return Some(done);
            }
        }
        let slot = self.slots.pop_front().expect("front exists");
        let reply = slot.reply.unwrap_or_else(|| {
            let (kind, text) = self.broken.clone().expect("unanswered only when broken");
            Err(Error::Disconnected(io::Error::new(kind, text)))
        });
        Some((slot.tag, reply))
    }

    /// Reads replies, filing each in its slot, until request `id` or an unordered one
    /// has its reply, or the connection fails.
    fn read_until_answered(&mut self, id: Option<u64>) {
        loop {
            match self.client.next_reply() {
                Ok((got, response)) => {
                    self.file(got, response);
                    if id == Some(got) || !self.loose_done.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    self.fail(id, e);
                    return;
                }
            }
        }
    }

    /// Keeps the reply to request `got` in its slot (or notes a cancel acknowledged).
    fn file(&mut self, got: u64, response: Response) {
        let reply = match response {
            Response::Error(e) => Err(Error::from(e)),
            other => Ok(other),
        };
        if let Ok(at) = self.slots.binary_search_by_key(&got, |s| s.id) {
            self.slots[at].reply = Some(reply);
        } else if let Some(tag) = self.loose.remove(&got) {
            self.loose_done.push_back((tag, reply));
        } else {
            self.cancels.retain(|&c| c != got);
        }
    }

    /// The connection failed with `e` while request `id` (or, with `None`, any) awaited
    /// its reply: `id` gets the real error, every other unanswered request a copy of it.
    fn fail(&mut self, id: Option<u64>, e: Error) {
        let (kind, text) = match &e {
            Error::Disconnected(io) => (io.kind(), io.to_string()),
            other => (io::ErrorKind::Other, other.to_string()),
        };
        let copy = || Err(Error::Disconnected(io::Error::new(kind, text.clone())));
        let mut real = Some(e);
        if let Some(slot) = self.slots.iter_mut().find(|s| Some(s.id) == id) {
            slot.reply = real.take().map(Err);
        }
        let unanswered: Vec<T> = self.loose.drain().map(|(_, tag)| tag).collect();
        for tag in unanswered {
            let outcome = real.take().map_or_else(copy, Err);
            self.loose_done.push_back((tag, outcome));
        }
        self.broken = Some((kind, text));
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

#[cfg(test)]
mod tests {
    //! The pipeline against a scripted peer that speaks the protocol from a thread, so
    //! that replies can be put out of order at will (the real daemon does so only when
    //! receives block, which a test cannot order deterministically).

    use ipc_proto::{ErrorCode, ErrorReply, MailboxName, RecvRequest, Selector, Wait, Welcome};
    use ipcd_test_support::{Peer, daemon};

    use super::*;

    fn recv_request() -> Request {
        Request::Recv(RecvRequest {
            mailbox: MailboxName::new("q").unwrap(),
            selector: Selector::Any,
            wait: Wait::Forever,
            peek: false,
            lease: None,
            max_size: None,
        })
    }

    /// A client connected to a peer running `script` after the handshake; the peer
    /// allows 4 requests in flight.
    fn connect(
        script: impl FnOnce(&mut Peer) + Send + 'static,
    ) -> (BlockingClient, std::thread::JoinHandle<()>) {
        let (path, peer) = daemon(move |listener| {
            let welcome = Welcome {
                max_in_flight: 4,
                ..ipcd_test_support::welcome()
            };
            script(&mut Peer::accept_with(listener, &welcome));
        });
        let client = BlockingClient::connect_to(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (client, peer)
    }

    fn payload(outcome: Result<Response, Error>) -> String {
        match outcome {
            Ok(Response::Message(m)) => String::from_utf8(m.payload.to_vec()).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn outcomes_come_in_request_order_whatever_the_reply_order() {
        let (mut client, peer) = connect(|peer| {
            let ids: Vec<u64> = (0..4).map(|_| peer.request().0).collect();
            for &id in ids.iter().rev() {
                peer.message(id);
            }
        });
        assert_eq!(window(&client), 4, "the daemon's limit, under MAX_WINDOW");
        let mut pipeline = Pipeline::new(&mut client, 4);
        let mut tags = Vec::new();
        for tag in 0..4 {
            assert!(pipeline.has_room());
            pipeline.submit(tag, &recv_request()).unwrap();
        }
        assert!(!pipeline.has_room(), "the window is full");
        while let Some((tag, outcome)) = pipeline.next() {
            tags.push((tag, payload(outcome)));
        }
        let ids: Vec<(i32, String)> = (0..4).map(|t| (t, (t + 1).to_string())).collect();
        assert_eq!(tags, ids);
        peer.join().unwrap();
    }

    #[test]
    fn the_window_refills_at_half() {
        let (mut client, peer) = connect(|peer| {
            for _ in 0..4 {
                let (id, _) = peer.request();
                peer.message(id);
            }
        });
        let mut pipeline = Pipeline::new(&mut client, 4);
        for tag in 0..4 {
            pipeline.submit(tag, &recv_request()).unwrap();
        }
        assert!(!pipeline.has_room());
        assert!(pipeline.next().unwrap().1.is_ok());
        assert!(!pipeline.has_room(), "3 of 4 in flight: keep draining");
        assert!(pipeline.next().unwrap().1.is_ok());
        assert!(pipeline.has_room(), "half empty: refill");
        while pipeline.next().is_some() {}
        peer.join().unwrap();
    }

    #[test]
    fn after_a_failure_the_rest_is_cancelled_and_late_successes_still_come_out() {
        let (mut client, peer) = connect(|peer| {
            let ids: Vec<u64> = (0..4).map(|_| peer.request().0).collect();
            // The second request fails; the fourth has already succeeded.
            peer.message(ids[3]);
            peer.message(ids[0]);
            let error = ErrorReply::new(ErrorCode::WouldBlock, "mailbox q is empty");
            peer.reply(ids[1], &Response::Error(error));
            // The client cancels the one still open (the third).
            let (cancel, request) = peer.request();
            assert_eq!(request, Request::Cancel { request_id: ids[2] });
            let cancelled = ErrorReply::new(ErrorCode::Cancelled, "cancelled");
            peer.reply(ids[2], &Response::Error(cancelled));
            peer.reply(cancel, &Response::Ok);
            // Every reply was read: the client closes cleanly, with nothing pending.
            assert!(peer.read().is_none());
        });
        let mut pipeline = Pipeline::new(&mut client, 4);
        for tag in 0..4 {
            pipeline.submit(tag, &recv_request()).unwrap();
        }
        let (_, first) = pipeline.next().unwrap();
        assert_eq!(payload(first), "1");
        let (_, second) = pipeline.next().unwrap();
        assert!(matches!(second, Err(Error::WouldBlock(_))), "{second:?}");
        pipeline.cancel_pending().unwrap();
        let (_, third) = pipeline.next().unwrap();
        assert!(matches!(third, Err(Error::Cancelled(_))), "{third:?}");
        let (_, fourth) = pipeline.next().unwrap();
        assert_eq!(payload(fourth), "4");
        assert!(pipeline.next().is_none());
        drop(pipeline);
        drop(client);
        peer.join().unwrap();
    }

    #[test]
    fn has_outcome_tells_without_waiting_whether_the_oldest_reply_is_in() {
        let (go, gone) = std::sync::mpsc::channel::<()>();
        let (mut client, peer) = connect(move |peer| {
            let ids: Vec<u64> = (0..2).map(|_| peer.request().0).collect();
            peer.message(ids[1]);
            gone.recv().unwrap();
            peer.message(ids[0]);
        });
        let mut pipeline = Pipeline::new(&mut client, 4);
        assert!(!pipeline.has_outcome(), "nothing in flight");
        for tag in 0..2 {
            pipeline.submit(tag, &recv_request()).unwrap();
        }
        pipeline.flush().unwrap();
        // Only the second is answered until the peer is told to go on: whatever has
        // arrived, the oldest outcome is not at hand, and asking does not block.
        assert!(!pipeline.has_outcome());
        go.send(()).unwrap();
        while !pipeline.has_outcome() {
            std::thread::yield_now();
        }
        let (tag, first) = pipeline.next().unwrap();
        assert_eq!((tag, payload(first)), (0, "1".to_owned()));
        assert!(pipeline.has_outcome(), "the second came first and was kept");
        let (tag, second) = pipeline.next().unwrap();
        assert_eq!((tag, payload(second)), (1, "2".to_owned()));
        assert!(!pipeline.has_outcome());
        peer.join().unwrap();
    }

    #[test]
    fn an_unordered_outcome_comes_out_as_soon_as_it_is_in() {
        let (go, gone) = std::sync::mpsc::channel::<()>();
        let (mut client, peer) = connect(move |peer| {
            let (first, _) = peer.request();
            let (unordered, _) = peer.request();
            // The last is never answered: the daemon goes away first.
            let _ = peer.request();
            peer.reply(unordered, &Response::Ok);
            gone.recv().unwrap();
            peer.message(first);
        });
        let mut pipeline = Pipeline::new(&mut client, 4);
        pipeline.submit(0, &recv_request()).unwrap();
        pipeline.submit_unordered(1, &Request::Status).unwrap();
        pipeline.submit_unordered(2, &Request::Status).unwrap();
        // The receive is not answered yet; the unordered request is, and comes out.
        let (tag, outcome) = pipeline.next().unwrap();
        assert_eq!(tag, 1);
        assert!(matches!(outcome, Ok(Response::Ok)), "{outcome:?}");
        go.send(()).unwrap();
        let (tag, first) = pipeline.next().unwrap();
        assert_eq!((tag, payload(first)), (0, "1".to_owned()));
        let (tag, last) = pipeline.next().unwrap();
        assert_eq!(tag, 2);
        assert!(matches!(last, Err(Error::Disconnected(_))), "{last:?}");
        assert!(pipeline.next().is_none());
        peer.join().unwrap();
    }

    #[test]
    fn a_broken_connection_fails_only_what_was_unanswered() {
        let (mut client, peer) = connect(|peer| {
            let ids: Vec<u64> = (0..3).map(|_| peer.request().0).collect();
            peer.message(ids[2]);
            // And the daemon goes away.
        });
        let mut pipeline = Pipeline::new(&mut client, 4);
        for tag in 0..3 {
            pipeline.submit(tag, &recv_request()).unwrap();
        }
        let (_, first) = pipeline.next().unwrap();
        assert!(matches!(first, Err(Error::Disconnected(_))), "{first:?}");
        let (_, second) = pipeline.next().unwrap();
        assert!(matches!(second, Err(Error::Disconnected(_))), "{second:?}");
        let (_, third) = pipeline.next().unwrap();
        assert_eq!(payload(third), "3");
        assert!(pipeline.next().is_none());
        peer.join().unwrap();
    }
}
