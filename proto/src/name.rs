//! Mailbox names, validated once on construction so that every `MailboxName` in the
//! program is known to be well formed (SPEC §2).

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A mailbox name: 1–255 bytes of `[A-Za-z0-9._/-]`, not starting with `/` or `.`, with no
/// `..` segment. The restrictions keep names safe to use as file names under the state
/// directory and unambiguous in topic patterns.
///
/// Held inline up to 24 bytes (most names): every request names a mailbox, and a name
/// decoded or made without an allocation of its own was one allocation and one free
/// less per request on both sides of the socket.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxName(CompactString);

impl Serialize for MailboxName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MailboxName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Every request names a mailbox. A binary format hands the name over as bytes,
        // checked against the allowed set (all ASCII) before anything is made of them:
        // no separate UTF-8 pass, and nothing built for a name that is refused. A text
        // format hands over a string, as for any other field.
        let checked = if deserializer.is_human_readable() {
            deserializer.deserialize_str(NameVisitor)?
        } else {
            deserializer.deserialize_bytes(NameVisitor)?
        };
        checked.map_err(|e| {
            // The format's error cannot carry why; the codec picks it up from here.
            crate::codec::note_name_error(e.clone());
            serde::de::Error::custom(e)
        })
    }
}

/// A name as a format hands it over, checked.
struct NameVisitor;

impl serde::de::Visitor<'_> for NameVisitor {
    type Value = Result<MailboxName, NameError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mailbox name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(validate(name.as_bytes()).map(|()| MailboxName(CompactString::from(name))))
    }

    fn visit_bytes<E: serde::de::Error>(self, name: &[u8]) -> Result<Self::Value, E> {
        Ok(MailboxName::from_wire(name))
    }
}

/// Why a string is not a valid mailbox name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("mailbox name is empty")]
    Empty,
    #[error("mailbox name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("mailbox name contains {0:?}; only letters, digits and . _ / - are allowed")]
    BadChar(char),
    #[error("mailbox name may not start with {0:?}")]
    BadStart(char),
    #[error("mailbox name may not contain a \"..\" segment")]
    DotDot,
}

impl MailboxName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        Self::checked(CompactString::from(name.into()))
    }

    fn checked(name: CompactString) -> Result<Self, NameError> {
        validate(name.as_bytes())?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name as a binary format carries it: bytes, checked against the allowed set
    /// before anything is made of them.
    pub(crate) fn from_wire(bytes: &[u8]) -> Result<Self, NameError> {
        validate(bytes)?;
        // SAFETY: `validate` let through only bytes of `ALLOWED`, which are all ASCII,
        // so they are UTF-8 (a `str::from_utf8` here cost as much as the check itself).
        let name = unsafe { std::str::from_utf8_unchecked(bytes) };
        Ok(Self(CompactString::from(name)))
    }
}

fn validate(bytes: &[u8]) -> Result<(), NameError> {
    let Some(&first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(bytes.len()));
    }
    // Every request names a mailbox: one pass over the bytes, a table lookup each, and
    // the character named in an error found only on the way to it.
    let mut previous = 0;
    let mut dot_dot = false;
    for &b in bytes {
        if !ALLOWED[usize::from(b)] {
            let name = String::from_utf8_lossy(bytes);
            let bad = name
                .chars()
                .find(|&c| !c.is_ascii() || !ALLOWED[c as usize]);
            return Err(NameError::BadChar(bad.expect("a byte was refused")));
        }
        dot_dot |= previous == b'.' && b == b'.';
        previous = b;
    }
    if first == b'/' || first == b'.' {
        return Err(NameError::BadStart(first as char));
    }
    if dot_dot && bytes.split(|&b| b == b'/').any(|s| s == b"..") {
        return Err(NameError::DotDot);
    }
    Ok(())
}

/// The bytes that may appear in a name: ASCII letters, digits and `. _ / -`.
const ALLOWED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-');
        b += 1;
    }
    table
};

impl TryFrom<String> for MailboxName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for MailboxName {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::checked(CompactString::from(value))
    }
}

impl std::str::FromStr for MailboxName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::checked(CompactString::from(s))
    }
}

impl From<MailboxName> for String {
    fn from(value: MailboxName) -> Self {
        value.0.into_string()
    }
}

impl AsRef<str> for MailboxName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_encodes_as_its_string_whether_held_inline_or_not() {
        use crate::codec::{decode_json, decode_value, encode_json, encode_value};
        for len in [1, 24, 25, MAX_NAME_LEN] {
            let text = "a".repeat(len);
            let name: MailboxName = text.parse().unwrap();
            let bytes = encode_value(&name).unwrap();
            assert_eq!(bytes, encode_value(text.as_str()).unwrap());
            assert_eq!(decode_value::<MailboxName>(&bytes).unwrap(), name);
            let json = encode_json(&name).unwrap();
            assert_eq!(json, encode_json(text.as_str()).unwrap());
            assert_eq!(decode_json::<MailboxName>(&json).unwrap(), name);
            assert_eq!(String::from(name), text);
        }
        // Decoded names are checked as made ones are.
        let bad = encode_value("a/../b").unwrap();
        assert!(decode_value::<MailboxName>(&bad).is_err());
    }

    #[test]
    fn accepts_good_names() {
        for name in [
            "a",
            "jobs",
            "app/v1.queue-2_x",
            "a..b",
            "a/..b",
            "a../b",
            "x/.hidden",
            "9",
        ] {
            assert!(MailboxName::new(name).is_ok(), "{name} should be valid");
        }
        assert!(MailboxName::new("a".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(MailboxName::new(""), Err(NameError::Empty));
        assert_eq!(
            MailboxName::new("a".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert_eq!(MailboxName::new("/abs"), Err(NameError::BadStart('/')));
        assert_eq!(MailboxName::new(".hidden"), Err(NameError::BadStart('.')));
        assert_eq!(MailboxName::new("a/../b"), Err(NameError::DotDot));
        assert_eq!(MailboxName::new("a/.."), Err(NameError::DotDot));
        assert_eq!(MailboxName::new("sp ace"), Err(NameError::BadChar(' ')));
        assert_eq!(MailboxName::new("ünï"), Err(NameError::BadChar('ü')));
        assert_eq!(MailboxName::new("a\0b"), Err(NameError::BadChar('\0')));
    }

    #[test]
    fn deserializing_validates() {
        let bytes = crate::codec::encode_value(&"../etc".to_string()).unwrap();
        assert!(crate::codec::decode_value::<MailboxName>(&bytes).is_err());
        // Decoded from bytes, a name that is not even UTF-8 is refused as a name, and
        // the error names the character as `new` would.
        let mut bytes = crate::codec::encode_value(&"ab".to_string()).unwrap();
        bytes[2] = 0xff;
        let frame = crate::Frame {
            kind: crate::FrameKind::Request,
            flags: 0,
            request_id: 1,
            body: bytes.into(),
        };
        match crate::codec::decode_body::<MailboxName>(&frame, crate::FrameKind::Request) {
            Err(crate::codec::CodecError::InvalidName(e)) => {
                assert_eq!(e, NameError::BadChar(char::REPLACEMENT_CHARACTER));
            }
            other => panic!("expected an invalid name, got {other:?}"),
        }
        let bytes = crate::codec::encode_json(&"ünï").unwrap();
        assert!(crate::codec::decode_json::<MailboxName>(&bytes).is_err());
        let bytes = crate::codec::encode_value(&"ok".to_string()).unwrap();
        assert_eq!(
            crate::codec::decode_value::<MailboxName>(&bytes)
                .unwrap()
                .as_str(),
            "ok"
        );
    }
}
