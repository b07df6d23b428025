//! `ipcctl recv --ack --exec CMD`: lease one message at a time, run CMD on it, and
//! settle it by CMD's exit status — ack on 0, nack otherwise — so a failed job is
//! redelivered rather than lost. With `--follow` it also rides out a daemon restart: it
//! reconnects and goes on; a message whose settling the restart interrupted comes back
//! (leases do not outlive the daemon), so it may run again — at least once.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use ipc_client::{BlockingClient, Error, ReconnectPolicy};
use ipc_proto::{MailboxName, Request};

/// Runs `command` for `count` messages (1 by default), or for ever with `follow`.
/// Returns an error naming how many ran if a command could not be started or a
/// receive failed; a command's own failure is a nack, not an error.
pub fn run(
    client: &mut BlockingClient,
    mailbox: &MailboxName,
    request: &Request,
    command: &str,
    count: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let limit = if follow {
        None
    } else {
        Some(count.unwrap_or(1))
    };
    let policy = ReconnectPolicy::default();
    // With --follow, a lost connection is made again; without, it ends the command.
    let recover = |client: &mut BlockingClient, lost: Error| -> anyhow::Result<()> {
        if !follow || !lost.is_connection_lost() {
            return Err(lost.into());
        }
        client.reconnect(&policy)?;
        eprintln!(
            "ipcctl: {lost}; reconnected to {}",
            client.socket_path().display()
        );
        Ok(())
    };
    let (mut done, mut failed) = (0u64, 0u64);
    while limit.is_none_or(|n| done < n) {
        let message = match client.request(request).and_then(ipc_client::reply::message) {
            Ok(message) => message,
            Err(e) => {
                recover(client, e)
                    .with_context(|| format!("after {done} messages ({failed} failed)"))?;
                continue;
            }
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("IPC_MAILBOX", mailbox.as_str())
            .env("IPC_MESSAGE_ID", message.id.to_string())
            .env("IPC_TYPE", message.mtype.to_string())
            .stdin(Stdio::piped())
            .spawn();
        let status = match child.as_mut() {
            Ok(child) => {
                let mut stdin = child.stdin.take().expect("piped");
                // A command that does not read its input is not an error.
                let _ = stdin.write_all(&message.payload);
                drop(stdin);
                child.wait().ok()
            }
            Err(_) => None,
        };
        let succeeded = status.is_some_and(|s| s.success());
        let settled = if succeeded {
            client.ack(mailbox.as_str(), message.id)
        } else {
            failed += 1;
            client.nack(mailbox.as_str(), message.id)
        };
        if let Err(e) = settled {
            let gone = follow && (e.is_connection_lost() || is_not_leased(&e));
            if !gone {
                return Err(e.into());
            }
            eprintln!(
                "ipcctl: message {} could not be settled ({e}); it will be delivered again",
                message.id
            );
            if e.is_connection_lost() {
                recover(client, e)?;
            }
        }
        done += 1;
        if let Err(e) = child {
            return Err(anyhow::Error::from(e).context(format!(
                "cannot run {command:?}; message {} was nacked",
                message.id
            )));
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {done} commands failed; their messages were nacked");
    }
    Ok(())
}

/// The daemon no longer holds the lease (it restarted): the message is back in its
/// mailbox.
fn is_not_leased(e: &Error) -> bool {
    matches!(e, Error::Server { code, .. } if *code == ipc_proto::ErrorCode::NotLeased)
}
