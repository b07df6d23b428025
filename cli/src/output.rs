//! How results look: the JSON objects scripts rely on (SPEC §9 names their keys) and the
//! human forms. Everything here is a pure function of the values it is given (the
//! [`Style`] included), so the key sets and layouts can be checked without a daemon or a
//! terminal; writing to stdout is the callers' business.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ipc_proto::{DaemonStatus, LastOp, MailboxInfo, Message, Timestamp, codec};
use serde::Serialize;

use crate::style::Style;

/// RFC 3339 in UTC with nanoseconds, the form `sent_at` and the other times take.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_nanos(t.to_system_time()).to_string()
}

/// A mode as `ls -l` users read octal: four digits, `0660`.
pub fn mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// How a received message is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// The payload bytes, then a newline.
    Line,
    /// The payload bytes only.
    Raw,
    /// One JSON object per line ([`MessageJson`]).
    Json,
}

/// Writes one received message in `format`. Payloads are bytes: they are written as
/// they are, never through a lossy UTF-8 conversion.
pub fn write_message(
    out: &mut impl Write,
    format: MessageFormat,
    mailbox: &str,
    message: &Message,
) -> io::Result<()> {
    match format {
        MessageFormat::Line => {
            out.write_all(&message.payload)?;
            out.write_all(b"\n")
        }
        MessageFormat::Raw => out.write_all(&message.payload),
        MessageFormat::Json => write_json(out, &MessageJson::new(mailbox, message)),
    }
}

/// Writes `value` as one line of JSON.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Who sent a message, as the daemon saw the sender's connection.
#[derive(Debug, Serialize)]
pub struct SenderJson {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A received message in `recv --json`. Exactly one of `payload` and `payload_b64`
/// (standard base64, for a payload that is not UTF-8) is present.
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    pub mailbox: &'a str,
    pub id: u64,
    #[serde(rename = "type")]
    pub mtype: i64,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_b64: Option<String>,
    pub sender: SenderJson,
    pub sent_at: String,
    pub reply_to: Option<&'a str>,
    pub correlation_id: Option<u64>,
    pub content_type: Option<&'a str>,
    pub redelivered: bool,
    pub deliveries: u32,
    /// The topic it was published on; absent for a message sent to the mailbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
}

/// The `payload` of a [`MessageJson`].
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PayloadJson<'a> {
    /// A JSON message (its `content_type` says `application/json`) whose payload parses:
    /// the value itself, so `jq .payload.id` works without decoding a string first. It is
    /// written again, compactly so the message stays on one line; that also sorts object
    /// keys and turns integers wider than 64 bits into floating point: a reading aid, not
    /// the bytes (`--raw` has those). A payload that does not parse stays a string.
    Json(serde_json::Value),
    /// Any other UTF-8 payload, as a string.
    Text(&'a str),
}

impl<'a> MessageJson<'a> {
    pub fn new(mailbox: &'a str, m: &'a Message) -> Self {
        let json = m
            .headers
            .content_type
            .as_deref()
            .is_some_and(codec::is_json_content_type);
        let (payload, payload_b64) = match std::str::from_utf8(&m.payload) {
            Ok(text) => {
                let value = json.then(|| codec::decode_json(&m.payload).ok()).flatten();
                (
                    Some(value.map_or(PayloadJson::Text(text), PayloadJson::Json)),
                    None,
                )
            }
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            ),
        };
        Self {
            mailbox,
            id: m.id,
            mtype: m.mtype,
            size: m.payload.len(),
            payload,
            payload_b64,
            sender: SenderJson {
                pid: m.sender.pid,
                uid: m.sender.uid,
                gid: m.sender.gid,
            },
            sent_at: rfc3339(m.sent_at),
            reply_to: m.headers.reply_to.as_ref().map(|n| n.as_str()),
            correlation_id: m.headers.correlation_id,
            content_type: m.headers.content_type.as_deref(),
            redelivered: m.redelivered,
            deliveries: m.deliveries,
            topic: m.headers.topic.as_ref().map(|t| t.as_str()),
        }
    }
}

/// The time and pid of a mailbox's last send or receive.
#[derive(Debug, Serialize)]
pub struct LastOpJson {
    pub at: String,
    pub pid: u32,
}

impl From<LastOp> for LastOpJson {
    fn from(op: LastOp) -> Self {
        Self {
            at: rfc3339(op.at),
            pid: op.pid,
        }
    }
}

/// A mailbox in `stat --json`, `ls --json` and `set --json`.
#[derive(Debug, Serialize)]
pub struct MailboxJson<'a> {
    pub name: &'a str,
    pub messages: u64,
    pub bytes: u64,
    pub max_msgs: u64,
    pub max_bytes: u64,
    pub max_msg_size: u64,
    /// Octal, as a string, so that `"0660"` reads as people write modes.
    pub mode: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub creator_uid: u32,
    pub creator_gid: u32,
    pub durable: bool,
    /// `always`, `interval=MS` or `never` for a durable mailbox; absent for memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<String>,
    pub created_at: String,
    pub changed_at: String,
    pub last_send: Option<LastOpJson>,
    pub last_recv: Option<LastOpJson>,
    pub total_sent: u64,
    pub total_received: u64,
    pub waiting_receivers: u64,
    pub waiting_senders: u64,
    pub unacked: u64,
    /// 0 is no limit.
    pub max_deliveries: u32,
    pub dead_letter: Option<&'a str>,
    pub dead_lettered: u64,
    pub dropped: u64,
    /// 0 is none.
    pub default_ttl_ms: u64,
    pub expired: u64,
    pub delayed: u64,
    /// Deadlines kept (lease ends, delayed messages, TTLs).
    pub timers: u64,
    /// The topic patterns it is bound to.
    pub bindings: Vec<&'a str>,
    /// Unique while the daemon runs (a SysV id).
    pub serial: u64,
}

impl<'a> MailboxJson<'a> {
    pub fn new(i: &'a MailboxInfo) -> Self {
        Self {
            name: i.name.as_str(),
            messages: i.messages,
            bytes: i.bytes,
            max_msgs: i.max_msgs,
            max_bytes: i.max_bytes,
            max_msg_size: i.max_msg_size,
            mode: mode(i.mode),
            owner_uid: i.owner_uid,
            owner_gid: i.owner_gid,
            creator_uid: i.creator_uid,
            creator_gid: i.creator_gid,
            durable: i.durable,
            fsync: i.fsync.map(|f| f.to_string()),
            created_at: rfc3339(i.created_at),
            changed_at: rfc3339(i.changed_at),
            last_send: i.last_send.map(LastOpJson::from),
            last_recv: i.last_recv.map(LastOpJson::from),
            total_sent: i.total_sent,
            total_received: i.total_received,
            waiting_receivers: i.waiting_receivers,
            waiting_senders: i.waiting_senders,
            unacked: i.unacked,
            max_deliveries: i.max_deliveries,
            dead_letter: i.dead_letter.as_ref().map(|n| n.as_str()),
            dead_lettered: i.dead_lettered,
            dropped: i.dropped,
            default_ttl_ms: i.default_ttl_ms,
            expired: i.expired,
            delayed: i.delayed,
            timers: i.timers,
            bindings: i.bindings.iter().map(|p| p.as_str()).collect(),
            serial: i.serial,
        }
    }
}

/// One uid's usage in `status --json`.
#[derive(Debug, Serialize)]
pub struct UserJson {
    pub uid: u32,
    pub connections: u64,
    pub mailboxes: u64,
    pub queued_bytes: u64,
    /// The uid's quotas; `null` is unlimited.
    pub max_connections: Option<u64>,
    pub max_mailboxes: Option<u64>,
    pub max_queued_bytes: Option<u64>,
    pub max_in_flight: Option<u64>,
}

/// The daemon in `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub version: &'a str,
    pub pid: u32,
    pub uptime_ms: u64,
    /// The same uptime for people, e.g. `2h 3m 4s`.
    pub uptime: String,
    pub socket: String,
    pub connections: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    pub users: Vec<UserJson>,
}

impl<'a> StatusJson<'a> {
    pub fn new(s: &'a DaemonStatus, socket: &Path) -> Self {
        Self {
            version: &s.version,
            pid: s.pid,
            uptime_ms: s.uptime_ms,
            uptime: uptime(s.uptime_ms),
            socket: socket.display().to_string(),
            connections: s.connections,
            mailboxes: s.mailboxes,
            messages: s.messages,
            bytes: s.bytes,
            users: s
                .users
                .iter()
                .map(|u| UserJson {
                    uid: u.uid,
                    connections: u.connections,
                    mailboxes: u.mailboxes,
                    queued_bytes: u.queued_bytes,
                    max_connections: u.max_connections,
                    max_mailboxes: u.max_mailboxes,
                    max_queued_bytes: u.max_queued_bytes,
                    max_in_flight: u.max_in_flight,
                })
                .collect(),
        }
    }
}

/// An uptime to the second; milliseconds are noise to a person.
fn uptime(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A byte count with its binary size beside it when that helps: `67108864 (64 MiB)`.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return n.to_string();
    }
    format!("{n} ({})", short_bytes(n))
}

/// A byte count in the largest binary unit that keeps it ≥ 1: `1.5 KiB`, `64 MiB`, `12 B`.
pub fn short_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let shown = if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    format!("{shown} {}", UNITS[unit])
}

fn last_op(op: Option<LastOp>) -> String {
    match op {
        Some(op) => format!("{} by pid {}", rfc3339(op.at), op.pid),
        None => "never".to_owned(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `stat` for people: `key: value` lines, with the JSON keys as the keys.
pub fn write_mailbox_human(out: &mut impl Write, i: &MailboxInfo) -> io::Result<()> {
    let rows: [(&str, String); 30] = [
        ("name", i.name.to_string()),
        ("messages", i.messages.to_string()),
        ("bytes", bytes(i.bytes)),
        ("max_msgs", i.max_msgs.to_string()),
        ("max_bytes", bytes(i.max_bytes)),
        ("max_msg_size", bytes(i.max_msg_size)),
        ("mode", mode(i.mode)),
        ("owner_uid", i.owner_uid.to_string()),
        ("owner_gid", i.owner_gid.to_string()),
        ("creator_uid", i.creator_uid.to_string()),
        ("creator_gid", i.creator_gid.to_string()),
        (
            "durable",
            match i.fsync {
                Some(fsync) => format!("yes (fsync {fsync})"),
                None => "no (memory: gone when the daemon stops)".to_owned(),
            },
        ),
        ("created_at", rfc3339(i.created_at)),
        ("changed_at", rfc3339(i.changed_at)),
        ("last_send", last_op(i.last_send)),
        ("last_recv", last_op(i.last_recv)),
        ("total_sent", i.total_sent.to_string()),
        ("total_received", i.total_received.to_string()),
        ("waiting_receivers", i.waiting_receivers.to_string()),
        ("waiting_senders", i.waiting_senders.to_string()),
        ("unacked", i.unacked.to_string()),
        (
            "max_deliveries",
            match i.max_deliveries {
                0 => "no limit".to_owned(),
                n => n.to_string(),
            },
        ),
        (
            "dead_letter",
            i.dead_letter.as_ref().map_or_else(
                || "none (dropped and counted)".to_owned(),
                |n| n.to_string(),
            ),
        ),
        ("dead_lettered", i.dead_lettered.to_string()),
        ("dropped", i.dropped.to_string()),
        (
            "default_ttl",
            match i.default_ttl_ms {
                0 => "none".to_owned(),
                ms => humantime::format_duration(Duration::from_millis(ms)).to_string(),
            },
        ),
        ("expired", i.expired.to_string()),
        ("delayed", i.delayed.to_string()),
        ("timers", i.timers.to_string()),
        (
            "bindings",
            if i.bindings.is_empty() {
                "none".to_owned()
            } else {
                let patterns: Vec<&str> = i.bindings.iter().map(|p| p.as_str()).collect();
                patterns.join(" ")
            },
        ),
    ];
    write_pairs(out, &rows)
}

/// `status` for people: the daemon as `key: value` lines, then each uid's usage against
/// its quotas (what the caller may see of them).
pub fn write_status_human(
    out: &mut impl Write,
    s: &StatusJson<'_>,
    style: Style,
) -> io::Result<()> {
    let rows = [
        ("version", s.version.to_owned()),
        ("pid", s.pid.to_string()),
        ("uptime", s.uptime.clone()),
        ("socket", s.socket.clone()),
        ("connections", s.connections.to_string()),
        ("mailboxes", s.mailboxes.to_string()),
        ("messages", s.messages.to_string()),
        ("bytes", bytes(s.bytes)),
    ];
    write_pairs(out, &rows)?;
    if !s.users.is_empty() {
        writeln!(out)?;
        // Usage against quota: `3/256`, or just `3` when unlimited.
        let of = |used: String, limit: Option<String>| match limit {
            Some(limit) => format!("{used}/{limit}"),
            None => used,
        };
        let table: Vec<[String; 5]> = s
            .users
            .iter()
            .map(|u| {
                [
                    u.uid.to_string(),
                    of(
                        u.connections.to_string(),
                        u.max_connections.map(|n| n.to_string()),
                    ),
                    of(
                        u.mailboxes.to_string(),
                        u.max_mailboxes.map(|n| n.to_string()),
                    ),
                    of(
                        short_bytes(u.queued_bytes),
                        u.max_queued_bytes.map(short_bytes),
                    ),
                    u.max_in_flight
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                ]
            })
            .collect();
        write_table(
            out,
            ["UID", "CONNECTIONS", "MAILBOXES", "QUEUED", "MAX-IN-FLIGHT"],
            &table,
            style,
        )?;
    }
    Ok(())
}

/// `ls` for people: one row per mailbox under a header. The layout is the same whether
/// or not standard output is a terminal (scripts read it); only the header's emphasis
/// depends on `style`.
pub fn write_mailbox_table(
    out: &mut impl Write,
    list: &[MailboxInfo],
    style: Style,
) -> io::Result<()> {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|i| {
            [
                i.name.to_string(),
                i.messages.to_string(),
                i.bytes.to_string(),
                mode(i.mode),
                i.owner_uid.to_string(),
                yes_no(i.durable).to_owned(),
            ]
        })
        .collect();
    write_table(
        out,
        ["NAME", "MESSAGES", "BYTES", "MODE", "OWNER", "DURABLE"],
        &rows,
        style,
    )
}

fn write_pairs(out: &mut impl Write, rows: &[(&str, String)]) -> io::Result<()> {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in rows {
        writeln!(out, "{:<width$} {value}", format!("{key}:"))?;
    }
    Ok(())
}

/// Left-aligned columns two spaces apart, the last one unpadded; the header in bold when
/// `style` allows. Widths are measured on the plain text, so emphasis cannot shift a column.
fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
    style: Style,
) -> io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| -> String {
        let mut text = String::new();
        for (n, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if n + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.truncate(text.trim_end().len());
        text
    };
    writeln!(out, "{}", style.bold(&line(header)))?;
    for row in rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ipc_proto::{Credentials, Headers, MailboxName, UidUsage};
    use serde_json::Value;

    fn message(payload: &'static [u8]) -> Message {
        Message {
            id: 42,
            mtype: 7,
            sender: Credentials {
                pid: 1234,
                uid: 1000,
                gid: 100,
            },
            sent_at: Timestamp(1_700_000_000_123_456_789),
            headers: Headers {
                reply_to: Some(MailboxName::new("answers").unwrap()),
                correlation_id: Some(9),
                content_type: None,
                topic: None,
            }
            .into(),
            redelivered: false,
            deliveries: 1,
            payload: Bytes::from_static(payload),
        }
    }

    fn json(value: &impl Serialize) -> Value {
        let mut out = Vec::new();
        write_json(&mut out, value).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn message_json_has_the_promised_keys() {
        let m = message(b"hello");
        let v = json(&MessageJson::new("jobs", &m));
        let mut expected = vec![
            "mailbox",
            "id",
            "type",
            "size",
            "payload",
            "sender",
            "sent_at",
            "reply_to",
            "correlation_id",
            "content_type",
            "redelivered",
            "deliveries",
        ];
        expected.sort_unstable();
        assert_eq!(keys(&v), expected);
        assert_eq!(v["mailbox"], "jobs");
        assert_eq!(v["id"], 42);
        assert_eq!(v["type"], 7);
        assert_eq!(v["size"], 5);
        assert_eq!(v["payload"], "hello");
        assert_eq!(
            v["sender"],
            serde_json::json!({"pid": 1234, "uid": 1000, "gid": 100})
        );
        assert_eq!(v["sent_at"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v["reply_to"], "answers");
        assert_eq!(v["correlation_id"], 9);
        assert_eq!(v["content_type"], Value::Null);
        assert_eq!(v["redelivered"], false);
        assert_eq!(v["deliveries"], 1);
    }

    #[test]
    fn binary_payloads_fall_back_to_base64() {
        let m = message(b"\xff\x00bin\n");
        let v = json(&MessageJson::new("jobs", &m));
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_b64"], "/wBiaW4K");
        assert_eq!(v["size"], 6);
        // An empty payload is valid UTF-8.
        let v = json(&MessageJson::new("jobs", &message(b"")));
        assert_eq!(v["payload"], "");
        assert!(v.get("payload_b64").is_none());
    }

    #[test]
    fn json_payloads_are_shown_as_json() {
        let with_type = |payload: &'static [u8], content_type: &str| {
            let mut m = message(payload);
            m.headers.content_type = Some(content_type.into());
            m
        };
        let job = br#"{"id": 7, "name": "build"}"#;
        for content_type in [
            "application/json",
            "application/json; type=myapp.Job",
            "Application/JSON ;charset=utf-8",
        ] {
            let m = with_type(job, content_type);
            let v = json(&MessageJson::new("jobs", &m));
            assert_eq!(
                v["payload"],
                serde_json::json!({"id": 7, "name": "build"}),
                "{content_type}"
            );
            assert!(v.get("payload_b64").is_none());
            assert_eq!(v["size"], job.len(), "the size is the payload's, as sent");
            assert_eq!(v["content_type"], content_type);
        }
        // A pretty-printed payload still makes one line.
        let m = with_type(b"[1,\n 2]\n", "application/json");
        assert_eq!(
            json(&MessageJson::new("q", &m))["payload"],
            serde_json::json!([1, 2])
        );
        // Not JSON, or not said to be: a string as before.
        let m = with_type(b"{not json", "application/json");
        assert_eq!(json(&MessageJson::new("q", &m))["payload"], "{not json");
        for content_type in ["text/plain", "application/jsonl", "myapp.Job"] {
            let m = with_type(job, content_type);
            let v = json(&MessageJson::new("q", &m));
            assert_eq!(
                v["payload"], r#"{"id": 7, "name": "build"}"#,
                "{content_type}"
            );
        }
        let v = json(&MessageJson::new("q", &message(b"{}")));
        assert_eq!(v["payload"], "{}", "untyped");
        // Not UTF-8, so not JSON either.
        let m = with_type(b"\xff", "application/json");
        let v = json(&MessageJson::new("q", &m));
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_b64"], "/w==");
    }

    #[test]
    fn plain_and_raw_output_keep_the_bytes() {
        let m = message(b"\xff\x00bin");
        let mut out = Vec::new();
        write_message(&mut out, MessageFormat::Line, "q", &m).unwrap();
        write_message(&mut out, MessageFormat::Raw, "q", &m).unwrap();
        assert_eq!(out, b"\xff\x00bin\n\xff\x00bin");
    }

    fn info() -> MailboxInfo {
        MailboxInfo {
            name: MailboxName::new("jobs").unwrap(),
            messages: 3,
            bytes: 120,
            max_msgs: 100_000,
            max_bytes: 64 << 20,
            max_msg_size: 1 << 20,
            mode: 0o660,
            owner_uid: 1000,
            owner_gid: 100,
            creator_uid: 1000,
            creator_gid: 100,
            durable: false,
            fsync: None,
            max_deliveries: 0,
            dead_letter: None,
            dead_lettered: 0,
            dropped: 0,
            default_ttl_ms: 0,
            expired: 0,
            delayed: 0,
            timers: 0,
            bindings: vec![ipc_proto::TopicPattern::new("orders.>").unwrap()],
            serial: 12,
            created_at: Timestamp(0),
            changed_at: Timestamp(1_000_000_000),
            last_send: Some(LastOp {
                at: Timestamp(2_000_000_000),
                pid: 77,
            }),
            last_recv: None,
            total_sent: 5,
            total_received: 2,
            waiting_receivers: 1,
            waiting_senders: 0,
            unacked: 0,
        }
    }

    #[test]
    fn mailbox_json_has_the_promised_keys() {
        let i = info();
        let v = json(&MailboxJson::new(&i));
        let mut expected = vec![
            "name",
            "messages",
            "bytes",
            "max_msgs",
            "max_bytes",
            "max_msg_size",
            "mode",
            "owner_uid",
            "owner_gid",
            "creator_uid",
            "creator_gid",
            "durable",
            "created_at",
            "changed_at",
            "last_send",
            "last_recv",
            "total_sent",
            "total_received",
            "waiting_receivers",
            "waiting_senders",
            "unacked",
            "max_deliveries",
            "dead_letter",
            "dead_lettered",
            "dropped",
            "default_ttl_ms",
            "expired",
            "delayed",
            "timers",
            "bindings",
            "serial",
        ];
        expected.sort_unstable();
        assert_eq!(keys(&v), expected);
        assert_eq!(v["bindings"], serde_json::json!(["orders.>"]));
        assert_eq!(v["name"], "jobs");
        assert_eq!(v["mode"], "0660");
        assert_eq!(v["max_bytes"], 64 << 20);
        assert_eq!(v["durable"], false);
        assert_eq!(v["created_at"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            v["last_send"],
            serde_json::json!({"at": "1970-01-01T00:00:02.000000000Z", "pid": 77})
        );
        assert_eq!(v["last_recv"], Value::Null);
        assert_eq!(v["waiting_receivers"], 1);
        assert_eq!(v["unacked"], 0);
    }

    #[test]
    fn human_forms() {
        let mut out = Vec::new();
        write_mailbox_table(&mut out, &[info()], Style::PLAIN).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  MESSAGES  BYTES  MODE  OWNER  DURABLE\n\
             jobs  3         120    0660  1000   no\n"
        );
        let mut out = Vec::new();
        write_mailbox_human(&mut out, &info()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("name:              jobs\n"), "{text}");
        assert!(text.contains("mode:              0660\n"), "{text}");
        assert!(
            text.contains("max_bytes:         67108864 (64 MiB)\n"),
            "{text}"
        );
        assert!(text.contains("last_recv:         never\n"), "{text}");
        assert!(text.contains("by pid 77\n"), "{text}");
        assert!(text.contains("durable:           no (memory: gone when the daemon stops)\n"));
        assert!(text.contains("max_deliveries:    no limit\n"), "{text}");
        assert!(text.contains("bindings:          orders.>\n"), "{text}");
        assert_eq!(text.lines().count(), 30);
    }

    fn daemon_status() -> DaemonStatus {
        DaemonStatus {
            version: "0.1.0".into(),
            pid: 10,
            uptime_ms: 3_723_456,
            connections: 2,
            mailboxes: 1,
            messages: 3,
            bytes: 120,
            users: vec![UidUsage {
                uid: 1000,
                connections: 2,
                mailboxes: 1,
                queued_bytes: 1536,
                max_connections: Some(256),
                max_mailboxes: Some(1000),
                max_queued_bytes: Some(64 << 20),
                max_in_flight: None,
            }],
        }
    }

    #[test]
    fn status_forms() {
        let s = daemon_status();
        let status = StatusJson::new(&s, Path::new("/run/ipcd/ipcd.sock"));
        let v = json(&status);
        assert_eq!(v["uptime"], "1h 2m 3s");
        assert_eq!(v["uptime_ms"], 3_723_456);
        assert_eq!(
            v["users"],
            serde_json::json!([{
                "uid": 1000, "connections": 2, "mailboxes": 1, "queued_bytes": 1536,
                "max_connections": 256, "max_mailboxes": 1000,
                "max_queued_bytes": 64 << 20, "max_in_flight": null
            }])
        );
        let mut out = Vec::new();
        write_status_human(&mut out, &status, Style::PLAIN).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("uptime:      1h 2m 3s\n"), "{text}");
        assert!(
            text.ends_with(
                "UID   CONNECTIONS  MAILBOXES  QUEUED          MAX-IN-FLIGHT\n\
                 1000  2/256        1/1000     1.5 KiB/64 MiB  -\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_for_people_in_full() {
        let s = daemon_status();
        let status = StatusJson::new(&s, Path::new("/run/ipcd/ipcd.sock"));
        let mut out = Vec::new();
        write_status_human(&mut out, &status, Style::PLAIN).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "version:     0.1.0\n\
             pid:         10\n\
             uptime:      1h 2m 3s\n\
             socket:      /run/ipcd/ipcd.sock\n\
             connections: 2\n\
             mailboxes:   1\n\
             messages:    3\n\
             bytes:       120\n\
             \n\
             UID   CONNECTIONS  MAILBOXES  QUEUED          MAX-IN-FLIGHT\n\
             1000  2/256        1/1000     1.5 KiB/64 MiB  -\n"
        );
    }

    /// The style as a terminal with this `NO_COLOR` would get it.
    fn terminal(no_color: Option<&str>) -> Style {
        Style::new(
            true,
            no_color.map(std::ffi::OsStr::new),
            Some(std::ffi::OsStr::new("xterm")),
        )
    }

    #[test]
    fn a_terminal_gets_bold_headers_and_the_same_text() {
        let mut plain = Vec::new();
        write_mailbox_table(&mut plain, &[info()], Style::PLAIN).unwrap();
        let mut bold = Vec::new();
        write_mailbox_table(&mut bold, &[info()], terminal(None)).unwrap();
        let bold = String::from_utf8(bold).unwrap();
        assert_eq!(
            bold,
            "\x1b[1mNAME  MESSAGES  BYTES  MODE  OWNER  DURABLE\x1b[0m\n\
             jobs  3         120    0660  1000   no\n"
        );
        assert_eq!(
            bold.replace("\x1b[1m", "")
                .replace("\x1b[0m", "")
                .as_bytes(),
            plain
        );

        let status = daemon_status();
        let status = StatusJson::new(&status, Path::new("/s"));
        let mut out = Vec::new();
        write_status_human(&mut out, &status, terminal(None)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "\n\x1b[1mUID   CONNECTIONS  MAILBOXES  QUEUED          MAX-IN-FLIGHT\x1b[0m\n"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn no_color_disables_emphasis() {
        for no_color in ["1", "true", "0"] {
            let style = terminal(Some(no_color));
            let mut out = Vec::new();
            write_mailbox_table(&mut out, &[info()], style).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "NAME  MESSAGES  BYTES  MODE  OWNER  DURABLE\n\
                 jobs  3         120    0660  1000   no\n",
                "NO_COLOR={no_color}"
            );
            let status = daemon_status();
            let status = StatusJson::new(&status, Path::new("/s"));
            let mut out = Vec::new();
            write_status_human(&mut out, &status, style).unwrap();
            assert!(!out.contains(&0x1b), "NO_COLOR={no_color}");
        }
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023");
        assert_eq!(bytes(1024), "1024 (1 KiB)");
        assert_eq!(bytes(1536), "1536 (1.5 KiB)");
        assert_eq!(bytes(64 << 20), "67108864 (64 MiB)");
    }
}
