//! How a failure leaves the program: one line on stderr saying what happened (and, where
//! it helps, what to do), and the exit code of SPEC §9. The codes of daemon and library
//! errors come from [`ipc_client::Error::exit_code`], so there is one table, not two.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// A misuse clap cannot see, such as a missing payload with a terminal on stdin (exit 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Exit status for a usage error, as clap uses.
const USAGE: u8 = 2;
/// Exit status for everything without a more precise code.
const OTHER: u8 = 1;

/// Prints `err` and gives the exit code for it. A closed standard output is not a
/// failure: the reader has what it wanted (`ipcctl recv --follow | head`).
pub fn report(err: &anyhow::Error) -> ExitCode {
    if client_error(err).is_none() && is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(io::stderr(), "ipcctl: {}", describe(err));
    ExitCode::from(exit_code(err))
}

fn client_error(err: &anyhow::Error) -> Option<&ipc_client::Error> {
    err.chain()
        .find_map(|e| e.downcast_ref::<ipc_client::Error>())
}

/// Socket errors always arrive wrapped in an `ipc_client::Error`, so a bare broken pipe
/// can only be standard output.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = client_error(err) {
        return e.exit_code();
    }
    if err.chain().any(|e| e.is::<Usage>()) {
        return USAGE;
    }
    OTHER
}

/// The error and its causes on one line, each cause once (several errors already repeat
/// their source in their own message), then a hint.
pub fn describe(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    if let Some(hint) = client_error(err).and_then(hint) {
        line.push_str("; ");
        line.push_str(hint);
    }
    // One line, whatever the messages held.
    line.replace(['\n', '\r'], " ")
}

fn hint(e: &ipc_client::Error) -> Option<&'static str> {
    use ipc_client::Error;
    match e {
        Error::NotReachable { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
            Some("you may not use that socket; ask its owner for access, or use your own daemon")
        }
        Error::NotReachable { .. } => Some(
            "is ipcd running? start it with `ipcd`, or point IPCD_SOCKET or --socket at its socket",
        ),
        Error::Disconnected(_) => Some("did ipcd stop? `ipcctl status` tells whether it runs"),
        Error::NoSuchMailbox(_) => Some("`ipcctl ls` lists the mailboxes you may see"),
        Error::Exists(_) => Some("use --exist-ok to accept an existing mailbox"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use ipc_client::Error;

    fn not_reachable(kind: io::ErrorKind) -> anyhow::Error {
        Error::NotReachable {
            path: "/run/ipcd/ipcd.sock".into(),
            source: kind.into(),
        }
        .into()
    }

    #[test]
    fn codes_follow_the_table() {
        assert_eq!(exit_code(&not_reachable(io::ErrorKind::NotFound)), 69);
        let e: anyhow::Error = Error::WouldBlock("empty".into()).into();
        assert_eq!(exit_code(&e.context("received 3 of 5 messages")), 75);
        let e: anyhow::Error = Error::NoSuchMailbox("no mailbox named x".into()).into();
        assert_eq!(exit_code(&e), 66);
        let e: anyhow::Error = ipc_proto::MailboxName::new("/x")
            .map_err(Error::from)
            .unwrap_err()
            .into();
        assert_eq!(exit_code(&e), 65);
        assert_eq!(exit_code(&Usage("no payload".into()).into()), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 1);
    }

    #[test]
    fn one_line_with_each_cause_once_and_a_hint() {
        let text = describe(&not_reachable(io::ErrorKind::NotFound));
        assert!(
            text.starts_with("cannot reach ipcd at /run/ipcd/ipcd.sock: "),
            "{text}"
        );
        assert_eq!(text.matches("not found").count(), 1, "{text}");
        assert!(text.contains("is ipcd running?"), "{text}");
        let e: anyhow::Error = Error::TimedOut("timed out\nafter 2s".into()).into();
        let text = describe(&e.context("line 7"));
        assert_eq!(text, "line 7: timed out after 2s");
    }

    #[test]
    fn broken_stdout_is_success_but_a_broken_socket_is_not() {
        let e: anyhow::Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(client_error(&e).is_none() && is_broken_pipe(&e));
        let e: anyhow::Error = Error::Disconnected(io::ErrorKind::BrokenPipe.into()).into();
        assert_eq!(report(&e), ExitCode::from(69));
    }

    #[test]
    fn reading_a_file_fails_with_context() {
        let e = std::fs::read("/nonexistent/ipcctl-test")
            .context("cannot read /nonexistent/ipcctl-test")
            .unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert!(describe(&e).starts_with("cannot read /nonexistent/ipcctl-test: "));
    }
}
