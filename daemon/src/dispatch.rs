//! The single dispatch point: one `match` over [`Request`], in which every operation goes
//! policy (name and argument checks, mode bits) → broker/mailbox. A new request variant
//! makes the compiler point here. Errors become error replies; nothing here can end the
//! connection.
//!
//! This is also the one place where the daemon's errors — the broker's and mailbox's
//! (`SendError`, `RecvError`, `CreateError`, …), a refused charge (`QuotaError`) and the
//! store's answer (`StoreError`) — become wire `ErrorReply`s: each gets its stable
//! `ErrorCode` here, and its message is its `Display`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ipc_proto::{
    BatchMessage, CallRequest, ErrorCode, ErrorReply, Headers, MAX_BATCH, MAX_CONTENT_TYPE,
    MailboxChanges, MailboxName, Message, PublishReport, PublishRequest, REPLY_PREFIX,
    RecvBatchRequest, RecvRequest, Request, Response, Selector, SendBatchRequest, SendRequest,
    Timestamp, TopicPattern, Wait,
};
use tokio::sync::oneshot;

use crate::broker::{
    BindError, Broker, CreateError, Created, InvalidArgument, NoSuchMailbox, bounded, check_mode,
};
use crate::caller::Caller;
use crate::calls::ReplyError;
use crate::config::Config;
use crate::mailbox::{
    Canceller, Closed, Envelope, Incoming, Interrupted, LeaseError, LeaseTerms, Mailbox, Memfd,
    Origin, Parked, Pending, Received, RecvError, SendError, SentId, Side, Taker, WaiterGroup,
    headers_size,
};
use crate::perm::Access;
use crate::quota::{QuotaError, Resource, UidAccount};
use crate::store::{StoreError, Stored};

/// A result whose error is already in its wire form.
type OpResult<T> = Result<T, ErrorReply>;

/// How a request is answered.
#[allow(
    clippy::large_enum_variant,
    reason = "a reply lives on the stack for one request; boxing would allocate per request"
)]
pub enum Reply {
    /// At once.
    Now(Answer),
    /// When the future completes (a blocked send or receive); `cancel` ends the wait at
    /// once. `undoable`: dropping `wait` before it completes undoes the request, which
    /// then did nothing (a wait for a message, for room, or a call not yet sent) — so
    /// it may be refused past the connection's `in_flight` quota. A wait for the store
    /// is not: what it stores is stored, and must be answered as such.
    Later {
        wait: Pin<Box<dyn Future<Output = Answer> + Send>>,
        cancel: Canceller,
        undoable: bool,
    },
    /// The request is a cancel of the pending request with this id; the peer owns those.
    Cancel(u64),
    /// A receive parked in its mailbox: its result comes to the connection's
    /// completions (`Caller::parked`), and the peer answers it from there.
    Parked(Parked),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(&r.body).finish(),
            Reply::Later { .. } => f.write_str("Later(..)"),
            Reply::Cancel(id) => f.debug_tuple("Cancel").field(id).finish(),
            Reply::Parked(p) => f.debug_tuple("Parked").field(&p.slot).finish(),
        }
    }
}

/// A response, and the memfd whose contents are the payload of the message it carries
/// when that payload goes as a descriptor (the message's `payload` is then empty).
pub struct Answer {
    pub body: Body,
    pub memfd: Option<Arc<Memfd>>,
}

/// What an answer says: a response, or messages received, which are written from their
/// envelopes (the same bytes as a `Response::Message` or `Response::Messages` of them)
/// rather than copied into a `Message` first.
#[derive(Debug)]
pub enum Body {
    Response(Response),
    /// One message received; its durable removal, if any, is committed and its charge
    /// given back.
    Message(Envelope),
    /// Messages received in a batch, likewise.
    Messages(Vec<Envelope>),
}

impl Body {
    /// One message received, as a body: a durable one's removal is committed now, and
    /// its charge given back (the message has left its mailbox for its receiver).
    fn message(mut e: Envelope) -> Self {
        handed_over(&mut e);
        Body::Message(e)
    }

    fn messages(mut es: Vec<Envelope>) -> Self {
        es.iter_mut().for_each(handed_over);
        Body::Messages(es)
    }

    /// The response this body is written as.
    #[cfg(test)]
    pub fn into_response(self) -> Response {
        match self {
            Body::Response(r) => r,
            Body::Message(e) => Response::Message(to_wire(e)),
            Body::Messages(es) => Response::Messages(es.into_iter().map(to_wire).collect()),
        }
    }
}

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Self {
            body: Body::Response(response),
            memfd: None,
        }
    }
}

impl From<Body> for Answer {
    fn from(body: Body) -> Self {
        Self { body, memfd: None }
    }
}

fn now(result: OpResult<Response>) -> Reply {
    Reply::Now(Answer::from(result.unwrap_or_else(Response::Error)))
}

/// Answers one request from `caller`. `memfd`: the memfd a `Send`'s payload came in,
/// when the daemon keeps it (its `payload` is then a mapping of it). `takes_fd`: a
/// receive's answer may carry its payload as a memfd.
pub fn dispatch(
    broker: &Broker,
    caller: &Caller,
    request: Request,
    memfd: Option<Arc<Memfd>>,
    takes_fd: bool,
) -> Reply {
    match request {
        Request::Create(req) => match check_dead_letter(
            broker,
            caller,
            &req.mailbox,
            req.delivery.dead_letter.as_ref(),
        )
        .and_then(|()| broker.create(caller, *req).map_err(ErrorReply::from))
        {
            Ok(Created::Now(created)) => Reply::Now(Answer::from(Response::Created { created })),
            Ok(Created::Storing(stored)) => {
                once_stored(stored, Response::Created { created: true })
            }
            Err(e) => Reply::Now(Answer::from(Response::Error(e))),
        },
        Request::Send(req) if is_reply_mailbox(&req.mailbox) => {
            now(answer_call(broker, caller, req))
        }
        Request::Send(req) => match send(broker, caller, req, memfd) {
            Ok(pending) => reply_when(pending, |SentId(id)| Response::Sent { id }),
            Err(e) => Reply::Now(Answer::from(Response::Error(e))),
        },
        Request::Recv(req) => match recv(broker, caller, req) {
            Ok(Received::Pending(pending)) => {
                reply_when(pending, move |e| message_answer(e, takes_fd))
            }
            Ok(Received::Parked(parked)) => Reply::Parked(parked),
            Err(e) => Reply::Now(Answer::from(Response::Error(e))),
        },
        Request::Stat { mailbox } => now(authorized(broker, caller, &mailbox, Access::Read)
            .map(|m| Response::Mailbox(Box::new(broker.info(&m))))),
        Request::List => Reply::Now(Answer::from(Response::Mailboxes(
            broker
                .all()
                .into_iter()
                .filter(|m| {
                    let own = m.ownership();
                    caller.may(&own, Access::Read) || caller.may(&own, Access::Manage)
                })
                .map(|m| broker.info(&m))
                .collect(),
        ))),
        Request::Set { mailbox, changes } => set(broker, caller, &mailbox, *changes)
            .unwrap_or_else(|e| Reply::Now(Answer::from(Response::Error(e)))),
        Request::Purge { mailbox } => {
            match authorized(broker, caller, &mailbox, Access::Manage).map(|m| m.purge()) {
                Ok((messages, stored)) => answer(stored, Response::Purged { messages }),
                Err(e) => Reply::Now(Answer::from(Response::Error(e))),
            }
        }
        Request::Remove { mailbox } => {
            match authorized(broker, caller, &mailbox, Access::Manage).map(|m| broker.remove(&m)) {
                Ok(stored) => answer(stored, Response::Ok),
                Err(e) => Reply::Now(Answer::from(Response::Error(e))),
            }
        }
        Request::Status => Reply::Now(Answer::from(Response::Status(Box::new(
            broker.status(caller),
        )))),
        Request::Cancel { request_id } => Reply::Cancel(request_id),
        Request::Ack { mailbox, id } => {
            match authorized(broker, caller, &mailbox, Access::Read)
                .and_then(|m| Ok(m.ack(id, caller.uid())?))
            {
                Ok(stored) => answer(stored, Response::Ok),
                Err(e) => Reply::Now(Answer::from(Response::Error(e))),
            }
        }
        Request::Nack { mailbox, id } => now(authorized(broker, caller, &mailbox, Access::Read)
            .and_then(|m| Ok(m.nack(id, caller.uid())?))
            .map(|()| Response::Ok)),
        Request::SendBatch(req) => send_batch(broker, caller, req)
            .unwrap_or_else(|e| Reply::Now(Answer::from(Response::Error(e)))),
        Request::RecvBatch(req) => recv_batch(broker, caller, req)
            .unwrap_or_else(|e| Reply::Now(Answer::from(Response::Error(e)))),
        Request::Bind { mailbox, pattern } => now(bind(broker, caller, &mailbox, &pattern)),
        Request::Unbind { mailbox, pattern } => {
            now(
                authorized(broker, caller, &mailbox, Access::Manage).and_then(|m| {
                    if broker.unbind(m.name(), &pattern) {
                        Ok(Response::Ok)
                    } else {
                        Err(ErrorReply::new(
                            ErrorCode::InvalidArgument,
                            format!("mailbox {mailbox} is not bound to {pattern}"),
                        ))
                    }
                }),
            )
        }
        Request::Publish(req) => publish(broker, caller, req)
            .unwrap_or_else(|e| Reply::Now(Answer::from(Response::Error(e)))),
        Request::Subscribe { pattern } => now(broker
            .subscribe(caller, &pattern)
            .map(|mailbox| Response::Subscribed { mailbox })
            .map_err(ErrorReply::from)),
        Request::Call(req) => call(broker, caller, req)
            .unwrap_or_else(|e| Reply::Now(Answer::from(Response::Error(e)))),
        Request::PeekAt { mailbox, index } => {
            match authorized(broker, caller, &mailbox, Access::Read)
                .and_then(|m| Ok(m.peek_at(index)?))
            {
                Ok(copy) => Reply::Now(Answer::from(Body::message(copy))),
                Err(e) => Reply::Now(Answer::from(Response::Error(e))),
            }
        }
    }
}

/// Binds a mailbox to a topic pattern; needs the owner's rights on it, since what is
/// published there then fills it (and is charged to the publishers).
fn bind(
    broker: &Broker,
    caller: &Caller,
    name: &MailboxName,
    pattern: &TopicPattern,
) -> OpResult<Response> {
    let mailbox = authorized(broker, caller, name, Access::Manage)?;
    broker.bind(&mailbox, pattern)?;
    Ok(Response::Ok)
}

/// Publishes one message on a topic: a copy offered to every bound mailbox whose pattern
/// matches, each checked and limited as a send of its own, without waiting. A copy the
/// publisher may not send, or that its mailbox refuses, is counted, never fatal to the
/// rest. Each copy is charged to the owner of the mailbox it goes to, who chose to
/// receive it by binding: a mailbox bound to everything cannot make a publisher pay for
/// what it hoards. Answered once every durable copy is stored.
fn publish(broker: &Broker, caller: &Caller, req: PublishRequest) -> OpResult<Reply> {
    check_message(req.mtype, &req.headers)?;
    let config = broker.config();
    let mut report = PublishReport::default();
    let mut storing = Vec::new();
    let mut headers = req.headers;
    headers.topic = Some(req.topic.clone());
    for name in broker.bound_to(&req.topic) {
        // Removed since it was matched: it no longer has the binding either.
        let Ok(mailbox) = broker.get(&name) else {
            continue;
        };
        // Read once: the ownership is copied out of the mailbox's lock.
        let own = mailbox.ownership();
        if !caller.may(&own, Access::Write) {
            report.denied += 1;
            continue;
        }
        let copy = BatchMessage {
            mtype: req.mtype,
            headers: headers.clone(),
            ttl_ms: req.ttl_ms,
            delay_ms: None,
            payload: req.payload.clone(),
        };
        let payer = broker.accounts().account(own.owner_uid);
        let Ok(incoming) = Intake::new(&config, caller, &payer).message(copy) else {
            report.failed += 1;
            continue;
        };
        match mailbox.send(incoming, Wait::NoWait) {
            Pending::Ready(Ok(_)) => report.delivered += 1,
            Pending::Ready(Err(SendError::Full(_))) => report.full += 1,
            Pending::Ready(Err(_)) => report.failed += 1,
            Pending::Wait(stored) => storing.push(stored),
        }
    }
    if storing.is_empty() {
        return Ok(Reply::Now(Answer::from(Response::Published(report))));
    }
    Ok(Reply::Later {
        wait: Box::pin(async move {
            for stored in storing {
                match stored.wait().await {
                    Ok(_) => report.delivered += 1,
                    Err(_) => report.failed += 1,
                }
            }
            Answer::from(Response::Published(report))
        }),
        // Nothing to withdraw: the copies were accepted, and are being stored.
        cancel: Box::new(|_| {}),
        undoable: false,
    })
}

/// Whether `name` is a connection's reply mailbox, which only takes replies to calls.
fn is_reply_mailbox(name: &MailboxName) -> bool {
    name.as_str().starts_with(REPLY_PREFIX)
}

/// A reply sent to a reply mailbox: handed to the call waiting for it, or refused.
fn answer_call(broker: &Broker, caller: &Caller, req: SendRequest) -> OpResult<Response> {
    check_message(req.mtype, &req.headers)?;
    let max = broker.config().ceilings.max_msg_size;
    if req.payload.len() as u64 > max {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "a reply of {} bytes is larger than the daemon's max_msg_size ceiling of {max}",
                req.payload.len()
            ),
        ));
    }
    let reply = Message {
        // The first and only message of its call.
        id: 1,
        mtype: req.mtype,
        sender: caller.creds,
        sent_at: Timestamp::now(),
        redelivered: false,
        deliveries: 1,
        headers: req.headers,
        payload: req.payload,
    };
    let correlation_id = reply.headers.correlation_id;
    broker.calls().answer(&req.mailbox, correlation_id, reply)?;
    Ok(Response::Sent { id: 1 })
}

/// Sends a request and waits for its reply: the message goes to its mailbox as a send
/// would (waiting for room within the timeout), with `reply_to` and a fresh
/// `correlation_id` set, and expires there undelivered when the timeout ends, so no
/// responder takes up a call nobody waits for any more. Nothing is sent until the wait
/// starts: a call refused for the connection's `in_flight` quota did nothing.
fn call(broker: &Broker, caller: &Caller, req: CallRequest) -> OpResult<Reply> {
    check_message(req.mtype, &req.headers)?;
    if req.headers.reply_to.is_some() || req.headers.correlation_id.is_some() {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "a call sets reply_to and correlation_id itself; send the request without them",
        ));
    }
    let max = broker.config().max_ttl;
    let timeout = bounded("ttl", req.timeout_ms, max).map_err(|_| {
        ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!(
                "a call timeout of {} ms is out of range: 1 ms to max_ttl of {} ms (the \
                 request expires with it)",
                req.timeout_ms,
                max.as_millis()
            ),
        )
    })?;
    let mailbox = authorized(broker, caller, &req.mailbox, Access::Write)?;
    let reply_to = caller.reply_mailbox();
    let (correlation_id, mut pending) = broker.calls().register(reply_to.clone());
    let mut headers = req.headers;
    headers.reply_to = Some(reply_to);
    headers.correlation_id = Some(correlation_id);
    let request = BatchMessage {
        mtype: req.mtype,
        headers,
        ttl_ms: Some(req.timeout_ms),
        delay_ms: None,
        payload: req.payload,
    };
    let incoming = incoming(&broker.config(), caller, request).map_err(|r| r.into_reply(caller))?;
    // What a cancel must stop: the call, and its send while that waits for room.
    let cancelling = Arc::new(std::sync::Mutex::new(Cancelling::default()));
    let withdraw = pending.withdrawer();
    let cancel = {
        let cancelling = cancelling.clone();
        Box::new(move |cancelled| {
            withdraw();
            let stop = {
                let mut c = cancelling.lock().unwrap_or_else(|e| e.into_inner());
                c.cancelled = true;
                c.stop_sending.take()
            };
            if let Some(stop) = stop {
                stop(cancelled);
            }
        })
    };
    let name = req.mailbox;
    let wait = async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let nobody_waited = mailbox.waiting_receivers() == 0;
        let timed_out = || {
            let hint = if nobody_waited {
                "; no receiver was waiting on it when the call was made"
            } else {
                ""
            };
            Response::Error(ErrorReply::new(
                ErrorCode::TimedOut,
                format!(
                    "no reply to the call to mailbox {name} within {} ms{hint}",
                    timeout.as_millis()
                ),
            ))
        };
        let cancelled = || {
            Response::Error(ErrorReply::new(
                ErrorCode::Cancelled,
                "the call was cancelled",
            ))
        };
        {
            let mut c = cancelling.lock().unwrap_or_else(|e| e.into_inner());
            if c.cancelled {
                return Answer::from(cancelled());
            }
            match mailbox.send(incoming, Wait::TimeoutMs(req.timeout_ms)) {
                Pending::Ready(Err(e)) => return Answer::from(Response::Error(e.into())),
                Pending::Ready(Ok(_)) => c.sending = None,
                Pending::Wait(waiter) => {
                    c.stop_sending = Some(waiter.canceller());
                    c.sending = Some(waiter);
                }
            }
        }
        let sending = cancelling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sending
            .take();
        if let Some(waiter) = sending {
            match tokio::time::timeout_at(deadline, waiter.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Answer::from(Response::Error(e.into())),
                Err(_) => return Answer::from(timed_out()),
            }
        }
        Answer::from(
            match tokio::time::timeout_at(deadline, pending.reply()).await {
                Ok(Some(reply)) => Response::Message(reply),
                Ok(None) => cancelled(),
                // A reply handed over just as the time ran out is still the answer: its
                // responder was told it was taken.
                Err(_) => pending
                    .try_reply()
                    .map_or_else(timed_out, Response::Message),
            },
        )
    };
    Ok(Reply::Later {
        wait: Box::pin(wait),
        cancel,
        undoable: true,
    })
}

/// A call's state as its cancel sees it.
#[derive(Default)]
struct Cancelling {
    cancelled: bool,
    /// The send of the request, while it waits for room…
    sending: Option<crate::mailbox::Waiter<SentId>>,
    /// …and what withdraws it.
    stop_sending: Option<Canceller>,
}

/// Changes a mailbox's settings; a durable one answers once the new settings are stored.
fn set(
    broker: &Broker,
    caller: &Caller,
    name: &MailboxName,
    changes: MailboxChanges,
) -> OpResult<Reply> {
    let mailbox = authorized(broker, caller, name, Access::Manage)?;
    let mode = changes.mode.map(check_mode).transpose()?;
    let limits = broker.limits(mailbox.settings().limits, &changes.limits)?;
    let new_owner = changes
        .owner_uid
        .filter(|&uid| uid != mailbox.ownership().owner_uid);
    if caller.uid() != 0 && new_owner.is_some() {
        // Like chown(2): giving a mailbox away needs root, or a user could make
        // another user's quota pay for it.
        return Err(denied(caller, &mailbox, "give away"));
    }
    let current_gid = mailbox.ownership().owner_gid;
    if let Some(gid) = changes.owner_gid.filter(|&gid| gid != current_gid)
        && caller.uid() != 0
        && !caller.in_group(gid)
    {
        // Like chown(2): an owner may hand the group only to a group it is in, or it
        // could open its mailbox to a group that never asked for it.
        return Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            format!(
                "permission denied: uid {} may give mailbox {} only to a group it is in, \
                 not gid {gid}",
                caller.uid(),
                mailbox.name()
            ),
        ));
    }
    // Root imposes the charge on the new owner, over its quota or not.
    check_dead_letter(broker, caller, name, changes.delivery.dead_letter.as_ref())?;
    let default_ttl = broker.ttl(changes.delivery.default_ttl_ms)?;
    let moved = new_owner.map(|uid| broker.accounts().account(uid).force(Resource::Mailboxes, 1));
    let delivery = changes.delivery;
    let stored = mailbox.update(|s| {
        s.limits = limits;
        if let Some(max) = delivery.max_deliveries {
            s.max_deliveries = max;
        }
        if delivery.clear_dead_letter {
            s.dead_letter = None;
        }
        if let Some(to) = delivery.dead_letter {
            s.dead_letter = Some(to);
        }
        if let Some(ttl) = default_ttl {
            s.default_ttl = ttl;
        }
        if let Some(mode) = mode {
            s.ownership.mode = mode;
        }
        if let Some(uid) = changes.owner_uid {
            s.ownership.owner_uid = uid;
        }
        if let Some(gid) = changes.owner_gid {
            s.ownership.owner_gid = gid;
        }
    });
    if let Some(charge) = moved {
        mailbox.move_owner_charge(charge);
    }
    Ok(answer(
        stored,
        Response::Mailbox(Box::new(broker.info(&mailbox))),
    ))
}

/// Answers `response` now, or — for a durable mailbox, whose change is being stored —
/// once it is stored.
fn answer(stored: Option<oneshot::Receiver<Stored>>, response: Response) -> Reply {
    match stored {
        Some(stored) => once_stored(stored, response),
        None => Reply::Now(Answer::from(response)),
    }
}

/// Answers `response` once the store has what it was given, or with why it could not.
fn once_stored(stored: oneshot::Receiver<Stored>, response: Response) -> Reply {
    Reply::Later {
        wait: Box::pin(async move {
            Answer::from(match stored.await {
                Ok(Ok(())) => response,
                Ok(Err(e)) => Response::Error(e.into()),
                Err(_) => Response::Error(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "the store stopped before this was stored",
                )),
            })
        }),
        // Nothing to withdraw: the answer comes as soon as the write is done.
        cancel: Box::new(|_| {}),
        undoable: false,
    }
}

fn send(
    broker: &Broker,
    caller: &Caller,
    req: SendRequest,
    memfd: Option<Arc<Memfd>>,
) -> OpResult<Pending<SentId>> {
    check_message(req.mtype, &req.headers)?;
    let SendRequest {
        mailbox,
        mtype,
        headers,
        wait,
        ttl_ms,
        delay_ms,
        payload,
    } = req;
    with_authorized(broker, caller, &mailbox, Access::Write, |mailbox| {
        let message = BatchMessage {
            mtype,
            headers,
            ttl_ms,
            delay_ms,
            payload,
        };
        let mut incoming =
            incoming(&broker.config(), caller, message).map_err(|r| r.into_reply(caller))?;
        incoming.memfd = memfd;
        Ok(mailbox.send(incoming, wait))
    })
}

/// The checks of a message that need no mailbox.
fn check_message(mtype: i64, headers: &Headers) -> OpResult<()> {
    if mtype < 1 {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("message type must be at least 1, not {mtype}"),
        ));
    }
    if headers.topic.is_some() {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "a message's topic is set by the daemon when it is published; send it without one",
        ));
    }
    if let Some(content_type) = &headers.content_type
        && content_type.len() > MAX_CONTENT_TYPE
    {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!(
                "content_type of {} bytes is longer than its bound of {MAX_CONTENT_TYPE} bytes",
                content_type.len()
            ),
        ));
    }
    Ok(())
}

/// Why a message was not made ready for its mailbox: the error to answer with, or a
/// refused charge, worded (and logged) by the caller once it holds no mailbox lock.
enum Refusal {
    Reply(ErrorReply),
    Quota { used: u64, amount: u64, limit: u64 },
}

impl<E: Into<ErrorReply>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal::Reply(e.into())
    }
}

impl Refusal {
    fn into_reply(self, caller: &Caller) -> ErrorReply {
        match self {
            Refusal::Reply(e) => e,
            Refusal::Quota {
                used,
                amount,
                limit,
            } => (caller.account)
                .refuse(Resource::QueuedBytes, used, amount, limit)
                .into(),
        }
    }
}

/// A checked message made ready for a mailbox, its charge taken, for a request of one
/// message.
fn incoming(config: &Config, caller: &Caller, message: BatchMessage) -> Result<Incoming, Refusal> {
    Intake::new(config, caller, &caller.account).message(message)
}

/// What makes the messages of one request ready for a mailbox, read once per request,
/// not per message of a batch (whose messages are made ready under the mailbox's lock):
/// the bounds in force, who pays and within what limit, and the origin they share.
struct Intake<'a> {
    config: &'a Config,
    payer: &'a Arc<UidAccount>,
    /// The payer's `queued_bytes` quota.
    limit: u64,
    origin: Arc<Origin>,
}

impl<'a> Intake<'a> {
    /// For messages from `caller`, charged to `payer` (under its own quota: the sender,
    /// or a mailbox's owner for a publish).
    fn new(config: &'a Config, caller: &Caller, payer: &'a Arc<UidAccount>) -> Self {
        Self {
            config,
            payer,
            limit: Resource::QueuedBytes.limit(&config.quota_for(payer.uid())),
            origin: caller.origin(payer, config.message_overhead),
        }
    }

    /// `message`, checked against the bounds and charged.
    fn message(&self, message: BatchMessage) -> Result<Incoming, Refusal> {
        let config = self.config;
        let ttl = message
            .ttl_ms
            .map(|ms| bounded("ttl", ms, config.max_ttl))
            .transpose()?;
        let delay = message
            .delay_ms
            .map(|ms| bounded("delay", ms, config.max_delay))
            .transpose()?;
        // Charged before it is offered, and held by the message — or by its waiting
        // sender — until it leaves the daemon's keeping: payload, headers, and what
        // keeping any message costs, so that even empty messages are paid for.
        let size = message.payload.len() as u64 + headers_size(&message.headers);
        let (amount, limit) = (size + config.message_overhead, self.limit);
        let charge = self
            .payer
            .try_charge(Resource::QueuedBytes, amount, limit)
            .map_err(|used| Refusal::Quota {
                used,
                amount,
                limit,
            })?;
        Ok(Incoming {
            memfd: None,
            mtype: message.mtype,
            origin: self.origin.clone(),
            headers: message.headers,
            payload: message.payload,
            charge: Some(charge),
            ttl,
            delay,
        })
    }
}

/// Refuses a batch of `len` messages that is empty or larger than [`MAX_BATCH`].
fn check_batch(len: usize) -> OpResult<()> {
    if (1..=MAX_BATCH as usize).contains(&len) {
        return Ok(());
    }
    Err(ErrorReply::new(
        ErrorCode::InvalidArgument,
        format!("a batch holds 1 to {MAX_BATCH} messages, not {len}"),
    ))
}

/// Sends a batch's messages in order, each checked, charged and offered as a send of its
/// own would be, and stops at the first refused at once. A message that waits for room
/// makes every later one queue behind it (a mailbox admits waiting senders in order), so
/// the batch keeps its order; it is answered when every message tried has its outcome.
fn send_batch(broker: &Broker, caller: &Caller, req: SendBatchRequest) -> OpResult<Reply> {
    check_batch(req.messages.len())?;
    let mailbox = authorized(broker, caller, &req.mailbox, Access::Write)?;
    let config = broker.config();
    let intake = Intake::new(&config, caller, &caller.account);
    let sent = |result: Result<SentId, SendError>| result.map(|SentId(id)| id).map_err(Into::into);
    // Room for every answer and the refusal that may end them; a message that waits
    // leaves its place empty until its waiter is done.
    let mut results = Vec::with_capacity(req.messages.len() + 1);
    let mut waiting = Vec::new();
    let mut messages = req.messages.into_iter();
    let refused = mailbox.send_each(
        req.wait,
        || {
            let message = messages.next()?;
            Some(match check_message(message.mtype, &message.headers) {
                Ok(()) => intake.message(message),
                Err(e) => Err(e.into()),
            })
        },
        |outcome| match outcome {
            Pending::Ready(result) => results.push(Some(sent(result))),
            Pending::Wait(waiter) => {
                results.push(None);
                waiting.push(waiter);
            }
        },
    );
    let refused = refused.map(|r| r.into_reply(caller));
    let done = move |results: Vec<Option<Result<u64, ErrorReply>>>, waited: Vec<_>| {
        let mut waited = waited.into_iter();
        let mut results: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| sent(waited.next().expect("one each"))))
            .collect();
        results.extend(refused.map(Err));
        Response::SentBatch(results)
    };
    if waiting.is_empty() {
        return Ok(Reply::Now(Answer::from(done(results, Vec::new()))));
    }
    // The messages that wait stand or fall together: one deadline for all, and a cancel
    // or a closed connection withdraws them all at once, so the batch keeps its order.
    let group = WaiterGroup::new(mailbox, waiting);
    Ok(Reply::Later {
        cancel: group.canceller(),
        wait: Box::pin(async move { Answer::from(done(results, group.wait().await)) }),
        // The messages before the waiting ones are in already.
        undoable: false,
    })
}

fn recv(broker: &Broker, caller: &Caller, req: RecvRequest) -> OpResult<Received> {
    check_selector(req.selector)?;
    with_authorized(broker, caller, &req.mailbox, Access::Read, |mailbox| {
        if req.lease.is_some() && req.peek {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                "a peek leaves the message in place, so it cannot lease it",
            ));
        }
        let mut taker = taker(broker, caller, req.peek, req.lease)?;
        taker.max_size = req.max_size;
        let parks = Some(&caller.parked);
        Ok(mailbox.recv_or_park(req.selector, taker, req.wait, parks))
    })
}

/// Who takes a message, and on what lease terms.
fn taker(
    broker: &Broker,
    caller: &Caller,
    peek: bool,
    lease: Option<ipc_proto::Lease>,
) -> OpResult<Taker> {
    let lease = match lease {
        None => None,
        Some(lease) => Some(LeaseTerms {
            timeout: bounded("lease", lease.timeout_ms, broker.config().max_lease)?,
            uid: caller.uid(),
            book: (!lease.detached).then(|| caller.leases.clone()),
        }),
    };
    Ok(Taker {
        peek,
        pid: caller.creds.pid,
        lease,
        max_size: None,
    })
}

/// Takes up to `max` messages: those there now, oldest first, up to `max_batch_bytes`
/// beyond the first; with none there, it waits for the first as a receive would and
/// answers with that one alone. Taking more after the wait would break the order of
/// the receives of one connection: a later receive already waiting may have been
/// handed the next message meanwhile, and would then hold an older one than this.
fn recv_batch(broker: &Broker, caller: &Caller, req: RecvBatchRequest) -> OpResult<Reply> {
    check_batch(usize::try_from(req.max).unwrap_or(usize::MAX))?;
    check_selector(req.selector)?;
    let mailbox = authorized(broker, caller, &req.mailbox, Access::Read)?;
    let taker = taker(broker, caller, false, req.lease)?;
    Ok(match mailbox.recv(req.selector, taker.clone(), req.wait) {
        Pending::Ready(Ok(first)) => {
            let more = req.max as usize - 1;
            let room = broker.config().max_batch_bytes;
            let taken = mailbox.take_more(req.selector, &taker, more, room);
            let mut messages = Vec::with_capacity(1 + taken.len());
            messages.push(first);
            messages.extend(taken);
            Reply::Now(Answer::from(Body::messages(messages)))
        }
        pending => reply_when(pending, |first| Body::messages(vec![first])),
    })
}

/// Refuses a selector that can never be satisfied (message types start at 1), or that
/// would be read as something else, rather than letting the receive wait for ever.
fn check_selector(selector: Selector) -> OpResult<()> {
    let why = match selector {
        Selector::Any => return Ok(()),
        Selector::Type(t) if t < 1 => format!("type {t} can never match: message types start at 1"),
        Selector::AtMost(t) if t < 1 => {
            format!("types up to {t} can never match: message types start at 1")
        }
        Selector::Except(t) if t < 1 => {
            format!("--except needs a positive type, not {t}")
        }
        Selector::Type(_) | Selector::AtMost(_) | Selector::Except(_) => return Ok(()),
    };
    Err(ErrorReply::new(ErrorCode::InvalidArgument, why))
}

/// A dead-letter mailbox must not be the mailbox itself, and, if it exists, the caller
/// must be allowed to send to it: dead-lettering must not be a way into a mailbox.
fn check_dead_letter(
    broker: &Broker,
    caller: &Caller,
    mailbox: &MailboxName,
    dead_letter: Option<&MailboxName>,
) -> OpResult<()> {
    let Some(to) = dead_letter else {
        return Ok(());
    };
    if to == mailbox {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("mailbox {mailbox} cannot be its own dead-letter mailbox"),
        ));
    }
    match authorized(broker, caller, to, Access::Write) {
        Err(e) if e.code == ErrorCode::NoSuchMailbox => Ok(()),
        other => other.map(drop),
    }
}

/// Answers now if the operation finished, else when its waiter completes.
fn reply_when<T: Side, A: Into<Answer>>(
    pending: Pending<T>,
    done: impl FnOnce(T) -> A + Send + 'static,
) -> Reply
where
    ErrorReply: From<T::Error>,
{
    let answer = move |result: Result<T, T::Error>| answer_of(result, done);
    match pending {
        Pending::Ready(result) => Reply::Now(answer(result)),
        Pending::Wait(waiter) => Reply::Later {
            cancel: waiter.canceller(),
            undoable: waiter.undoable(),
            wait: Box::pin(async move { answer(waiter.wait().await) }),
        },
    }
}

/// The answer to an operation that ended with `result`: `done` makes it of a success, an
/// error is answered as such. A waiting request's, and a parked receive's (`peer`).
pub(crate) fn answer_of<T: Side, A: Into<Answer>>(
    result: Result<T, T::Error>,
    done: impl FnOnce(T) -> A,
) -> Answer
where
    ErrorReply: From<T::Error>,
{
    match result {
        Ok(value) => done(value).into(),
        Err(e) => Answer::from(Response::Error(e.into())),
    }
}

/// The answer to a receive of `envelope`: its payload as the memfd it came in when the
/// daemon kept that and the receiver `takes_fd`, else in the message itself.
pub(crate) fn message_answer(mut envelope: Envelope, takes_fd: bool) -> Answer {
    let memfd = envelope.memfd().filter(|_| takes_fd).cloned();
    if memfd.is_some() {
        envelope.take_payload();
    }
    Answer {
        body: Body::message(envelope),
        memfd,
    }
}

/// The mailbox, if it exists and `caller` may do what `access` names to it.
fn authorized(
    broker: &Broker,
    caller: &Caller,
    name: &MailboxName,
    access: Access,
) -> OpResult<Arc<Mailbox>> {
    with_authorized(broker, caller, name, access, |mailbox| Ok(mailbox.clone()))
}

/// `f` of the mailbox, if it exists and `caller` may do what `access` names to it. A
/// mailbox the connection used lately is lent from where it is kept, not cloned: its
/// count is shared by every connection that uses it, and a producer's and a consumer's
/// workers each taking and giving back a count per request moved its cache line between
/// them several times a message. `f` must not look up a mailbox for `caller` again.
fn with_authorized<T>(
    broker: &Broker,
    caller: &Caller,
    name: &MailboxName,
    access: Access,
    f: impl FnOnce(&Arc<Mailbox>) -> OpResult<T>,
) -> OpResult<T> {
    if let Some((mailbox, ownership)) = caller.recent.borrow().get(name) {
        return allowed(caller, mailbox, ownership, access).and_then(|()| f(mailbox));
    }
    let mailbox = broker.get(name)?;
    let (ownership, version) = mailbox.versioned_ownership();
    if let Some(version) = version {
        caller
            .recent
            .borrow_mut()
            .keep(&mailbox, ownership, version);
    }
    allowed(caller, &mailbox, ownership, access).and_then(|()| f(&mailbox))
}

/// Whether `caller` may do what `access` names to `mailbox`, owned as `ownership` says.
fn allowed(
    caller: &Caller,
    mailbox: &Mailbox,
    ownership: crate::perm::Ownership,
    access: Access,
) -> OpResult<()> {
    if caller.may(&ownership, access) {
        return Ok(());
    }
    let verb = match access {
        Access::Read => "read from",
        Access::Write => "send to",
        Access::Manage => "manage",
    };
    Err(denied(caller, mailbox, verb))
}

fn denied(caller: &Caller, mailbox: &Mailbox, verb: &str) -> ErrorReply {
    let own = mailbox.ownership();
    ErrorReply::new(
        ErrorCode::PermissionDenied,
        format!(
            "permission denied: uid {} may not {verb} mailbox {} (owner uid {}, gid {}, mode {:04o})",
            caller.uid(),
            mailbox.name(),
            own.owner_uid,
            own.owner_gid,
            own.mode
        ),
    )
}

/// A message that has left its mailbox for its receiver: its durable removal is
/// committed, and its charge given back (the reply it is written into is charged now).
fn handed_over(e: &mut Envelope) {
    if let Some(removal) = e.take_removal() {
        removal.commit();
    }
    e.give_back_charge();
}

/// A delivered message (a body's, handed over already) as its receiver decodes it.
#[cfg(test)]
fn to_wire(e: Envelope) -> Message {
    let m = e.wire();
    Message {
        id: m.id,
        mtype: m.mtype,
        sender: m.sender,
        sent_at: m.sent_at,
        headers: m.headers.clone().into(),
        redelivered: m.redelivered,
        deliveries: m.deliveries,
        payload: bytes::Bytes::copy_from_slice(m.payload),
    }
}

// The one place where the daemon's errors get their wire form: the error code is chosen
// here, and the message is the error's `Display`, so it reads the same in the log and to
// the user.

fn reply(code: ErrorCode, error: &impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(code, error.to_string())
}

impl From<Closed> for ErrorReply {
    fn from(e: Closed) -> Self {
        let code = match e {
            Closed::Removed(_) => ErrorCode::Removed,
            Closed::ShuttingDown => ErrorCode::ShuttingDown,
        };
        reply(code, &e)
    }
}

impl From<Interrupted> for ErrorReply {
    fn from(e: Interrupted) -> Self {
        match e {
            Interrupted::Cancelled(_) => reply(ErrorCode::Cancelled, &e),
            Interrupted::Abandoned => reply(ErrorCode::Internal, &e),
        }
    }
}

impl From<SendError> for ErrorReply {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed(closed) => closed.into(),
            SendError::Interrupted(interrupted) => interrupted.into(),
            SendError::Storage(stored) => stored.into(),
            SendError::TooLarge { .. } => reply(ErrorCode::TooLarge, &e),
            SendError::Full(_) => reply(ErrorCode::WouldBlock, &e),
            SendError::TimedOut { .. } => reply(ErrorCode::TimedOut, &e),
        }
    }
}

impl From<RecvError> for ErrorReply {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Closed(closed) => closed.into(),
            RecvError::Interrupted(interrupted) => interrupted.into(),
            RecvError::Empty(_) | RecvError::NoSuchPosition { .. } => {
                reply(ErrorCode::WouldBlock, &e)
            }
            RecvError::TooBig { .. } => reply(ErrorCode::TooBig, &e),
            RecvError::TimedOut { .. } => reply(ErrorCode::TimedOut, &e),
        }
    }
}

impl From<LeaseError> for ErrorReply {
    fn from(e: LeaseError) -> Self {
        let code = match e {
            LeaseError::NotLeased { .. } => ErrorCode::NotLeased,
            LeaseError::NotYours { .. } => ErrorCode::PermissionDenied,
        };
        reply(code, &e)
    }
}

impl From<QuotaError> for ErrorReply {
    fn from(e: QuotaError) -> Self {
        reply(ErrorCode::QuotaExceeded, &e)
    }
}

impl From<StoreError> for ErrorReply {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Failed { .. } => ErrorCode::StorageFailed,
            StoreError::Stopped => ErrorCode::ShuttingDown,
            StoreError::Refused(_) => ErrorCode::InvalidArgument,
        };
        reply(code, &e)
    }
}

impl From<BindError> for ErrorReply {
    fn from(e: BindError) -> Self {
        let code = match e {
            BindError::TooMany { .. } => ErrorCode::QuotaExceeded,
            BindError::Quota(quota) => return quota.into(),
            BindError::Removed(_) => ErrorCode::NoSuchMailbox,
        };
        reply(code, &e)
    }
}

impl From<ReplyError> for ErrorReply {
    fn from(e: ReplyError) -> Self {
        let code = match e {
            ReplyError::NoSuchCall(_) => ErrorCode::PermissionDenied,
            ReplyError::Uncorrelated(_) => ErrorCode::InvalidArgument,
        };
        reply(code, &e)
    }
}

impl From<NoSuchMailbox> for ErrorReply {
    fn from(e: NoSuchMailbox) -> Self {
        reply(ErrorCode::NoSuchMailbox, &e)
    }
}

impl From<InvalidArgument> for ErrorReply {
    fn from(e: InvalidArgument) -> Self {
        reply(ErrorCode::InvalidArgument, &e)
    }
}

impl From<CreateError> for ErrorReply {
    fn from(e: CreateError) -> Self {
        let code = match &e {
            CreateError::Quota(quota) => return (*quota).into(),
            CreateError::Invalid(invalid) => return invalid.clone().into(),
            CreateError::ShuttingDown => ErrorCode::ShuttingDown,
            CreateError::DurableUnavailable(_) => ErrorCode::StorageFailed,
            CreateError::Exists(_) | CreateError::NotAsAsked { .. } => ErrorCode::Exists,
            CreateError::Reserved(_) => ErrorCode::InvalidName,
        };
        reply(code, &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Cancelled;
    use crate::store::FailureHint;
    use crate::store::record::EncodeError;

    fn wire(e: impl Into<ErrorReply>) -> (ErrorCode, String) {
        let e = e.into();
        (e.code, e.message)
    }

    #[test]
    fn a_refused_charge_is_quota_exceeded_naming_the_quota() {
        let quota = QuotaError {
            uid: 7,
            resource: Resource::Mailboxes,
            used: 2,
            amount: 1,
            limit: 2,
        };
        let expected = (
            ErrorCode::QuotaExceeded,
            "quota exceeded: uid 7 owns 2 mailboxes, its mailboxes quota of 2; remove one first"
                .to_owned(),
        );
        assert_eq!(wire(quota), expected);
        assert_eq!(wire(CreateError::Quota(quota)), expected);
    }

    #[test]
    fn the_stores_answers_keep_their_codes_and_words() {
        assert_eq!(
            wire(StoreError::Stopped),
            (ErrorCode::ShuttingDown, "the store has stopped".to_owned())
        );
        let failed = StoreError::Failed {
            error: "No space left on device (os error 28)".to_owned(),
            hint: FailureHint::NoSpace,
        };
        assert_eq!(
            wire(SendError::Storage(failed)),
            (
                ErrorCode::StorageFailed,
                "could not store the message durably: No space left on device (os error 28); \
                 free space in the state directory and retry — messages stored before are \
                 unharmed"
                    .to_owned()
            )
        );
        let refused = StoreError::Refused(EncodeError::TooLong {
            field: "content_type",
            len: 70_000,
            max: 65_535,
        });
        assert_eq!(
            wire(refused),
            (
                ErrorCode::InvalidArgument,
                "cannot store the message durably: content_type is 70000 bytes, over the \
                 65535-byte limit of the durable store"
                    .to_owned()
            )
        );
    }

    fn caller(broker: &Broker, uid: u32) -> Caller {
        Caller {
            creds: ipc_proto::Credentials {
                pid: 1,
                uid,
                gid: uid,
            },
            groups: Vec::new(),
            account: broker.accounts().account(uid),
            leases: Arc::default(),
            connection: broker.new_connection_number(),
            private: Arc::default(),
            origins: Arc::default(),
            recent: std::cell::RefCell::default(),
            parked: Arc::default(),
        }
    }

    /// The answer to `request`, which must be answered at once.
    fn ask(broker: &Broker, caller: &Caller, request: Request) -> Response {
        match dispatch(broker, caller, request, None, false) {
            Reply::Now(answer) => answer.body.into_response(),
            _ => panic!("not answered at once"),
        }
    }

    fn send_to(name: &MailboxName, body: &'static [u8]) -> Request {
        Request::Send(SendRequest {
            mailbox: name.clone(),
            mtype: 1,
            headers: ipc_proto::HeaderBox::default(),
            wait: Wait::NoWait,
            ttl_ms: None,
            delay_ms: None,
            payload: bytes::Bytes::from_static(body),
        })
    }

    /// A connection keeps the mailboxes it used at hand, with their ownership; a change
    /// of mode, or the mailbox removed and made again, is seen by its next request.
    #[tokio::test]
    async fn a_kept_mailbox_is_checked_again_once_it_changes() {
        let broker = Broker::new(Config::default(), Err("no store in this test".into()));
        let (owner, other) = (caller(&broker, 1000), caller(&broker, 2000));
        let name: MailboxName = "kept".parse().unwrap();
        let create = |mode| {
            Request::Create(Box::new(ipc_proto::CreateRequest {
                mailbox: name.clone(),
                mode: Some(mode),
                durable: false,
                fsync: None,
                limits: Default::default(),
                delivery: Default::default(),
                exist_ok: false,
            }))
        };
        let code = |response: Response| match response {
            Response::Error(e) => Some(e.code),
            _ => None,
        };
        assert_eq!(code(ask(&broker, &owner, create(0o622))), None);
        assert_eq!(code(ask(&broker, &other, send_to(&name, b"1"))), None);
        assert_eq!(code(ask(&broker, &other, send_to(&name, b"2"))), None);
        let revoke = Request::Set {
            mailbox: name.clone(),
            changes: Box::new(MailboxChanges {
                mode: Some(0o600),
                ..Default::default()
            }),
        };
        assert_eq!(code(ask(&broker, &owner, revoke)), None);
        assert_eq!(
            code(ask(&broker, &other, send_to(&name, b"3"))),
            Some(ErrorCode::PermissionDenied)
        );
        // Removed: not found, though kept; made again: found anew.
        let remove = Request::Remove {
            mailbox: name.clone(),
        };
        assert_eq!(code(ask(&broker, &owner, remove)), None);
        assert_eq!(
            code(ask(&broker, &owner, send_to(&name, b"4"))),
            Some(ErrorCode::NoSuchMailbox)
        );
        assert_eq!(code(ask(&broker, &owner, create(0o622))), None);
        assert_eq!(code(ask(&broker, &other, send_to(&name, b"5"))), None);
        let recv = Request::Recv(RecvRequest {
            mailbox: name.clone(),
            selector: Selector::Any,
            wait: Wait::NoWait,
            peek: false,
            lease: None,
            max_size: None,
        });
        match ask(&broker, &owner, recv) {
            Response::Message(m) => assert_eq!(&m.payload[..], b"5"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cancelled_wait_is_answered_cancelled_naming_the_request() {
        let cancelled = Interrupted::from(Cancelled { request: 9 });
        assert_eq!(
            wire(RecvError::Interrupted(cancelled.clone())),
            (ErrorCode::Cancelled, "request 9 was cancelled".to_owned())
        );
        assert_eq!(
            wire(SendError::Interrupted(cancelled)),
            (ErrorCode::Cancelled, "request 9 was cancelled".to_owned())
        );
    }
}
