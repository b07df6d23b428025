//! The typed forms both clients offer, written once: [`TypedMailbox`] (as
//! `Mailbox<T>` and [`crate::BlockingMailbox`]) and [`Leased`] (as `Delivery` and
//! [`crate::BlockingDelivery`]), and the typed-payload rules.
//!
//! A typed message says in its `content_type` which type it holds and how it is encoded,
//! so a receive checks that before decoding and a message of another type is reported as
//! such instead of decoding into garbage:
//!
//! - postcard (the default): `content_type` is exactly the type's name, e.g. `myapp.Job`;
//! - JSON: `application/json; type=myapp.Job` (the name quoted if it is not a MIME
//!   token), so programs that do not share our Rust types can read and write it.
//!
//! The name is what makes two programs agree, so it should be chosen, not derived: a
//! [`MessageType`] names itself (`message_type!(Job, "myapp.Job")`) and is the same in
//! every program that exchanges it. Without one, a handle falls back to [`type_tag`], the
//! compiler's name for the type, which is only good within one program built once.
//! A receive takes the codec from the message, so a receiver reads either encoding of the
//! type it expects; the handle's codec only says how it sends.

use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Bytes;
use ipc_proto::{MailboxName, Message, Request, Response, Selector, codec};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, RecvOptions, Result, SendOptions};

/// How a typed payload is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// postcard: compact, but readable only by a type of the same shape (the same fields
    /// in the same order), so in practice only by Rust programs that share it. Its
    /// `content_type` is the bare type name, as every typed message had before codecs were
    /// named, so those messages still read.
    #[default]
    Postcard,
    /// JSON (`application/json; type=NAME`): readable by any program, `jq` and
    /// `ipcctl recv --json` included, at the cost of size and speed.
    Json,
}

/// A type with a stable name of its own for typed messages, e.g. `"myapp.Job"`: every
/// program that exchanges it uses the same name (and so agrees whatever its Rust path),
/// and the name stays the same across compiler versions, which [`type_tag`] does not.
/// Implement it with [`crate::message_type!`]; a handle that uses it comes from a
/// client's `typed::<T>(mailbox)`.
///
/// The name promises a shape, and the codec decides how strictly: postcard is
/// positional, so every program needs the same fields, of the same types, in the same
/// order; JSON matches fields by name, so each program may declare them in its own order
/// and leave out those it ignores (serde's rules).
pub trait MessageType: Serialize + DeserializeOwned {
    /// The name its messages carry, the same in every program that exchanges them.
    const NAME: &'static str;
    /// How its values are sent; a receiver reads either codec.
    const CODEC: Codec = Codec::Postcard;

    /// The value a message holds, if it is tagged with [`Self::NAME`]: for messages
    /// that come untyped, from a subscription or a receive of raw messages.
    fn from_message(message: &Message) -> Result<Self> {
        decode(message, Self::NAME)
    }

    /// Send options that carry this value's tag, and its encoded payload.
    fn to_message(&self) -> Result<(SendOptions, Bytes)> {
        let (payload, tag) = encode(self, Self::NAME, Self::CODEC)?;
        let mut options = SendOptions::default();
        options.headers.content_type = Some(tag);
        Ok((options, payload))
    }
}

/// Implements [`MessageType`] for a type in one line: `message_type!(Job, "myapp.Job")`
/// sends it as postcard (`, postcard` says so explicitly), `message_type!(Job,
/// "myapp.Job", json)` as JSON.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { id: u32 }
/// ipc_client::message_type!(Job, "myapp.Job", json);
///
/// use ipc_client::{Codec, MessageType};
/// assert_eq!((Job::NAME, Job::CODEC), ("myapp.Job", Codec::Json));
/// ```
#[macro_export]
macro_rules! message_type {
    ($type:ty, $name:expr, json $(,)?) => {
        impl $crate::MessageType for $type {
            const NAME: &'static str = $name;
            const CODEC: $crate::Codec = $crate::Codec::Json;
        }
    };
    ($type:ty, $name:expr, postcard $(,)?) => {
        impl $crate::MessageType for $type {
            const NAME: &'static str = $name;
        }
    };
    ($type:ty, $name:expr $(,)?) => {
        impl $crate::MessageType for $type {
            const NAME: &'static str = $name;
        }
    };
}

/// The fallback name of `T` for a handle made with `mailbox::<T>`: the type's path as the
/// compiler spells it, e.g. `my_app::Job`. It differs between programs that define the
/// same struct in different places, and the standard library does not promise it stays
/// the same across compiler versions, so it is good only within one program built once;
/// give messages that other programs read a [`MessageType`] name.
pub fn type_tag<T: ?Sized>() -> &'static str {
    std::any::type_name::<T>()
}

/// A typed view of one mailbox through client `C`: values of `T` go in and come out,
/// tagged with a type name and codec so a message of another type is an
/// [`Error::TypeMismatch`]. The name is `T::NAME` for a handle from `typed::<T>` (a
/// [`MessageType`]), else [`type_tag`]. Used as `Mailbox<T>` (async, cheap to clone) and
/// [`crate::BlockingMailbox`].
#[derive(Debug)]
pub struct TypedMailbox<C, T> {
    pub(crate) client: C,
    name: MailboxName,
    /// The SysV type sends carry (1 unless mapped with [`Self::with_mtype`])…
    mtype: i64,
    /// …and the one receives select (any, unless mapped).
    selector: Selector,
    /// The name messages of `T` carry, and the only one a receive accepts: programs
    /// agree on this, not on Rust paths.
    type_name: &'static str,
    /// How sends encode; a receive decodes with whatever codec the message names.
    codec: Codec,
    _type: PhantomData<fn(T) -> T>,
}

impl<C, T> TypedMailbox<C, T> {
    /// A handle named by the fallback, [`type_tag`], sending postcard.
    pub(crate) fn new(client: C, mailbox: &str) -> Result<Self> {
        Self::named(client, mailbox, type_tag::<T>(), Codec::Postcard)
    }

    /// A handle named by `T` itself, sending in `T`'s codec.
    pub(crate) fn new_typed(client: C, mailbox: &str) -> Result<Self>
    where
        T: MessageType,
    {
        Self::named(client, mailbox, T::NAME, T::CODEC)
    }

    fn named(client: C, mailbox: &str, type_name: &'static str, codec: Codec) -> Result<Self> {
        Ok(Self {
            client,
            name: MailboxName::new(mailbox)?,
            mtype: 1,
            selector: Selector::Any,
            type_name,
            codec,
            _type: PhantomData,
        })
    }

    /// Maps `T` to SysV type `mtype`: sends carry it and receives select only it, so
    /// several types can share one mailbox.
    pub fn with_mtype(mut self, mtype: i64) -> Self {
        (self.mtype, self.selector) = (mtype, Selector::Type(mtype));
        self
    }

    /// Sends in `codec` from now on. Receives are unchanged: they read either codec.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Tags sends with `type_name`, and accepts only messages so tagged, instead of
    /// `T::NAME` or the [`type_tag`] fallback: for a program that must agree with a name it
    /// did not choose.
    pub fn with_type_name(mut self, type_name: &'static str) -> Self {
        self.type_name = type_name;
        self
    }

    /// The mailbox's name.
    pub fn name(&self) -> &MailboxName {
        &self.name
    }

    /// The type name its messages carry.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// How it sends.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub(crate) fn send_request(&self, value: &T) -> Result<Request>
    where
        T: Serialize,
    {
        let (payload, tag) = encode(value, self.type_name, self.codec)?;
        let mut options = SendOptions::mtype(self.mtype);
        options.headers.content_type = Some(tag);
        Ok(Request::Send(options.request(self.name.clone(), payload)))
    }

    /// A receive with `options`, its selector replaced by this handle's type mapping.
    pub(crate) fn recv_request(&self, mut options: RecvOptions) -> Request {
        options.selector = self.selector;
        Request::Recv(options.request(self.name.clone()))
    }

    /// The value in a received message, if it is tagged with this handle's type name.
    pub(crate) fn decode(&self, message: &Message) -> Result<T>
    where
        T: DeserializeOwned,
    {
        decode(message, self.type_name)
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
            type_name: self.type_name,
            codec: self.codec,
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
            let value = self.decode(&message)?;
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

/// `value`'s payload and the `content_type` that names its type and codec.
pub(crate) fn encode<T: Serialize>(
    value: &T,
    type_name: &str,
    format: Codec,
) -> Result<(Bytes, String)> {
    let (bytes, tag) = match format {
        Codec::Postcard => (codec::encode_value(value), type_name.to_owned()),
        Codec::Json => (codec::encode_json(value), json_content_type(type_name)),
    };
    let bytes = bytes.map_err(|e| Error::Payload(e.to_string()))?;
    Ok((Bytes::from(bytes), tag))
}

/// The value in `message`, which must be tagged `type_name`, decoded with the codec its
/// `content_type` names.
pub(crate) fn decode<T: DeserializeOwned>(message: &Message, type_name: &str) -> Result<T> {
    let tag = message.headers.content_type.as_deref().map(Tag::parse);
    let format = match &tag {
        Some(Tag {
            codec,
            name: Some(name),
        }) if name == type_name => *codec,
        _ => {
            return Err(Error::TypeMismatch {
                expected: type_name.to_owned(),
                found: tag.map_or_else(|| "untyped message".to_owned(), |t| t.to_string()),
            });
        }
    };
    let value = match format {
        Codec::Postcard => codec::decode_value(&message.payload),
        Codec::Json => codec::decode_json(&message.payload),
    };
    value.map_err(|e| Error::Payload(format!("message {}: {e}", message.id)))
}

/// `application/json; type=NAME`, with NAME quoted when it is not a MIME token (a Rust
/// path's `::` and `<>` are not), so that any MIME parser reads the name back whole.
fn json_content_type(type_name: &str) -> String {
    if !type_name.is_empty() && type_name.chars().all(is_token_char) {
        return format!("{}; type={type_name}", codec::JSON_MEDIA_TYPE);
    }
    let mut quoted = String::with_capacity(type_name.len() + 2);
    for c in type_name.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!("{}; type=\"{quoted}\"", codec::JSON_MEDIA_TYPE)
}

/// A character of a MIME token (RFC 2045): printable ASCII but the separators.
fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

/// What a message's `content_type` says of a typed payload: its codec and type name.
#[derive(Debug, PartialEq, Eq)]
struct Tag<'a> {
    codec: Codec,
    /// `None` for JSON that names no type.
    name: Option<Cow<'a, str>>,
}

impl<'a> Tag<'a> {
    /// Reads a `content_type`: `application/json` (in any case, with any parameters) is
    /// JSON, named by its `type` parameter; anything else is postcard named by the whole
    /// string, which is how typed messages were tagged before codecs were named.
    fn parse(content_type: &'a str) -> Self {
        if !codec::is_json_content_type(content_type) {
            return Tag {
                codec: Codec::Postcard,
                name: Some(Cow::Borrowed(content_type)),
            };
        }
        let parameters = content_type.split_once(';').map_or("", |(_, p)| p);
        Tag {
            codec: Codec::Json,
            name: parameter(parameters, "type"),
        }
    }
}

impl std::fmt::Display for Tag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, self.codec) {
            (Some(name), Codec::Json) => write!(f, "{name} (JSON)"),
            (None, _) => f.write_str("JSON value without a type name"),
            (Some(name), _) => f.write_str(name),
        }
    }
}

/// The value of parameter `key` (its name matched in any case) in the parameters of a
/// media type, `; k=v; k="quoted \"v\""`. `None` if it is absent, or if the parameters
/// are malformed before it is found: a name read from a broken header would be a guess.
fn parameter<'a>(mut rest: &'a str, key: &str) -> Option<Cow<'a, str>> {
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return None;
        }
        let equals = rest
            .find(['=', ';'])
            .filter(|&i| rest[i..].starts_with('='))?;
        let (name, after) = (rest[..equals].trim(), rest[equals + 1..].trim_start());
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => value.push(chars.next()?.1),
                        (i, '"') => break i + 1,
                        (_, c) => value.push(c),
                    }
                };
                (Cow::Owned(value), &quoted[end..])
            }
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (Cow::Borrowed(after[..end].trim_end()), &after[end..])
            }
        };
        if name.eq_ignore_ascii_case(key) {
            return Some(value);
        }
        rest = next;
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
    // Only a call's reply mailbox: a `reply_to` naming any other mailbox is the sender's
    // say, and answering there would send, as this program, wherever a stranger asked
    // (to a mailbox the stranger may not write to itself). `send` does that knowingly.
    if !mailbox.as_str().starts_with(ipc_proto::REPLY_PREFIX) {
        return Err(Error::BadData(format!(
            "message {}'s reply_to is {mailbox}, not a call's reply mailbox ({}…):              answer it with a send if you trust its sender",
            request.id,
            ipc_proto::REPLY_PREFIX
        )));
    }
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
    extractor!(mailbox, MailboxInfo, Response::Mailbox(m) => *m);
    extractor!(mailboxes, Vec<MailboxInfo>, Response::Mailboxes(m) => m);
    extractor!(status, DaemonStatus, Response::Status(s) => *s);
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
            }
            .into(),
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
        let (bytes, tag) = encode(&job, type_tag::<Job>(), Codec::Postcard).unwrap();
        assert_eq!(
            tag,
            type_tag::<Job>(),
            "postcard is tagged with the bare name"
        );
        let msg = message_with(bytes, Some(tag));
        assert_eq!(decode::<Job>(&msg, type_tag::<Job>()).unwrap(), job);
        match decode::<String>(&msg, type_tag::<String>()) {
            Err(Error::TypeMismatch { expected, found }) => {
                assert_eq!(expected, "alloc::string::String");
                assert!(found.ends_with("Job"), "{found}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let untyped = message_with(Bytes::from_static(b"raw"), None);
        assert!(matches!(
            decode::<Job>(&untyped, type_tag::<Job>()),
            Err(Error::TypeMismatch { .. })
        ));
    }

    /// The same message defined in two programs: different Rust paths, one name.
    mod producer {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
        }
        crate::message_type!(Job, "test.Job");

        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        pub struct JsonJob {
            pub id: u32,
            pub name: String,
        }
        crate::message_type!(JsonJob, "test.JsonJob", json);
    }

    /// postcard is positional, so `Job` has the producer's fields in the same order;
    /// JSON goes by field names, so `JsonJob` need not.
    mod consumer {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
        }
        crate::message_type!(Job, "test.Job");

        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct JsonJob {
            pub name: String,
            pub id: u32,
        }
        crate::message_type!(JsonJob, "test.JsonJob", json);
    }

    /// What a daemon would deliver for `request`, a typed send.
    fn delivered(request: Request) -> Message {
        let Request::Send(send) = request else {
            panic!("a typed send is a Send: {request:?}");
        };
        message_with(send.payload, send.headers.into_inner().content_type)
    }

    fn handle<T: MessageType>() -> TypedMailbox<(), T> {
        TypedMailbox::new_typed((), "jobs").unwrap()
    }

    #[test]
    fn programs_agree_on_the_name_not_the_rust_path() {
        assert_ne!(
            type_tag::<producer::Job>(),
            type_tag::<consumer::Job>(),
            "the fallback would not agree"
        );
        let sent = producer::Job {
            id: 7,
            name: "build".into(),
        };
        let message = delivered(handle::<producer::Job>().send_request(&sent).unwrap());
        assert_eq!(message.headers.content_type.as_deref(), Some("test.Job"));
        let got = handle::<consumer::Job>().decode(&message).unwrap();
        assert_eq!(
            got,
            consumer::Job {
                id: 7,
                name: "build".into()
            }
        );
        // The fallback handle for the same struct expects its Rust path, not the name.
        let fallback = TypedMailbox::<(), consumer::Job>::new((), "jobs").unwrap();
        assert!(matches!(
            fallback.decode(&message),
            Err(Error::TypeMismatch { .. })
        ));
    }

    #[test]
    fn json_round_trip_names_type_and_codec() {
        let sent = producer::JsonJob {
            id: 7,
            name: "build".into(),
        };
        let sender = handle::<producer::JsonJob>();
        assert_eq!(
            (sender.type_name(), sender.codec()),
            ("test.JsonJob", Codec::Json)
        );
        let message = delivered(sender.send_request(&sent).unwrap());
        assert_eq!(
            message.headers.content_type.as_deref(),
            Some("application/json; type=test.JsonJob")
        );
        assert_eq!(&message.payload[..], br#"{"id":7,"name":"build"}"#);
        let expected = consumer::JsonJob {
            id: 7,
            name: "build".into(),
        };
        assert_eq!(
            handle::<consumer::JsonJob>().decode(&message).unwrap(),
            expected
        );
        // A receiver reads the codec from the message: a postcard handle reads JSON too.
        let postcard = handle::<consumer::JsonJob>().with_codec(Codec::Postcard);
        assert_eq!(postcard.decode(&message).unwrap(), expected);
        // What another program writes by hand reads the same, whatever its field order.
        let by_hand = message_with(
            Bytes::from_static(br#"{"name":"build","id":7}"#),
            Some("Application/JSON; charset=utf-8; type=\"test.JsonJob\"".into()),
        );
        assert_eq!(
            handle::<consumer::JsonJob>().decode(&by_hand).unwrap(),
            expected
        );
    }

    #[test]
    fn builders_choose_name_and_codec_by_hand() {
        let sender = TypedMailbox::<(), Job>::new((), "jobs")
            .unwrap()
            .with_codec(Codec::Json)
            .with_type_name("other.Job");
        let job = Job {
            id: 1,
            name: "x".into(),
        };
        let message = delivered(sender.send_request(&job).unwrap());
        assert_eq!(
            message.headers.content_type.as_deref(),
            Some("application/json; type=other.Job")
        );
        assert_eq!(sender.decode(&message).unwrap(), job);
        // A name that is not a MIME token is quoted, and read back whole.
        let sender = sender.with_type_name(type_tag::<Job>());
        let message = delivered(sender.send_request(&job).unwrap());
        let tag = message.headers.content_type.clone().unwrap();
        assert_eq!(
            tag,
            format!("application/json; type=\"{}\"", type_tag::<Job>())
        );
        assert_eq!(sender.decode(&message).unwrap(), job);
    }

    #[test]
    fn json_content_types_parse_back() {
        fn json(name: Option<&str>) -> Tag<'_> {
            Tag {
                codec: Codec::Json,
                name: name.map(Cow::Borrowed),
            }
        }
        for (content_type, tag) in [
            ("application/json; type=a.B", json(Some("a.B"))),
            ("application/json;type=a.B", json(Some("a.B"))),
            ("APPLICATION/Json ; TYPE = a.B ", json(Some("a.B"))),
            (
                "application/json; charset=utf-8; type=a.B",
                json(Some("a.B")),
            ),
            (
                "application/json; type=a.B; charset=utf-8",
                json(Some("a.B")),
            ),
            (r#"application/json; type="a::B<C>""#, json(Some("a::B<C>"))),
            (
                r#"application/json; x="; type=no"; type=yes"#,
                json(Some("yes")),
            ),
            (
                r#"application/json; type="q\"uote\\d""#,
                json(Some(r#"q"uote\d"#)),
            ),
            ("application/json", json(None)),
            ("application/json; charset=utf-8", json(None)),
            // Broken parameters name nothing rather than a guess.
            ("application/json; bare; type=a.B", json(None)),
            (r#"application/json; type="unterminated"#, json(None)),
        ] {
            assert_eq!(Tag::parse(content_type), tag, "{content_type}");
        }
        for postcard in ["a.B", "my_app::Job", "text/plain", "application/jsonx"] {
            let tag = Tag::parse(postcard);
            assert_eq!(tag.codec, Codec::Postcard, "{postcard}");
            assert_eq!(tag.name.as_deref(), Some(postcard));
        }
        // Quoting and parsing are inverses for any name.
        for name in ["a.B", "a::B<C>", r#"q"uote\d"#, "with space", "é", ""] {
            let tag = json_content_type(name);
            assert_eq!(Tag::parse(&tag), json(Some(name)), "{tag}");
        }
    }

    #[test]
    fn mismatches_name_both_types() {
        let mismatch = |content_type: Option<&str>| {
            let message = message_with(Bytes::new(), content_type.map(str::to_owned));
            match handle::<consumer::Job>().decode(&message) {
                Err(e @ Error::TypeMismatch { .. }) => e.to_string(),
                other => panic!("expected a mismatch, got {other:?}"),
            }
        };
        assert_eq!(
            mismatch(Some("test.Other")),
            "type mismatch: expected a test.Job, the message holds a test.Other"
        );
        assert_eq!(
            mismatch(Some("application/json; type=test.Other")),
            "type mismatch: expected a test.Job, the message holds a test.Other (JSON)"
        );
        assert_eq!(
            mismatch(Some("application/json")),
            "type mismatch: expected a test.Job, the message holds a JSON value without a \
             type name"
        );
        assert_eq!(
            mismatch(None),
            "type mismatch: expected a test.Job, the message holds a untyped message"
        );
        // The right name with a payload that does not decode is a payload error instead.
        let message = message_with(
            Bytes::from_static(b"{"),
            Some("application/json; type=test.Job".into()),
        );
        match handle::<consumer::Job>().decode(&message) {
            Err(Error::Payload(e)) => {
                assert!(
                    e.starts_with("message 1: cannot decode payload as JSON"),
                    "{e}"
                )
            }
            other => panic!("expected a payload error, got {other:?}"),
        }
    }
}
