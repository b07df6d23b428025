//! `ipcctl recv`: take (or peek at) one message, `--count N` of them pipelined and
//! printed in order, or keep taking them with `--follow`.

use ipc_client::Error;
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

    // `--follow` keeps one receive in flight and writes each message before the next
    // receive: every message received is gone from the mailbox, so a reader that stops
    // (`| head`) must not leave a window of them taken and unprinted. `--count` asked
    // for N and may take them all at once.
    let (limit, window, mut printer) = if args.follow {
        (None, 1, Printer::inline(format, mailbox.to_string()))
    } else {
        let n = args.count.unwrap_or(1);
        let window = usize::try_from(n).map_or(usize::MAX, |n| n.min(pipeline::window(&client)));
        let printer = Printer::threaded(format, mailbox.to_string(), OUTPUT_BACKLOG);
        (Some(n), window, printer)
    };
    let mut pipeline: Pipeline<'_, ()> = Pipeline::new(&mut client, window);
    let mut submitted = 0u64;
    let mut received = 0u64;
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && limit.is_none_or(|n| submitted < n) && pipeline.has_room() {
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
    Err(match limit {
        Some(1) => e,
        Some(n) => e.context(format!("received {received} of {n} messages")),
        None => e.context(format!(
            "received {received} message{}",
            if received == 1 { "" } else { "s" }
        )),
    })
}

fn message(response: Response) -> Result<Message, Error> {
    ipc_client::reply::message(response)
}
