//! The command line as clap sees it: every subcommand, flag and value parser of SPEC §9.
//! Nothing here talks to the daemon; `command/` turns these values into requests.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueHint};
use clap_complete::Shell;
use ipc_proto::Wait;

use crate::parse;

/// Command-line client of the ipcd message broker.
#[derive(Debug, Parser)]
#[command(name = "ipcctl", version, propagate_version = true)]
#[command(
    about = "Command-line client of the ipcd message broker",
    long_about = "Command-line client of the ipcd message broker: create and administer \
                  mailboxes, send and receive messages, and see what the daemon holds.\n\n\
                  Payloads are bytes. Every subcommand takes --socket and --json; with \
                  --json, results are one JSON object per line, whose keys scripts may \
                  rely on. Human output is the same text whether or not standard output \
                  is a terminal; on a terminal, table headers are bold unless NO_COLOR \
                  is set.",
    after_help = exit_codes_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The daemon's socket [default: $IPCD_SOCKET, else the per-user daemon's, else
    /// /run/ipcd/ipcd.sock].
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub socket: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a mailbox.
    Create(CreateArgs),
    /// Send one message, or one per input line with --lines.
    Send(SendArgs),
    /// Receive messages; prints each payload and a newline.
    Recv(RecvArgs),
    /// List the mailboxes you may read or own.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a mailbox's settings and counters.
    Stat(NameArg),
    /// Change a mailbox's mode, owner or limits.
    Set(SetArgs),
    /// Drop every message queued in a mailbox.
    Purge(NameArg),
    /// Remove a mailbox; its waiting senders and receivers fail with "removed".
    #[command(visible_alias = "remove")]
    Rm(NameArg),
    /// Show the daemon's version, uptime and usage.
    Status,
    /// Settle a message leased with `recv --ack`: it leaves the mailbox for good.
    Ack(MessageArg),
    /// Give a message leased with `recv --ack` back, to be redelivered.
    Nack(MessageArg),
    /// Bind a mailbox you own to a topic pattern: what is published on a matching topic
    /// gets a copy in it.
    #[command(after_help = examples(&[
        "ipcctl bind alerts 'sensors.*.temperature'",
        "ipcctl bind audit 'orders.>'",
    ]))]
    Bind(BindArgs),
    /// Undo a bind.
    Unbind(BindArgs),
    /// Publish one message on a topic: a copy goes into every mailbox bound to a matching
    /// pattern. Prints how many took it and how many refused.
    #[command(after_help = examples(&[
        "ipcctl publish sensors.kitchen.temperature 21.5",
        "date | ipcctl publish logs.cron -",
    ]))]
    Publish(PublishArgs),
    /// Print what is published on topics matching PATTERN, as it comes, until
    /// interrupted. A watcher that falls behind loses the oldest messages, and is told
    /// how many on stderr.
    #[command(after_help = examples(&[
        "ipcctl watch 'sensors.>' --verbose",
        "ipcctl watch 'orders.*' --json | jq .payload",
    ]))]
    Watch(WatchArgs),
    /// Send a request to a mailbox and print the reply.
    #[command(after_help = examples(&[
        "ipcctl call calc '6*7' --timeout 2s",
        "ipcctl call --json resolver example.org",
    ]))]
    Call(CallArgs),
    /// Answer the requests sent to a mailbox with `call`: run COMMAND for each, its
    /// payload on standard input, and reply with what it writes to standard output.
    #[command(after_help = examples(&[
        "ipcctl serve calc -- bc",
        "ipcctl serve upper -- tr a-z A-Z",
    ]))]
    Serve(ServeArgs),
    /// Print a shell completion script.
    #[command(after_help = examples(&[
        "source <(ipcctl completions bash)    # for this shell only",
        "ipcctl completions bash > ~/.local/share/bash-completion/completions/ipcctl",
        "ipcctl completions zsh > ~/.zfunc/_ipcctl    # a directory in $fpath",
        "ipcctl completions fish > ~/.config/fish/completions/ipcctl.fish",
    ]))]
    Completions(CompletionsArgs),
    /// Print the ipcctl(1) man page, or write it and one page per subcommand into DIR.
    #[command(after_help = examples(&[
        "ipcctl man | man -l -",
        "ipcctl man /usr/local/share/man/man1",
    ]))]
    Man(ManArgs),
}

/// What starts a subcommand's `after_help`: its examples, one command a line, which the
/// man page shows under EXAMPLES.
pub const EXAMPLES: &str = "Examples:";

/// `Examples:` and the commands, indented.
fn examples(commands: &[&str]) -> String {
    let mut text = EXAMPLES.to_owned();
    for command in commands {
        text.push_str("\n  ");
        text.push_str(command);
    }
    text
}

/// The exit codes of SPEC §9, as `--help` and the man page state them (`report.rs` and
/// `ipc_client::Error::exit_code` decide them).
pub const EXIT_CODES: [(u8, &str); 8] = [
    (0, "success"),
    (1, "other error"),
    (2, "bad usage"),
    (65, "bad data"),
    (66, "no such mailbox"),
    (69, "daemon not reachable"),
    (75, "would block or timed out"),
    (77, "permission denied or quota exceeded"),
];

/// `Exit codes: 0 success, 1 other error, …, 77 permission denied or quota exceeded.`
fn exit_codes_help() -> String {
    let codes: Vec<String> = EXIT_CODES
        .iter()
        .map(|(code, meaning)| format!("{code} {meaning}"))
        .collect();
    format!("Exit codes: {}.", codes.join(", "))
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ipcctl.1 and ipcctl-SUBCOMMAND.1 here (created if missing) instead of
    /// printing ipcctl.1.
    #[arg(value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MessageArg {
    /// The mailbox.
    pub name: String,
    /// The message's id (`id` in `recv --json`).
    pub id: u64,
}

/// What happens to unacknowledged messages, shared by `create` and `set`.
#[derive(Debug, Args)]
pub struct DeliveryArgs {
    /// After this many deliveries without an ack, a message goes to the dead-letter
    /// mailbox (or is dropped and counted); 0 is no limit.
    #[arg(long, value_name = "N")]
    pub max_deliveries: Option<u32>,
    /// The mailbox that gets messages past --max-deliveries, and expired ones.
    #[arg(long, value_name = "M")]
    pub dead_letter: Option<String>,
    /// The TTL of messages sent without --ttl (0 for none).
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub default_ttl: Option<Duration>,
}

impl DeliveryArgs {
    pub fn changes(&self, clear: bool) -> Result<ipc_proto::DeliveryChanges, ipc_proto::NameError> {
        Ok(ipc_proto::DeliveryChanges {
            max_deliveries: self.max_deliveries,
            dead_letter: self
                .dead_letter
                .as_deref()
                .map(ipc_proto::MailboxName::new)
                .transpose()?,
            clear_dead_letter: clear,
            default_ttl_ms: self.default_ttl.map(millis),
        })
    }
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The mailbox.
    pub name: String,
}

/// Limits shared by `create` and `set`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Most messages the mailbox holds.
    #[arg(long, value_name = "N")]
    pub max_msgs: Option<u64>,
    /// Most payload bytes the mailbox holds (K, M, G suffixes are binary multiples).
    #[arg(long, value_name = "N", value_parser = parse::size)]
    pub max_bytes: Option<u64>,
    /// Largest payload one message may have (K, M, G suffixes are binary multiples).
    #[arg(long, value_name = "N", value_parser = parse::size)]
    pub max_msg_size: Option<u64>,
}

impl LimitArgs {
    pub fn changes(&self) -> ipc_proto::LimitChanges {
        ipc_proto::LimitChanges {
            max_msgs: self.max_msgs,
            max_bytes: self.max_bytes,
            max_msg_size: self.max_msg_size,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The mailbox: 1–255 bytes of letters, digits and . _ / -
    pub name: String,
    /// Permission bits in octal, as for chmod [default: 600].
    #[arg(long, value_name = "MODE", value_parser = parse::mode)]
    pub mode: Option<u32>,
    /// Keep its messages across daemon restarts and crashes.
    #[arg(long)]
    pub durable: bool,
    /// When a durable mailbox's messages reach the disk before a send is answered:
    /// always (synced; concurrent sends share a sync), interval=MS (written, synced
    /// within MS), never (written).
    #[arg(long, value_name = "POLICY", requires = "durable")]
    pub fsync: Option<ipc_client::Fsync>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Succeed, changing nothing, if the mailbox exists already.
    #[arg(long)]
    pub exist_ok: bool,
}

/// `--nowait` / `--timeout`, shared by `send` and `recv`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Fail at once (exit 75) instead of waiting.
    #[arg(long, conflicts_with = "timeout")]
    pub nowait: bool,
    /// Wait at most this long (500ms, 2s, 1m; a bare number is seconds), then fail with
    /// exit 75.
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub timeout: Option<Duration>,
}

impl WaitArgs {
    pub fn wait(&self) -> Wait {
        match (self.nowait, self.timeout) {
            (true, _) => Wait::NoWait,
            (false, Some(d)) => Wait::timeout(d),
            (false, None) => Wait::Forever,
        }
    }
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The mailbox.
    pub name: String,
    /// The payload; `-` or nothing reads standard input (when it is not a terminal).
    #[arg(value_name = "DATA|-", conflicts_with = "file")]
    pub data: Option<OsString>,
    /// The message type (SysV mtype), at least 1.
    #[arg(long = "type", value_name = "N", default_value_t = 1, value_parser = parse::send_type)]
    pub mtype: i64,
    /// Read the payload from this file.
    #[arg(long, value_name = "F", value_hint = ValueHint::FilePath)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Ask the receiver to answer to this mailbox.
    #[arg(long, value_name = "M")]
    pub reply_to: Option<String>,
    /// Ties a reply to its request.
    #[arg(long, value_name = "N")]
    pub correlation_id: Option<u64>,
    /// What the payload is, e.g. application/json.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Send one message per input line (the newline is not sent), pipelined.
    #[arg(long)]
    pub lines: bool,
    /// Expire the message if it is not delivered within DUR (to the dead-letter mailbox,
    /// or dropped and counted).
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub ttl: Option<Duration>,
    /// Keep the message invisible to receivers for DUR (delayed delivery).
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub delay: Option<Duration>,
}

/// Milliseconds for the wire, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    /// The mailbox.
    pub name: String,
    /// Which type to take, as msgrcv(2): 0 any, N the oldest of type N, -N the oldest of
    /// the lowest type ≤ N (a priority queue).
    #[arg(
        long = "type",
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub mtype: i64,
    /// With a positive --type: take the oldest message of any other type.
    #[arg(long, requires = "mtype")]
    pub except: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Receive N messages (pipelined), printed in order.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "follow")]
    pub count: Option<u64>,
    /// Keep receiving until an error or until the reader of the output goes away.
    #[arg(long)]
    pub follow: bool,
    /// Print a copy and leave the message in the mailbox.
    #[arg(long, conflicts_with_all = ["count", "follow"])]
    pub peek: bool,
    /// Print payload bytes only, without a newline after each.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Leave the settling to you: the message stays in the mailbox, hidden, until
    /// `ipcctl ack NAME ID` (or `nack`), or until the lease ends and it is redelivered.
    /// The lease outlives this command. (Without --ack, each message is acknowledged as
    /// soon as it is written, and one taken but not written goes back to the mailbox.)
    #[arg(long, conflicts_with = "peek")]
    pub ack: bool,
    /// How long a message stays leased: until acked with --ack, else until written. One
    /// written after its lease ran out (a slow reader) may be delivered again.
    #[arg(long, value_name = "DUR", value_parser = parse::duration, default_value = "30s",
          conflicts_with = "peek")]
    pub lease: Duration,
    /// Run CMD (with sh -c) for each message, its payload on standard input and
    /// IPC_MAILBOX, IPC_MESSAGE_ID, IPC_TYPE set; ack if it exits 0, nack otherwise.
    #[arg(long, value_name = "CMD", value_hint = ValueHint::CommandString, requires = "ack",
          conflicts_with_all = ["raw", "json"])]
    pub exec: Option<String>,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    /// The mailbox.
    pub name: String,
    /// `.`-separated segments; `*` matches any one segment, `>` (last) one or more.
    pub pattern: String,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic: `.`-separated segments of letters, digits and _ : / -
    pub topic: String,
    /// The payload; `-` or nothing reads standard input (when it is not a terminal).
    #[arg(value_name = "DATA|-", conflicts_with = "file")]
    pub data: Option<OsString>,
    /// The message type (SysV mtype) of every copy, at least 1.
    #[arg(long = "type", value_name = "N", default_value_t = 1, value_parser = parse::send_type)]
    pub mtype: i64,
    /// Read the payload from this file.
    #[arg(long, value_name = "F", value_hint = ValueHint::FilePath)]
    pub file: Option<PathBuf>,
    /// What the payload is, e.g. application/json.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Expire each copy if it is not delivered within DUR.
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The topic pattern: `*` matches any one segment, `>` (last) one or more.
    pub pattern: String,
    /// Print each message's topic before its payload.
    #[arg(short, long, conflicts_with = "json")]
    pub verbose: bool,
    /// Stop after N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The mailbox the responder receives from.
    pub name: String,
    /// The request's payload; `-` or nothing reads standard input (when it is not a
    /// terminal).
    #[arg(value_name = "DATA|-", conflicts_with = "file")]
    pub data: Option<OsString>,
    /// Read the payload from this file.
    #[arg(long, value_name = "F", value_hint = ValueHint::FilePath)]
    pub file: Option<PathBuf>,
    /// How long to wait for the reply; then fail with exit 75.
    #[arg(long, value_name = "DUR", value_parser = parse::duration, default_value = "30s")]
    pub timeout: Duration,
    /// The request's message type (SysV mtype), at least 1.
    #[arg(long = "type", value_name = "N", default_value_t = 1, value_parser = parse::send_type)]
    pub mtype: i64,
    /// What the payload is, e.g. application/json.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Print the reply's payload bytes only, without a newline.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The mailbox to take requests from.
    pub name: String,
    /// Stop after answering N requests.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// The command to run for each request, and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["mode", "owner", "max_msgs", "max_bytes", "max_msg_size", "max_deliveries",
               "dead_letter", "no_dead_letter", "default_ttl"])
))]
pub struct SetArgs {
    /// The mailbox.
    pub name: String,
    /// New permission bits in octal, as for chmod.
    #[arg(long, value_name = "MODE", value_parser = parse::mode)]
    pub mode: Option<u32>,
    /// New owner as numeric UID, UID:GID or :GID (giving a mailbox away needs root).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse::owner)]
    pub owner: Option<parse::Owner>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Stop dead-lettering: messages past --max-deliveries are dropped and counted.
    #[arg(long, conflicts_with = "dead_letter")]
    pub no_dead_letter: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ipcctl").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_types_and_global_flags() {
        let cli = parse(&["recv", "jobs", "--type", "-5", "--json"]).unwrap();
        match cli.command {
            Command::Recv(r) => assert_eq!(r.mtype, -5),
            other => panic!("{other:?}"),
        }
        assert!(cli.global.json);
        let cli = parse(&["--json", "--socket", "/s", "ls"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.socket, Some(PathBuf::from("/s")));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["send", "q", "x", "--type", "0"][..],
            &["send", "q", "x", "--nowait", "--timeout", "1s"],
            &["send", "q", "x", "--file", "f"],
            &["recv", "q", "--count", "2", "--follow"],
            &["recv", "q", "--peek", "--count", "2"],
            &["recv", "q", "--raw", "--json"],
            &["recv", "q", "--count", "0"],
            &["recv", "q", "--except"],
            &["create", "q", "--mode", "1777"],
            &["set", "q"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn help_states_the_exit_codes() {
        assert_eq!(
            exit_codes_help(),
            "Exit codes: 0 success, 1 other error, 2 bad usage, 65 bad data, \
             66 no such mailbox, 69 daemon not reachable, 75 would block or timed out, \
             77 permission denied or quota exceeded."
        );
    }

    #[test]
    fn a_subcommand_epilogue_is_examples() {
        for sub in Cli::command().get_subcommands() {
            if let Some(help) = sub.get_after_help() {
                let help = help.to_string();
                assert!(
                    help.starts_with("Examples:\n  "),
                    "{}: {help}",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn completions_and_man() {
        match parse(&["completions", "zsh"]).unwrap().command {
            Command::Completions(c) => assert_eq!(c.shell, Shell::Zsh),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["completions", "tcsh"]).is_err());
        assert!(parse(&["completions"]).is_err());
        match parse(&["man"]).unwrap().command {
            Command::Man(m) => assert_eq!(m.dir, None),
            other => panic!("{other:?}"),
        }
        match parse(&["man", "out/man1"]).unwrap().command {
            Command::Man(m) => assert_eq!(m.dir, Some(PathBuf::from("out/man1"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_flags() {
        let wait = |args: &[&str]| match parse(args).unwrap().command {
            Command::Recv(r) => r.wait.wait(),
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(&["recv", "q"]), Wait::Forever);
        assert_eq!(wait(&["recv", "q", "--nowait"]), Wait::NoWait);
        assert_eq!(
            wait(&["recv", "q", "--timeout", "500ms"]),
            Wait::TimeoutMs(500)
        );
    }
}
