//! `ipcctl serve NAME -- COMMAND…`: a responder for `call`. It takes one request at a
//! time on a lease, runs COMMAND with the payload on standard input (and `IPC_MAILBOX`,
//! `IPC_MESSAGE_ID`, `IPC_TYPE`, `IPC_CORRELATION_ID` in its environment), replies with
//! what it wrote to standard output, then acks the request. A command that fails (or
//! cannot start) is answered with a reply marked as a failure (`call` exits 1 with its
//! standard error), so the caller hears of it at once rather than at its timeout. Only
//! calls are answered: a message without a call's reply mailbox in `reply_to` — sent,
//! not called, or naming some other mailbox, which its sender may have no right to
//! write to — is dropped with a note, its command not run. A reply that cannot be
//! delivered (the call gave up, its connection went) is noted and the next request
//! served: one bad request never stops the responder. If `serve` dies mid-request, the
//! lease ends with its connection and the request goes back to the mailbox for
//! another responder.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use ipc_client::{BlockingClient, Error, Message, RecvOptions, SendOptions};

use super::call::FAILED;
use super::{Context, mailbox_name};
use crate::cli::ServeArgs;

/// How long a request stays leased to this responder: long enough for a slow command;
/// past it the request is offered to another responder.
const LEASE: Duration = Duration::from_secs(300);

pub fn run(ctx: &Context, args: &ServeArgs) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    let mut client = ctx.connect()?;
    let mut served = 0u64;
    while args.count.is_none_or(|n| served < n) {
        // Leased to this connection: if it goes before the ack, so does the lease.
        let leased = RecvOptions::default().lease(LEASE, false);
        let request = client.recv(name.as_str(), &leased)?;
        if is_call(&request) {
            let outcome = run_command(&args.command, name.as_str(), &request);
            answer(&request, outcome, &mut client)?;
        } else {
            eprintln!(
                "ipcctl: message {} is no call (its reply_to is not a call's reply mailbox); \
                 dropped unanswered",
                request.id
            );
        }
        match client.ack(name.as_str(), request.id) {
            // Its lease ran out while the command ran: it is back in the mailbox, for
            // another try. Not this responder's failure.
            Err(e @ Error::Server { .. }) => {
                eprintln!("ipcctl: request {} could not be acked: {e}", request.id);
            }
            other => other?,
        }
        served += 1;
    }
    Ok(())
}

/// What the command made of a request: its standard output, or why it failed.
type Outcome = Result<Vec<u8>, String>;

/// Runs `command` with the request's payload on its standard input.
fn run_command(command: &[OsString], mailbox: &str, request: &Message) -> Outcome {
    let (program, args) = command.split_first().expect("clap requires a command");
    let child = Command::new(program)
        .args(args)
        .env("IPC_MAILBOX", mailbox)
        .env("IPC_MESSAGE_ID", request.id.to_string())
        .env("IPC_TYPE", request.mtype.to_string())
        .env(
            "IPC_CORRELATION_ID",
            request
                .headers
                .correlation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {:?}", program.to_string_lossy()));
    let mut child = child.map_err(|e| format!("{e:#}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = request.payload.clone();
    // Written from a thread of its own: a command that writes a lot before it has read
    // all of its input would otherwise wait on us while we wait on it.
    let feeder = std::thread::spawn(move || {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output();
    let _ = feeder.join();
    let output = output.map_err(|e| format!("cannot wait for the command: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let mut why = String::new();
    let _ = output.stderr.as_slice().read_to_string(&mut why);
    Err(format!("{} ({})", why.trim_end(), output.status))
}

/// Whether `request` came from a call: its `reply_to` is a call's reply mailbox, and it
/// carries the correlation id that answers it.
fn is_call(request: &Message) -> bool {
    request.headers.correlation_id.is_some()
        && request
            .headers
            .reply_to
            .as_ref()
            .is_some_and(|to| to.as_str().starts_with(ipc_proto::REPLY_PREFIX))
}

/// Replies to `request` with the command's output, or with its failure marked as such.
/// A reply the daemon refuses (the call gave up, the output is too large) is noted, not
/// fatal; only a lost connection ends the responder.
fn answer(request: &Message, outcome: Outcome, client: &mut BlockingClient) -> anyhow::Result<()> {
    let replied = match outcome {
        Ok(stdout) => client.reply(request, stdout),
        Err(why) => {
            eprintln!("ipcctl: request {} failed: {why}", request.id);
            let mut options = SendOptions::default();
            options.headers.content_type = Some(FAILED.to_owned());
            client.reply_with(request, why.into_bytes(), &options)
        }
    };
    match replied {
        Err(e) if !e.is_connection_lost() => {
            eprintln!(
                "ipcctl: the reply to request {} was refused: {e}",
                request.id
            );
            Ok(())
        }
        other => Ok(other?),
    }
}
