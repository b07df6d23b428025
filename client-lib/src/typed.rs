//! The typed forms both clients offer, written once: [`TypedMailbox`] (as
//! `Mailbox<T>` and [`crate::BlockingMailbox`]) and [`Leased`] (as `Delivery` and
//! [`crate::BlockingDelivery`]), and the typed-payload rules: a value is encoded with the
//! protocol's codec and its message is tagged with the Rust type's name in
//! `content_type`; a receive checks the tag before decoding, so a message of another
//! type is reported as such instead of decoding into garbage.

use std::marker::PhantomData;

use bytes::Bytes;
use ipc_proto::{MailboxName, Message, Request, Response, Selector, codec};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, RecvOptions, Result, SendOptions};

/// The tag that marks a message as holding a `T`: the type's path as the compiler
/// spells it, e.g. `my_app::Job`. Both ends must be built from the same definition.
pub fn type_tag<T: ?Sized>() -> &'static str {
    std::any::type_name::<T>()
}

/// A typed view of one mailbox through client `C`: values of `T` go in and come out,
/// tagged with [`type_tag`] so a message of another type is an [`Error::TypeMismatch`].
/// Used as `Mailbox<T>` (async, cheap to clone) and [`crate::BlockingMailbox`].
#[derive(Debug)]
pub struct TypedMailbox<C, T> {
    pub(crate) client: C,
    name: MailboxName,
    /// The SysV type sends carry (1 unless mapped with [`Self::with_mtype`])…
    mtype: i64,
    /// …and the one receives select (any, unless mapped).
    selector: Selector,
    _type: PhantomData<fn(T) -> T>,
}

impl<C, T> TypedMailbox<C, T> {
    pub(crate) fn new(client: C, mailbox: &str) -> Result<Self> {
        Ok(Self {
            client,
            name: MailboxName::new(mailbox)?,
            mtype: 1,
            selector: Selector::Any,
            _type: PhantomData,
        })
    }

    /// Maps `T` to SysV type `mtype`: sends carry it and receives select only it, so
    /// several types can share one mailbox.
    pub fn with_mtype(mut self, mtype: i64) -> Self {
        (self.mtype, self.selector) = (mtype, Selector::Type(mtype));
        self
    }

    pub fn name(&self) -> &MailboxName {
        &self.name
    }

    pub(crate) fn send_request(&self, value: &T) -> Result<Request>
    where
        T: Serialize,
    {
        let (payload, tag) = encode(value)?;
        let mut options = SendOptions::mtype(self.mtype);
        options.headers.content_type = Some(tag);
        Ok(Request::Send(options.request(self.name.clone(), payload)))
    }

    /// A receive with `options`, its selector replaced by this handle's type mapping.
    pub(crate) fn recv_request(&self, mut options: RecvOptions) -> Request {
        options.selector = self.selector;
        Request::Recv(options.request(self.name.clone()))
    }
}

/// Cloned by hand: a derived `Clone` would ask `T` to be `Clone` too.
impl<C: Clone, T> Clone for TypedMailbox<C, T> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            name: self.name.clone(),
            mtype: self.mtype,
            selector: self.selector,
            _type: PhantomData,
        }
    }
}

/// The typed operations of a [`TypedMailbox`], written once for both clients, as
/// [`crate::session::operations!`] is.
macro_rules! typed_operations {
    ([$($mut:tt)?], [$($async:tt)?] $(, $($await:tt)+)?) => {
        pub $($async)? fn send(&$($mut)? self, value: &T) -> $crate::Result<u64> {
            let request = self.send_request(value)?;
            self.client.ask(request, $crate::reply::sent)$($($await)+)?
        }

        /// Waits for the next message and decodes it.
        pub $($async)? fn recv(&$($mut)? self) -> $crate::Result<T> {
            let options = $crate::RecvOptions::default();
            self.recv_with(options)$($($await)+)?.map(|(_, v)| v)
        }

        /// Receives with `options` (its selector is replaced by this handle's type
        /// mapping) and returns the message's metadata beside the value.
        pub $($async)? fn recv_with(
            &$($mut)? self,
            options: $crate::RecvOptions,
        ) -> $crate::Result<(ipc_proto::Message, T)> {
            let request = self.recv_request(options);
            let message = self.client.ask(request, $crate::reply::message)$($($await)+)??;
            let value = $crate::typed::decode(&message)?;
            Ok((message, value))
        }
    };
}
pub(crate) use typed_operations;

/// `ack` and `nack` of a [`Leased`], written once for both clients: each client's own
/// `settle` makes the request on the connection that holds the lease, and only there.
macro_rules! settle_operations {
    ([$($async:tt)?] $(, $($await:tt)+)?) => {
        /// Settles it: it leaves the mailbox for good (for a durable mailbox, once that
        /// is stored).
        pub $($async)? fn ack(mut self) -> $crate::Result<()> {
            let request = self.settle(true);
            self.client.settle(self.generation, &request)$($($await)+)?
        }

        /// Gives it back at once, to be redelivered.
        pub $($async)? fn nack(mut self) -> $crate::Result<()> {
            let request = self.settle(false);
            self.client.settle(self.generation, &request)$($($await)+)?
        }
    };
}
pub(crate) use settle_operations;

/// A message received on a lease through client `C`, used as `Delivery` and
/// [`crate::BlockingDelivery`]. Settle it with `ack` or `nack`; dropping it unsettled
/// gives it back (a nack), so a task that fails or panics midway does not lose it. The
/// lease belongs to the connection that took it: if that connection is lost, the lease
/// ends with it and `ack`/`nack` fail with `ErrorCode::NotLeased` at once.
#[derive(Debug)]
pub struct Leased<C> {
    pub(crate) client: C,
    /// The connection that holds the lease: settling it anywhere else is meaningless.
    pub(crate) generation: u64,
    mailbox: MailboxName,
    /// `None` once settled.
    message: Option<Message>,
    /// How the client nacks it when it is dropped unsettled, without waiting.
    nack_on_drop: fn(&mut C, u64, &Request),
}

impl<C> Leased<C> {
    pub(crate) fn new(
        client: C,
        generation: u64,
        mailbox: MailboxName,
        message: Message,
        nack_on_drop: fn(&mut C, u64, &Request),
    ) -> Self {
        Self {
            client,
            generation,
            mailbox,
            message: Some(message),
            nack_on_drop,
        }
    }

    pub fn message(&self) -> &Message {
        self.message.as_ref().expect("present until settled")
    }

    /// The ack (`ack`) or nack that settles it; it is settled from then on.
    pub(crate) fn settle(&mut self, ack: bool) -> Request {
        let id = self.message.take().expect("present until settled").id;
        let mailbox = self.mailbox.clone();
        if ack {
            Request::Ack { mailbox, id }
        } else {
            Request::Nack { mailbox, id }
        }
    }
}

impl<C> std::ops::Deref for Leased<C> {
    type Target = Message;

    fn deref(&self) -> &Message {
        self.message()
    }
}

impl<C> Drop for Leased<C> {
    fn drop(&mut self) {
        if self.message.is_some() {
            let nack = self.settle(false);
            // Best effort: if the connection is broken, that ended the lease anyway.
            (self.nack_on_drop)(&mut self.client, self.generation, &nack);
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<(Bytes, String)> {
    let bytes = codec::encode_value(value).map_err(|e| Error::Payload(e.to_string()))?;
    Ok((Bytes::from(bytes), type_tag::<T>().to_owned()))
}

pub(crate) fn decode<T: DeserializeOwned>(message: &Message) -> Result<T> {
    let expected = type_tag::<T>();
    match message.headers.content_type.as_deref() {
        Some(found) if found == expected => codec::decode_value(&message.payload)
            .map_err(|e| Error::Payload(format!("message {}: {e}", message.id))),
        found => Err(Error::TypeMismatch {
            expected: expected.to_owned(),
            found: found.unwrap_or("untyped message").to_owned(),
        }),
    }
}

/// The send that answers `request` with `payload`: to its `reply_to`, with its
/// `correlation_id`; refused for a message that is no request.
pub(crate) fn reply_to(
    request: &Message,
    payload: Bytes,
    options: &SendOptions,
) -> Result<ipc_proto::SendRequest> {
    let Some(mailbox) = request.headers.reply_to.clone() else {
        return Err(Error::BadData(format!(
            "message {} has no reply_to: it is not a request, so it cannot be answered",
            request.id
        )));
    };
    // A reply never waits: the reply mailbox takes it at once, or refuses it.
    let mut options = options.clone().wait(ipc_proto::Wait::NoWait);
    options.headers.correlation_id = request.headers.correlation_id;
    Ok(options.request(mailbox, payload))
}

/// Turns a reply into the value an operation promises, or the error it carries; for
/// callers that pipeline raw requests with [`crate::BlockingClient::submit`].
pub mod reply {
    use super::*;
    use ipc_proto::{DaemonStatus, MailboxInfo};

    fn unexpected(operation: &str, r: &Response) -> Error {
        let variant = match r {
            Response::Ok => "Ok",
            Response::Created { .. } => "Created",
            Response::Sent { .. } => "Sent",
            Response::Message(_) => "Message",
            Response::Mailbox(_) => "Mailbox",
            Response::Mailboxes(_) => "Mailboxes",
            Response::Status(_) => "Status",
            Response::Purged { .. } => "Purged",
            Response::Error(_) => "Error",
            Response::SentBatch(_) => "SentBatch",
            Response::Messages(_) => "Messages",
            Response::Published(_) => "Published",
            Response::Subscribed { .. } => "Subscribed",
        };
        Error::Protocol(format!("unexpected {variant} reply to {operation}"))
    }

    macro_rules! extractor {
        ($name:ident, $out:ty, $pattern:pat => $value:expr) => {
            #[doc = concat!("The value of a `", stringify!($name), "` reply, or its error.")]
            pub fn $name(r: Response) -> Result<$out> {
                match r {
                    $pattern => Ok($value),
                    Response::Error(e) => Err(e.into()),
                    other => Err(unexpected(stringify!($name), &other)),
                }
            }
        };
    }

    extractor!(ok, (), Response::Ok => ());
    extractor!(created, bool, Response::Created { created } => created);
    extractor!(sent, u64, Response::Sent { id } => id);
    extractor!(message, Message, Response::Message(m) => m);
    extractor!(mailbox, MailboxInfo, Response::Mailbox(m) => m);
    extractor!(mailboxes, Vec<MailboxInfo>, Response::Mailboxes(m) => m);
    extractor!(status, DaemonStatus, Response::Status(s) => s);
    extractor!(purged, u64, Response::Purged { messages } => messages);
    extractor!(messages, Vec<Message>, Response::Messages(m) => m);
    extractor!(published, ipc_proto::PublishReport, Response::Published(r) => r);
    extractor!(subscribed, ipc_proto::MailboxName, Response::Subscribed { mailbox } => mailbox);
    extractor!(
        sent_batch,
        Vec<Result<u64>>,
        Response::SentBatch(outcomes) => outcomes
            .into_iter()
            .map(|o| o.map_err(Error::from))
            .collect()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::{Credentials, Headers, Timestamp};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        name: String,
    }

    fn message_with(payload: Bytes, content_type: Option<String>) -> Message {
        Message {
            id: 1,
            mtype: 1,
            sender: Credentials {
                pid: 1,
                uid: 0,
                gid: 0,
            },
            sent_at: Timestamp(0),
            headers: Headers {
                content_type,
                ..Headers::default()
            },
            redelivered: false,
            deliveries: 1,
            payload,
        }
    }

    #[test]
    fn round_trip_and_mismatch() {
        let job = Job {
            id: 7,
            name: "build".into(),
        };
        let (bytes, tag) = encode(&job).unwrap();
        let msg = message_with(bytes, Some(tag));
        assert_eq!(decode::<Job>(&msg).unwrap(), job);
        match decode::<String>(&msg) {
            Err(Error::TypeMismatch { expected, found }) => {
                assert_eq!(expected, "alloc::string::String");
                assert!(found.ends_with("Job"), "{found}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let untyped = message_with(Bytes::from_static(b"raw"), None);
        assert!(matches!(
            decode::<Job>(&untyped),
            Err(Error::TypeMismatch { .. })
        ));
    }
}
