//! Request/reply (SPEC §4): the calls waiting for their replies, and the rule that lets
//! a reply in.
//!
//! A call's request goes out with `reply_to` naming its connection's reply mailbox
//! (`_ipcd/reply/N`) and a fresh `correlation_id`. That reply mailbox is no mailbox in
//! the table: a send to it is offered here, and taken only if a call of that connection
//! is waiting with that correlation id — once, by the first reply. Everything else sent
//! there is refused, so nobody can push messages at a connection through its reply
//! mailbox, nor answer a call that has ended, nor answer one twice.
//!
//! Correlation ids are random 64-bit numbers, not a counter: knowing one is what lets a
//! responder answer, and only the receiver of the request learns it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ipc_proto::{MailboxName, Message};
use thiserror::Error;
use tokio::sync::oneshot;

/// The calls of every connection that are waiting for a reply, by correlation id.
#[derive(Debug, Default)]
pub struct Calls {
    waiting: Arc<Mutex<HashMap<u64, Waiting>>>,
}

#[derive(Debug)]
struct Waiting {
    /// The reply mailbox of the connection that made the call.
    reply_to: MailboxName,
    reply: oneshot::Sender<Message>,
}

/// A reply sent where no call waits for it.
#[derive(Debug, Clone, Error)]
#[error(
    "no call is waiting for a reply with correlation id {correlation_id} in {reply_to}: \
     a reply is taken once, while its call waits"
)]
pub struct NoSuchCall {
    pub reply_to: MailboxName,
    pub correlation_id: u64,
}

/// A reply sent to a reply mailbox without the correlation id that names its call.
#[derive(Debug, Clone, Error)]
#[error("a reply to {0} must carry the correlation_id of the request it answers")]
pub struct Uncorrelated(pub MailboxName);

/// Why a reply was refused.
#[derive(Debug, Clone, Error)]
pub enum ReplyError {
    #[error(transparent)]
    NoSuchCall(#[from] NoSuchCall),
    #[error(transparent)]
    Uncorrelated(#[from] Uncorrelated),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Calls {
    /// Registers a call whose replies go to `reply_to`: its correlation id, and the
    /// [`Pending`] that receives the reply and withdraws the call when dropped.
    pub fn register(&self, reply_to: MailboxName) -> (u64, Pending) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = lock(&self.waiting);
        let id = loop {
            let id = random_id();
            if id != 0 && !waiting.contains_key(&id) {
                break id;
            }
        };
        waiting.insert(
            id,
            Waiting {
                reply_to,
                reply: tx,
            },
        );
        let pending = Pending {
            calls: self.waiting.clone(),
            id,
            reply: rx,
        };
        (id, pending)
    }

    /// Hands `reply`, sent to `reply_to` with `correlation_id`, to the call waiting for
    /// it; refused unless such a call of that reply mailbox is waiting.
    pub fn answer(
        &self,
        reply_to: &MailboxName,
        correlation_id: Option<u64>,
        reply: Message,
    ) -> Result<(), ReplyError> {
        let id = correlation_id.ok_or_else(|| Uncorrelated(reply_to.clone()))?;
        let no_such_call = || NoSuchCall {
            reply_to: reply_to.clone(),
            correlation_id: id,
        };
        let waiting = {
            let mut waiting = lock(&self.waiting);
            match waiting.get(&id) {
                Some(call) if call.reply_to == *reply_to => waiting.remove(&id),
                _ => None,
            }
        };
        let waiting = waiting.ok_or_else(no_such_call)?;
        // A call that gave up in the meantime no longer takes it.
        waiting.reply.send(reply).map_err(|_| no_such_call().into())
    }

    /// Calls waiting now, of all connections.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// One call's wait for its reply. Dropping it withdraws the call: a reply sent later is
/// refused.
#[derive(Debug)]
pub struct Pending {
    calls: Arc<Mutex<HashMap<u64, Waiting>>>,
    id: u64,
    reply: oneshot::Receiver<Message>,
}

impl Pending {
    /// The reply, or `None` if the call was withdrawn first (see [`Self::withdrawer`]).
    pub async fn reply(&mut self) -> Option<Message> {
        (&mut self.reply).await.ok()
    }

    /// The reply, if it was handed over already: for a wait whose time ran out just as
    /// it came.
    pub fn try_reply(&mut self) -> Option<Message> {
        self.reply.try_recv().ok()
    }

    /// Withdraws the call from outside the task waiting for it (a cancel): the wait then
    /// ends with `None`, unless the reply came first.
    pub fn withdrawer(&self) -> impl FnOnce() + Send + Sync + 'static {
        let (calls, id) = (self.calls.clone(), self.id);
        move || drop(lock(&calls).remove(&id))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.calls).remove(&self.id);
    }
}

/// A random 64-bit number from the kernel (`getrandom(2)`), which does not fail for 8
/// bytes once the system's entropy pool is initialised — long before a daemon runs.
pub fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes of writing for the whole call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, 8, "getrandom(2) gave {n} of 8 bytes");
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ipc_proto::{Credentials, HeaderBox, Timestamp};

    fn message(payload: &'static [u8]) -> Message {
        Message {
            id: 1,
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
            payload: Bytes::from_static(payload),
        }
    }

    fn name(n: &str) -> MailboxName {
        MailboxName::new(n).unwrap()
    }

    #[tokio::test]
    async fn a_reply_is_taken_once_only_by_its_own_call() {
        let calls = Calls::default();
        let (a, mut pending_a) = calls.register(name("_ipcd/reply/1"));
        let (b, mut pending_b) = calls.register(name("_ipcd/reply/1"));
        assert_ne!(a, b);
        // Right id, wrong reply mailbox: refused, the call still waits.
        let wrong = calls.answer(&name("_ipcd/reply/2"), Some(a), message(b"x"));
        assert!(matches!(wrong, Err(ReplyError::NoSuchCall(_))), "{wrong:?}");
        assert!(matches!(
            calls.answer(&name("_ipcd/reply/1"), None, message(b"x")),
            Err(ReplyError::Uncorrelated(_))
        ));
        calls
            .answer(&name("_ipcd/reply/1"), Some(b), message(b"to b"))
            .unwrap();
        calls
            .answer(&name("_ipcd/reply/1"), Some(a), message(b"to a"))
            .unwrap();
        assert_eq!(pending_a.reply().await.unwrap().payload, "to a");
        assert_eq!(pending_b.reply().await.unwrap().payload, "to b");
        // A second reply to a call that has its answer is refused.
        assert!(
            calls
                .answer(&name("_ipcd/reply/1"), Some(a), message(b"again"))
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_withdrawn_call_refuses_its_reply_and_leaves_nothing() {
        let calls = Calls::default();
        let (id, mut pending) = calls.register(name("_ipcd/reply/1"));
        (pending.withdrawer())();
        assert!(pending.reply().await.is_none());
        assert!(
            calls
                .answer(&name("_ipcd/reply/1"), Some(id), message(b"late"))
                .is_err()
        );
        let (_, dropped) = calls.register(name("_ipcd/reply/1"));
        drop(dropped);
        assert_eq!(calls.len(), 0);
    }
}
