//! `ipcctl ack` and `ipcctl nack`: settle a message leased with `recv --ack`.

use std::io::Write;

use super::{Context, mailbox_name, stdout};
use crate::cli::MessageArg;
use crate::output::write_json;

pub fn run(ctx: &Context, args: &MessageArg, ack: bool) -> anyhow::Result<()> {
    let name = mailbox_name(&args.name)?;
    let mut client = ctx.connect()?;
    if ack {
        client.ack(name.as_str(), args.id)?;
    } else {
        client.nack(name.as_str(), args.id)?;
    }
    if ctx.json {
        let mut out = stdout();
        let verb = if ack { "acked" } else { "nacked" };
        write_json(
            &mut out,
            &serde_json::json!({ "mailbox": name.as_str(), "id": args.id, verb: true }),
        )?;
        out.flush()?;
    }
    Ok(())
}
