//! The typed-payload rules shared by [`crate::Mailbox`] and [`crate::BlockingMailbox`]:
//! a value is encoded with the protocol's codec and its message is tagged with the Rust
//! type's name in `content_type`; a receive checks the tag before decoding, so a message
//! of another type is reported as such instead of decoding into garbage.

use bytes::Bytes;
use ipc_proto::{Message, Response, Selector, codec};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The tag that marks a message as holding a `T`: the type's path as the compiler
/// spells it, e.g. `my_app::Job`. Both ends must be built from the same definition.
pub fn type_tag<T: ?Sized>() -> &'static str {
    std::any::type_name::<T>()
}

/// Which SysV type a typed handle sends with and receives from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypeMap {
    pub mtype: i64,
    pub selector: Selector,
}

impl Default for TypeMap {
    fn default() -> Self {
        Self {
            mtype: 1,
            selector: Selector::Any,
        }
    }
}

impl TypeMap {
    /// Send as `mtype` and receive only messages of `mtype`.
    pub fn exact(mtype: i64) -> Self {
        Self {
            mtype,
            selector: Selector::Type(mtype),
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
