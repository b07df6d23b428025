//! The configuration file (`/etc/ipcd/ipcd.toml`, SPEC §8): its TOML shape, and its
//! translation into a [`Config`]. Every key is optional (the defaults are
//! [`Config::default`]'s), and unknown keys are errors, so a typo never passes silently.
//! Errors name the file, line and key. `ipcd --check-config FILE` runs only this.
//!
//! The commented example in `systemd/ipcd.toml` is parsed by a test, so it cannot rot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipc_proto::{Fsync, MailboxName, TopicPattern, units};
use serde::Deserialize;

use crate::config::{Config, DeclaredMailbox, Limits, Quota};

/// Where the system daemon looks for its configuration.
pub const SYSTEM_CONFIG: &str = "/etc/ipcd/ipcd.toml";

/// A problem with a configuration file, as one line: `FILE:LINE: what`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Reads and checks the configuration in `path`, on top of the defaults.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    parse(&text, path)
}

/// Checks the configuration `text` (read from `path`, for messages).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map_or_else(String::new, |l| format!(":{l}"));
        ConfigError(format!(
            "{}{at}: {}",
            path.display(),
            e.message().trim().replace('\n', " ")
        ))
    })?;
    file.into_config()
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// A byte count: a number, or a string with a binary suffix (`"64M"`, `"1GiB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(Text),
}

/// A duration as text (`"10s"`, `"500ms"`, `"1h"`).
type Text = String;

impl Size {
    fn bytes(&self, key: &str) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => units::size(t.trim()).map_err(|e| format!("{key}: {e}")),
        }
    }
}

fn duration(text: &str, key: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{key}: {text:?} is not a duration such as \"10s\" or \"500ms\" ({e})")
    })
}

fn mode(text: &str, key: &str) -> Result<u32, String> {
    units::mode(text.trim()).map_err(|e| format!("{key}: {e}"))
}

fn fsync(text: &str, key: &str) -> Result<Fsync, String> {
    text.parse().map_err(|e| format!("{key}: {e}"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default)]
    ceilings: LimitsFile,
    #[serde(default)]
    quota: QuotaTable,
    #[serde(default)]
    connections: ConnectionsFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    memory: MemoryFile,
    #[serde(default)]
    topics: TopicsFile,
    #[serde(default, rename = "mailbox")]
    mailboxes: Vec<MailboxFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_msgs: Option<u64>,
    max_bytes: Option<Size>,
    max_msg_size: Option<Size>,
}

impl LimitsFile {
    fn apply(&self, base: Limits, key: &str) -> Result<Limits, String> {
        Ok(Limits {
            max_msgs: self.max_msgs.unwrap_or(base.max_msgs),
            max_bytes: match &self.max_bytes {
                Some(s) => s.bytes(&format!("{key}.max_bytes"))?,
                None => base.max_bytes,
            },
            max_msg_size: match &self.max_msg_size {
                Some(s) => s.bytes(&format!("{key}.max_msg_size"))?,
                None => base.max_msg_size,
            },
        })
    }
}

/// What a new mailbox gets when its creator names nothing. (No `serde(flatten)` in
/// these tables: it would let unknown keys through.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    max_msgs: Option<u64>,
    max_bytes: Option<Size>,
    max_msg_size: Option<Size>,
    mode: Option<String>,
    fsync: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    connections: Option<u64>,
    mailboxes: Option<u64>,
    queued_bytes: Option<Size>,
    in_flight: Option<u64>,
    handshakes: Option<u64>,
}

impl QuotaFile {
    fn apply(&self, base: Quota, key: &str) -> Result<Quota, String> {
        Ok(Quota {
            connections: self.connections.unwrap_or(base.connections),
            mailboxes: self.mailboxes.unwrap_or(base.mailboxes),
            queued_bytes: match &self.queued_bytes {
                Some(s) => s.bytes(&format!("{key}.queued_bytes"))?,
                None => base.queued_bytes,
            },
            in_flight: self.in_flight.unwrap_or(base.in_flight),
            handshakes: self.handshakes.unwrap_or(base.handshakes),
        })
    }
}

/// `[quota]` for every non-root uid, and `[quota.uid.N]` for uid N.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaTable {
    connections: Option<u64>,
    mailboxes: Option<u64>,
    queued_bytes: Option<Size>,
    in_flight: Option<u64>,
    handshakes: Option<u64>,
    /// What each queued message costs beyond its payload and headers (every uid).
    message_overhead: Option<Size>,
    #[serde(default)]
    uid: BTreeMap<String, QuotaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionsFile {
    max_pending_output: Option<Size>,
    reply_allowance: Option<Size>,
    max_batch_bytes: Option<Size>,
    max_memfds: Option<u64>,
    max_queued_replies: Option<usize>,
    handshake_timeout: Option<Text>,
    max_handshakes: Option<u64>,
    shutdown_timeout: Option<Text>,
    max_lease: Option<Text>,
    max_ttl: Option<Text>,
    max_delay: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    segment_bytes: Option<Size>,
    dead_letter_backlog: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    max_bindings: Option<u64>,
    binding_overhead: Option<Size>,
    subscription_msgs: Option<u64>,
    subscription_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryFile {
    trim_after: Option<Size>,
}

/// `[[mailbox]]`: a mailbox that exists whenever the daemon runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxFile {
    name: String,
    mode: Option<String>,
    owner: Option<u32>,
    group: Option<u32>,
    #[serde(default)]
    durable: bool,
    fsync: Option<String>,
    max_msgs: Option<u64>,
    max_bytes: Option<Size>,
    max_msg_size: Option<Size>,
    max_deliveries: Option<u32>,
    dead_letter: Option<String>,
    default_ttl: Option<Text>,
    /// Topic patterns to bind it to.
    #[serde(default)]
    bind: Vec<String>,
}

impl File {
    fn into_config(self) -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(socket) = self.socket {
            config.socket = Some(socket);
        }
        if let Some(dir) = self.state_dir {
            config.state_dir = dir;
        }
        let d = &self.defaults;
        config.default_limits = LimitsFile {
            max_msgs: d.max_msgs,
            max_bytes: d.max_bytes.clone(),
            max_msg_size: d.max_msg_size.clone(),
        }
        .apply(config.default_limits, "defaults")?;
        if let Some(m) = &self.defaults.mode {
            config.default_mode = mode(m, "defaults.mode")?;
        }
        if let Some(f) = &self.defaults.fsync {
            config.default_fsync = fsync(f, "defaults.fsync")?;
        }
        config.ceilings = self.ceilings.apply(config.ceilings, "ceilings")?;
        for (what, default, ceiling) in [
            (
                "max_msgs",
                config.default_limits.max_msgs,
                config.ceilings.max_msgs,
            ),
            (
                "max_bytes",
                config.default_limits.max_bytes,
                config.ceilings.max_bytes,
            ),
            (
                "max_msg_size",
                config.default_limits.max_msg_size,
                config.ceilings.max_msg_size,
            ),
        ] {
            if default > ceiling {
                return Err(format!(
                    "defaults.{what} ({default}) is above ceilings.{what} ({ceiling})"
                ));
            }
        }
        let q = &self.quota;
        config.quota = QuotaFile {
            connections: q.connections,
            mailboxes: q.mailboxes,
            queued_bytes: q.queued_bytes.clone(),
            in_flight: q.in_flight,
            handshakes: q.handshakes,
        }
        .apply(config.quota, "quota")?;
        if let Some(s) = &q.message_overhead {
            config.message_overhead = s.bytes("quota.message_overhead")?;
        }
        for (uid, quota) in &self.quota.uid {
            let key = format!("quota.uid.{uid}");
            let n: u32 = uid
                .parse()
                .map_err(|_| format!("{key}: {uid:?} is not a numeric uid"))?;
            // An override starts from the uid's quota without it (root: unlimited).
            let base = if n == 0 {
                Quota::UNLIMITED
            } else {
                config.quota
            };
            config.quota_overrides.insert(n, quota.apply(base, &key)?);
        }
        let c = &self.connections;
        if let Some(s) = &c.max_pending_output {
            config.max_pending_output = s.bytes("connections.max_pending_output")?;
        }
        if let Some(s) = &c.reply_allowance {
            config.reply_allowance = s.bytes("connections.reply_allowance")?;
        }
        if let Some(s) = &c.max_batch_bytes {
            config.max_batch_bytes = s.bytes("connections.max_batch_bytes")?;
        }
        if let Some(n) = c.max_memfds {
            config.max_memfds = n;
        }
        if let Some(n) = c.max_queued_replies {
            config.max_queued_replies = n.max(1);
        }
        if let Some(n) = c.max_handshakes {
            config.max_handshakes = n.max(1);
        }
        for (text, key, slot) in [
            (
                &c.handshake_timeout,
                "handshake_timeout",
                &mut config.handshake_timeout,
            ),
            (
                &c.shutdown_timeout,
                "shutdown_timeout",
                &mut config.shutdown_timeout,
            ),
            (&c.max_lease, "max_lease", &mut config.max_lease),
            (&c.max_ttl, "max_ttl", &mut config.max_ttl),
            (&c.max_delay, "max_delay", &mut config.max_delay),
        ] {
            if let Some(text) = text {
                *slot = duration(text, &format!("connections.{key}"))?;
            }
        }
        if let Some(s) = &self.store.segment_bytes {
            config.segment_bytes = s.bytes("store.segment_bytes")?.max(64 * 1024);
        }
        if let Some(n) = self.store.dead_letter_backlog {
            config.dead_letter_backlog = n.max(1);
        }
        if let Some(s) = &self.memory.trim_after {
            config.trim_after = s.bytes("memory.trim_after")?;
        }
        let t = &self.topics;
        if let Some(n) = t.max_bindings {
            config.max_bindings = n.max(1);
        }
        if let Some(s) = &t.binding_overhead {
            config.binding_overhead = s.bytes("topics.binding_overhead")?;
        }
        if let Some(n) = t.subscription_msgs {
            config.subscription_limits.max_msgs = n.max(1);
        }
        if let Some(s) = &t.subscription_bytes {
            let bytes = s.bytes("topics.subscription_bytes")?.max(1);
            config.subscription_limits.max_bytes = bytes;
            config.subscription_limits.max_msg_size = bytes.min(config.ceilings.max_msg_size);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.mailboxes.into_iter().enumerate() {
            let key = format!("mailbox[{i}] ({})", m.name);
            let name = MailboxName::new(m.name.clone()).map_err(|e| format!("{key}: {e}"))?;
            if name.as_str().starts_with(ipc_proto::PRIVATE_PREFIX) {
                return Err(format!(
                    "{key}: names under {} are the daemon's own private mailboxes",
                    ipc_proto::PRIVATE_PREFIX
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("{key}: declared twice"));
            }
            let limits = LimitsFile {
                max_msgs: m.max_msgs,
                max_bytes: m.max_bytes.clone(),
                max_msg_size: m.max_msg_size.clone(),
            }
            .apply(config.default_limits, &key)?;
            for (what, value, ceiling) in [
                ("max_msgs", limits.max_msgs, config.ceilings.max_msgs),
                ("max_bytes", limits.max_bytes, config.ceilings.max_bytes),
                (
                    "max_msg_size",
                    limits.max_msg_size,
                    config.ceilings.max_msg_size,
                ),
            ] {
                if value == 0 || value > ceiling {
                    return Err(format!(
                        "{key}.{what}: {value} is out of range (1 to the ceiling {ceiling})"
                    ));
                }
            }
            let fsync = match (&m.fsync, m.durable) {
                (Some(_), false) => {
                    return Err(format!("{key}.fsync: only a durable mailbox has one"));
                }
                (Some(f), true) => Some(fsync(f, &format!("{key}.fsync"))?),
                (None, true) => Some(config.default_fsync),
                (None, false) => None,
            };
            config.declared.push(DeclaredMailbox {
                name,
                mode: match &m.mode {
                    Some(text) => mode(text, &format!("{key}.mode"))?,
                    None => config.default_mode,
                },
                owner: m.owner,
                group: m.group,
                fsync,
                limits,
                max_deliveries: m.max_deliveries.unwrap_or(0),
                dead_letter: m
                    .dead_letter
                    .map(MailboxName::new)
                    .transpose()
                    .map_err(|e| format!("{key}.dead_letter: {e}"))?,
                bindings: m
                    .bind
                    .iter()
                    .map(|p| {
                        TopicPattern::new(p.as_str()).map_err(|e| format!("{key}.bind: {p:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
                default_ttl: m
                    .default_ttl
                    .map(|t| duration(&t, &format!("{key}.default_ttl")))
                    .transpose()?,
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        parse(text, Path::new("ipcd.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = check("").unwrap();
        let defaults = Config::default();
        assert_eq!(config.quota, defaults.quota);
        assert_eq!(config.default_limits, defaults.default_limits);
        assert!(config.declared.is_empty());
    }

    #[test]
    fn every_section_is_read() {
        let config = check(
            r#"
            socket = "/run/x/ipcd.sock"
            state_dir = "/var/lib/x"
            [defaults]
            max_msgs = 500
            max_bytes = "8M"
            mode = "0640"
            fsync = "interval=100"
            [ceilings]
            max_msg_size = "16MiB"
            [quota]
            connections = 10
            queued_bytes = "1G"
            message_overhead = 512
            [quota.uid.1000]
            mailboxes = 3
            [quota.uid.0]
            connections = 5000
            [connections]
            max_pending_output = "32M"
            handshake_timeout = "2s"
            [store]
            segment_bytes = "1M"
            dead_letter_backlog = 10
            [[mailbox]]
            name = "jobs"
            mode = "0660"
            owner = 1000
            group = 100
            durable = true
            max_msgs = 50
            max_deliveries = 3
            dead_letter = "jobs.dead"
            default_ttl = "1h"
            bind = ["jobs.>", "builds.*.done"]
            [topics]
            max_bindings = 8
            subscription_msgs = 100
            subscription_bytes = "1M"
            [[mailbox]]
            name = "jobs.dead"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.socket.as_deref(),
            Some(Path::new("/run/x/ipcd.sock"))
        );
        assert_eq!(config.default_limits.max_msgs, 500);
        assert_eq!(config.default_limits.max_bytes, 8 << 20);
        assert_eq!(config.default_mode, 0o640);
        assert_eq!(config.default_fsync, Fsync::IntervalMs(100));
        assert_eq!(config.ceilings.max_msg_size, 16 << 20);
        assert_eq!(config.quota.connections, 10);
        assert_eq!(config.quota.queued_bytes, 1 << 30);
        assert_eq!(config.quota_for(1000).mailboxes, 3);
        assert_eq!(
            config.quota_for(1000).connections,
            10,
            "the rest from [quota]"
        );
        assert_eq!(config.quota_for(0).connections, 5000);
        assert_eq!(
            config.quota_for(0).queued_bytes,
            u64::MAX,
            "root's base is unlimited"
        );
        assert_eq!(config.handshake_timeout, Duration::from_secs(2));
        assert_eq!(config.segment_bytes, 1 << 20);
        assert_eq!(
            (config.message_overhead, config.dead_letter_backlog),
            (512, 10)
        );
        assert_eq!(config.max_bindings, 8);
        assert_eq!(config.subscription_limits.max_msgs, 100);
        assert_eq!(config.subscription_limits.max_bytes, 1 << 20);
        let jobs = &config.declared[0];
        assert_eq!(
            jobs.bindings,
            [
                TopicPattern::new("jobs.>").unwrap(),
                TopicPattern::new("builds.*.done").unwrap()
            ]
        );
        assert_eq!(
            (jobs.mode, jobs.owner, jobs.group),
            (0o660, Some(1000), Some(100))
        );
        assert_eq!(
            jobs.fsync,
            Some(Fsync::IntervalMs(100)),
            "the default fsync"
        );
        assert_eq!(jobs.limits.max_msgs, 50);
        assert_eq!(jobs.limits.max_bytes, 8 << 20, "the rest from [defaults]");
        assert_eq!(jobs.default_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(config.declared[1].fsync, None);
    }

    #[test]
    fn mistakes_name_the_line_and_the_key() {
        let e = check("[quota]\nconections = 3\n").unwrap_err();
        assert!(e.starts_with("ipcd.toml:2: "), "{e}");
        assert!(e.contains("conections"), "{e}");
        let e = check("[defaults]\nmax_msgs = \"many\"\n").unwrap_err();
        assert!(e.starts_with("ipcd.toml:2: "), "{e}");
        for (text, says) in [
            ("[defaults]\nmode = \"999\"", "defaults.mode"),
            ("[defaults]\nfsync = \"sometimes\"", "defaults.fsync"),
            ("[quota]\nqueued_bytes = \"12MB\"", "quota.queued_bytes"),
            ("[quota.uid.bob]\nmailboxes = 1", "quota.uid.bob"),
            (
                "[defaults]\nmax_msg_size = \"128M\"",
                "above ceilings.max_msg_size",
            ),
            ("[[mailbox]]\nname = \"../x\"", "mailbox[0]"),
            (
                "[[mailbox]]\nname = \"a\"\nfsync = \"never\"",
                "only a durable mailbox",
            ),
            (
                "[[mailbox]]\nname = \"a\"\n[[mailbox]]\nname = \"a\"",
                "declared twice",
            ),
            (
                "[connections]\nmax_lease = \"forever\"",
                "connections.max_lease",
            ),
            ("[defaults]\nmax_msgs = 1\nbogus = 2", "bogus"),
            ("[[mailbox]]\nname = \"a\"\nmax_msg = 2", "max_msg"),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../systemd/ipcd.toml");
        let config = check(example).unwrap();
        assert_eq!(
            config.socket.as_deref(),
            Some(Path::new("/run/ipcd/ipcd.sock"))
        );
    }
}
