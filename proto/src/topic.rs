//! Topic names and topic patterns for broadcast publishing, validated once on
//! construction (and on deserialization) so that every [`Topic`] and [`TopicPattern`] in
//! the program is known to be well formed.
//!
//! A topic is a `.`-separated list of segments, as a NATS subject: `orders.eu.created`.
//! A pattern may also use two wildcards, each only as a whole segment: `*` matches exactly
//! one segment, and `>`, only as the last segment, matches one or more. Publishing takes
//! a concrete [`Topic`]; binding a mailbox takes a [`TopicPattern`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// A concrete topic: 1–255 bytes of non-empty `.`-separated segments of
/// `[A-Za-z0-9_:/-]`. It has no wildcards, so it names exactly what a message is about.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Topic(String);

/// A topic pattern: as a [`Topic`], except that a segment may be exactly `*` (one
/// segment) and the last segment may be exactly `>` (one or more segments).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct TopicPattern(String);

/// Why a string is not a valid topic or topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {0} bytes long; at most {MAX_TOPIC_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "topic has an empty segment (a dot at the start or end, or two dots together); \
         segments are separated by single dots"
    )]
    EmptySegment,
    #[error(
        "topic contains {0:?}; only letters, digits and _ : / - are allowed, with . between segments"
    )]
    BadChar(char),
    #[error(
        "topic contains the wildcard {0:?}; wildcards belong in patterns, publish needs a concrete topic"
    )]
    WildcardInTopic(char),
    #[error("topic pattern has \">\" before its last segment; \">\" may only end a pattern")]
    MisplacedRest,
    #[error(
        "topic pattern segment {0:?} mixes a wildcard with other characters; \
         \"*\" and \">\" must each be a whole segment"
    )]
    WildcardInSegment(String),
}

/// The characters a segment may hold besides the wildcards.
fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/' | '-')
}

/// Checks `text` as a topic, or as a pattern when `wildcards` is true. The checks run
/// from the whole string to its segments, so that the first error reported is the
/// broadest one.
fn validate(text: &str, wildcards: bool) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(text.len()));
    }
    for c in text.chars() {
        match c {
            '*' | '>' if !wildcards => return Err(TopicError::WildcardInTopic(c)),
            '*' | '>' | '.' => {}
            c if is_segment_char(c) => {}
            c => return Err(TopicError::BadChar(c)),
        }
    }
    if text.starts_with('.') || text.ends_with('.') || text.contains("..") {
        return Err(TopicError::EmptySegment);
    }
    let mut segments = text.split('.').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "*" => {}
            ">" if last => {}
            ">" => return Err(TopicError::MisplacedRest),
            s if s.contains(['*', '>']) => {
                return Err(TopicError::WildcardInSegment(s.to_owned()));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Topic {
    /// Validates `topic` and wraps it.
    pub fn new(topic: impl Into<String>) -> Result<Self, TopicError> {
        let topic = topic.into();
        validate(&topic, false)?;
        Ok(Self(topic))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, in order; each is non-empty.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('.')
    }
}

impl TopicPattern {
    /// Validates `pattern` and wraps it.
    pub fn new(pattern: impl Into<String>) -> Result<Self, TopicError> {
        let pattern = pattern.into();
        validate(&pattern, true)?;
        Ok(Self(pattern))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, in order; each is non-empty, and may be `*`, or `>` if last.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('.')
    }

    /// Whether `topic` matches this pattern, segment by segment. This is the definition
    /// of matching; the daemon's index of bindings is tested against it.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic = topic.segments();
        for segment in self.segments() {
            if segment == ">" {
                return topic.next().is_some();
            }
            match topic.next() {
                Some(t) if segment == "*" || segment == t => {}
                _ => return false,
            }
        }
        topic.next().is_none()
    }
}

/// A concrete topic is also a pattern, one that matches only itself.
impl From<Topic> for TopicPattern {
    fn from(topic: Topic) -> Self {
        Self(topic.0)
    }
}

/// Everything both types share apart from their validation.
macro_rules! string_newtype {
    ($type:ident) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $type::new(text).map_err(serde::de::Error::custom)
            }
        }

        impl TryFrom<String> for $type {
            type Error = TopicError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $type {
            type Error = TopicError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $type {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl From<$type> for String {
            fn from(value: $type) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $type {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

string_newtype!(Topic);
string_newtype!(TopicPattern);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_value, encode_value};

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn pattern(s: &str) -> TopicPattern {
        TopicPattern::new(s).unwrap()
    }

    #[test]
    fn accepts_good_topics() {
        for t in [
            "a",
            "orders.eu.created",
            "svc-1.host_2.urn:x/y",
            "A.B.C.9",
            "a.b.c.d.e.f.g.h",
        ] {
            assert!(Topic::new(t).is_ok(), "{t} should be a valid topic");
            assert!(
                TopicPattern::new(t).is_ok(),
                "{t} should be a valid pattern"
            );
        }
        assert!(Topic::new("a".repeat(MAX_TOPIC_LEN)).is_ok());
        let dots = vec!["a"; MAX_TOPIC_LEN / 2 + 1].join(".");
        assert_eq!(dots.len(), MAX_TOPIC_LEN);
        assert_eq!(topic(&dots).segments().count(), MAX_TOPIC_LEN / 2 + 1);
    }

    #[test]
    fn rejects_bad_topics() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a".repeat(256)), Err(TopicError::TooLong(256)));
        for t in ["a..b", ".a", "a.", ".", "a.b..", ".."] {
            assert_eq!(Topic::new(t), Err(TopicError::EmptySegment), "{t}");
        }
        assert_eq!(Topic::new("a b"), Err(TopicError::BadChar(' ')));
        assert_eq!(Topic::new("a.ü"), Err(TopicError::BadChar('ü')));
        assert_eq!(Topic::new("a\0"), Err(TopicError::BadChar('\0')));
        assert_eq!(Topic::new("a+b"), Err(TopicError::BadChar('+')));
        assert_eq!(Topic::new("a.*"), Err(TopicError::WildcardInTopic('*')));
        assert_eq!(Topic::new("a.>"), Err(TopicError::WildcardInTopic('>')));
        assert_eq!(Topic::new("a*"), Err(TopicError::WildcardInTopic('*')));
    }

    #[test]
    fn accepts_good_patterns() {
        for p in [
            "*",
            ">",
            "a.*",
            "a.>",
            "*.b",
            "*.*.>",
            "a.*.c.>",
            "svc.*.events",
        ] {
            assert!(
                TopicPattern::new(p).is_ok(),
                "{p} should be a valid pattern"
            );
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(TopicPattern::new(""), Err(TopicError::Empty));
        assert_eq!(
            TopicPattern::new("*.".repeat(200)),
            Err(TopicError::TooLong(400))
        );
        for p in ["a..*", ".>", "*.", "a.>."] {
            assert_eq!(TopicPattern::new(p), Err(TopicError::EmptySegment), "{p}");
        }
        for p in [">.a", "a.>.b", ">.>", ">.*"] {
            assert_eq!(TopicPattern::new(p), Err(TopicError::MisplacedRest), "{p}");
        }
        for (p, segment) in [("a*", "a*"), ("x.>b", ">b"), ("**", "**"), ("a.*>", "*>")] {
            assert_eq!(
                TopicPattern::new(p),
                Err(TopicError::WildcardInSegment(segment.into())),
                "{p}"
            );
        }
        assert_eq!(TopicPattern::new("a.?"), Err(TopicError::BadChar('?')));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Topic::new("a.*").unwrap_err().to_string();
        assert!(e.contains("wildcards belong in patterns"), "{e}");
        assert!(e.contains("publish needs a concrete topic"), "{e}");
        let e = Topic::new("a".repeat(300)).unwrap_err().to_string();
        assert!(e.contains("300 bytes") && e.contains("255"), "{e}");
        let e = TopicPattern::new("a*").unwrap_err().to_string();
        assert!(e.contains("\"a*\""), "{e}");
    }

    #[test]
    fn matching_follows_nats_rules() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.b", "a.b.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.b", "a.b", true),
            ("*.b", "a.c", false),
            ("*.*.>", "a.b", false),
            ("*.*.>", "a.b.c", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(pattern(p).matches(&topic(t)), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn a_topic_is_a_pattern_matching_itself() {
        let t = topic("a.b");
        let p = TopicPattern::from(t.clone());
        assert!(p.matches(&t));
        assert_eq!(p, pattern("a.b"));
    }

    #[test]
    fn parse_display_and_debug() {
        let t: Topic = "a.b".parse().unwrap();
        assert_eq!(t.to_string(), "a.b");
        assert_eq!(format!("{t:?}"), "\"a.b\"");
        assert_eq!(t.segments().collect::<Vec<_>>(), ["a", "b"]);
        let p = TopicPattern::try_from(String::from("a.*.>")).unwrap();
        assert_eq!(p.as_str(), "a.*.>");
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "*", ">"]);
        assert!("a.>".parse::<Topic>().is_err());
        let mut sorted = vec![pattern("b"), pattern("a.>"), pattern("a")];
        sorted.sort();
        assert_eq!(sorted, [pattern("a"), pattern("a.>"), pattern("b")]);
    }

    #[test]
    fn serde_round_trip() {
        let t = topic("orders.eu.created");
        let bytes = encode_value(&t).unwrap();
        // On the wire it is just a string.
        assert_eq!(bytes, encode_value("orders.eu.created").unwrap());
        assert_eq!(decode_value::<Topic>(&bytes).unwrap(), t);

        let p = pattern("orders.*.>");
        let bytes = encode_value(&p).unwrap();
        assert_eq!(decode_value::<TopicPattern>(&bytes).unwrap(), p);
    }

    #[test]
    fn deserializing_validates() {
        for bad in ["a..b", "a b", ""] {
            let bytes = encode_value(bad).unwrap();
            assert!(decode_value::<Topic>(&bytes).is_err(), "{bad:?}");
            assert!(decode_value::<TopicPattern>(&bytes).is_err(), "{bad:?}");
        }
        // A pattern is not a topic.
        let bytes = encode_value("a.*").unwrap();
        assert!(decode_value::<Topic>(&bytes).is_err());
        assert!(decode_value::<TopicPattern>(&bytes).is_ok());
        let bytes = encode_value(">.a").unwrap();
        assert!(decode_value::<TopicPattern>(&bytes).is_err());
    }
}
