//! `ipcctl recv`: take (or peek at) one message, `--count N` of them pipelined and
//! printed in order, or keep taking them with `--follow`, which outlives a restart of the
//! daemon: it reconnects (with the library's backoff, for up to 30 s) and goes on, with a
//! note on stderr.

use ipc_client::{BlockingClient, Error, ReconnectPolicy};
use ipc_proto::{Lease, Message, RecvRequest, Request, Response, Selector};

use super::{Context, exec, mailbox_name};
use crate::cli::RecvArgs;
use crate::output::MessageFormat;
use crate::pipeline::{self, Pipeline};
use crate::printer::Printer;

/// Messages that may wait for the output thread in `--count` mode.
const OUTPUT_BACKLOG: usize = 256;

pub fn run(ctx: &Context, args: RecvArgs) -> anyhow::Result<()> {
    let mailbox = mailbox_name(&args.name)?;
    let format = if ctx.json {
        MessageFormat::Json
    } else if args.raw {
        MessageFormat::Raw
    } else {
        MessageFormat::Line
    };
    // `--ack` leases are detached: the command exits, the lease stays until acked.
    let lease = args.ack.then(|| Lease {
        timeout_ms: u64::try_from(args.lease.as_millis()).unwrap_or(u64::MAX),
        detached: true,
    });
    let request = Request::Recv(RecvRequest {
        mailbox: mailbox.clone(),
        selector: Selector::from_msgrcv(args.mtype, args.except),
        wait: args.wait.wait(),
        peek: args.peek,
        lease,
    });
    let mut client = ctx.connect()?;
    if let Some(command) = &args.exec {
        return exec::run(
            &mut client,
            &mailbox,
            &request,
            command,
            args.count,
            args.follow,
        );
    }

    if args.follow {
        return follow(
            &mut client,
            &request,
            Printer::inline(format, mailbox.to_string()),
        );
    }

    // `--count` asked for N and may take them all at once.
    let n = args.count.unwrap_or(1);
    let window = usize::try_from(n).map_or(usize::MAX, |n| n.min(pipeline::window(&client)));
    let mut printer = Printer::threaded(format, mailbox.to_string(), OUTPUT_BACKLOG);
    let mut pipeline: Pipeline<'_, ()> = Pipeline::new(&mut client, window);
    let mut submitted = 0u64;
    let mut received = 0u64;
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && submitted < n && pipeline.has_room() {
            if let Err(e) = pipeline.submit((), &request) {
                failure = Some(e);
                break;
            }
            submitted += 1;
        }
        let Some(((), outcome)) = pipeline.next() else {
            break;
        };
        match outcome.and_then(message) {
            Ok(m) => {
                received += 1;
                printer.print(m)?;
            }
            // Later receives still in flight are cancelled; any that got a message
            // first are still printed, since the message is no longer in the mailbox.
            Err(e) if failure.is_none() => {
                failure = Some(e);
                let _ = pipeline.cancel_pending();
            }
            Err(_) => {}
        }
    }
    // Everything received is written before the failure is reported.
    printer.finish()?;
    let Some(e) = failure else {
        return Ok(());
    };
    let e = anyhow::Error::from(e);
    Err(if n == 1 {
        e
    } else {
        e.context(format!("received {received} of {n} messages"))
    })
}

/// `--follow`: one receive at a time, each message written before the next receive is
/// made. Every message received is gone from the mailbox, so a reader that stops
/// (`| head`) must not leave messages taken and unprinted.
///
/// A lost connection — the daemon killed or restarted, or answering `ShuttingDown` — is
/// made again and following goes on, with one line on stderr. A receive whose connection
/// broke took nothing that survives (a message taken from a memory mailbox went with the
/// old daemon; a lease ends with its connection and is redelivered), so nothing is
/// skipped by receiving again. If no daemon answers within the policy's wait, the command
/// fails as any lost connection does (exit 69).
fn follow(
    client: &mut BlockingClient,
    request: &Request,
    mut printer: Printer,
) -> anyhow::Result<()> {
    let policy = ReconnectPolicy::default();
    let mut received = 0u64;
    let failure = loop {
        match client.request(request).and_then(message) {
            Ok(m) => {
                received += 1;
                printer.print(m)?;
            }
            Err(lost) if lost.is_connection_lost() => {
                if let Err(e) = client.reconnect(&policy) {
                    break e;
                }
                eprintln!(
                    "ipcctl: {lost}; reconnected to {}",
                    client.socket_path().display()
                );
            }
            Err(e) => break e,
        }
    };
    printer.finish()?;
    Err(anyhow::Error::from(failure).context(format!(
        "received {received} message{}",
        if received == 1 { "" } else { "s" }
    )))
}

fn message(response: Response) -> Result<Message, Error> {
    ipc_client::reply::message(response)
}
