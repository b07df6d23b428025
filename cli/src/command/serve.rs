//! `ipcctl serve NAME -- COMMAND…`: a responder for `call`. It takes one request at a
//! time on a lease, runs COMMAND with the payload on standard input (and `IPC_MAILBOX`,
//! `IPC_MESSAGE_ID`, `IPC_TYPE`, `IPC_CORRELATION_ID` in its environment), replies with
//! what it wrote to standard output, then acks the request. A command that fails (or
//! cannot start) is answered with a reply marked as a failure (`call` exits 1 with its
//! standard error), so the caller hears of it at once rather than at its timeout. A
//! message that is no request (no `reply_to`) is run all the same and its output
//! dropped, with a note. If `serve` dies mid-request, the lease ends with its
//! connection and the request goes back to the mailbox for another responder.

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
        let outcome = run_command(&args.command, name.as_str(), &request);
        answer(&request, outcome, &mut client)?;
        client.ack(name.as_str(), request.id)?;
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

/// Replies to `request` with the command's output, or with its failure marked as such.
/// A call that has given up refuses the reply: that is noted, not fatal.
fn answer(request: &Message, outcome: Outcome, client: &mut BlockingClient) -> anyhow::Result<()> {
    if request.headers.reply_to.is_none() {
        eprintln!(
            "ipcctl: message {} has no reply_to (it was sent, not called); its output is dropped",
            request.id
        );
        return Ok(());
    }
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
        Err(Error::PermissionDenied(why)) => {
            eprintln!(
                "ipcctl: the reply to request {} was refused: {why}",
                request.id
            );
            Ok(())
        }
        other => Ok(other?),
    }
}
