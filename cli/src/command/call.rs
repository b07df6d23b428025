//! `ipcctl call`: send a request to a mailbox and print the reply. The daemon sets the
//! request's `reply_to` and `correlation_id` and waits for the reply; with none in time
//! the command fails with exit 75, and the request expires from the mailbox untaken.
//! A reply that `ipcctl serve` marks as its command's failure fails the call (exit 1).

use std::io::Write;

use ipc_client::SendOptions;

use super::send::read_payload;
use super::{Context, mailbox_name, stdout};
use crate::cli::CallArgs;
use crate::output::{MessageFormat, write_message};

/// The `content_type` of a reply that says the responder failed; its payload says how.
pub const FAILED: &str = "application/vnd.ipcd.failed";

pub fn run(ctx: &Context, args: CallArgs) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    let payload = read_payload(args.data, args.file)?;
    let mut options = SendOptions::mtype(args.mtype);
    options.headers.content_type = args.content_type;
    let mut client = ctx.connect()?;
    let reply = client.call_with(name.as_str(), payload, args.timeout, &options)?;
    if reply.headers.content_type.as_deref() == Some(FAILED) {
        anyhow::bail!(
            "the responder on {name} failed: {}",
            String::from_utf8_lossy(&reply.payload).trim_end()
        );
    }
    let format = match (ctx.json, args.raw) {
        (true, _) => MessageFormat::Json,
        (false, true) => MessageFormat::Raw,
        (false, false) => MessageFormat::Line,
    };
    let mut out = stdout();
    write_message(&mut out, format, name.as_str(), &reply)?;
    out.flush()?;
    Ok(())
}
