//! Surviving a daemon restart: the [`ReconnectPolicy`] that turns it on, and the rules
//! both clients follow when a connection breaks under a request.
//!
//! # Opt-in
//!
//! A client made by `connect`/`connect_to` behaves as it always has: when its connection
//! breaks, the request in flight fails with [`Error::Disconnected`] and so does every
//! later one. Give it a policy ([`BlockingClient::with_reconnect`], or
//! `Client::with_reconnect` for the async client) and it reconnects by itself, with
//! backoff, and makes again the requests that are safe to make again.
//!
//! It is not the default because a retry is not free of meaning, and a program should
//! choose it knowingly: a receive made again on the new daemon is a *new* receive (a
//! message the lost connection had already taken from a memory mailbox died with the old
//! daemon), a caller that wanted to hear of the restart would not (a daemon that is
//! stopping answers `ShuttingDown`, which a reconnecting client takes as "try again
//! soon"), and a call made while the daemon is down waits up to
//! [`ReconnectPolicy::max_wait`] instead of failing at once — for supervisors that
//! restart their workers themselves, failing at once is what they need.
//!
//! # What is made again
//!
//! After reconnecting, a one-call request is made again only when doing it twice cannot
//! do anything twice, or when it certainly never reached the daemon:
//!
//! | request | connection lost before the reply |
//! |---|---|
//! | `Stat`, `List`, `Status` | made again |
//! | `Create` with `exist_ok` | made again (it may then report `created: false`) |
//! | `Recv` (also peek, leased, batched) | made again, waiting only for what is left of its timeout: an unanswered receive took nothing that survives — a memory mailbox's message went with the old daemon, and a lease ends with its connection, so the message is redelivered (at least once) |
//! | `Send`, `SendBatch` | **not** made again: it may have been stored. It fails with [`Error::Disconnected`], so every send either succeeded once or returned an error |
//! | `Ack`, `Nack` | **not** made again: it may have taken effect (a second ack would fail with `NotLeased`). It fails with [`Error::Disconnected`], saying the outcome is unknown; an ack that did not happen leaves the message to be redelivered |
//! | `Create` without `exist_ok`, `Set`, `Purge`, `Remove`, `Cancel` | not made again |
//!
//! Any request whose write failed before a single byte of it went out never reached the
//! daemon, and is made on the new connection whatever it is. A `ShuttingDown` reply to a
//! request that may be made again counts as a lost connection.
//!
//! A message leased through a `Delivery`/`BlockingDelivery` is tied to the connection
//! that took it: once that connection is gone, its `ack`/`nack` fail at once with
//! `ErrorCode::NotLeased` (the lease ended with it, and the message will be redelivered)
//! without asking the new daemon.
//!
//! Requests pipelined with [`BlockingClient::submit`] are never made again: a broken
//! connection fails them with [`Error::Disconnected`], and the next `submit` reconnects.
//!
//! # Backoff
//!
//! Reconnecting tries at once, then after pauses that double from
//! [`ReconnectPolicy::backoff_start`] up to [`ReconnectPolicy::backoff_max`], for at
//! most [`ReconnectPolicy::max_wait`] in all (by default 10 ms, 1 s and 30 s); then the
//! call fails with [`Error::NotReachable`]. A later call tries again. A connection that
//! breaks soon after it was made (less than `backoff_max`) counts as a failed attempt,
//! so a daemon that accepts and then drops connections is not hammered. The first
//! connection is never retried: `connect` fails at once when no daemon listens.
//!
//! [`BlockingClient::with_reconnect`]: crate::BlockingClient::with_reconnect
//! [`BlockingClient::submit`]: crate::BlockingClient::submit

use std::borrow::Cow;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use ipc_proto::{ErrorCode, Request, Response, Wait};

use crate::Error;

/// How a client reconnects after its connection to the daemon breaks (see the
/// [module documentation](self) for what is retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The longest one call spends reconnecting, all attempts together, before it fails
    /// with [`Error::NotReachable`].
    pub max_wait: Duration,
    /// The pause after the first failed attempt; each later pause doubles it…
    pub backoff_start: Duration,
    /// …up to this.
    pub backoff_max: Duration,
}

impl Default for ReconnectPolicy {
    /// 10 ms doubling to 1 s, for at most 30 s: long enough for a supervised restart,
    /// short enough that a program whose daemon is gone for good hears of it.
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(30),
            backoff_start: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl ReconnectPolicy {
    /// The default policy with another bound on the whole wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

/// The pauses between attempts of one reconnection.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    max_wait: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(policy: &ReconnectPolicy) -> Self {
        Self {
            started: Instant::now(),
            max_wait: policy.max_wait,
            next: policy.backoff_start,
            max: policy.backoff_max.max(policy.backoff_start),
        }
    }

    /// Time left of the whole wait.
    pub fn left(&self) -> Duration {
        self.max_wait.saturating_sub(self.started.elapsed())
    }

    /// The pause before the next attempt, or `None` once the whole wait is spent. The
    /// last pause is cut to what is left, so that one last attempt is made at the end.
    pub fn pause(&mut self) -> Option<Duration> {
        let left = self.left();
        if left.is_zero() {
            return None;
        }
        let pause = self.next.min(left);
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(pause)
    }

    /// After an attempt to reconnect to `path` failed with `e`: the pause before the
    /// next one, or the error to give up with.
    pub fn failed(&mut self, path: &Path, e: Error) -> Result<Duration, Error> {
        if !is_transient(&e) {
            return Err(e);
        }
        self.pause().ok_or_else(|| gave_up(path, self.max_wait, e))
    }
}

/// The pause before reconnecting, given when the broken connection was made: none for one
/// that lived, a growing one for connections that keep breaking as soon as they are made.
/// `churn` carries the last such pause from one reconnection to the next.
pub(crate) fn churn_pause(
    policy: &ReconnectPolicy,
    opened: Instant,
    churn: &mut Duration,
) -> Duration {
    if opened.elapsed() >= policy.backoff_max {
        *churn = Duration::ZERO;
    } else {
        *churn = churn.saturating_mul(2).clamp(
            policy.backoff_start,
            policy.backoff_max.max(policy.backoff_start),
        );
    }
    (*churn).min(policy.max_wait)
}

/// Whether a failed attempt to reconnect may succeed if tried again: no daemon yet, a
/// daemon still stopping, or one whose connection quota has not yet seen the old
/// connection go.
pub(crate) fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::NotReachable { .. }
            | Error::Disconnected(_)
            | Error::ShuttingDown(_)
            | Error::QuotaExceeded(_)
    )
}

/// What a call reports when reconnecting failed for good: the last attempt's error, as
/// "not reachable" when it was one that waiting might have cured.
pub(crate) fn gave_up(path: &Path, waited: Duration, last: Error) -> Error {
    let note = |e: &dyn std::fmt::Display| {
        format!("{e} (the connection was lost; gave up reconnecting after {waited:?})")
    };
    match last {
        Error::NotReachable { path, source } => Error::NotReachable {
            path,
            source: io::Error::new(source.kind(), note(&source)),
        },
        e if is_transient(&e) => Error::NotReachable {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, note(&e)),
        },
        e => e,
    }
}

/// Whether `request` may be made again on a new connection after the old one broke
/// before its reply (the table in the module documentation).
pub(crate) fn retry_safe(request: &Request) -> bool {
    match request {
        // A private mailbox (a subscription's) went with the connection: receiving from
        // its name on a new one would find nothing — or someone else's.
        Request::Recv(r) if is_private(&r.mailbox) => false,
        Request::RecvBatch(r) if is_private(&r.mailbox) => false,
        Request::Stat { .. }
        | Request::List
        | Request::Status
        | Request::Recv(_)
        | Request::RecvBatch(_)
        | Request::PeekAt { .. }
        | Request::Bind { .. } => true,
        Request::Create(create) => create.exist_ok,
        Request::Send(_)
        | Request::SendBatch(_)
        | Request::Ack { .. }
        | Request::Nack { .. }
        | Request::Set { .. }
        | Request::Purge { .. }
        | Request::Remove { .. }
        | Request::Cancel { .. }
        | Request::Unbind { .. }
        | Request::Publish(_)
        | Request::Subscribe { .. }
        | Request::Call(_) => false,
    }
}

fn is_private(name: &ipc_proto::MailboxName) -> bool {
    name.as_str().starts_with(ipc_proto::PRIVATE_PREFIX)
}

/// The error for a request whose connection broke after it was sent and that is not
/// made again: says what may have happened.
pub(crate) fn lost(request: &Request, cause: Error) -> Error {
    let Error::Disconnected(io) = cause else {
        return cause;
    };
    let outcome = match request {
        Request::Send(_) => "the message may or may not have been stored; it was not resent",
        Request::SendBatch(_) => {
            "any of the messages may or may not have been stored; none was resent"
        }
        Request::Ack { .. } => {
            "the ack may or may not have taken effect; if it did not, the message is \
             redelivered when its lease ends"
        }
        Request::Nack { .. } => {
            "the nack may or may not have taken effect; the message is redelivered either way"
        }
        Request::Publish(_) => {
            "any of its copies may or may not have been delivered; it was not published again"
        }
        Request::Call(_) => {
            "the request may or may not have reached a responder; it was not sent again"
        }
        Request::Create(_)
        | Request::Unbind { .. }
        | Request::Set { .. }
        | Request::Purge { .. }
        | Request::Remove { .. } => "it may or may not have taken effect",
        _ => return Error::Disconnected(io),
    };
    Error::Disconnected(io::Error::new(io.kind(), format!("{io}; {outcome}")))
}

/// The outcome of an ack or nack made only on the connection that holds the lease.
pub(crate) fn settled(request: &Request, attempt: Attempt) -> Result<Response, Error> {
    match (attempt, request) {
        (Attempt::Answered(response), _) => Ok(response),
        (Attempt::NotSent(_), Request::Ack { id, .. } | Request::Nack { id, .. }) => {
            Err(lease_lost(*id))
        }
        (Attempt::NotSent(e) | Attempt::Lost(e), _) => Err(lost(request, e)),
    }
}

/// The answer to an ack or nack of a message whose lease was held by a connection that
/// is gone: the lease ended with it, as the daemon would say.
pub(crate) fn lease_lost(id: u64) -> Error {
    Error::Server {
        code: ipc_proto::ErrorCode::NotLeased,
        message: format!(
            "message {id} is no longer leased: the connection that held its lease was lost, \
             which ended the lease, so it will be redelivered"
        ),
    }
}

/// What became of one attempt at a one-call request on one connection.
// Made once per request and consumed at once, so the size of an answer is no burden.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The daemon answered.
    Answered(Response),
    /// It never reached the daemon: not a byte of it was written.
    NotSent(Error),
    /// The connection broke before its reply.
    Lost(Error),
}

/// A one-call request and the rules of making it again: a receive with a timeout waits
/// only for what is left of it.
#[derive(Debug)]
pub(crate) struct Retry<'r> {
    request: &'r Request,
    /// For a receive with a timeout: when it runs out, and the timeout as given.
    deadline: Option<(Instant, u64)>,
}

impl<'r> Retry<'r> {
    /// Starts the clock of `request`'s timeout, if it has one; call before making it.
    pub fn new(request: &'r Request) -> Self {
        let wait = match request {
            Request::Recv(r) => r.wait,
            Request::RecvBatch(r) => r.wait,
            _ => Wait::Forever,
        };
        let deadline = match wait {
            Wait::TimeoutMs(ms) => Instant::now()
                .checked_add(Duration::from_millis(ms))
                .map(|at| (at, ms)),
            Wait::Forever | Wait::NoWait => None,
        };
        Self { request, deadline }
    }

    /// What to do after `attempt`, the client reconnecting by itself or not: `Some` with
    /// the call's outcome, or `None` to make the request again on a new connection.
    /// `stopping` is told when the daemon said it is shutting down and the client
    /// reconnects: the connection must take no new requests.
    pub fn step(
        &self,
        attempt: Attempt,
        reconnecting: bool,
        stopping: impl FnOnce(&str),
    ) -> Option<Result<Response, Error>> {
        let retryable = reconnecting && retry_safe(self.request);
        match attempt {
            Attempt::Answered(Response::Error(e))
                if e.code == ErrorCode::ShuttingDown && reconnecting =>
            {
                stopping(&e.message);
                (!retryable).then_some(Ok(Response::Error(e)))
            }
            Attempt::Answered(response) => Some(Ok(response)),
            Attempt::NotSent(e) => (!reconnecting).then_some(Err(e)),
            Attempt::Lost(e) if retryable && e.is_connection_lost() => None,
            Attempt::Lost(e) => Some(Err(lost(self.request, e))),
        }
    }

    /// The request to make now: the original, or a receive with the rest of its timeout;
    /// [`Error::TimedOut`] if none is left.
    pub fn again(&self) -> Result<Cow<'r, Request>, Error> {
        let Some((at, ms)) = self.deadline else {
            return Ok(Cow::Borrowed(self.request));
        };
        let left = at.saturating_duration_since(Instant::now());
        // Rounded up, so that a timeout in progress is never turned into `NoWait`.
        let left_ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let mut again = self.request.clone();
        let (mailbox, wait) = match &mut again {
            Request::Recv(r) => (&r.mailbox, &mut r.wait),
            Request::RecvBatch(r) => (&r.mailbox, &mut r.wait),
            _ => return Ok(Cow::Borrowed(self.request)),
        };
        if left_ms == 0 {
            return Err(Error::TimedOut(format!(
                "no message in mailbox {mailbox} within {ms} ms (the connection to ipcd was \
                 lost and made again meanwhile)"
            )));
        }
        *wait = Wait::TimeoutMs(left_ms);
        Ok(Cow::Owned(again))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::{CreateRequest, MailboxName, RecvRequest, Selector};

    #[test]
    fn backoff_doubles_to_its_cap_and_ends_with_the_wait() {
        let policy = ReconnectPolicy {
            max_wait: Duration::from_secs(3600),
            backoff_start: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        };
        let mut backoff = Backoff::new(&policy);
        let pauses: Vec<u128> = (0..5)
            .map(|_| backoff.pause().unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 50, 50]);
        let mut spent = Backoff::new(&policy.max_wait(Duration::ZERO));
        assert_eq!(
            spent.pause(),
            None,
            "no wait at all: no attempt after the first"
        );
    }

    #[test]
    fn a_connection_that_lived_resets_the_churn_pause() {
        let policy = ReconnectPolicy {
            backoff_max: Duration::from_secs(3600),
            ..ReconnectPolicy::default()
        };
        let mut churn = Duration::ZERO;
        let now = Instant::now();
        assert_eq!(churn_pause(&policy, now, &mut churn), policy.backoff_start);
        assert_eq!(
            churn_pause(&policy, now, &mut churn),
            policy.backoff_start * 2
        );
        let long_ago = now - Duration::from_secs(7200);
        assert_eq!(churn_pause(&policy, long_ago, &mut churn), Duration::ZERO);
    }

    fn recv(wait: Wait) -> Request {
        Request::Recv(RecvRequest {
            mailbox: MailboxName::new("q").unwrap(),
            selector: Selector::Any,
            wait,
            peek: false,
            lease: None,
            max_size: None,
        })
    }

    #[test]
    fn only_what_cannot_happen_twice_is_made_again() {
        let q = || MailboxName::new("q").unwrap();
        let create = |exist_ok| {
            Request::Create(Box::new(CreateRequest {
                mailbox: q(),
                mode: None,
                durable: false,
                fsync: None,
                limits: Default::default(),
                delivery: Default::default(),
                exist_ok,
            }))
        };
        assert!(retry_safe(&recv(Wait::Forever)));
        // A subscription's mailbox went with the connection; its name may be another's.
        let mut private = recv(Wait::Forever);
        if let Request::Recv(r) = &mut private {
            r.mailbox = MailboxName::new("_ipcd/watch/1-00ff").unwrap();
        }
        assert!(!retry_safe(&private));
        assert!(retry_safe(&Request::Stat { mailbox: q() }));
        assert!(retry_safe(&create(true)));
        assert!(!retry_safe(&create(false)));
        assert!(!retry_safe(&Request::Ack {
            mailbox: q(),
            id: 1
        }));
        assert!(!retry_safe(&Request::Purge { mailbox: q() }));
    }

    #[test]
    fn a_retried_receive_waits_only_for_the_rest_of_its_timeout() {
        let forever = recv(Wait::Forever);
        assert_eq!(*Retry::new(&forever).again().unwrap(), forever);
        let long = recv(Wait::TimeoutMs(3_600_000));
        match &*Retry::new(&long).again().unwrap() {
            Request::Recv(r) => match r.wait {
                Wait::TimeoutMs(ms) => assert!((1..=3_600_000).contains(&ms), "{ms}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let spent = recv(Wait::TimeoutMs(0));
        assert!(matches!(
            Retry::new(&spent).again(),
            Err(Error::TimedOut(_))
        ));
    }
}
