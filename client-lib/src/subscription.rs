//! A subscription to a topic pattern, written once for both clients: the private
//! mailbox the daemon made for it, the messages received from it in batches and not yet
//! handed out, and the count of those the daemon dropped because the subscriber was
//! slow. The blocking client reads it as an `Iterator`, the async one as a `Stream`.

use std::collections::VecDeque;

use ipc_proto::{MailboxName, Message};

use crate::{Error, Result};

/// Messages asked for per receive: enough that a busy subscription costs one request per
/// many messages, few enough that one reply stays small.
pub(crate) const BATCH: u32 = 64;

/// A subscription to a topic pattern through client `C`, used as `Subscription` and
/// [`crate::BlockingSubscription`]. It yields each message published on a matching topic
/// (its `headers.topic` says which), oldest first. Its private mailbox keeps a bounded
/// number of messages (the daemon's `subscription_msgs`); past that the daemon drops the
/// oldest for the newest, and [`Self::dropped`] counts them. It ends when the
/// subscription does: its connection closed, or its mailbox was removed.
#[derive(Debug)]
pub struct Subscribed<C> {
    pub(crate) client: C,
    mailbox: MailboxName,
    ready: VecDeque<Message>,
    /// Message ids in a private mailbox follow one another from 1, so a gap — before
    /// the first message received, too — is what was dropped.
    last_id: u64,
    dropped: u64,
    ended: bool,
}

impl<C> Subscribed<C> {
    pub(crate) fn new(client: C, mailbox: MailboxName) -> Self {
        Self {
            client,
            mailbox,
            ready: VecDeque::new(),
            last_id: 0,
            dropped: 0,
            ended: false,
        }
    }

    /// The private mailbox the daemon made for this subscription.
    pub fn mailbox(&self) -> &MailboxName {
        &self.mailbox
    }

    /// Messages the daemon dropped so far because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages received and not yet handed out: the next this many come without
    /// waiting.
    pub fn buffered(&self) -> usize {
        self.ready.len()
    }

    /// The next message already received, if any.
    pub(crate) fn pop(&mut self) -> Option<Message> {
        self.ready.pop_front()
    }

    /// Takes the outcome of one receive: its messages for later, or the error to yield,
    /// after which the subscription ends when the error means it is gone.
    pub(crate) fn take(&mut self, received: Result<Vec<Message>>) -> Option<Result<Message>> {
        match received {
            Ok(messages) => {
                for message in &messages {
                    self.dropped += message.id.saturating_sub(self.last_id + 1);
                    self.last_id = message.id;
                }
                self.ready.extend(messages);
                self.ready.pop_front().map(Ok)
            }
            Err(e) => {
                self.ended = e.is_connection_lost()
                    || matches!(e, Error::Removed(_) | Error::NoSuchMailbox(_));
                Some(Err(e))
            }
        }
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ipc_proto::{Credentials, HeaderBox, Timestamp};

    fn message(id: u64) -> Message {
        Message {
            id,
            mtype: 1,
            sender: Credentials {
                pid: 1,
                uid: 1,
                gid: 1,
            },
            sent_at: Timestamp(0),
            headers: HeaderBox::default(),
            redelivered: false,
            deliveries: 1,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn gaps_in_ids_count_as_dropped_and_a_removed_mailbox_ends_it() {
        let name = MailboxName::new("_ipcd/watch/1-1").unwrap();
        let mut s = Subscribed::new((), name);
        let first = s.take(Ok(vec![message(1), message(2), message(5)]));
        assert_eq!(first.unwrap().unwrap().id, 1);
        assert_eq!(s.pop().unwrap().id, 2);
        assert_eq!(s.pop().unwrap().id, 5);
        assert_eq!(s.dropped(), 2);
        s.take(Ok(vec![message(9)]));
        assert_eq!(s.dropped(), 5);
        assert!(!s.ended());
        let gone = s.take(Err(Error::Removed("mailbox removed".into())));
        assert!(matches!(gone, Some(Err(Error::Removed(_)))));
        assert!(s.ended());
    }

    #[test]
    fn what_was_dropped_before_the_first_receive_counts_too() {
        let name = MailboxName::new("_ipcd/watch/1-1").unwrap();
        let mut s = Subscribed::new((), name);
        let first = s.take(Ok(vec![message(91), message(92)]));
        assert_eq!(first.unwrap().unwrap().id, 91);
        assert_eq!(s.dropped(), 90);
    }
}
